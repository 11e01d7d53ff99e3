"""Stochastic samplers take their per-step noise from the job's image RNG, whatever its source."""

from __future__ import annotations

import numpy as np
import pytest

from modules.core.errors import ValidationError
from modules.engine.service import GenerationService
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ancestral_sampler_is_deterministic_for_each_rng_source(engine: GenerationService, source: str) -> None:
    request = t2i(sampler_name="Euler a", override_settings={"sd_model_checkpoint": "sd1", "randn_source": source})
    a = engine.run_sync(request, 120)
    b = engine.run_sync(request, 120)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert f"RNG: {source}" in a.infotexts[0]


def test_generator_only_sampler_with_nv_is_a_clear_error(engine: GenerationService) -> None:
    request = t2i(sampler_name="DPM2 a", override_settings={"sd_model_checkpoint": "sd1", "randn_source": "NV"})
    with pytest.raises(ValidationError, match="RNG source"):
        engine.run_sync(request, 120)


def test_dpmpp_sde_is_deterministic_per_seed(engine: GenerationService) -> None:
    from modules.engine import samplers as smp

    if "DPM++ SDE" not in [s.name for s in smp.list_samplers()]:
        pytest.skip("torchsde is not installed")
    a = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3), 120)
    b = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3), 120)
    c = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3, seed=4321), 120)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
