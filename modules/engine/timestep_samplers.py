"""A1111's timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC), written for this project with A1111's arithmetic.

A1111 v1.10.1 runs these four samplers over integer training timesteps instead of sigmas. To give the
same pixels, every function here performs the same tensor operations in the same order as A1111's
implementation: per-step scalars taken with `.item()` and broadcast through a `(B, 1, 1, 1)` tensor of
ones in x's dtype, the previous-alphas in float64 (float32 on MPS/XPU, as A1111's `float64()`), the
DDIM eta sigmas computed on the CPU with the same mixed float32/float64 promotion, and the noise drawn
every DDIM step even when eta is 0 (the draw moves the per-image generators).

The model is `model(x, t) -> eps` (classifier-free guidance already applied, v-prediction already
converted to eps) for a (B,) float tensor of timesteps. UniPC is the multistep predictor-corrector of
Zhao et al. 2023 (data prediction, no thresholding) over the discrete-time VP schedule, in the form A1111
ships (itself a port of the UniPC authors' code).
"""

from __future__ import annotations

from typing import Literal

import torch

from modules.engine.sampler_types import Callback, RandnLike, StepInfo, TimestepModel

__all__ = [
    "DiscreteVPSchedule",
    "a1111_timesteps",
    "ddim",
    "ddim_cfgpp",
    "img2img_timesteps",
    "noise_init_latent",
    "plms",
    "unipc",
    "unipc_time_steps",
]

UniPCVariant = Literal["bh1", "bh2", "vary_coeff"]
SkipType = Literal["time_uniform", "time_quadratic", "logSNR"]

CFGPP_SCALE_MULTIPLIER = 1 / 12.5
"""DDIM CFG++ maps the CFG scale range [0, 12.5] onto [0, 1]."""


# -- schedules ----------------------------------------------------------------------------------------


