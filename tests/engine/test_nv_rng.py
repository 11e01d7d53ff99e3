"""Stochastic samplers take their per-step noise from the job's image RNG, whatever its source."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_every_ancestral_sampler_draws_its_step_noise_from_the_nv_generator(engine: GenerationService) -> None:
    # the sampler functions take their noise from the per-image RNG, whatever its source
    nv = {"sd_model_checkpoint": "sd1", "randn_source": "NV"}
    cpu = {"sd_model_checkpoint": "sd1", "randn_source": "CPU"}
    a = engine.run_sync(t2i(sampler_name="DPM2 a", override_settings=nv), 120)
    b = engine.run_sync(t2i(sampler_name="DPM2 a", override_settings=nv), 120)
    c = engine.run_sync(t2i(sampler_name="DPM2 a", override_settings=cpu), 120)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))


def test_dpmpp_sde_is_deterministic_per_seed(engine: GenerationService) -> None:
    a = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3), 120)
    b = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3), 120)
    c = engine.run_sync(t2i(sampler_name="DPM++ SDE", steps=3, seed=4321), 120)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
