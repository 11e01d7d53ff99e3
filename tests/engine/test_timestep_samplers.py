"""The timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) against their published update rules, written out
here independently in float64, on a toy Gaussian data distribution whose ideal noise predictor is known in
closed form; A1111's timestep schedule and img2img noising; the discrete VP schedule UniPC runs on.

Data ~ N(MU, S^2) per element. At a training timestep with alpha-bar `a`, x = sqrt(a) x0 + sqrt(1 - a) n,
and the ideal noise predictor is eps(x) = sqrt(1 - a) (x - sqrt(a) MU) / (a S^2 + 1 - a). In the variable
y = x / sqrt(a) with sigma = sqrt((1 - a) / a) the probability-flow ODE carries y to
MU + (y - MU) sqrt(S^2 + sigma'^2) / sqrt(S^2 + sigma^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from modules.engine import timestep_samplers as ts
from modules.engine.sampler_types import StepInfo
from tests.engine.support import CountingRandn

MU, S = 0.7, 0.5
SHAPE = (2, 4, 8, 8)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's 'scaled linear' training schedule (1000 steps), float32 as the models hold it."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


AC = sd_alphas_cumprod()
AC64 = AC.double()
LOG_AC64 = torch.log(AC64)


def alpha_bar(n: float) -> float:
    """alpha-bar at a (possibly fractional) training timestep: log(alpha-bar) linear between the steps."""
    lo = min(max(math.floor(n), 0), 998)
    w = n - lo
    return math.exp(float((1.0 - w) * LOG_AC64[lo] + w * LOG_AC64[lo + 1]))


def exact_eps(x: torch.Tensor, n: float) -> torch.Tensor:
    """The ideal noise prediction for N(MU, S^2) data at training timestep n, in float64."""
    a = alpha_bar(n)
    return math.sqrt(1.0 - a) * (x.double() - math.sqrt(a) * MU) / (a * S**2 + 1.0 - a)


def exact_ode(x: torch.Tensor, n_from: float, n_to: float) -> torch.Tensor:
    """The probability-flow ODE solution from timestep n_from to n_to, in float64."""
    a0, a1 = alpha_bar(n_from), alpha_bar(n_to)
    s0, s1 = (1.0 - a0) / a0, (1.0 - a1) / a1
    y = x.double() / math.sqrt(a0)
    return math.sqrt(a1) * (MU + (y - MU) * math.sqrt((S**2 + s1) / (S**2 + s0)))


class Toy:
    """A `TimestepModel` whose eps is the ideal predictor (plus `offset(x)` for the guided eps);
    records every call (x, t) and the CFG++ attributes in force at that call."""

    def __init__(self, offset: Callable[[torch.Tensor], torch.Tensor] | None = None, cfg_scale: float = 7.0) -> None:
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond: torch.Tensor | None = None
        self.offset = offset
        self.cfg_scale = cfg_scale
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seen: list[tuple[float, bool]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        assert bool((t == t[0]).all())
        self.calls.append((x.clone(), t.clone()))
        self.seen.append((self.cond_scale_multiplier, self.need_last_noise_uncond))
        uncond = exact_eps(x, float(t[0]))
        if self.offset is None:
            return uncond.to(x.dtype)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = uncond.to(x.dtype)
        # classifier-free guidance between uncond and cond = uncond + offset
        guided = uncond + self.cfg_scale * self.cond_scale_multiplier * self.offset(x).double()
        return guided.to(x.dtype)


def start(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> bool:
    return torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


# -- the float64 reference loops (Song et al. 2021, eq. 12; Liu et al. 2022) --------------------------------


def ddim_reference(
    x: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    randn: CountingRandn | None = None,
    direction_eps: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    guided_eps: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DDIM from timesteps[-1] down to timesteps[0]; returns the result and the x0 predictions."""
    steps = timesteps.tolist()
    x = x.double()
    x0s: list[torch.Tensor] = []
    for k in range(len(steps) - 1, 0, -1):
        t, t_prev = steps[k], steps[k - 1]
        a, a_prev = float(AC64[t]), float(AC64[t_prev])
        eps = guided_eps(x, t) if guided_eps is not None else exact_eps(x, t)
        d_eps = direction_eps(x, t) if direction_eps is not None else eps
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev - sigma**2) * d_eps
        if randn is not None:
            x = x + sigma * randn(x.float()).double()
        x0s.append(x0)
    return x, x0s