def a1111_timesteps(
    steps: int, *, discard_next_to_last_sigma: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """A1111's `CompVisSampler.get_timesteps`: every `1000 // n`-th training timestep from 0, plus one,
    clipped to [0, 999], where n is `steps` (+1 when discarding the penultimate sigma). int64, ascending;
    a sampler walks it from the end. Note the length is `ceil(1000 / (1000 // n))`, which is n only when
    the stride divides evenly enough (e.g. 3 steps give 4 timesteps: 1, 334, 667, 999)."""
    n = steps + 1 if discard_next_to_last_sigma else steps
    stride = 1000 // n
    return torch.clip(torch.asarray(list(range(0, 1000, stride)), device=device) + 1, 0, 999)


def img2img_timesteps(timesteps: torch.Tensor, t_enc: int) -> torch.Tensor:
    """A1111's img2img cut: the sampler runs the first `t_enc` timesteps of the full schedule (the
    init latent is noised to `timesteps[t_enc]` with `noise_init_latent`)."""
    return timesteps[:t_enc]


def noise_init_latent(
    x: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, t_enc: int
) -> torch.Tensor:
    """Noise the encoded image to training timestep `timesteps[t_enc]` (DDPM forward process):
    `x * sqrt(ac[t]) + noise * sqrt(1 - ac[t])`, with 0-d scalars as A1111 computes them."""
    ac = alphas_cumprod[timesteps[t_enc]]
    return x * torch.sqrt(ac) + noise * torch.sqrt(1 - ac)


def _float64_for(x: torch.Tensor) -> torch.dtype:
    """float64, except on devices without it (MPS, XPU), where A1111 falls back to float32."""
    return torch.float32 if x.device.type in ("mps", "xpu") else torch.float64


def _alphas(
    x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alphas, alphas_prev, sqrt(1 - alphas)) at the schedule's timesteps; alphas_prev[i] is the
    alpha of timesteps[i - 1] (training timestep 0 for i = 0), in float64."""
    alphas = alphas_cumprod[timesteps]
    prev_t = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
    alphas_prev = alphas_cumprod[prev_t].to(_float64_for(x))
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


def _ddim_sigmas(eta: float, alphas: torch.Tensor, alphas_prev: torch.Tensor) -> torch.Tensor:
    """The DDIM noise scale per step (Song et al. eq. 16), on the CPU in float64:
    `eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))`. A1111 mixes a float32 tensor with float64
    NumPy arrays here; the division by the float32 `1 - a` therefore happens as a float32 reciprocal
    times a float64, which this reproduces."""
    a = alphas.cpu()
    a_prev = alphas_prev.cpu().double()
    ratio = (1 - a).reciprocal().double() * (1 - a_prev)
    shrink = 1 - a.double() / a_prev
    return eta * torch.sqrt(ratio * shrink)


# -- DDIM ---------------------------------------------------------------------------------------------


def _ddim_loop(
    model: TimestepModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    randn_like: RandnLike,
    callback: Callback | None,
    eta: float,
    *,
    cfgpp: bool,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from the last timestep down; with `cfgpp` the direction term
    uses the model's unguided eps (CFG++)."""
    alphas, alphas_prev, sqrt_one_minus_alphas = _alphas(x, timesteps, alphas_cumprod)
    sigmas = _ddim_sigmas(eta, alphas, alphas_prev)
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        direction_eps = _last_noise_uncond(model) if cfgpp else e_t
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x

        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction_eps
        noise = sigma_t * randn_like(x)  # drawn even when eta == 0: it advances the generators
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback(StepInfo(i=i, x=x, sigma=0.0, sigma_hat=0.0, denoised=pred_x0))
    return x


def _last_noise_uncond(model: TimestepModel) -> torch.Tensor:
    eps = model.last_noise_uncond
    if eps is None:
        raise RuntimeError("DDIM CFG++ needs the model's unconditional eps, but it gave none")
    return eps


@torch.no_grad()
def ddim(
    model: TimestepModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """A1111's DDIM over `timesteps` (ascending; run from the end with `len(timesteps) - 1` model
    calls, the last step landing on the alpha of `timesteps[0]`, i.e. training timestep 1, not 0).
    `x` is the noise (txt2img) or the noised init latent (img2img). One `randn_like` draw per step
    whatever `eta`."""
    return _ddim_loop(model, x, timesteps, alphas_cumprod, randn_like, callback, eta, cfgpp=False)


@torch.no_grad()
def ddim_cfgpp(
    model: TimestepModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    randn_like: RandnLike,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM with CFG++ (Chung et al. 2024): the guided eps predicts x0, the unguided eps points the
    direction to x_t, and the CFG scale is divided by 12.5. Sets the model's `cond_scale_multiplier`
    and `need_last_noise_uncond` for the run and restores them afterwards."""
    saved = (model.cond_scale_multiplier, model.need_last_noise_uncond)
    model.cond_scale_multiplier = CFGPP_SCALE_MULTIPLIER
    model.need_last_noise_uncond = True
    try:
        return _ddim_loop(model, x, timesteps, alphas_cumprod, randn_like, callback, eta, cfgpp=True)
    finally:
        model.cond_scale_multiplier, model.need_last_noise_uncond = saved


# -- PLMS ---------------------------------------------------------------------------------------------


def _plms_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """The pseudo linear multistep eps: Adams-Bashforth of order len(old_eps) + 1 (2 to 4)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


@torch.no_grad()
def plms(
    model: TimestepModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """A1111's PLMS (Liu et al. 2022, pseudo numerical methods): the first step is a pseudo improved
    Euler step (two model calls), the following ones Adams-Bashforth of order 2, 3 and then 4 over the
    eps history, each applied through the deterministic DDIM transfer."""
    alphas, alphas_prev, sqrt_one_minus_alphas = _alphas(x, timesteps, alphas_cumprod)
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[torch.Tensor] = []

    def transfer(x: torch.Tensor, e_t: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts)
        if not old_eps:
            x_prev, _ = transfer(x, e_t, index)
            e_t_next = model(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        else:
            e_t_prime = _plms_eps(e_t, old_eps)
        x_prev, pred_x0 = transfer(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
        if callback is not None:
            callback(StepInfo(i=i, x=x, sigma=0.0, sigma_hat=0.0, denoised=pred_x0))
    return x


# -- UniPC --------------------------------------------------------------------------------------------


def _interpolate(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise linear f(x) through the increasing keypoints (xp, yp), extended linearly beyond the
    ends by the outer segments. A point equal to a keypoint xp[j] (j > 0) is interpolated on the
    segment to its left, as the UniPC authors' sort-based version does on the CPU."""
    k = xp.shape[0]
    seg = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, k - 2)
    start_x, end_x = xp[seg], xp[seg + 1]
    start_y, end_y = yp[seg], yp[seg + 1]
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class DiscreteVPSchedule:
    """The discrete-time VP noise schedule in continuous time (the UniPC / DPM-Solver 'discrete'
    schedule): training step n sits at t = (n + 1) / N, log(alpha_t) = 0.5 * log(alphas_cumprod) is
    interpolated linearly between the steps, sigma_t = sqrt(1 - alpha_t^2) and
    lambda_t = log(alpha_t) - log(sigma_t) (half log-SNR)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_n = len(log_alphas)
        self.t_end = 1.0
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.log_alpha_array = log_alphas

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha_t)."""
        flat = t.reshape(-1)
        return _interpolate(flat, self.t_array.to(t.device), self.log_alpha_array.to(t.device))

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The t whose half log-SNR is `lamb`."""
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)).to(lamb.device), -2.0 * lamb)
        xp = torch.flip(self.log_alpha_array.to(lamb.device), [0])
        yp = torch.flip(self.t_array.to(lamb.device), [0])
        return _interpolate(log_alpha.reshape(-1), xp, yp)

    def model_input_time(self, t: torch.Tensor) -> torch.Tensor:
        """The training timestep the model is called with at continuous time t (in [1/N, 1])."""
        return (t - 1.0 / self.total_n) * 1000.0


def unipc_time_steps(
    ns: DiscreteVPSchedule, skip_type: str, t_start: float | torch.Tensor, t_end: float, n: int, device: torch.device
) -> torch.Tensor:
    """The n + 1 continuous times from t_start down to t_end: uniform in t, uniform in sqrt(t)
    ('time_quadratic') or uniform in half log-SNR ('logSNR'). Computed on the CPU, then moved."""
    if skip_type == "logSNR":
        lambda_t = ns.marginal_lambda(torch.tensor(float(t_start)).to(device))
        lambda_0 = ns.marginal_lambda(torch.tensor(t_end).to(device))
        steps = torch.linspace(lambda_t.cpu().item(), lambda_0.cpu().item(), n + 1).to(device)
        return ns.inverse_lambda(steps)
    if skip_type == "time_uniform":
        return torch.linspace(float(t_start), t_end, n + 1).to(device)
    if skip_type == "time_quadratic":
        # a tensor t_start (img2img) takes its square root in float32, a float one in float64
        root = t_start**0.5
        return torch.linspace(float(root), t_end**0.5, n + 1).pow(2).to(device)
    raise ValueError(f"Unsupported UniPC skip_type {skip_type!r}: use 'logSNR', 'time_uniform' or 'time_quadratic'")


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class _UniPC:
    """Multistep UniPC with data prediction: the model's eps is turned into x0 at every call."""

    def __init__(self, model: TimestepModel, ns: DiscreteVPSchedule, variant: str) -> None:
        if variant not in ("bh1", "bh2", "vary_coeff"):
            raise ValueError(f"Unsupported UniPC variant {variant!r}: use 'bh1', 'bh2' or 'vary_coeff'")
        self.model = model
        self.ns = ns
        self.variant = variant

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise = self.model(x, self.ns.model_input_time(t))
        dims = x.dim()
        alpha_t, sigma_t = self.ns.marginal_alpha(t), self.ns.marginal_std(t)
        return (x - _expand(sigma_t, dims) * noise) / _expand(alpha_t, dims)

    def update(
        self,
        x: torch.Tensor,
        model_prev_list: list[torch.Tensor],
        t_prev_list: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step from t_prev_list[-1] to t: predictor of `order` (from the last `order` x0
        predictions), then, with `use_corrector`, the corrector using the x0 prediction at t.
        Returns the new x and that prediction (None without corrector)."""
        if t.dim() == 0:
            t = t.view(-1)
        if self.variant == "vary_coeff":
            return self._vary_update(x, model_prev_list, t_prev_list, t, order, use_corrector)
        return self._bh_update(x, model_prev_list, t_prev_list, t, order, use_corrector)

    def _bh_update(
        self,
        x: torch.Tensor,
        model_prev_list: list[torch.Tensor],
        t_prev_list: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ns = self.ns
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        lambda_t = ns.marginal_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h = lambda_t - lambda_prev_0

        rk_list: list[torch.Tensor | float] = []
        d1_list: list[torch.Tensor] = []
        for i in range(1, order):
            lambda_prev_i = ns.marginal_lambda(t_prev_list[-(i + 1)])
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rk_list.append(rk)
            d1_list.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
        rk_list.append(1.0)
        rks = torch.tensor([float(r) for r in rk_list], device=x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)  # h * phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows: list[torch.Tensor] = []
        b_list: list[float] = []
        factorial_i = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b_list.append(float(h_phi_k * factorial_i / b_h))
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat = torch.stack(rows)
        b = torch.tensor(b_list, device=x.device)

        d1s = torch.stack(d1_list, dim=1) if d1_list else None
        rhos_p: torch.Tensor | None = None
        if d1s is not None:
            rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
        rhos_c: torch.Tensor | None = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(r_mat, b)

        x_t_ = _expand(sigma_t / sigma_prev_0, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res: torch.Tensor | int = 0
        if d1s is not None and rhos_p is not None:
            pred_res = torch.einsum("k,bkchw->bchw", rhos_p, d1s)
        x_t = x_t_ - _expand(alpha_t * b_h, dims) * pred_res

        model_t: torch.Tensor | None = None
        if rhos_c is not None:
            model_t = self.data_prediction(x_t, t)
            corr_res: torch.Tensor | int = 0
            if d1s is not None:
                corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s)
            d1_t = model_t - model_prev_0
            x_t = x_t_ - _expand(alpha_t * b_h, dims) * (corr_res + rhos_c[-1] * d1_t)
        return x_t, model_t

    def _vary_update(
        self,
        x: torch.Tensor,
        model_prev_list: list[torch.Tensor],
        t_prev_list: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The 'vary_coeff' variant: coefficients from the inverse of the Taylor matrix C. As in the
        reference, the final corrector term uses the row of the last residual loop (row K - 2), and
        the step scalars are the first image's (the reference only runs with batch size 1)."""
        ns = self.ns
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        lambda_t = ns.marginal_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h = lambda_t - lambda_prev_0

        rk_list: list[float] = []
        d1_list: list[torch.Tensor] = []
        for i in range(1, order):
            lambda_prev_i = ns.marginal_lambda(t_prev_list[-(i + 1)])
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rk_list.append(float(rk))
            d1_list.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
        rk_list.append(1.0)
        rks = torch.tensor(rk_list, device=x.device)
        k_total = len(rks)

        cols: list[torch.Tensor] = []
        col = torch.ones_like(rks)
        for k in range(1, k_total + 1):
            cols.append(col)
            col = col * rks / (k + 1)
        c_mat = torch.stack(cols, dim=1)
        d1s = torch.stack(d1_list, dim=1) if d1_list else None
        a_p = torch.linalg.inv(c_mat[:-1, :-1]) if d1s is not None else None
        a_c = torch.linalg.inv(c_mat) if use_corrector else None

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_ks: list[torch.Tensor] = []
        factorial_k = 1
        h_phi_k = h_phi_1
        for k in range(1, k_total + 2):
            h_phi_ks.append(h_phi_k)
            h_phi_k = h_phi_k / hh - 1 / factorial_k
            factorial_k *= k + 1

        scale_x = _expand(sigma_t / sigma_prev_0, dims)
        a_t = _expand(alpha_t, dims)
        x_t_ = scale_x * x - a_t * h_phi_1 * model_prev_0
        x_t = x_t_
        if d1s is not None and a_p is not None:
            for k in range(k_total - 1):
                x_t = x_t - a_t * h_phi_ks[k + 1] * torch.einsum("bkchw,k->bchw", d1s, a_p[k])
        model_t: torch.Tensor | None = None
        if a_c is not None:
            model_t = self.data_prediction(x_t, t)
            d1_t = model_t - model_prev_0
            x_t = x_t_
            k = 0
            for k in range(k_total - 1):
                assert d1s is not None
                x_t = x_t - a_t * h_phi_ks[k + 1] * torch.einsum("bkchw,k->bchw", d1s, a_c[k][:-1])
            x_t = x_t - a_t * h_phi_ks[k_total] * (d1_t * a_c[k][-1])
        return x_t, model_t


@torch.no_grad()
def unipc(
    model: TimestepModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    callback: Callback | None = None,
    is_img2img: bool = False,
    variant: str = "bh1",
    skip_type: str = "time_uniform",
    order: int = 3,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """A1111's UniPC: `len(timesteps)` multistep predictor-corrector steps from t = 1 (txt2img) or
    t = timesteps[-1] / 1000 + 1 / 1000 (img2img, A1111's start) down to t = 1 / N. The first
    `order - 1` steps warm up with orders 1, 2, ...; with `lower_order_final` the last steps lower the
    order so as not to exceed the steps left; the last step runs no corrector. The callback gets the
    x0 prediction at the step's end (the final x on the last step, where no prediction is made)."""
    steps = len(timesteps)
    if steps < order:
        raise ValueError(f"UniPC order ({order}) must not exceed the number of sampling steps ({steps})")
    ns = DiscreteVPSchedule(alphas_cumprod)
    solver = _UniPC(model, ns, variant)
    t_0 = 1.0 / ns.total_n
    t_start: float | torch.Tensor = timesteps[-1].cpu() / 1000 + 1 / 1000 if is_img2img else ns.t_end
    times = unipc_time_steps(ns, skip_type, t_start, t_0, steps, x.device)
    index = 0

    def after_update(x: torch.Tensor, model_x: torch.Tensor | None) -> None:
        nonlocal index
        if callback is not None:
            denoised = model_x if model_x is not None else x
            callback(StepInfo(i=index, x=x, sigma=0.0, sigma_hat=0.0, denoised=denoised))
        index += 1

    vec_t = times[0].expand((x.shape[0],))
    model_prev_list = [solver.data_prediction(x, vec_t)]
    t_prev_list = [vec_t]
    for init_order in range(1, order):
        vec_t = times[init_order].expand(x.shape[0])
        x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, init_order, use_corrector=True)
        if model_x is None:
            model_x = solver.data_prediction(x, vec_t)
        after_update(x, model_x)
        model_prev_list.append(model_x)
        t_prev_list.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = times[step].expand(x.shape[0])
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector=step != steps)
        after_update(x, model_x)
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = vec_t
        if step < steps:
            if model_x is None:
                model_x = solver.data_prediction(x, vec_t)
            model_prev_list[-1] = model_x
    return x
