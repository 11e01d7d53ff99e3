"""The k-diffusion samplers, written for this project with k-diffusion's arithmetic.

A1111 v1.10.1 samples with Katherine Crowson's k-diffusion (pinned at ab527a9) plus two samplers of
its own (Restart, LCM). To give the same pixels, every function here performs the same tensor
operations in the same order as those: the same 0-d sigma tensors, the same `append_dims` broadcast
(which also decides dtype promotion), the same places where noise is drawn and the same number of
draws (Euler, Heun and DPM2 draw one churn noise every step even when churn is off). Noise comes
from the caller's `randn_like` (A1111 routes k-diffusion's `torch.randn_like` to per-image
generators) or from a noise sampler; the callback gets a `StepInfo` exactly where k-diffusion calls
its callback.

A sampler integrates `x` (already scaled to `sigmas[0]`) from `sigmas[0]` down to `sigmas[-1] == 0`
by calling the denoiser `model(x, sigma) -> denoised` with `sigma` a (B,) tensor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchsde  # type: ignore[import-untyped]
from scipy import integrate  # type: ignore[import-untyped]

from modules.engine.sampler_types import Callback, Denoiser, NoiseSampler, RandnLike, StepInfo

__all__ = [
    "BrownianTreeNoiseSampler",
    "append_dims",
    "append_zero",
    "default_noise_sampler",
    "get_ancestral_step",
    "get_sigmas_karras",
    "linear_multistep_coeff",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "sample_restart",
    "to_d",
]

RestartList = dict[float, Sequence[float]]
"""Restart's `{min_sigma: [restart_steps, restart_times, max_sigma]}`."""