def plms_reference(x: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """PLMS: a pseudo improved Euler first step, then Adams-Bashforth of order 2, 3, 4 over the eps
    history, each eps applied with the deterministic DDIM transfer."""
    steps = timesteps.tolist()
    x = x.double()
    history: list[torch.Tensor] = []
    x0s: list[torch.Tensor] = []

    def transfer(x: torch.Tensor, eps: torch.Tensor, a: float, a_prev: float) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps, x0

    for k in range(len(steps) - 1, 0, -1):
        t, t_prev = steps[k], steps[k - 1]
        a, a_prev = float(AC64[t]), float(AC64[t_prev])
        e = exact_eps(x, t)
        if not history:
            x_euler, _ = transfer(x, e, a, a_prev)
            e_used = (e + exact_eps(x_euler, t_prev)) / 2
        elif len(history) == 1:
            e_used = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_used = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_used = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x, x0 = transfer(x, e_used, a, a_prev)
        history = [*history, e][-3:]
        x0s.append(x0)
    return x, x0s


# -- schedules ----------------------------------------------------------------------------------------------


def test_a1111_timesteps() -> None:
    twenty = ts.a1111_timesteps(20)
    assert twenty.dtype == torch.int64
    assert twenty.tolist() == list(range(1, 1000, 50))
    assert len(twenty) == 20 and twenty[0] == 1 and twenty[-1] == 951
    # stride 333 gives 0, 333, 666, 999; plus one and clipped to 999
    assert ts.a1111_timesteps(3).tolist() == [1, 334, 667, 999]
    # every timestep: the last two both clip to 999
    every = ts.a1111_timesteps(1000)
    assert len(every) == 1000 and every[-2:].tolist() == [999, 999] and every[0] == 1
    # discarding the penultimate sigma computes the schedule of one more step
    assert torch.equal(ts.a1111_timesteps(19, discard_next_to_last_sigma=True), twenty)
    discarded = ts.a1111_timesteps(20, discard_next_to_last_sigma=True)
    assert discarded.tolist() == [t + 1 for t in range(0, 1000, 1000 // 21)]
    assert len(discarded) == 22


def test_img2img_noising() -> None:
    timesteps = ts.a1111_timesteps(20)
    x, noise = start(1), start(2)
    t_enc = 10
    out = ts.noise_init_latent(x, noise, AC, timesteps, t_enc)
    a = float(AC64[timesteps[t_enc]])
    assert int(timesteps[t_enc]) == 501
    assert close(out, x.double() * math.sqrt(a) + noise.double() * math.sqrt(1.0 - a), 1e-6)
    assert ts.img2img_timesteps(timesteps, t_enc).tolist() == timesteps[:t_enc].tolist()


# -- DDIM ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [20, 7])
def test_ddim_follows_song_eq_12(steps: int) -> None:
    timesteps = ts.a1111_timesteps(steps)
    x = start()
    toy = Toy()
    out = ts.ddim(toy, x, timesteps, AC, randn_like=CountingRandn())
    expected, _ = ddim_reference(x, timesteps)
    assert close(out, expected)
    # one model call per step, from timesteps[-1] down to timesteps[1]; the last step lands on timesteps[0]
    assert len(toy.calls) == len(timesteps) - 1
    assert [float(t[0]) for _, t in toy.calls] == [float(t) for t in timesteps.flip(0)[:-1]]
    # landing on timestep 0 instead would leave a visibly different result
    landing_at_zero, _ = ddim_reference(x, torch.cat([torch.zeros(1, dtype=torch.int64), timesteps[1:]]))
    assert not close(out, landing_at_zero, 1e-3)


def test_ddim_img2img_runs_the_cut_schedule() -> None:
    timesteps = ts.a1111_timesteps(20)
    cut = ts.img2img_timesteps(timesteps, 8)
    xi = ts.noise_init_latent(start(1), start(2), AC, timesteps, 8)
    toy = Toy()
    out = ts.ddim(toy, xi, cut, AC, randn_like=CountingRandn())
    assert float(toy.calls[0][1][0]) == float(cut[-1]) and len(toy.calls) == 7
    assert close(out, ddim_reference(xi, cut)[0])


def test_ddim_draws_noise_every_step_and_eta_adds_it() -> None:
    timesteps = ts.a1111_timesteps(10)
    x = start()
    counter = CountingRandn()
    plain = ts.ddim(Toy(), x, timesteps, AC, randn_like=counter)
    # eta 0: still one draw per step (it advances the generators), multiplied by zero
    assert counter.n == len(timesteps) - 1
    assert torch.equal(plain, ts.ddim(Toy(), x, timesteps, AC, randn_like=CountingRandn(seed=999)))
    counter = CountingRandn(seed=7)
    noisy = ts.ddim(Toy(), x, timesteps, AC, randn_like=counter, eta=0.6)
    assert counter.n == len(timesteps) - 1
    assert not close(noisy, plain, 1e-2)
    # sigma_t = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), the noise drawn in step order
    expected, _ = ddim_reference(x, timesteps, eta=0.6, randn=CountingRandn(seed=7))
    assert close(noisy, expected)


# -- DDIM CFG++ ---------------------------------------------------------------------------------------------


def cfgpp_offset(x: torch.Tensor) -> torch.Tensor:
    return 0.2 * torch.sin(3.0 * x) + 0.05


def test_ddim_cfgpp_uses_the_unguided_eps_for_the_direction() -> None:
    timesteps = ts.a1111_timesteps(10)
    x = start()
    toy = Toy(cfgpp_offset, cfg_scale=7.0)
    toy.cond_scale_multiplier = 0.75
    out = ts.ddim_cfgpp(toy, x, timesteps, AC, randn_like=CountingRandn())

    # every call ran with the CFG scale divided by 12.5 and asked for the unguided eps
    assert toy.seen == [(1 / 12.5, True)] * (len(timesteps) - 1)
    # and both are restored afterwards
    assert toy.cond_scale_multiplier == 0.75 and toy.need_last_noise_uncond is False

    def guided(x: torch.Tensor, t: int) -> torch.Tensor:
        return exact_eps(x, t) + 7.0 / 12.5 * cfgpp_offset(x.float()).double()

    expected, _ = ddim_reference(x, timesteps, guided_eps=guided, direction_eps=exact_eps)
    assert close(out, expected)
    # plain DDIM on the same model points the direction with the guided eps: a different result
    assert not close(ts.ddim(Toy(cfgpp_offset), x, timesteps, AC, randn_like=CountingRandn()), out, 1e-3)
    with_guided_direction, _ = ddim_reference(x, timesteps, guided_eps=guided, direction_eps=guided)
    assert not close(out, with_guided_direction, 1e-3)


def test_ddim_cfgpp_restores_the_model_after_an_error() -> None:
    class Failing(Toy):
        def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if len(self.calls) == 2:
                raise KeyboardInterrupt("interrupted")
            return super().__call__(x, t)

    toy = Failing(cfgpp_offset)
    toy.cond_scale_multiplier = 0.5
    with pytest.raises(KeyboardInterrupt):
        ts.ddim_cfgpp(toy, start(), ts.a1111_timesteps(10), AC, randn_like=CountingRandn())
    assert toy.seen == [(1 / 12.5, True)] * 2
    assert toy.cond_scale_multiplier == 0.5 and toy.need_last_noise_uncond is False


def test_ddim_cfgpp_needs_the_unguided_eps() -> None:
    toy = Toy()  # never stores last_noise_uncond
    with pytest.raises(RuntimeError):
        ts.ddim_cfgpp(toy, start(), ts.a1111_timesteps(10), AC, randn_like=CountingRandn())
    assert toy.cond_scale_multiplier == 1.0 and toy.need_last_noise_uncond is False


# -- PLMS ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [20, 4, 2])
def test_plms_follows_the_adams_bashforth_rule(steps: int) -> None:
    timesteps = ts.a1111_timesteps(steps)
    x = start()
    toy = Toy()
    out = ts.plms(toy, x, timesteps, AC)
    expected, _ = plms_reference(x, timesteps)
    assert close(out, expected)
    # two calls on the first step (the second at the next timestep), one on each following step
    assert len(toy.calls) == len(timesteps)
    down = [float(t) for t in timesteps.flip(0)]
    assert [float(t[0]) for _, t in toy.calls] == [down[0], down[1], *down[1:-1]]


def test_plms_differs_from_ddim() -> None:
    timesteps = ts.a1111_timesteps(20)
    x = start()
    plms = ts.plms(Toy(), x, timesteps, AC)
    ddim = ts.ddim(Toy(), x, timesteps, AC, randn_like=CountingRandn())
    assert not close(plms, ddim, 1e-3)


# -- UniPC --------------------------------------------------------------------------------------------------


def test_discrete_vp_schedule() -> None:
    ns = ts.DiscreteVPSchedule(AC)
    n = torch.tensor([0, 1, 250, 500, 998, 999])
    t = (n + 1).float() / 1000
    # training step n sits at t = (n + 1) / N
    assert torch.allclose(ns.marginal_alpha(t).double(), AC64[n].sqrt(), rtol=1e-5)
    assert torch.allclose(ns.marginal_std(t).double(), (1 - AC64[n]).sqrt(), rtol=1e-4)
    assert torch.allclose(ns.model_input_time(t), n.float(), atol=1e-3)
    lam = ns.marginal_lambda(t).double()
    assert torch.allclose(lam, 0.5 * torch.log(AC64[n] / (1 - AC64[n])), atol=1e-4)
    # between the steps log(alpha) is linear in t
    mid = torch.tensor([(100 + 1.5) / 1000])
    assert float(ns.marginal_log_mean_coeff(mid)) == pytest.approx(0.25 * float(LOG_AC64[100] + LOG_AC64[101]), 1e-5)
    # before the first step the first segment extends linearly
    below = float(ns.marginal_log_mean_coeff(torch.tensor([0.0])))
    assert below == pytest.approx(0.5 * float(2 * LOG_AC64[0] - LOG_AC64[1]), rel=1e-3)
    # lambda is decreasing and inverse_lambda inverts it
    grid = torch.linspace(0.002, 1.0, 301)
    lam_grid = ns.marginal_lambda(grid)
    assert bool((lam_grid[1:] < lam_grid[:-1]).all())
    assert torch.allclose(ns.inverse_lambda(lam_grid), grid, atol=2e-4)
    assert torch.allclose(ns.marginal_lambda(ns.inverse_lambda(lam_grid)), lam_grid, atol=1e-3)


def test_unipc_time_steps() -> None:
    ns = ts.DiscreteVPSchedule(AC)
    cpu = torch.device("cpu")
    uniform = ts.unipc_time_steps(ns, "time_uniform", 1.0, 0.001, 10, cpu)
    assert torch.allclose(uniform, torch.linspace(1.0, 0.001, 11))
    quadratic = ts.unipc_time_steps(ns, "time_quadratic", 1.0, 0.001, 10, cpu)
    assert len(quadratic) == 11
    assert torch.allclose(quadratic.sqrt(), torch.linspace(1.0, 0.001**0.5, 11), atol=1e-6)
    log_snr = ts.unipc_time_steps(ns, "logSNR", 1.0, 0.001, 10, cpu)
    assert len(log_snr) == 11
    assert float(log_snr[0]) == pytest.approx(1.0, abs=1e-4) and float(log_snr[-1]) == pytest.approx(0.001, abs=1e-5)
    gaps = ns.marginal_lambda(log_snr).diff()
    assert torch.allclose(gaps, gaps.mean().expand(10), rtol=1e-3)
    with pytest.raises(ValueError):
        ts.unipc_time_steps(ns, "karras", 1.0, 0.001, 10, cpu)


def unipc_steps_of(toy: Toy) -> list[float]:
    return [float(t[0]) for _, t in toy.calls]


@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_calls_the_model_once_per_step(variant: str, order: int) -> None:
    timesteps = ts.a1111_timesteps(6)
    toy = Toy()
    infos: list[StepInfo] = []
    ts.unipc(toy, start(), timesteps, AC, callback=infos.append, variant=variant, order=order)
    # the initial data prediction, one per corrector; the last step runs no corrector and needs no prediction
    assert len(toy.calls) == len(timesteps)
    # from t = 1 (training step 999) over a uniform grid in t that ends at t = 1 / N (not evaluated)
    n = len(timesteps)
    expected = [(1.0 - k * 0.999 / n - 0.001) * 1000 for k in range(n)]
    assert unipc_steps_of(toy) == pytest.approx(expected, abs=1e-2)
    assert [info.i for info in infos] == list(range(n))


def vp(t: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) of the continuous-time VP schedule at t (training step (t - 1/N) * N)."""
    a = alpha_bar((t - 0.001) * 1000.0)
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    return alpha, sigma, math.log(alpha / sigma)


def data_prediction(x: torch.Tensor, t: float) -> torch.Tensor:
    alpha, sigma, _ = vp(t)
    return (x.double() - sigma * exact_eps(x, (t - 0.001) * 1000.0)) / alpha


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_first_order_steps_follow_unic(variant: str) -> None:
    """Order 1 over two steps (times 1, 0.5005, 0.001): the first step is the first-order data-prediction
    update x_t = sigma_t / sigma_s x + alpha_t (1 - e^-h) m_s, corrected by UniC-1 with rho = 1/2:
    x_t -= alpha_t B(h) / 2 (m_t - m_s), B(h) = -h (bh1) or e^-h - 1 (bh2), m_t the prediction at the
    uncorrected x_t; the last step runs the plain update from the corrected x with that same m_t."""
    x = start()
    toy = Toy()
    infos: list[StepInfo] = []
    out = ts.unipc(toy, x, ts.a1111_timesteps(2), AC, callback=infos.append, variant=variant, order=1)
    assert len(toy.calls) == 2
    t0, t1, t2 = 1.0, (1.0 + 0.001) / 2, 0.001
    (_, s0, l0), (a1, s1, l1), (a2, s2, l2) = vp(t0), vp(t1), vp(t2)
    m0 = data_prediction(x, t0)
    h = l1 - l0
    x_pred = s1 / s0 * x.double() + a1 * (1.0 - math.exp(-h)) * m0
    assert close(toy.calls[1][0], x_pred, 1e-4)
    m1 = data_prediction(x_pred, t1)
    b_h = -h if variant == "bh1" else math.expm1(-h)
    x1 = x_pred - a1 * b_h * 0.5 * (m1 - m0)
    assert close(infos[0].x, x1, 1e-4) and close(infos[0].denoised, m1, 1e-4)
    h2 = l2 - l1
    assert close(out, s2 / s1 * x1 + a2 * (1.0 - math.exp(-h2)) * m1, 1e-4)


def unipc_error(
    x: torch.Tensor, steps: int, variant: str = "bh1", skip_type: str = "time_uniform", order: int = 3
) -> float:
    """Max deviation of txt2img UniPC from the exact ODE solution from t = 1 (step 999) to t = 1 / N (step 0)."""
    out = ts.unipc(Toy(), x, ts.a1111_timesteps(steps), AC, variant=variant, skip_type=skip_type, order=order)
    return float((out.double() - exact_ode(x, 999, 0)).abs().max())


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("skip_type", ["time_quadratic", "logSNR"])
def test_unipc_converges_to_the_ode_solution(variant: str, skip_type: str) -> None:
    x = start()[:1]
    err_5 = unipc_error(x, 5, variant=variant, skip_type=skip_type)
    err_20 = unipc_error(x, 20, variant=variant, skip_type=skip_type)
    assert err_20 < 6e-3
    assert err_20 < err_5 / 8


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_order_raises_the_accuracy(variant: str) -> None:
    x = start()[:1]
    first = unipc_error(x, 20, variant=variant, skip_type="logSNR", order=1)
    third = unipc_error(x, 20, variant=variant, skip_type="logSNR", order=3)
    assert third < first / 20
    # even order 1 (predictor plus corrector) is well ahead of DDIM at the same step count
    timesteps = ts.a1111_timesteps(20)
    ddim = ts.ddim(Toy(), x, timesteps, AC, randn_like=CountingRandn())
    ddim_err = float((ddim.double() - exact_ode(x, int(timesteps[-1]), int(timesteps[0]))).abs().max())
    assert first < ddim_err / 4


@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
def test_unipc_time_uniform_converges(variant: str) -> None:
    # uniform in t the last steps are long in log-SNR, and the last one is first order: slow but steady
    x = start()[:1]
    errs = [unipc_error(x, steps, variant=variant) for steps in (5, 20, 100)]
    assert errs[1] < errs[0] / 3
    assert errs[2] < errs[1] / 3
    assert errs[2] < 0.03


def test_unipc_vary_coeff_converges() -> None:
    x = start()[:1]
    # order 1: the corrector makes it second order
    errs = [unipc_error(x, steps, variant="vary_coeff", skip_type="logSNR", order=1) for steps in (10, 40)]
    assert errs[1] < errs[0] / 10
    # order 3 as A1111 ships it (its corrector's last term takes the coefficient of the row before
    # last): converges, about first order
    errs = [unipc_error(x, steps, variant="vary_coeff", skip_type="time_quadratic") for steps in (10, 40)]
    assert errs[1] < errs[0] / 2
    assert errs[1] < 0.05


def test_unipc_order_must_not_exceed_the_steps() -> None:
    with pytest.raises(ValueError):
        ts.unipc(Toy(), start(), ts.a1111_timesteps(2), AC, order=3)
    ts.unipc(Toy(), start(), ts.a1111_timesteps(3), AC, order=3)  # 4 timesteps: fine
    with pytest.raises(ValueError):
        ts.unipc(Toy(), start(), ts.a1111_timesteps(10), AC, variant="bh3")


def test_unipc_img2img_starts_after_the_last_timestep() -> None:
    timesteps = ts.a1111_timesteps(20)
    cut = ts.img2img_timesteps(timesteps, 10)
    assert int(cut[-1]) == 451
    toy = Toy()
    xi = ts.noise_init_latent(start(1), start(2), AC, timesteps, 10)
    out = ts.unipc(toy, xi, cut, AC, is_img2img=True, skip_type="time_quadratic")
    # t_start = 451 / 1000 + 1 / 1000, i.e. the model's first call at training step 451
    assert float(toy.calls[0][1][0]) == pytest.approx(451.0, abs=1e-2)
    assert len(toy.calls) == len(cut)
    assert torch.allclose(out.double(), exact_ode(xi, 451, 0), atol=3e-3)


# -- callback -----------------------------------------------------------------------------------------------


def eps_x0(x: torch.Tensor, t: float) -> torch.Tensor:
    a = alpha_bar(t)
    return (x.double() - math.sqrt(1.0 - a) * exact_eps(x, t)) / math.sqrt(a)


def test_ddim_callback_reports_pred_x0() -> None:
    timesteps = ts.a1111_timesteps(8)
    x = start()
    toy = Toy()
    infos: list[StepInfo] = []
    out = ts.ddim(toy, x, timesteps, AC, randn_like=CountingRandn(), callback=infos.append)
    assert [info.i for info in infos] == list(range(len(timesteps) - 1))
    _, x0s = ddim_reference(x, timesteps)
    for info, x0, (x_in, t) in zip(infos, x0s, toy.calls, strict=True):
        assert close(info.denoised, x0)
        assert close(info.denoised, eps_x0(x_in, float(t[0])))
        assert info.sigma == 0.0
    for info, (x_next, _) in zip(infos, toy.calls[1:], strict=False):
        assert torch.equal(info.x, x_next)
    assert torch.equal(infos[-1].x, out)

    infos = []
    ts.ddim_cfgpp(Toy(cfgpp_offset), x, timesteps, AC, randn_like=CountingRandn(), callback=infos.append)
    assert [info.i for info in infos] == list(range(len(timesteps) - 1))


def test_plms_callback_reports_pred_x0_of_the_combined_eps() -> None:
    timesteps = ts.a1111_timesteps(8)
    x = start()
    infos: list[StepInfo] = []
    out = ts.plms(Toy(), x, timesteps, AC, callback=infos.append)
    assert [info.i for info in infos] == list(range(len(timesteps) - 1))
    _, x0s = plms_reference(x, timesteps)
    for info, x0 in zip(infos, x0s, strict=True):
        assert close(info.denoised, x0)
    assert torch.equal(infos[-1].x, out)


def test_unipc_callback_reports_the_data_prediction() -> None:
    timesteps = ts.a1111_timesteps(6)
    x = start()
    toy = Toy()
    infos: list[StepInfo] = []
    out = ts.unipc(toy, x, timesteps, AC, callback=infos.append)
    assert [info.i for info in infos] == list(range(len(timesteps)))
    # step i's x0 is the data prediction of the model call that step made (call 0 is the initial one)
    for info, (x_in, t) in zip(infos[:-1], toy.calls[1:], strict=True):
        assert close(info.denoised, eps_x0(x_in, float(t[0])), 1e-4)
    # the last step makes none: it reports the result
    assert torch.equal(infos[-1].denoised, out) and torch.equal(infos[-1].x, out)
