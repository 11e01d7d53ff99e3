"""The k-diffusion sampler functions against their published update rules, on a toy Gaussian data
distribution whose exact denoiser and probability-flow ODE solution are known in closed form; the
noise each sampler draws (how many, in which step); the Brownian-tree noise sampler; the Beta schedule.

Data ~ N(MU, S^2) per element: D(x, sigma) = MU + (x - MU) * S^2 / (S^2 + sigma^2), and the ODE
carries x at sigma_max to MU + (x - MU) * S / sqrt(S^2 + sigma_max^2) at sigma 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchsde  # type: ignore[import-untyped]
from scipy import stats  # type: ignore[import-untyped]

from modules.engine import kdiffusion as kd
from modules.engine.sampler_types import StepInfo
from modules.engine.schedules import ModelSigmas, ScheduleParams, beta_sigmas
from tests.engine.support import CountingRandn

MU, S = 0.7, 0.5
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6
SHAPE = (2, 4, 8, 8)


class Toy:
    """The exact denoiser of N(MU, S^2) data; records every (x, sigma) it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        assert bool((sigma == sigma[0]).all())
        self.calls.append((x.clone(), sigma.clone()))
        return denoise(x, sigma[0])


def denoise(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    return MU + (x - MU) * S**2 / (S**2 + sigma**2)


def exact_ode(x: torch.Tensor, sigma_max: float) -> torch.Tensor:
    return MU + (x - MU) * S / math.sqrt(S**2 + sigma_max**2)


def start(seed: int = 0, sigma: float = SIGMA_MAX, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sigma


def karras(n: int, lo: float = SIGMA_MIN, hi: float = SIGMA_MAX) -> torch.Tensor:
    return kd.get_sigmas_karras(n, lo, hi)


def pair(s0: float, s1: float) -> torch.Tensor:
    return torch.tensor([s0, s1], dtype=torch.float32)


def no_noise(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("no noise expected")


def no_noise_sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    raise AssertionError("no noise expected")


def randn_fixed(noise: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: noise


# -- helpers ----------------------------------------------------------------------------------------------


def test_ancestral_step_splits_the_variance() -> None:
    s0, s1 = torch.tensor(3.0), torch.tensor(1.0)
    down, up = kd.get_ancestral_step(s0, s1, 1.0)
    expected_up = math.sqrt(1.0 * (9.0 - 1.0) / 9.0)
    assert float(up) == pytest.approx(expected_up, rel=1e-6)
    assert float(down) == pytest.approx(math.sqrt(1.0 - expected_up**2), rel=1e-6)
    half_down, half_up = kd.get_ancestral_step(s0, s1, 0.5)
    assert float(half_up) == pytest.approx(0.5 * expected_up, rel=1e-6)
    assert float(half_down) ** 2 + float(half_up) ** 2 == pytest.approx(1.0, rel=1e-6)
    assert kd.get_ancestral_step(s0, s1, 0.0) == (s1, 0.0)
    # sigma_up never exceeds sigma_to (eta > 1)
    _, big_up = kd.get_ancestral_step(s0, s1, 5.0)
    assert float(big_up) == 1.0


def test_to_d_and_append_dims() -> None:
    x, den = torch.full((1, 2, 2, 2), 3.0), torch.ones(1, 2, 2, 2)
    assert torch.equal(kd.to_d(x, torch.tensor(2.0), den), torch.full_like(x, 1.0))
    assert kd.append_dims(torch.tensor(2.0), 4).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        kd.append_dims(torch.zeros(2, 2), 1)


def test_default_noise_sampler_uses_randn_like() -> None:
    counter = CountingRandn()
    x = torch.zeros(1, 2, 3, 3)
    ns = kd.default_noise_sampler(x, counter)
    assert ns(torch.tensor(2.0), torch.tensor(1.0)).shape == x.shape
    assert counter.n == 1


def test_karras_sigmas_end_with_zero() -> None:
    sig = karras(5, 0.1, 10.0)
    assert sig.dtype == torch.float32 and len(sig) == 6 and float(sig[-1]) == 0.0
    assert float(sig[0]) == pytest.approx(10.0, rel=1e-6) and float(sig[-2]) == pytest.approx(0.1, rel=1e-5)


# -- one step against the published rule ------------------------------------------------------------------


def test_euler_step_is_bit_exact() -> None:
    x0 = start(sigma=3.0)
    s0, s1 = pair(3.0, 1.5)
    out = kd.sample_euler(Toy(), x0, pair(3.0, 1.5), randn_like=CountingRandn())
    d = (x0 - denoise(x0, s0)) / s0
    assert torch.equal(out, x0 + d * (s1 - s0))


def test_euler_churn_raises_sigma_with_its_noise() -> None:
    x0 = start(sigma=3.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    sig = torch.tensor([3.0, 1.5, 0.0])
    toy = Toy()
    out = kd.sample_euler(toy, x0, sig, randn_like=randn_fixed(noise), s_churn=0.2, s_noise=1.1, s_tmin=2.0)
    gamma = min(0.2 / 2, 2**0.5 - 1)
    sigma_hat = 3.0 * (gamma + 1)
    x_hat = x0 + noise * 1.1 * math.sqrt(sigma_hat**2 - 9.0)
    assert torch.allclose(toy.calls[0][0], x_hat, atol=1e-5)
    assert float(toy.calls[0][1][0]) == pytest.approx(sigma_hat, rel=1e-6)
    x1 = x_hat + (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat * (1.5 - sigma_hat)
    assert torch.allclose(toy.calls[1][0], x1, atol=1e-5)
    plain = kd.sample_euler(Toy(), x0, sig, randn_like=randn_fixed(noise))
    assert not torch.allclose(out, plain)
    # churn only inside [s_tmin, s_tmax]
    outside = kd.sample_euler(Toy(), x0, sig, randn_like=randn_fixed(noise), s_churn=0.2, s_tmax=1.0)
    assert torch.equal(outside, plain)


def test_heun_second_evaluation() -> None:
    x0 = start(sigma=3.0)
    toy = Toy()
    out = kd.sample_heun(toy, x0, pair(3.0, 1.5), randn_like=CountingRandn())
    assert len(toy.calls) == 2
    d = (x0 - denoise(x0, 3.0)) / 3.0
    x2 = x0 + d * -1.5
    assert torch.allclose(toy.calls[1][0], x2, atol=1e-6) and float(toy.calls[1][1][0]) == 1.5
    d2 = (x2 - denoise(x2, 1.5)) / 1.5
    assert torch.allclose(out, x0 + (d + d2) / 2 * -1.5, atol=1e-5)
    # the last step (to 0) is one Euler evaluation
    toy = Toy()
    kd.sample_heun(toy, x0, torch.tensor([3.0, 1.5, 0.0]), randn_like=CountingRandn())
    assert len(toy.calls) == 3


def test_dpm_2_evaluates_at_the_log_midpoint() -> None:
    x0 = start(sigma=4.0)
    toy = Toy()
    out = kd.sample_dpm_2(toy, x0, pair(4.0, 1.0), randn_like=CountingRandn())
    mid = 2.0  # geometric mean of 4 and 1
    assert float(toy.calls[1][1][0]) == pytest.approx(mid, rel=1e-6)
    d = (x0 - denoise(x0, 4.0)) / 4.0
    x2 = x0 + d * (mid - 4.0)
    d2 = (x2 - denoise(x2, mid)) / mid
    assert torch.allclose(out, x0 + d2 * (1.0 - 4.0), atol=1e-5)


def test_euler_ancestral_step() -> None:
    x0 = start(sigma=3.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    out = kd.sample_euler_ancestral(Toy(), x0, pair(3.0, 1.0), randn_like=randn_fixed(noise), s_noise=0.9)
    up = min(1.0, math.sqrt(1.0 * (9.0 - 1.0) / 9.0))
    down = math.sqrt(1.0 - up**2)
    d = (x0 - denoise(x0, 3.0)) / 3.0
    assert torch.allclose(out, x0 + d * (down - 3.0) + noise * 0.9 * up, atol=1e-5)


def test_ancestral_with_eta_zero_is_the_deterministic_sampler() -> None:
    x0, sig = start(), karras(8)
    euler = kd.sample_euler(Toy(), x0, sig, randn_like=CountingRandn())
    assert torch.equal(kd.sample_euler_ancestral(Toy(), x0, sig, randn_like=CountingRandn(), eta=0.0), euler)
    dpm2 = kd.sample_dpm_2(Toy(), x0, sig, randn_like=CountingRandn())
    assert torch.equal(kd.sample_dpm_2_ancestral(Toy(), x0, sig, randn_like=CountingRandn(), eta=0.0), dpm2)
    eta1 = kd.sample_euler_ancestral(Toy(), x0, sig, randn_like=CountingRandn())
    assert not torch.allclose(eta1, euler)
    noisier = kd.sample_euler_ancestral(Toy(), x0, sig, randn_like=CountingRandn(), s_noise=1.5)
    assert not torch.allclose(noisier, eta1)


def test_dpm_2_ancestral_step() -> None:
    x0 = start(sigma=3.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    toy = Toy()
    out = kd.sample_dpm_2_ancestral(toy, x0, pair(3.0, 1.0), randn_like=randn_fixed(noise))
    up = math.sqrt(8.0 / 9.0)
    down = math.sqrt(1.0 - up**2)
    mid = math.sqrt(3.0 * down)
    assert float(toy.calls[1][1][0]) == pytest.approx(mid, rel=1e-5)
    d = (x0 - denoise(x0, 3.0)) / 3.0
    x2 = x0 + d * (mid - 3.0)
    d2 = (x2 - denoise(x2, mid)) / mid
    assert torch.allclose(out, x0 + d2 * (down - 3.0) + noise * up, atol=1e-5)


def lagrange_weight(nodes: list[float], j: int, a: float, b: float) -> float:
    """Exact integral over [a, b] of the Lagrange basis polynomial of nodes[j]."""
    others = [n for k, n in enumerate(nodes) if k != j]
    poly = np.poly1d([1.0])
    for n in others:
        poly *= np.poly1d([1.0, -n]) / (nodes[j] - n)
    integral = poly.integ()
    return float(integral(b) - integral(a))


def test_lms_second_step_uses_two_slopes() -> None:
    x0 = start(sigma=4.0)
    sig = torch.tensor([4.0, 2.0, 1.0])
    toy = Toy()
    out = kd.sample_lms(toy, x0, sig, randn_like=CountingRandn(), order=2)
    d0 = (x0 - denoise(x0, 4.0)) / 4.0
    x1 = x0 + d0 * (2.0 - 4.0)
    assert torch.allclose(toy.calls[1][0], x1, atol=1e-5)
    d1 = (x1 - denoise(x1, 2.0)) / 2.0
    w_d1 = lagrange_weight([2.0, 4.0], 0, 2.0, 1.0)
    w_d0 = lagrange_weight([2.0, 4.0], 1, 2.0, 1.0)
    assert torch.allclose(out, x1 + w_d1 * d1 + w_d0 * d0, atol=1e-4)
    assert kd.linear_multistep_coeff(2, sig.numpy(), 1, 0) == pytest.approx(w_d1, rel=1e-6)
    with pytest.raises(ValueError):
        kd.linear_multistep_coeff(3, sig.numpy(), 1, 0)


def test_dpmpp_2m_second_step_uses_the_previous_denoised() -> None:
    x0 = start(sigma=4.0)
    sig = torch.tensor([4.0, 2.0, 0.5])
    toy = Toy()
    out = kd.sample_dpmpp_2m(toy, x0, sig, randn_like=no_noise)
    d_0 = denoise(x0, 4.0)
    x1 = (2.0 / 4.0) * x0 + (1 - 2.0 / 4.0) * d_0  # first order: DDIM
    assert torch.allclose(toy.calls[1][0], x1, atol=1e-5)
    d_1 = denoise(x1, 2.0)
    h, h_last = math.log(2.0 / 0.5), math.log(4.0 / 2.0)
    r = h_last / h
    mixed = (1 + 1 / (2 * r)) * d_1 - (1 / (2 * r)) * d_0
    assert torch.allclose(out, (0.5 / 2.0) * x1 - math.expm1(-h) * mixed, atol=1e-5)
    # the step to sigma 0 is first order: it lands on the denoised prediction
    last = kd.sample_dpmpp_2m(Toy(), x0, torch.tensor([4.0, 2.0, 0.0]), randn_like=no_noise)
    assert torch.allclose(last, denoise(x1, 2.0), atol=1e-6)


def test_dpmpp_2s_ancestral_midpoint() -> None:
    x0 = start(sigma=3.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    toy = Toy()
    out = kd.sample_dpmpp_2s_ancestral(toy, x0, pair(3.0, 1.0), randn_like=randn_fixed(noise))
    up = math.sqrt(8.0 / 9.0)
    down = math.sqrt(1.0 - up**2)
    mid = math.sqrt(3.0 * down)  # t midpoint = geometric mean in sigma
    assert float(toy.calls[1][1][0]) == pytest.approx(mid, rel=1e-5)
    h = math.log(3.0 / down)
    x2 = (mid / 3.0) * x0 - math.expm1(-h / 2) * denoise(x0, 3.0)
    assert torch.allclose(toy.calls[1][0], x2, atol=1e-5)
    expected = (down / 3.0) * x0 - math.expm1(-h) * denoise(x2, mid) + noise * up
    assert torch.allclose(out, expected, atol=1e-5)


def test_dpmpp_sde_step() -> None:
    x0 = start(sigma=3.0)
    calls: list[tuple[float, float]] = []
    unit = torch.ones(SHAPE)

    def ns(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        calls.append((float(sigma), float(sigma_next)))
        return unit

    toy = Toy()
    out = kd.sample_dpmpp_sde(toy, x0, pair(3.0, 1.0), randn_like=no_noise, noise_sampler=ns, eta=1.0)
    mid = math.sqrt(3.0)  # r = 1/2
    assert calls[0] == pytest.approx((3.0, mid), rel=1e-5) and calls[1] == pytest.approx((3.0, 1.0), rel=1e-5)
    up1 = min(mid, math.sqrt(mid**2 * (9.0 - mid**2) / 9.0))
    down1 = math.sqrt(mid**2 - up1**2)
    x2 = (down1 / 3.0) * x0 - math.expm1(math.log(down1 / 3.0)) * denoise(x0, 3.0) + up1
    assert torch.allclose(toy.calls[1][0], x2, atol=1e-4)
    up2 = math.sqrt(8.0 / 9.0)
    down2 = math.sqrt(1.0 - up2**2)
    blend = 0.0 * denoise(x0, 3.0) + 1.0 * denoise(x2, mid)  # fac = 1 / (2r) = 1
    expected = (down2 / 3.0) * x0 - math.expm1(math.log(down2 / 3.0)) * blend + up2
    assert torch.allclose(out, expected, atol=1e-4)
    # eta 0: the deterministic DPM-Solver++(2S) step (the noise is still asked for, scaled by 0)
    det = kd.sample_dpmpp_sde(Toy(), x0, pair(3.0, 1.0), randn_like=no_noise, noise_sampler=ns, eta=0.0)
    h = math.log(3.0)
    x2 = (mid / 3.0) * x0 - math.expm1(-h / 2) * denoise(x0, 3.0)
    assert torch.allclose(det, (1.0 / 3.0) * x0 - math.expm1(-h) * denoise(x2, mid), atol=1e-5)
    assert not torch.allclose(det, out)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_steps(solver_type: str) -> None:
    x0 = start(sigma=4.0)
    unit = torch.ones(SHAPE) * 0.3
    sig = torch.tensor([4.0, 2.0, 0.5])
    eta, s_noise = 0.8, 0.9
    toy = Toy()
    out = kd.sample_dpmpp_2m_sde(
        toy,
        x0,
        sig,
        randn_like=no_noise,
        noise_sampler=lambda a, b: unit,
        eta=eta,
        s_noise=s_noise,
        solver_type=solver_type,
    )

    def base(x: torch.Tensor, den: torch.Tensor, s0: float, s1: float) -> tuple[torch.Tensor, float]:
        h = math.log(s0 / s1)
        x = (s1 / s0) * math.exp(-eta * h) * x + (1 - math.exp(-h - eta * h)) * den
        return x, h

    d_0 = denoise(x0, 4.0)
    x1, h0 = base(x0, d_0, 4.0, 2.0)
    x1 = x1 + unit * 2.0 * math.sqrt(1 - math.exp(-2 * eta * h0)) * s_noise
    assert torch.allclose(toy.calls[1][0], x1, atol=1e-5)
    d_1 = denoise(x1, 2.0)
    x2, h1 = base(x1, d_1, 2.0, 0.5)
    r = h0 / h1
    phi = 1 - math.exp(-h1 - eta * h1)
    if solver_type == "midpoint":
        x2 = x2 + 0.5 * phi * (1 / r) * (d_1 - d_0)
    else:
        x2 = x2 + (phi / (-h1 - eta * h1) + 1) * (1 / r) * (d_1 - d_0)
    x2 = x2 + unit * 0.5 * math.sqrt(1 - math.exp(-2 * eta * h1)) * s_noise
    assert torch.allclose(out, x2, atol=1e-5)
    with pytest.raises(ValueError):
        kd.sample_dpmpp_2m_sde(Toy(), x0, sig, randn_like=no_noise, solver_type="euler")


def test_dpmpp_3m_sde_third_order_term() -> None:
    x0 = start(sigma=8.0)
    sig = torch.tensor([8.0, 4.0, 2.0, 0.5])
    eta = 0.0  # deterministic: the multistep terms alone
    toy = Toy()
    out = kd.sample_dpmpp_3m_sde(toy, x0, sig, randn_like=no_noise, noise_sampler=no_noise_sampler, eta=eta)
    hs = [math.log(8.0 / 4.0), math.log(4.0 / 2.0), math.log(2.0 / 0.5)]
    d = [denoise(toy.calls[k][0], float(sig[k])) for k in range(3)]
    # step 3 from the published DPM-Solver++(3M) form: x = e^-h x + (1 - e^-h) D0 + phi2 D1 - phi3 D2
    h = hs[2]
    x2 = toy.calls[2][0]
    r0, r1 = hs[1] / h, hs[0] / h
    d1_0 = (d[2] - d[1]) / r0
    d1_1 = (d[1] - d[0]) / r1
    first = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    second = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = (math.exp(-h) - 1) / h + 1
    phi_3 = phi_2 / h - 0.5
    expected = math.exp(-h) * x2 + (1 - math.exp(-h)) * d[2] + phi_2 * first - phi_3 * second
    assert torch.allclose(out, expected, atol=1e-5)
    # the second-order-only variant differs from it (the third-order term is there, with its sign)
    without = math.exp(-h) * x2 + (1 - math.exp(-h)) * d[2] + phi_2 * d1_0
    assert not torch.allclose(out, without, atol=1e-4)
    # step 2 is second order
    h = hs[1]
    x1 = toy.calls[1][0]
    phi_2 = (math.exp(-h) - 1) / h + 1
    step2 = math.exp(-h) * x1 + (1 - math.exp(-h)) * d[1] + phi_2 * (d[1] - d[0]) / (hs[0] / h)
    assert torch.allclose(x2, step2, atol=1e-5)


def test_dpmpp_3m_sde_noise() -> None:
    x0 = start(sigma=4.0)
    unit = torch.ones(SHAPE)
    out = kd.sample_dpmpp_3m_sde(Toy(), x0, pair(4.0, 2.0), randn_like=no_noise, noise_sampler=lambda a, b: unit)
    h = math.log(2.0)
    h_eta = 2 * h
    expected = math.exp(-h_eta) * x0 + (1 - math.exp(-h_eta)) * denoise(x0, 4.0)
    expected = expected + 2.0 * math.sqrt(1 - math.exp(-2 * h))
    assert torch.allclose(out, expected, atol=1e-5)


def test_lcm_jumps_to_denoised_and_renoises() -> None:
    x0 = start(sigma=3.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    seen: list[StepInfo] = []
    out = kd.sample_lcm(Toy(), x0, pair(3.0, 1.0), randn_like=randn_fixed(noise), callback=seen.append)
    den = denoise(x0, 3.0)
    assert torch.allclose(out, den + 1.0 * noise, atol=1e-6)
    assert torch.allclose(seen[0].denoised, den, atol=1e-6)  # the prediction is not overwritten
    final = kd.sample_lcm(Toy(), x0, torch.tensor([3.0, 0.0]), randn_like=no_noise)
    assert torch.allclose(final, den, atol=1e-6)


# -- DPM-Solver fast / adaptive ----------------------------------------------------------------------------


def test_dpm_fast_single_evaluation_is_first_order() -> None:
    x0 = start(sigma=3.0)
    toy = Toy()
    counter = CountingRandn()
    out = kd.sample_dpm_fast(toy, x0, 1.0, 3.0, 1, randn_like=counter)
    assert len(toy.calls) == 1
    assert float(toy.calls[0][1][0]) == pytest.approx(3.0, rel=1e-6)
    # DPM-Solver-1 = DDIM: x1 = s1/s0 x + (1 - s1/s0) D
    assert torch.allclose(out, (1 / 3) * x0 + (2 / 3) * denoise(x0, 3.0), atol=1e-5)
    assert counter.n == 1  # the noise is drawn even with eta 0 (and multiplied by 0)


@pytest.mark.parametrize(("nfe", "steps"), [(4, 2), (6, 3), (7, 3), (10, 4)])
def test_dpm_fast_spends_exactly_its_evaluations(nfe: int, steps: int) -> None:
    toy = Toy()
    seen: list[StepInfo] = []
    counter = CountingRandn()
    kd.sample_dpm_fast(toy, start(), SIGMA_MIN, SIGMA_MAX, nfe, randn_like=counter, callback=seen.append)
    assert len(toy.calls) == nfe
    assert [s.i for s in seen] == list(range(steps))
    assert counter.n == steps
    assert float(seen[0].sigma) == pytest.approx(SIGMA_MAX, rel=1e-5)


def test_dpm_fast_eta_adds_noise() -> None:
    x0 = start()
    det = kd.sample_dpm_fast(Toy(), x0, SIGMA_MIN, SIGMA_MAX, 9, randn_like=CountingRandn())
    noisy = kd.sample_dpm_fast(Toy(), x0, SIGMA_MIN, SIGMA_MAX, 9, randn_like=CountingRandn(), eta=1.0)
    assert not torch.allclose(det, noisy)
    with pytest.raises(ValueError):
        kd.sample_dpm_fast(Toy(), x0, 0.0, SIGMA_MAX, 9, randn_like=CountingRandn())


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_reaches_the_ode_solution(order: int) -> None:
    x0 = start()
    toy = Toy()
    seen: list[StepInfo] = []
    out = kd.sample_dpm_adaptive(
        toy,
        x0,
        SIGMA_MIN,
        SIGMA_MAX,
        randn_like=CountingRandn(),
        order=order,
        callback=seen.append,
        rtol=0.001,
        atol=0.0005,
    )
    assert len(toy.calls) == order * len(seen)
    assert [s.i for s in seen] == list(range(len(seen)))
    assert torch.allclose(out, exact_ode_at(x0, SIGMA_MIN), atol=0.01)
    with pytest.raises(ValueError):
        kd.sample_dpm_adaptive(Toy(), x0, SIGMA_MIN, SIGMA_MAX, randn_like=CountingRandn(), order=1)


def exact_ode_at(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + (x - MU) * math.sqrt(S**2 + sigma**2) / math.sqrt(S**2 + SIGMA_MAX**2)


# -- Restart -----------------------------------------------------------------------------------------------


def test_restart_renoises_back_up_to_the_restart_sigma() -> None:
    sig = karras(10, 0.05, 10.0)
    x0 = start(sigma=10.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    counter = {"n": 0}

    def randn(x: torch.Tensor) -> torch.Tensor:
        counter["n"] += 1
        return noise

    low = float(sig[6])
    high = float(sig[3])
    toy = Toy()
    seen: list[StepInfo] = []
    kd.sample_restart(
        toy, x0, sig, randn_like=randn, callback=seen.append, s_noise=0.8, restart_list={low: [4, 2, high]}
    )
    assert counter["n"] == 2  # one re-noise per restart
    # 10 Heun steps + 2 x 3 restart steps; the final step (to 0) is one evaluation
    assert len(seen) == 10 + 6
    assert [s.i for s in seen] == list(range(16))
    assert len(toy.calls) == 2 * 16 - 1
    restart_sigmas = kd.get_sigmas_karras(4, low, high)[:-1]
    # the step after sigma[6] starts from sigma[3] with noise adding sigma^2 - low^2
    after = seen[6]
    assert float(after.sigma_hat) == pytest.approx(float(restart_sigmas[0]), rel=1e-6)
    x_low = seen[6].x - noise * 0.8 * math.sqrt(float(restart_sigmas[0]) ** 2 - low**2)
    # x_low is where the 6th step ended: its Heun update from seen[5]
    s5 = seen[5]
    d = (s5.x - denoise(s5.x, s5.sigma_hat)) / s5.sigma_hat
    dt = float(s5.sigma) - float(s5.sigma_hat)
    x2 = s5.x + d * dt
    d2 = (x2 - denoise(x2, s5.sigma)) / s5.sigma
    assert torch.allclose(x_low, s5.x + (d + d2) / 2 * dt, atol=1e-4)


@pytest.mark.parametrize("steps", [10, 20, 36])
def test_restart_default_plan_keeps_the_step_count(steps: int) -> None:
    counter = CountingRandn()
    seen: list[StepInfo] = []
    kd.sample_restart(Toy(), start(), karras(steps), randn_like=counter, callback=seen.append)
    assert len(seen) == steps
    assert counter.n == (0 if steps < 20 else 1 if steps < 36 else 2)


# -- whole runs --------------------------------------------------------------------------------------------

DETERMINISTIC: dict[str, tuple[Callable[..., torch.Tensor], float]] = {
    "euler": (kd.sample_euler, 0.05),  # first order: needs the 100 steps
    "heun": (kd.sample_heun, 0.01),
    "dpm_2": (kd.sample_dpm_2, 0.01),
    "lms": (kd.sample_lms, 0.01),
    "dpmpp_2m": (kd.sample_dpmpp_2m, 0.01),
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_samplers_follow_the_ode(name: str) -> None:
    func, tol = DETERMINISTIC[name]
    x0 = start()
    out = func(Toy(), x0, karras(100), randn_like=CountingRandn())
    assert torch.allclose(out, exact_ode(x0, SIGMA_MAX), atol=tol)


@pytest.mark.parametrize(
    "run",
    [
        lambda x, sig: kd.sample_dpmpp_sde(Toy(), x, sig, randn_like=no_noise, eta=0.0),
        lambda x, sig: kd.sample_dpmpp_2m_sde(Toy(), x, sig, randn_like=no_noise, eta=0.0),
        lambda x, sig: kd.sample_dpmpp_3m_sde(Toy(), x, sig, randn_like=no_noise, eta=0.0),
        lambda x, sig: kd.sample_dpm_fast(Toy(), x, SIGMA_MIN, SIGMA_MAX, 40, randn_like=CountingRandn()),
    ],
    ids=["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_fast"],
)
def test_sde_samplers_with_eta_zero_follow_the_ode(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    x0 = start()
    out = run(x0, karras(40))
    assert torch.allclose(out, exact_ode(x0, SIGMA_MAX), atol=0.01)


STOCHASTIC: dict[str, Callable[..., torch.Tensor]] = {
    "euler_ancestral": kd.sample_euler_ancestral,
    "dpm_2_ancestral": kd.sample_dpm_2_ancestral,
    "dpmpp_2s_ancestral": kd.sample_dpmpp_2s_ancestral,
    "dpmpp_sde": kd.sample_dpmpp_sde,
    "dpmpp_2m_sde": kd.sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": kd.sample_dpmpp_3m_sde,
    "restart": kd.sample_restart,
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_samplers_sample_the_data_distribution(name: str) -> None:
    x0 = start(shape=(4, 4, 32, 32))
    out = STOCHASTIC[name](Toy(), x0, karras(100), randn_like=CountingRandn())
    assert float(out.mean()) == pytest.approx(MU, abs=0.03)
    assert float(out.std()) == pytest.approx(S, abs=0.03)


# -- noise order and callbacks -----------------------------------------------------------------------------

# (sampler, draws before the callback of step i, total draws) for 6 steps ending at 0
NOISE_ORDER: dict[str, tuple[Callable[..., torch.Tensor], Callable[[int], int], int]] = {
    "euler": (kd.sample_euler, lambda i: i + 1, 6),
    "heun": (kd.sample_heun, lambda i: i + 1, 6),
    "dpm_2": (kd.sample_dpm_2, lambda i: i + 1, 6),
    "euler_ancestral": (kd.sample_euler_ancestral, lambda i: i, 5),
    "dpm_2_ancestral": (kd.sample_dpm_2_ancestral, lambda i: i, 5),
    "dpmpp_2s_ancestral": (kd.sample_dpmpp_2s_ancestral, lambda i: i, 5),
    "lcm": (kd.sample_lcm, lambda i: i, 5),
    "lms": (kd.sample_lms, lambda i: 0, 0),
    "dpmpp_2m": (kd.sample_dpmpp_2m, lambda i: 0, 0),
    "restart": (kd.sample_restart, lambda i: 0, 0),
    "dpmpp_sde": (kd.sample_dpmpp_sde, lambda i: 0, 0),  # a Brownian tree, not randn_like
    "dpmpp_2m_sde": (kd.sample_dpmpp_2m_sde, lambda i: 0, 0),
    "dpmpp_3m_sde": (kd.sample_dpmpp_3m_sde, lambda i: 0, 0),
}


@pytest.mark.parametrize("name", sorted(NOISE_ORDER))
def test_noise_draws_in_step_order(name: str) -> None:
    func, before, total = NOISE_ORDER[name]
    counter = CountingRandn()
    x0 = start()
    seen: list[tuple[int, int, torch.Tensor]] = []

    def callback(info: StepInfo) -> None:
        seen.append((info.i, counter.n, info.x))

    out = func(Toy(), x0, karras(6), randn_like=counter, callback=callback)
    assert [i for i, _, _ in seen] == list(range(6))
    assert [n for _, n, _ in seen] == [before(i) for i in range(6)]
    assert counter.n == total
    assert torch.equal(seen[0][2], x0)  # step 0 reports the starting x
    assert out.shape == x0.shape


def test_ancestral_noise_goes_through_the_noise_sampler() -> None:
    calls: list[tuple[float, float]] = []

    def ns(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        calls.append((float(sigma), float(sigma_next)))
        return torch.zeros(SHAPE)

    sig = karras(4)
    kd.sample_euler_ancestral(Toy(), start(), sig, randn_like=no_noise, noise_sampler=ns)
    assert calls == [(float(sig[i]), float(sig[i + 1])) for i in range(3)]


def test_callback_reports_step_and_may_interrupt() -> None:
    seen: list[StepInfo] = []
    x0 = start()
    sig = karras(5)
    kd.sample_dpmpp_2m(Toy(), x0, sig, randn_like=no_noise, callback=seen.append)
    assert [s.i for s in seen] == [0, 1, 2, 3, 4]
    assert [float(s.sigma) for s in seen] == [float(v) for v in sig[:-1]]
    assert torch.allclose(seen[0].denoised, denoise(x0, sig[0]))

    class Stop(Exception):
        pass

    def stop(info: StepInfo) -> None:
        if info.i == 2:
            raise Stop

    toy = Toy()
    with pytest.raises(Stop):
        kd.sample_euler(toy, x0, sig, randn_like=CountingRandn(), callback=stop)
    assert len(toy.calls) == 3


def test_euler_churn_sigma_hat_in_callback() -> None:
    seen: list[StepInfo] = []
    sig = karras(4)
    kd.sample_euler(Toy(), start(), sig, randn_like=CountingRandn(), callback=seen.append, s_churn=1.0)
    gamma = min(1.0 / 4, 2**0.5 - 1)
    assert float(seen[0].sigma_hat) == pytest.approx(float(sig[0]) * (1 + gamma), rel=1e-6)
    assert float(seen[0].sigma) == pytest.approx(float(sig[0]))


# -- Brownian tree noise -----------------------------------------------------------------------------------


def brownian(x: torch.Tensor, seed: int | list[int] | None, cpu: bool = False) -> kd.BrownianTreeNoiseSampler:
    return kd.BrownianTreeNoiseSampler(x, torch.tensor(SIGMA_MIN), torch.tensor(SIGMA_MAX), seed=seed, cpu=cpu)


def test_brownian_same_seed_same_noise() -> None:
    x = torch.zeros(1, 4, 8, 8)
    a, b = brownian(x, 42), brownian(x, 42)
    s, sn = torch.tensor(5.0), torch.tensor(2.0)
    assert torch.equal(a(s, sn), b(s, sn))
    assert not torch.equal(a(s, sn), brownian(x, 43)(s, sn))


def test_brownian_matches_torchsde_tree() -> None:
    x = torch.zeros(1, 2, 4, 4)
    ns = brownian(x, 7)
    tree = torchsde.BrownianTree(torch.tensor(SIGMA_MIN), torch.zeros_like(x), torch.tensor(SIGMA_MAX), entropy=7)
    s, sn = torch.tensor(5.0), torch.tensor(2.0)
    # sigma runs down while the tree's time runs up: the noise is the negated increment over [sn, s]
    assert torch.equal(ns(s, sn), -tree(sn, s) / (s - sn).abs().sqrt())
    assert torch.equal(ns(sn, s), -ns(s, sn))


def test_brownian_batch_is_per_image() -> None:
    x = torch.zeros(3, 4, 8, 8)
    batch = brownian(x, [10, 11, 12])
    s, sn = torch.tensor(3.0), torch.tensor(1.0)
    noise = batch(s, sn)
    assert noise.shape == x.shape
    for i, seed in enumerate([10, 11, 12]):
        alone = brownian(x[i : i + 1], [seed])(s, sn)
        assert torch.equal(noise[i : i + 1], alone)
        single = brownian(x[:1], seed)(s, sn)
        assert torch.equal(noise[i : i + 1], single)
    with pytest.raises(ValueError):
        brownian(x, [1, 2])


def test_brownian_noise_is_unit_and_additive() -> None:
    x = torch.zeros(1, 4, 64, 64)
    ns = brownian(x, 5)
    a, b, c = torch.tensor(8.0), torch.tensor(2.0), torch.tensor(0.5)
    n_ab = ns(a, b)
    assert float(n_ab.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(n_ab.var()) == pytest.approx(1.0, abs=0.05)
    # W over [c, a] is the sum of the increments over [c, b] and [b, a]
    whole = ns(a, c) * math.sqrt(8.0 - 0.5)
    parts = ns(a, b) * math.sqrt(8.0 - 2.0) + ns(b, c) * math.sqrt(2.0 - 0.5)
    assert torch.allclose(whole, parts, atol=1e-4)


def test_brownian_cpu_trees() -> None:
    x = torch.zeros(2, 4, 8, 8, dtype=torch.float64)
    on_cpu = brownian(x, [1, 2], cpu=True)
    s, sn = torch.tensor(4.0), torch.tensor(1.0)
    noise = on_cpu(s, sn)
    assert noise.dtype == torch.float64 and noise.device == x.device
    assert all(tree._w0.dtype == torch.float32 for tree in on_cpu.tree.trees)
    same = brownian(x.float(), [1, 2])(s, sn)
    assert torch.allclose(noise.float(), same)


def test_sde_samplers_with_a_seeded_tree_are_reproducible() -> None:
    x0 = start()
    sig = karras(8)
    runs = [
        kd.sample_dpmpp_2m_sde(Toy(), x0, sig, randn_like=no_noise, noise_sampler=brownian(x0, [1, 2]))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = kd.sample_dpmpp_2m_sde(Toy(), x0, sig, randn_like=no_noise, noise_sampler=brownian(x0, [1, 3]))
    assert torch.equal(other[0], runs[0][0]) and not torch.equal(other[1], runs[0][1])


# -- Beta schedule -----------------------------------------------------------------------------------------


def model_sigmas() -> ModelSigmas:
    return ModelSigmas(np.linspace(0.03, 14.6, 1000))


def test_beta_schedule_is_the_beta_quantiles() -> None:
    ms = model_sigmas()
    assert ScheduleParams().beta_alpha == 0.6 and ScheduleParams().beta_beta == 0.6
    got = beta_sigmas(ms, 7, ScheduleParams())
    lo, hi = ms.sigma_min, ms.sigma_max
    expected = [lo + stats.beta.ppf(1 - k / 6, 0.6, 0.6) * (hi - lo) for k in range(7)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(hi) and got[-1] == pytest.approx(lo)
    # symmetric distribution: symmetric spacing, denser at both ends than uniform
    np.testing.assert_allclose(got + got[::-1], lo + hi, rtol=1e-9)
    assert got[0] - got[1] < (hi - lo) / 6


def test_beta_schedule_parameters() -> None:
    ms = model_sigmas()
    uniform = beta_sigmas(ms, 5, ScheduleParams(beta_alpha=1.0, beta_beta=1.0))
    np.testing.assert_allclose(uniform, np.linspace(ms.sigma_max, ms.sigma_min, 5), rtol=1e-9)
    ranged = beta_sigmas(ms, 5, ScheduleParams(sigma_min=0.1, sigma_max=10.0))
    assert ranged[0] == pytest.approx(10.0) and ranged[-1] == pytest.approx(0.1)