# -- helpers ------------------------------------------------------------------------------------------


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Give `x` trailing unit dimensions up to `target_dims` (so a 0-d sigma broadcasts as a 4-d
    tensor, which also makes it take part in dtype promotion as k-diffusion's does)."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """`x` with a final 0 (the last sigma of every schedule)."""
    return torch.cat([x, x.new_zeros([1])])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma from a denoiser output: (x - denoised) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """The sigma an ancestral step descends to deterministically (`sigma_down`) and the noise it then
    adds (`sigma_up`), with sigma_down^2 + sigma_up^2 = sigma_to^2; eta scales the noise. With eta 0
    this is (sigma_to, 0.0), the plain float k-diffusion returns."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Karras et al. (2022) schedule as k-diffusion computes it (float32 ramp), with the final 0;
    Restart builds its own sigma lists with it."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def default_noise_sampler(x: torch.Tensor, randn_like: RandnLike) -> NoiseSampler:
    """The noise sampler used when none is given: fresh unit noise shaped like `x` on every call."""

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return randn_like(x)

    return sample


def _identity(sigma: torch.Tensor) -> torch.Tensor:
    return sigma


def _sort(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    return (a, b, 1) if a < b else (b, a, -1)


class _BatchedBrownianTree:
    """One `torchsde.BrownianTree` per seed (per image), stacked; a single int seed gives one tree
    over the whole batch (k-diffusion's `BatchedBrownianTree`)."""

    def __init__(
        self, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, seed: int | Sequence[int] | None, cpu: bool
    ) -> None:
        t0, t1, self.sign = _sort(t0, t1)
        w0 = torch.zeros(x.shape, dtype=torch.float32, device="cpu") if cpu else torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, []).item())
        if isinstance(seed, int):
            seeds: list[int] = [seed]
            self.batched = False
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != x.shape[0]:
                raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
            w0 = w0[0]
            self.batched = True
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = _sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """Noise from Brownian trees (k-diffusion's `BrownianTreeNoiseSampler`): the increment of the
    Brownian motion over [sigma_next, sigma] divided by its standard deviation, so it is unit normal
    and the same for a given seed whatever steps query it. A list of seeds gives one tree per image,
    so image i of a batch gets the noise it gets when made alone.

    `transform` maps sigma to the tree's time. `cpu=True` builds the trees on the CPU in float32
    (their random draws then come from CPU generators, A1111's "CPU" RNG source) and moves the noise
    to x's device and dtype.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: torch.Tensor | float,
        sigma_max: torch.Tensor | float,
        seed: int | list[int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] = _identity,
        cpu: bool = False,
    ) -> None:
        self.transform = transform
        self.device = x.device
        self.dtype = x.dtype
        self.cpu = cpu
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.tree = _BatchedBrownianTree(x, t0, t1, seed, cpu)

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        w = self.tree(t0, t1)
        if self.cpu:
            w = w.to(device=self.device, dtype=self.dtype)
        return w / (t1 - t0).abs().sqrt()


def _report(
    callback: Callback | None,
    i: int,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    if callback is not None:
        callback(StepInfo(i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, denoised=denoised))


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    """Sigma from the half-log-SNR time t = -log(sigma)."""
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    """The time t = -log(sigma) of the DPM-Solver samplers."""
    return sigma.log().neg()


def _churn(s_churn: float, n_sigmas: int, sigma: torch.Tensor, s_tmin: float, s_tmax: float) -> float:
    """Karras' gamma: how far a churned step raises sigma (0 outside [s_tmin, s_tmax])."""
    return min(s_churn / (n_sigmas - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def _churned(
    x: torch.Tensor, sigma: torch.Tensor, gamma: float, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise the noise level of x from sigma to sigma_hat = sigma * (gamma + 1) with the noise eps."""
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# -- first- and second-order Karras samplers ------------------------------------------------------------


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler steps (Karras et al. 2022, algorithm 2 with first-order steps), with optional churn."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = _churn(s_churn, len(sigmas), sigmas[i], s_tmin, s_tmax)
        eps = randn_like(x) * s_noise
        x, sigma_hat = _churned(x, sigmas[i], gamma, eps)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise of sigma_up."""
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun steps (Karras et al. 2022, algorithm 2): the average of the slopes at both ends; the
    last step (to sigma 0) is an Euler step."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = _churn(s_churn, len(sigmas), sigmas[i], s_tmin, s_tmax)
        eps = randn_like(x) * s_noise
        x, sigma_hat = _churned(x, sigmas[i], gamma, eps)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2: the slope at the log-midpoint sigma carries the whole step (DPM-Solver-2 in Karras'
    form); the last step is an Euler step."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = _churn(s_churn, len(sigmas), sigmas[i], s_tmin, s_tmax)
        eps = randn_like(x) * s_noise
        x, sigma_hat = _churned(x, sigmas[i], gamma, eps)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            x = _dpm_2_step(model, x, d, sigma_hat, sigmas[i + 1], s_in)
    return x


def _dpm_2_step(
    model: Denoiser, x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, s_in: torch.Tensor
) -> torch.Tensor:
    """A DPM-Solver-2 step from sigma to sigma_to given the slope d at sigma."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    dt_1 = sigma_mid - sigma
    dt_2 = sigma_to - sigma
    x_2 = x + d * dt_1
    denoised_2 = model(x_2, sigma_mid * s_in)
    d_2 = to_d(x_2, sigma_mid, denoised_2)
    return x + d_2 * dt_2


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral DPM2: a DPM-Solver-2 step down to sigma_down, then noise of sigma_up."""
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            x = _dpm_2_step(model, x, d, sigmas[i], sigma_down, s_in)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


# -- linear multistep --------------------------------------------------------------------------------------


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """The weight of the slope from `j` steps back in an order-`order` Adams-Bashforth step from
    t[i] to t[i+1]: the integral of its Lagrange basis polynomial (scipy quad, rel. tol 1e-4).

    `t` holds float32 sigmas. The arithmetic is that of k-diffusion under NumPy 1.x, which A1111
    runs: node differences in float32, the rest in float64.
    """
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    nodes = np.asarray(t, dtype=np.float32)

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - float(nodes[i - k])) / float(nodes[i - j] - nodes[i - k])
        return prod

    return float(integrate.quad(basis, float(nodes[i]), float(nodes[i + 1]), epsrel=1e-4)[0])


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last `order` slopes."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=False))
    return x


# -- DPM-Solver (fast, adaptive) -------------------------------------------------------------------------


class _PIDStepSizeController:
    """The PID controller of DPM-Solver's adaptive step size (k-diffusion's)."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x: float) -> float:
        return 1 + math.atan(x - 1)

    def propose_step(self, error: torch.Tensor | float) -> bool:
        """Scale h by the controller's factor for this error; accept the step if the factor is at
        least `accept_safety`."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = self.limiter(factor)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


_EpsCache = dict[str, torch.Tensor]
_InfoCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) over t = -log(sigma), on a denoiser: eps = (x - D(x, sigma)) / sigma.
    Within one step the model outputs are cached by role ('eps', 'eps_r1', 'eps_r2'), so an
    embedded lower-order solution reuses them as k-diffusion's does."""

    def __init__(self, model: Denoiser, info_callback: _InfoCallback | None = None) -> None:
        self.model = model
        self.info_callback = info_callback

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, eps_cache: _EpsCache, key: str, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, _EpsCache]:
        if key in eps_cache:
            return eps_cache[key], eps_cache
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.model(x, sigma)) / self.sigma(t)
        return eps, {key: eps, **eps_cache}

    def dpm_solver_1_step(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, eps_cache: _EpsCache | None = None
    ) -> tuple[torch.Tensor, _EpsCache]:
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        x_1 = x - self.sigma(t_next) * h.expm1() * eps
        return x_1, eps_cache

    def dpm_solver_2_step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        r1: float = 1 / 2,
        eps_cache: _EpsCache | None = None,
    ) -> tuple[torch.Tensor, _EpsCache]:
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        x_2 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return x_2, eps_cache

    def dpm_solver_3_step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        r1: float = 1 / 3,
        r2: float = 2 / 3,
        eps_cache: _EpsCache | None = None,
    ) -> tuple[torch.Tensor, _EpsCache]:
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2, eps_cache = self.eps(eps_cache, "eps_r2", u2, s2)
        x_3 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        return x_3, eps_cache

    def _ancestral(
        self, t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Where a step with noise ends deterministically (capped at t_end) and the noise it adds."""
        if not eta:
            return t_next, 0.0
        sd, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        assert isinstance(sd, torch.Tensor)
        t_next_ = torch.minimum(t_end, self.t(sd))
        su = (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5
        return t_next_, su

    def dpm_solver_fast(
        self,
        x: torch.Tensor,
        t_start: torch.Tensor,
        t_end: torch.Tensor,
        nfe: int,
        eta: float,
        s_noise: float,
        noise_sampler: NoiseSampler,
    ) -> torch.Tensor:
        """DPM-Solver-fast: nfe model calls as third-order steps on a uniform t grid, the remainder
        (nfe mod 3) as a last lower-order step (or 2 then 1 when 3 divides nfe)."""
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i in range(len(orders)):
            eps_cache: _EpsCache = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._ancestral(t, t_next, t_end, eta)
            eps, eps_cache = self.eps(eps_cache, "eps", x, t)
            denoised = x - self.sigma(t) * eps
            if self.info_callback is not None:
                self.info_callback(i, x, ts[i], t, denoised)
            if orders[i] == 1:
                x, eps_cache = self.dpm_solver_1_step(x, t, t_next_, eps_cache=eps_cache)
            elif orders[i] == 2:
                x, eps_cache = self.dpm_solver_2_step(x, t, t_next_, eps_cache=eps_cache)
            else:
                x, eps_cache = self.dpm_solver_3_step(x, t, t_next_, eps_cache=eps_cache)
            x = x + su * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def dpm_solver_adaptive(
        self,
        x: torch.Tensor,
        t_start: torch.Tensor,
        t_end: torch.Tensor,
        order: int,
        rtol: float,
        atol: float,
        h_init: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        accept_safety: float,
        eta: float,
        s_noise: float,
        noise_sampler: NoiseSampler,
    ) -> torch.Tensor:
        """DPM-Solver-12 / 23: an embedded pair of orders (order-1, order) per step, the step size
        set by a PID controller on their scaled difference."""
        if order not in {2, 3}:
            raise ValueError("order should be 2 or 3")
        forward = bool(t_end > t_start)
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        atol_t = torch.tensor(atol)
        rtol_t = torch.tensor(rtol)
        s = t_start
        x_prev = x
        pid = _PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        steps = 0
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            eps_cache: _EpsCache = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self._ancestral(s, t, t_end, eta)
            eps, eps_cache = self.eps(eps_cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            if order == 2:
                x_low, eps_cache = self.dpm_solver_1_step(x, s, t_, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_2_step(x, s, t_, eps_cache=eps_cache)
            else:
                x_low, eps_cache = self.dpm_solver_2_step(x, s, t_, r1=1 / 3, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_3_step(x, s, t_, eps_cache=eps_cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high + su * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
            steps += 1
            if self.info_callback is not None:
                self.info_callback(steps - 1, x, s, s, denoised)
        return x


def _dpm_solver(model: Denoiser, callback: Callback | None) -> _DPMSolver:
    """A DPM-Solver whose per-step reports reach `callback` as k-diffusion forwards them (sigma from
    the step's t, sigma_hat from its t_up)."""
    solver = _DPMSolver(model)
    if callback is not None:

        def info(i: int, x: torch.Tensor, t: torch.Tensor, t_up: torch.Tensor, denoised: torch.Tensor) -> None:
            callback(StepInfo(i=i, x=x, sigma=solver.sigma(t), sigma_hat=solver.sigma(t_up), denoised=denoised))

        solver.info_callback = info
    return solver


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float | torch.Tensor,
    sigma_max: float | torch.Tensor,
    n: int,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-fast with `n` model evaluations from sigma_max to sigma_min (both > 0)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    solver = _dpm_solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    return solver.dpm_solver_fast(x, t_start, t_end, n, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float | torch.Tensor,
    sigma_max: float | torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-12/23 with adaptive step size from sigma_max to sigma_min (both > 0)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    solver = _dpm_solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    return solver.dpm_solver_adaptive(
        x,
        t_start,
        t_end,
        order,
        rtol,
        atol,
        h_init,
        pcoeff,
        icoeff,
        dcoeff,
        accept_safety,
        eta,
        s_noise,
        noise_sampler,
    )


# -- DPM-Solver++ ------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S): a single-step second-order step (midpoint in t) down to
    sigma_down, then noise of sigma_up."""
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _brownian_default(x: torch.Tensor, sigmas: torch.Tensor) -> BrownianTreeNoiseSampler:
    """The SDE samplers' noise when none is given: a Brownian tree over the schedule, random seed."""
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max)


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r: float = 1 / 2,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic), two evaluations per step: an ancestral step to the intermediate
    time t + r*h, then one to t_next with the denoised predictions blended. The default noise is a
    Brownian tree (`randn_like` is not used)."""
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            # step 1, to s
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, _sigma_fn(s) * s_in)
            # step 2, to t_next
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep, extrapolating from the previous denoised prediction
    (first and last steps are first order)."""
    s_in = x.new_ones([x.shape[0]])
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the midpoint or Heun correction; the last step returns the denoised
    prediction. The default noise is a Brownian tree."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    h: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                assert h_last is not None
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep over the last three denoised predictions; the last
    step returns the denoised prediction. The default noise is a Brownian tree."""
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                assert h_1 is not None and denoised_1 is not None and denoised_2 is not None
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                assert denoised_1 is not None
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# -- A1111's own samplers ------------------------------------------------------------------------------------


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """A1111's LCM sampler: jump to the denoised prediction, then re-noise it to the next sigma."""
    noise_sampler = default_noise_sampler(x, randn_like) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            # A1111 adds in place into the denoised tensor; a new tensor has the same values and leaves
            # the prediction the callback saw untouched.
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


def _restart_plan(sigmas: torch.Tensor, restart_list: RestartList | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Restart's (old_sigma, new_sigma) steps. Without a restart list, 20+ steps get A1111's default:
    a Karras schedule shortened by the restart steps, and at the sigma nearest 0.1 a jump back up to
    the sigma nearest 2 followed by 9 (or steps // 4 for 36+ steps) Karras steps down, once (twice
    for 36+ steps)."""
    steps = sigmas.shape[0] - 1
    if restart_list is None:
        if steps >= 20:
            restart_steps = 9
            restart_times = 1
            if steps >= 36:
                restart_steps = steps // 4
                restart_times = 2
            sigmas = get_sigmas_karras(
                steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), device=sigmas.device
            )
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
        else:
            restart_list = {}
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            n_steps, times, restart_max = by_index[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = get_sigmas_karras(
                    int(n_steps), sigmas[min_idx].item(), sigmas[max_idx].item(), device=sigmas.device
                )[:-1]
                for _ in range(int(times)):
                    step_list.extend(itertools.pairwise(sigma_restart))
    return step_list


@torch.no_grad()
def sample_restart(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    s_noise: float = 1.0,
    restart_list: RestartList | None = None,
) -> torch.Tensor:
    """A1111's Restart sampler (Xu et al. 2023): Heun steps, and where the plan jumps back up in
    sigma, fresh noise raising x from the last sigma to the new one. `restart_list` is
    `{min_sigma: [restart_steps, restart_times, max_sigma]}`; None picks A1111's default (which also
    rebuilds the schedule as Karras)."""
    s_in = x.new_ones([x.shape[0]])
    step_id = 0

    def heun_step(x: torch.Tensor, old_sigma: torch.Tensor, new_sigma: torch.Tensor) -> torch.Tensor:
        nonlocal step_id
        denoised = model(x, old_sigma * s_in)
        d = to_d(x, old_sigma, denoised)
        _report(callback, step_id, x, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, new_sigma * s_in)
            d_2 = to_d(x_2, new_sigma, denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
        step_id += 1
        return x

    last_sigma: torch.Tensor | None = None
    for old_sigma, new_sigma in _restart_plan(sigmas, restart_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + randn_like(x) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x
