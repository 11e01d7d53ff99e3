"""Sampler / schedule table: names as A1111 publishes them, every published pair runs, the sigma
schedules follow A1111's definitions, and the k-diffusion samplers give the same result as the
k-diffusion update rules (written out below from the papers' formulas) on a toy model."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from modules.core.errors import NotFoundError, ValidationError
from modules.engine import samplers as smp
from modules.engine.noise import ImageRNG
from modules.engine.schedules import ModelSigmas, ScheduleParams
from modules.models.architecture import SCHEDULER_BASE

SD_CONFIG = dict(SCHEDULER_BASE, prediction_type="epsilon")
V_CONFIG = dict(SCHEDULER_BASE, prediction_type="v_prediction")
XL_CONFIG = dict(SCHEDULER_BASE, prediction_type="epsilon", timestep_spacing="leading")

A1111_ORDER = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
]  # fmt: skip
SCHEDULE_NAMES = [
    "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
    "align_your_steps", "simple", "normal", "ddim",
]  # fmt: skip


def sampler(name: str) -> smp.SamplerInfo:
    return smp.resolve_sampler(name, None)[0]


def schedule(name: str) -> smp.ScheduleInfo:
    return next(s for s in smp.list_schedulers() if s.name == name)


def sd_sigmas() -> ModelSigmas:
    return ModelSigmas.from_alphas_cumprod(
        smp.build_scheduler(sampler("Euler"), schedule("uniform"), SD_CONFIG).alphas_cumprod
    )


def has_torchsde() -> bool:
    return smp.SamplerInfo("x", (), "kdiffusion", None, requires=("torchsde",)).available


# -- the published lists ----------------------------------------------------------------------------


def test_published_samplers_in_a1111_order() -> None:
    names = [s.name for s in smp.list_samplers()]
    assert names == [n for n in A1111_ORDER if n in names]
    assert names[0] == "DPM++ 2M"
    expected = {
        "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2",
        "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM",
    }  # fmt: skip
    if has_torchsde():
        expected.add("DPM++ SDE")
    assert set(names) == expected
    for omitted in smp.OMITTED_SAMPLERS:
        assert omitted not in names
    assert set(smp.OMITTED_SAMPLERS) | set(names) | {"DPM++ SDE"} == set(A1111_ORDER)


def test_published_schedules_in_a1111_order() -> None:
    assert [s.name for s in smp.list_schedulers()] == SCHEDULE_NAMES
    assert "Beta" in smp.OMITTED_SCHEDULES


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
    assert not sampler("Euler").second_order and not sampler("DPM++ 2M").second_order
    assert sampler("Euler a").uses_ensd and sampler("Euler a").is_ancestral
    assert not sampler("Euler").stochastic and not sampler("DDIM").stochastic
    for name in ("Euler", "Euler a", "DPM++ 2M", "Heun", "LCM"):
        assert sampler(name).scales_initial_noise
    for name in ("DDIM", "PLMS", "UniPC"):
        assert not sampler(name).scales_initial_noise
    for s in smp.list_samplers():
        assert s.stochastic == (s.noise_input != "none"), s.name
        assert s.faithfulness, s.name


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


@pytest.mark.parametrize("name", ["No Such Sampler", "DPM fast", "DPM adaptive", "Restart", "DPM++ 2S a", "DDIM CFG++"])
def test_unknown_or_omitted_sampler_is_not_found(name: str) -> None:
    with pytest.raises(NotFoundError, match="Sampler not found") as err:
        smp.resolve_sampler(name, None)
    assert err.value.status_code == 404


def test_dpmpp_sde_needs_torchsde() -> None:
    if has_torchsde():
        assert smp.resolve_sampler("DPM++ SDE", None)[1].name == "karras"
    else:
        with pytest.raises(NotFoundError):
            smp.resolve_sampler("DPM++ SDE Karras", None)


@pytest.mark.parametrize("sched", ["Beta", "beta", "No Such Schedule"])
def test_unknown_schedule_is_not_found(sched: str) -> None:
    with pytest.raises(NotFoundError, match="Scheduler not found"):
        smp.resolve_sampler("Euler", sched)


def test_labels_report_the_default_schedule_as_automatic() -> None:
    assert smp.sampler_and_schedule_labels("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")
    assert smp.sampler_and_schedule_labels("DPM++ 2M", "Exponential") == ("DPM++ 2M", "Exponential")
    assert smp.sampler_and_schedule_labels("k_euler", "sgmuniform") == ("Euler", "SGM Uniform")


# -- every published sampler runs -------------------------------------------------------------------------


def expected_calls(s: smp.SamplerInfo, sc: smp.ScheduleInfo, n: int) -> int:
    if s.kind == "timesteps":
        return n + 1 if s.name == "PLMS" else n
    m = len(smp.schedule_sigmas(s, sc, sd_sigmas(), n))
    return 2 * m - 1 if s.second_order else m


def run_steps(s: smp.SamplerInfo, scheduler: object, rng: ImageRNG) -> torch.Tensor:
    x = rng.first() * smp.initial_noise_scale(s, scheduler)  # type: ignore[arg-type]
    for t in scheduler.timesteps:  # type: ignore[attr-defined]
        x_in = scheduler.scale_model_input(x, t)  # type: ignore[attr-defined]
        eps = 0.5 * torch.tanh(x_in)
        x = scheduler.step(eps, t, x, **smp.step_noise_kwargs(s, rng)).prev_sample  # type: ignore[attr-defined]
    return x


@pytest.mark.parametrize("name", [s.name for s in smp.list_samplers()])
def test_every_sampler_with_every_schedule_runs(name: str) -> None:
    s = sampler(name)
    for sched in smp.list_schedulers():
        for config in (SD_CONFIG, V_CONFIG, XL_CONFIG) if sched.name in ("automatic", "karras") else (SD_CONFIG,):
            scheduler = smp.build_scheduler(s, sched, config, seeds=[1, 2])
            scheduler.set_timesteps(3)
            ts = scheduler.timesteps
            if s.kind == "lcm":
                assert 1 <= len(ts) <= 4  # the DDIM schedule walk gives 4 grid points
            else:
                assert len(ts) == expected_calls(s, sched, 3), (name, sched.name)
            x = run_steps(s, scheduler, ImageRNG((4, 8, 8), [1, 2]))
            assert x.shape == (2, 4, 8, 8)
            assert torch.isfinite(x).all(), (name, sched.name)


def test_fresh_instance_per_build() -> None:
    a = smp.build_scheduler(sampler("Euler"), schedule("karras"), SD_CONFIG)
    b = smp.build_scheduler(sampler("Euler"), schedule("karras"), SD_CONFIG)
    assert a is not b
    a.set_timesteps(5)
    b.set_timesteps(9)
    assert len(a.timesteps) == 5 and len(b.timesteps) == 9


def test_model_config_keys_are_used_and_sampler_behaviour_is_ours() -> None:
    s = smp.build_scheduler(sampler("Euler"), schedule("automatic"), V_CONFIG)
    assert s.config.prediction_type == "v_prediction"
    # SDXL's "leading" spacing is a diffusers pipeline convention; A1111 ignores it.
    xl = smp.build_scheduler(sampler("Euler"), schedule("automatic"), XL_CONFIG)
    xl.set_timesteps(10)
    sd = smp.build_scheduler(sampler("Euler"), schedule("automatic"), SD_CONFIG)
    sd.set_timesteps(10)
    assert torch.equal(xl.sigmas, sd.sigmas)
    ddim = smp.build_scheduler(sampler("DDIM"), schedule("automatic"), {"prediction_type": "epsilon"})
    assert ddim.config.steps_offset == 1 and ddim.config.clip_sample is False


def test_config_copy_refuses_to_run_without_the_schedule() -> None:
    built = smp.build_scheduler(sampler("Euler"), schedule("karras"), SD_CONFIG)
    copy = type(built).from_config(built.config)
    with pytest.raises(RuntimeError, match="build_scheduler"):
        copy.set_timesteps(5)


def test_step_noise_kwargs() -> None:
    rng = ImageRNG((4, 8, 8), [1, 2])
    rng.first()
    assert smp.step_noise_kwargs(sampler("Euler"), rng) == {}
    assert smp.step_noise_kwargs(sampler("Euler a"), rng)["variance_noise"].shape == (2, 4, 8, 8)
    assert len(smp.step_noise_kwargs(sampler("DPM2 a"), rng)["generator"]) == 2
    nv = ImageRNG((4, 8, 8), [1, 2], source="NV")
    nv.first()
    assert "variance_noise" in smp.step_noise_kwargs(sampler("DPM++ 2M SDE"), nv)
    with pytest.raises(ValidationError, match="NV"):
        smp.step_noise_kwargs(sampler("DPM2 a"), nv)


def test_euler_a_variance_noise_equals_its_generator_path() -> None:
    outs = []
    for use_noise in (True, False):
        scheduler = smp.build_scheduler(sampler("Euler a"), schedule("karras"), SD_CONFIG)
        scheduler.set_timesteps(4)
        rng = ImageRNG((4, 8, 8), [3, 4])
        x = rng.first() * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = torch.tanh(scheduler.scale_model_input(x, t))
            kwargs = {"variance_noise": rng.next()} if use_noise else {"generator": rng.torch_generators}
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1])


# -- initial noise scale ----------------------------------------------------------------------------------


def test_initial_noise_scale() -> None:
    ms = sd_sigmas()
    euler = smp.build_scheduler(sampler("Euler"), schedule("automatic"), SD_CONFIG)
    euler.set_timesteps(20)
    assert smp.initial_noise_scale(sampler("Euler"), euler) == pytest.approx(ms.sigma_max, rel=1e-6)
    assert smp.initial_noise_scale(sampler("Euler"), euler) == pytest.approx(float(euler.init_noise_sigma))
    dpm = smp.build_scheduler(sampler("DPM++ 2M"), schedule("automatic"), SD_CONFIG)
    dpm.set_timesteps(20)
    s0 = ms.sigma_max
    assert smp.initial_noise_scale(sampler("DPM++ 2M"), dpm) == pytest.approx(s0 / math.sqrt(1 + s0 * s0), rel=1e-6)
    ddim = smp.build_scheduler(sampler("DDIM"), schedule("automatic"), SD_CONFIG)
    ddim.set_timesteps(20)
    assert smp.initial_noise_scale(sampler("DDIM"), ddim) == 1.0
    # The usual `latents * scheduler.init_noise_sigma` starts where A1111 starts, for every sampler.
    for s in smp.list_samplers():
        built = smp.build_scheduler(s, schedule("automatic"), SD_CONFIG)
        if s.sample_space == "vp" and s.kind != "timesteps":
            assert built.init_noise_sigma == 1.0  # before set_timesteps: diffusers' value
        built.set_timesteps(6)
        assert smp.initial_noise_scale(s, built) == pytest.approx(float(built.init_noise_sigma)), s.name


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
    return smp.schedule_sigmas(sampler(sampler_name), schedule(sched), sd_sigmas(), n, ScheduleParams(**params))  # type: ignore[arg-type]


def test_uniform_is_the_models_own_sigmas() -> None:
    ms = sd_sigmas()
    np.testing.assert_allclose(sigmas_of("uniform", 1000), ms.sigmas[::-1], rtol=1e-12)
    np.testing.assert_allclose(sigmas_of("automatic", 10), sigmas_of("uniform", 10))
    np.testing.assert_allclose(sigmas_of("normal", 10), sigmas_of("uniform", 10), rtol=1e-9)
    expected = ms.t_to_sigma(np.linspace(999, 0, 4))
    np.testing.assert_allclose(sigmas_of("uniform", 4), expected)


def test_karras_exponential_polyexponential_kl() -> None:
    ms = sd_sigmas()
    lo, hi = ms.sigma_min, ms.sigma_max
    ramp = np.linspace(0, 1, 6)
    karras = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas_of("karras", 6), karras)
    np.testing.assert_allclose(sigmas_of("exponential", 6), np.geomspace(hi, lo, 6))
    np.testing.assert_allclose(sigmas_of("polyexponential", 6), np.geomspace(hi, lo, 6))  # rho 1
    kl = sigmas_of("kl_optimal", 6)
    assert kl[0] == pytest.approx(hi) and kl[-1] == pytest.approx(lo)
    np.testing.assert_allclose(np.arctan(kl), np.linspace(math.atan(hi), math.atan(lo), 6))
    over = sigmas_of("karras", 5, sigma_min=0.1, sigma_max=10.0, rho=3.0)
    assert over[0] == pytest.approx(10.0) and over[-1] == pytest.approx(0.1)
    assert over[2] == pytest.approx(((10 ** (1 / 3) + 0.1 ** (1 / 3)) / 2) ** 3)


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
    np.testing.assert_allclose(dpm2, full[:-1])
    scheduler = smp.build_scheduler(sampler("DPM2"), schedule("karras"), SD_CONFIG)
    scheduler.set_timesteps(5)
    np.testing.assert_allclose(scheduler.sigmas[0::2][:6].numpy(), np.append(full[:-1], 0.0), rtol=1e-6)


@pytest.mark.parametrize("name", ["Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM++ 2M", "DPM++ 3M SDE"])
def test_scheduler_runs_the_a1111_sigmas_with_fractional_timesteps(name: str) -> None:
    s = sampler(name)
    scheduler = smp.build_scheduler(s, schedule("karras"), SD_CONFIG)
    scheduler.set_timesteps(8)
    want = smp.schedule_sigmas(s, schedule("karras"), sd_sigmas(), 8)
    main = scheduler.sigmas[0::2] if s.second_order else scheduler.sigmas
    np.testing.assert_allclose(main[: len(want)].numpy(), want, rtol=1e-6)
    assert float(scheduler.sigmas[-1]) == 0.0
    ts = scheduler.timesteps[0::2] if s.second_order else scheduler.timesteps
    np.testing.assert_allclose(ts.numpy(), sd_sigmas().sigma_to_t(want), atol=1e-3)
    assert (ts.numpy() != np.round(ts.numpy())).any()  # not rounded to integer timesteps


def test_lcm_uses_the_lcm_grid() -> None:
    scheduler = smp.build_scheduler(sampler("LCM"), schedule("automatic"), SD_CONFIG)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 679, 339, 19]
    scheduler.set_timesteps(8)
    assert all((t + 1) % 20 == 0 for t in scheduler.timesteps.tolist())
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 19


# -- faithfulness: the k-diffusion update rules -----------------------------------------------------------------
#
# Written from the formulas (Karras et al. 2022 Alg. 1/2 for Euler/Heun and the ancestral step,
# Lu et al. 2022 for DPM-Solver++(2M) and its SDE form, the 3M SDE exponential-integrator
# expansion), in k-diffusion's variables: x = x0 + sigma * eps and
# denoised = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma)).

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Noise = Callable[[int], torch.Tensor]


def toy_eps(x_in: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    return 0.8 * torch.tanh(x_in) + 0.1 * torch.sin(3.0 * x_in) + 0.05 * (t / 1000.0) * x_in


def make_denoiser(ms: ModelSigmas) -> Denoiser:
    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = float(ms.sigma_to_t([sigma])[0])
        return x - sigma * toy_eps(x / math.sqrt(sigma**2 + 1.0), t)

    return denoise


def ancestral(s: float, sn: float) -> tuple[float, float]:
    up = min(sn, math.sqrt(sn**2 * (s**2 - sn**2) / s**2))
    return math.sqrt(sn**2 - up**2), up


def ref_euler(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    for i in range(len(sig) - 1):
        x = x + (x - d(x, sig[i])) / sig[i] * (sig[i + 1] - sig[i])
    return x


def ref_euler_a(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    for i in range(len(sig) - 1):
        down, up = ancestral(sig[i], sig[i + 1])
        x = x + (x - d(x, sig[i])) / sig[i] * (down - sig[i]) + noise(i) * up
    return x


def ref_heun(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        dx = (x - d(x, s)) / s
        if sn == 0:
            x = x + dx * (sn - s)
        else:
            x2 = x + dx * (sn - s)
            x = x + (dx + (x2 - d(x2, sn)) / sn) / 2 * (sn - s)
    return x


def _dpm2_step(d: Denoiser, x: torch.Tensor, s: float, target: float, den: torch.Tensor) -> torch.Tensor:
    dx = (x - den) / s
    if target == 0:
        return x + dx * (target - s)
    mid = math.exp(0.5 * (math.log(s) + math.log(target)))
    x2 = x + dx * (mid - s)
    return x + (x2 - d(x2, mid)) / mid * (target - s)


def ref_dpm2(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    for i in range(len(sig) - 1):
        x = _dpm2_step(d, x, sig[i], sig[i + 1], d(x, sig[i]))
    return x


def ref_dpm2_a(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    for i in range(len(sig) - 1):
        down, up = ancestral(sig[i], sig[i + 1])
        x = _dpm2_step(d, x, sig[i], down, d(x, sig[i]))
        if down > 0:
            x = x + noise(i) * up
    return x


def _lms_coefficient(order: int, sig: list[float], i: int, j: int) -> float:
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.polynomial.Polynomial([-sig[i - k], 1.0]) / (sig[i - j] - sig[i - k])
    integral = poly.integ()
    return float(integral(sig[i + 1]) - integral(sig[i]))


def ref_lms(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    ds: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        ds = [*ds, (x - d(x, sig[i])) / sig[i]][-4:]
        order = min(i + 1, 4)
        x = x + sum(_lms_coefficient(order, sig, i, j) * dv for j, dv in enumerate(reversed(ds)))
    return x


def ref_dpmpp_2m(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    old: torch.Tensor | None = None
    h_last = 0.0
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        den = d(x, s)
        if sn == 0:
            x = den
        else:
            h = math.log(s / sn)
            if old is not None:
                r = h_last / h
                den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            else:
                den_d = den
            x = (sn / s) * x - math.expm1(-h) * den_d
            h_last = h
        old = den
    return x


def ref_dpmpp_2m_sde(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise, heun: bool = False) -> torch.Tensor:
    old: torch.Tensor | None = None
    h_last = 0.0
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        den = d(x, s)
        if sn == 0:
            x = den
        else:
            h = math.log(s / sn)
            phi = -math.expm1(-2 * h)
            x = sn / s * math.exp(-h) * x + phi * den
            if old is not None:
                r = h_last / h
                coef = (phi / (-2 * h) + 1) if heun else 0.5 * phi
                x = x + coef / r * (den - old)
            x = x + noise(i) * sn * math.sqrt(phi)
            h_last = h
        old = den
    return x


def ref_dpmpp_3m_sde(d: Denoiser, x: torch.Tensor, sig: list[float], noise: Noise) -> torch.Tensor:
    den1 = den2 = None
    h1 = h2 = None
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        den = d(x, s)
        h = None
        if sn == 0:
            x = den
        else:
            h = math.log(s / sn)
            he = 2 * h
            phi2 = math.expm1(-he) / he + 1
            x = math.exp(-he) * x - math.expm1(-he) * den
            if h2 is not None and den1 is not None and den2 is not None:
                r0, r1 = h1 / h, h2 / h  # type: ignore[operator]
                d10, d11 = (den - den1) / r0, (den1 - den2) / r1
                x = x + phi2 * (d10 + (d10 - d11) * r0 / (r0 + r1)) - (phi2 / he - 0.5) * (d10 - d11) / (r0 + r1)
            elif h1 is not None and den1 is not None:
                x = x + phi2 * (den - den1) / (h1 / h)
            x = x + noise(i) * sn * math.sqrt(-math.expm1(-he))
        den1, den2 = den, den1
        h1, h2 = h, h1
    return x


REFERENCES: dict[str, Callable[[Denoiser, torch.Tensor, list[float], Noise], torch.Tensor]] = {
    "Euler": ref_euler,
    "Euler a": ref_euler_a,
    "LMS": ref_lms,
    "Heun": ref_heun,
    "DPM2": ref_dpm2,
    "DPM2 a": ref_dpm2_a,
    "DPM++ 2M": ref_dpmpp_2m,
    "DPM++ 2M SDE": ref_dpmpp_2m_sde,
    "DPM++ 2M SDE Heun": lambda d, x, sig, noise: ref_dpmpp_2m_sde(d, x, sig, noise, heun=True),
    "DPM++ 3M SDE": ref_dpmpp_3m_sde,
}


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("sched", ["automatic", "karras", "exponential"])
def test_matches_the_k_diffusion_update(name: str, sched: str) -> None:
    s, sc = sampler(name), schedule(sched)
    scheduler = smp.build_scheduler(s, sc, SD_CONFIG)
    steps = 7
    scheduler.set_timesteps(steps)
    ms = ModelSigmas.from_alphas_cumprod(scheduler.alphas_cumprod)
    sig = [float(v) for v in smp.schedule_sigmas(s, sc, ms, steps).astype(np.float32)] + [0.0]

    rng = ImageRNG((4, 8, 8), [21, 22])
    x = run_toy(s, scheduler, rng)

    ref_rng = ImageRNG((4, 8, 8), [21, 22])
    x0 = ref_rng.first()
    gens = ref_rng.torch_generators
    assert gens is not None
    if s.noise_input == "generator":  # one draw per image, only when the step adds noise

        def noise(i: int) -> torch.Tensor:
            return torch.stack([torch.randn((4, 8, 8), generator=g) for g in gens])
    else:  # one draw per step

        def noise(i: int) -> torch.Tensor:
            return ref_rng.next()

    expected = REFERENCES[name](make_denoiser(ms), x0 * sig[0], sig, noise)
    torch.testing.assert_close(x, expected, atol=2e-4, rtol=1e-5)


def run_toy(s: smp.SamplerInfo, scheduler: object, rng: ImageRNG) -> torch.Tensor:
    x = rng.first() * smp.initial_noise_scale(s, scheduler)  # type: ignore[arg-type]
    for t in scheduler.timesteps:  # type: ignore[attr-defined]
        eps = toy_eps(scheduler.scale_model_input(x, t), t)  # type: ignore[attr-defined]
        x = scheduler.step(eps, t, x, **smp.step_noise_kwargs(s, rng)).prev_sample  # type: ignore[attr-defined]
    return x
