"""Sampler / schedule table: names as A1111 publishes them, the sigma schedules follow A1111's
definitions (the update rules themselves are tested in test_kdiffusion / test_timestep_samplers,
whole passes in test_sampler_pass)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.core.errors import NotFoundError
from modules.engine import samplers as smp
from modules.engine.sampling import DiscreteSchedule, LCMSchedule, a1111_alphas_cumprod
from modules.engine.schedules import ModelSigmas, ScheduleParams

A1111_ORDER = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
]  # fmt: skip
SCHEDULE_NAMES = [
    "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
    "align_your_steps", "simple", "normal", "ddim", "beta",
]  # fmt: skip


def sampler(name: str) -> smp.SamplerInfo:
    return smp.resolve_sampler(name, None)[0]


def schedule(name: str) -> smp.ScheduleInfo:
    return next(s for s in smp.list_schedulers() if s.name == name)


def sd_sigmas() -> ModelSigmas:
    return ModelSigmas.from_alphas_cumprod(a1111_alphas_cumprod())


# -- the published lists ----------------------------------------------------------------------------


def test_every_a1111_sampler_in_a1111_order() -> None:
    names = [s.name for s in smp.list_samplers()]
    assert names == A1111_ORDER
    assert names[0] == "DPM++ 2M"
    assert not smp.OMITTED_SAMPLERS


def test_published_schedules_in_a1111_order() -> None:
    assert [s.name for s in smp.list_schedulers()] == SCHEDULE_NAMES


def test_every_sampler_has_its_function() -> None:
    from modules.engine import kdiffusion, timestep_samplers

    for s in smp.list_samplers():
        module = timestep_samplers if s.kind == "timesteps" else kdiffusion
        assert callable(getattr(module, s.function)), s.name


def test_api_shapes() -> None:
    first = smp.list_samplers()[0].to_dict()
    assert first == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert sampler("Euler a").to_dict() == {
        "name": "Euler a",
        "aliases": ["k_euler_a", "k_euler_ancestral"],
        "options": {"uses_ensd": "True"},
    }
    assert sampler("Euler").to_dict()["options"] == {}
    assert sampler("DPM2 a").options == {
        "scheduler": "karras",
        "second_order": "True",
        "uses_ensd": "True",
        "discard_next_to_last_sigma": "True",
    }
    assert sampler("DPM++ 2M SDE Heun").options["solver_type"] == "heun"
    scheds = [s.to_dict() for s in smp.list_schedulers()]
    assert scheds[0] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1,
        "need_inner_model": False,
    }
    karras = next(s for s in scheds if s["name"] == "karras")
    assert karras["default_rho"] == 7.0 and karras["label"] == "Karras"
    sgm = next(s for s in scheds if s["name"] == "sgm_uniform")
    assert sgm["aliases"] == ["SGMUniform"] and sgm["need_inner_model"] is True


def test_flags() -> None:
    assert sampler("Heun").second_order and sampler("DPM2").second_order and sampler("DPM2 a").second_order
    assert sampler("Restart").second_order and sampler("DPM++ 2S a").second_order
    assert not sampler("Euler").second_order and not sampler("DPM++ 2M").second_order
    assert sampler("Euler a").uses_ensd and sampler("Euler a").has_eta
    assert sampler("Heun").total_calls(10) == 20 and sampler("Euler").total_calls(10) == 10
    assert not sampler("Euler").has_eta and sampler("DDIM").has_eta and not sampler("PLMS").has_eta
    assert sampler("DDIM").eta_option == "eta_ddim" and sampler("DDIM").eta_default == 0.0
    assert sampler("Euler a").eta_option == "eta_ancestral" and sampler("Euler a").eta_default == 1.0
    assert sampler("Euler").extra_params == ("s_churn", "s_tmin", "s_tmax", "s_noise")
    assert sampler("DPM++ SDE").brownian_noise and sampler("DPM++ 3M SDE").brownian_noise
    for name in ("Euler", "Euler a", "DPM++ 2M", "Heun", "LCM"):
        assert sampler(name).scales_initial_noise
    for name in ("DDIM", "DDIM CFG++", "PLMS", "UniPC"):
        assert not sampler(name).scales_initial_noise


# -- name resolution ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sched", "expected"),
    [
        ("DPM++ 2M", None, ("DPM++ 2M", "karras")),
        ("DPM++ 2M", "Automatic", ("DPM++ 2M", "karras")),
        ("dpm++ 2m", "automatic", ("DPM++ 2M", "karras")),
        ("DPM++ 2M", "Exponential", ("DPM++ 2M", "exponential")),
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "karras")),
        ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "karras")),
        ("DPM++ 2M SDE", "", ("DPM++ 2M SDE", "exponential")),
        ("DPM++ 2M SDE Heun", None, ("DPM++ 2M SDE Heun", "exponential")),
        ("DPM++ 3M SDE Exponential", None, ("DPM++ 3M SDE", "exponential")),
        ("Euler a", None, ("Euler a", "automatic")),
        ("k_euler_a", None, ("Euler a", "automatic")),
        ("K_EULER_ANCESTRAL", "karras", ("Euler a", "karras")),
        ("Euler a SGMUniform", None, ("Euler a", "sgm_uniform")),
        ("Euler SGM Uniform", None, ("Euler", "sgm_uniform")),
        ("Euler", "sgm_uniform", ("Euler", "sgm_uniform")),
        ("DPM2 a Karras", None, ("DPM2 a", "karras")),
        ("LMS Karras", None, ("LMS", "karras")),
        ("DDIM", None, ("DDIM", "automatic")),
        ("DDIM", "Karras", ("DDIM", "karras")),  # accepted, ignored by the timestep sampler
        ("ddim", "DDIM", ("DDIM", "ddim")),
        ("Euler DDIM", None, ("Euler", "ddim")),
        ("plms", None, ("PLMS", "automatic")),
        ("UniPC", None, ("UniPC", "automatic")),
        ("k_lcm", None, ("LCM", "automatic")),
        (None, None, ("DPM++ 2M", "karras")),
        ("", "Align Your Steps", ("DPM++ 2M", "align_your_steps")),
    ],
)
def test_resolve(name: str | None, sched: str | None, expected: tuple[str, str]) -> None:
    s, sc = smp.resolve_sampler(name, sched)
    assert (s.name, sc.name) == expected


@pytest.mark.parametrize("name", ["No Such Sampler", "DPM slow", "Euler b"])
def test_unknown_sampler_is_not_found(name: str) -> None:
    with pytest.raises(NotFoundError, match="Sampler not found") as err:
        smp.resolve_sampler(name, None)
    assert err.value.status_code == 404


@pytest.mark.parametrize(
    ("name", "expected"),
    [("DPM fast", "DPM fast"), ("k_dpm_ad", "DPM adaptive"), ("restart", "Restart"),
     ("DPM++ 2S a Karras", "DPM++ 2S a"), ("ddim_cfgpp", "DDIM CFG++")],
)  # fmt: skip
def test_new_samplers_resolve(name: str, expected: str) -> None:
    assert smp.resolve_sampler(name, None)[0].name == expected


@pytest.mark.parametrize("sched", ["No Such Schedule", "Gamma"])
def test_unknown_schedule_is_not_found(sched: str) -> None:
    with pytest.raises(NotFoundError, match="Scheduler not found"):
        smp.resolve_sampler("Euler", sched)


def test_labels_report_the_default_schedule_as_automatic() -> None:
    assert smp.sampler_and_schedule_labels("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")
    assert smp.sampler_and_schedule_labels("DPM++ 2M", "Exponential") == ("DPM++ 2M", "Exponential")
    assert smp.sampler_and_schedule_labels("k_euler", "sgmuniform") == ("Euler", "SGM Uniform")


# -- A1111's schedules ------------------------------------------------------------------------------------------


def test_model_sigmas_of_sd() -> None:
    ms = sd_sigmas()
    assert ms.sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert ms.sigma_min == pytest.approx(0.0292, abs=1e-4)
    t = np.array([0.0, 10.0, 500.0, 999.0])
    np.testing.assert_allclose(ms.sigma_to_t(ms.t_to_sigma(t)), t, atol=1e-6)
    # fractional t interpolates log sigma
    assert ms.t_to_sigma([0.5])[0] == pytest.approx(math.sqrt(ms.sigmas[0] * ms.sigmas[1]))


def sigmas_of(sched: str, n: int, sampler_name: str = "Euler", **params: object) -> np.ndarray:
    """The non-zero sigmas (float64) of `schedule_sigmas`, which ends with a 0."""
    out = smp.schedule_sigmas(sampler(sampler_name), schedule(sched), sd_sigmas(), n, ScheduleParams(**params))  # type: ignore[arg-type]
    assert float(out[-1]) == 0.0 and out.dtype == torch.float32
    return out[:-1].double().numpy()


def test_uniform_is_the_models_own_sigmas() -> None:
    ms = sd_sigmas()
    np.testing.assert_allclose(sigmas_of("uniform", 1000), ms.sigmas[::-1], rtol=1e-6)
    np.testing.assert_allclose(sigmas_of("automatic", 10), sigmas_of("uniform", 10))
    np.testing.assert_allclose(sigmas_of("normal", 10), sigmas_of("uniform", 10), rtol=1e-6)
    expected = ms.t_to_sigma(np.linspace(999, 0, 4))
    np.testing.assert_allclose(sigmas_of("uniform", 4), expected, rtol=1e-6)


def test_discrete_schedule_matches_k_diffusion() -> None:
    ds = DiscreteSchedule(a1111_alphas_cumprod())
    assert ds.sigmas.dtype == torch.float32
    assert float(ds.sigma_max) == pytest.approx(14.6146, abs=1e-3)
    t = torch.tensor([0.0, 10.0, 500.5, 999.0])
    torch.testing.assert_close(ds.sigma_to_t(ds.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    sig = ds.get_sigmas(4)
    assert float(sig[-1]) == 0.0 and len(sig) == 5
    torch.testing.assert_close(sig[:-1], ds.t_to_sigma(torch.linspace(999, 0, 4)))
    # A1111's float64 cumulative product, stored as float32, is not diffusers' float32 product
    betas32 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    diffusers_ac = torch.cumprod(1.0 - betas32, dim=0)
    assert not torch.equal(diffusers_ac, a1111_alphas_cumprod())


def test_karras_exponential_polyexponential_kl() -> None:
    ms = sd_sigmas()
    lo, hi = ms.sigma_min, ms.sigma_max
    ramp = np.linspace(0, 1, 6)
    karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    # computed in float32 as k-diffusion does
    np.testing.assert_allclose(sigmas_of("karras", 6), karras, rtol=1e-6)
    np.testing.assert_allclose(sigmas_of("exponential", 6), np.geomspace(hi, lo, 6), rtol=1e-6)
    np.testing.assert_allclose(sigmas_of("polyexponential", 6), np.geomspace(hi, lo, 6), rtol=1e-6)  # rho 1
    kl = sigmas_of("kl_optimal", 6)
    assert kl[0] == pytest.approx(hi) and kl[-1] == pytest.approx(lo)
    np.testing.assert_allclose(np.arctan(kl), np.linspace(math.atan(hi), math.atan(lo), 6))
    over = sigmas_of("karras", 5, sigma_min=0.1, sigma_max=10.0, rho=3.0)
    assert over[0] == pytest.approx(10.0) and over[-1] == pytest.approx(0.1)
    assert over[2] == pytest.approx(((10 ** (1 / 3) + 0.1 ** (1 / 3)) / 2) ** 3, rel=1e-6)


def test_timestep_based_schedules() -> None:
    ms = sd_sigmas()
    # Simple: every (1000 / n)-th model sigma from the top.
    np.testing.assert_allclose(sigmas_of("simple", 10), ms.sigmas[[999 - 100 * k for k in range(10)]])
    # DDIM: model sigmas at t = 1, 1 + 1000 // n, ... highest first.
    np.testing.assert_allclose(sigmas_of("ddim", 10), ms.sigmas[[1 + 100 * k for k in range(10)]][::-1])
    assert len(sigmas_of("ddim", 7)) == 8  # A1111's stride walk gives one more when 1000 % n is large
    # SGM Uniform: n+1 points from t_max to 0, the last dropped.
    np.testing.assert_allclose(sigmas_of("sgm_uniform", 4), ms.t_to_sigma([999, 749.25, 499.5, 249.75]))


def test_align_your_steps_tables() -> None:
    sd15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    np.testing.assert_allclose(sigmas_of("align_your_steps", 11), sd15)
    assert sigmas_of("align_your_steps", 11, is_sdxl=True)[1] == pytest.approx(6.315)
    five = sigmas_of("align_your_steps", 5)
    assert five[0] == pytest.approx(14.615) and five[-1] == pytest.approx(0.029)
    assert five[2] == pytest.approx(1.396)  # the table's middle point


def test_discard_next_to_last_sigma() -> None:
    full = sigmas_of("karras", 6)
    dpm2 = sigmas_of("karras", 5, sampler_name="DPM2")
    np.testing.assert_allclose(dpm2, full[:-1], rtol=1e-6)
    forced = smp.schedule_sigmas(
        sampler("Euler"), schedule("karras"), sd_sigmas(), 5, ScheduleParams(), discard_penultimate=True
    )
    np.testing.assert_allclose(forced[:-1].double().numpy(), full[:-1], rtol=1e-6)


def test_lcm_uses_the_lcm_grid() -> None:
    lcm = LCMSchedule(a1111_alphas_cumprod())
    assert len(lcm.sigmas) == 50
    sig = lcm.get_sigmas(4)
    t = lcm.sigma_to_t(sig[:-1])
    assert t.tolist() == [999, 679, 339, 19]
    assert all((int(x) + 1) % 20 == 0 for x in lcm.sigma_to_t(lcm.get_sigmas(8)[:-1]).tolist())
