"""tile_colorfix(+sharp) and inpaint_only's latent steps (`modules.engine.controlnet_latent`),
checked against sd-webui-controlnet's rules computed here independently (numpy box filter,
DDPM formulas): weight 0 leaves the output as it is; a reference with the prediction's own low
frequencies changes nothing; otherwise the low frequencies of the returned x0 are the
reference's; eps and v-prediction; the sharp variant's unconditional rows; the hires doubling;
inpaint_only keeps the masked cells and takes the reference elsewhere (mask grown by the
extension's 10/8/1 pool); the inpainting-UNet image conditioning; the paste-back's dilate + blur;
the lama first noise; the fallback warning; a real tiny UNet is left as it was."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modules.engine import controlnet_latent as cl
from modules.engine.sampling import TextCond, UNetCall, a1111_alphas_cumprod

ABAR = a1111_alphas_cumprod()


def _call(
    *, parts: tuple[str, ...] = ("cond", "uncond"), t: float = 500.0, size: int = 8, step: int = 0, seed: int = 0
) -> UNetCall:
    g = torch.Generator().manual_seed(seed)
    rows = len(parts)
    return UNetCall(
        x=torch.randn(rows, 4, size, size, generator=g),
        timestep=torch.tensor([t] * rows),
        text=TextCond(torch.randn(rows, 77, 32, generator=g)),
        image_cond=None,
        added_time_ids=None,
        step=step,
        steps=10,
        sigma=1.0,
        part="cond+uncond" if rows > 1 else parts[0],  # type: ignore[arg-type]
        owners=tuple(range(rows)),
        row_parts=parts,  # type: ignore[arg-type]
    )


def _fake_unet(seed: int = 3) -> Any:
    def unet(call: UNetCall) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(call.x.shape, generator=g)

    return unet


def _coef(t: float) -> tuple[float, float]:
    abar = float(ABAR.double()[round(t)])
    return abar**0.5, (1 - abar) ** 0.5


def _x0_eps(out: torch.Tensor, xt: torch.Tensor, t: float) -> torch.Tensor:
    a, s = _coef(t)
    return (xt - s * out) / a


def _x0_v(out: torch.Tensor, xt: torch.Tensor, t: float) -> torch.Tensor:
    a, s = _coef(t)
    return a * xt - s * out


def _np_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """(2k+1)-square mean with edge replication, by plain numpy windows."""
    arr = x.double().numpy()
    padded = np.pad(arr, ((0, 0), (0, 0), (k, k), (k, k)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * k + 1, 2 * k + 1), axis=(2, 3))
    return torch.from_numpy(win.mean(axis=(-1, -2))).float()


def _unit(module: str = cl.COLORFIX, reference: torch.Tensor | None = None, **kw: Any) -> cl.LatentUnit:
    ref = reference if reference is not None else torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    sizes: list[tuple[int, int]] = []

    def latent_of(width: int, height: int) -> torch.Tensor:
        sizes.append((width, height))
        return ref

    unit = cl.LatentUnit(index=0, module=module, latent_of=latent_of, **kw)
    unit.sizes = sizes  # type: ignore[attr-defined]
    return unit


# ------------------------------------------------------------------------------ colorfix


def test_weight_zero_leaves_the_output_untouched() -> None:
    call = _call()
    applier = cl.ColorFixApplier([_unit(weight=0.0)], ABAR)
    assert torch.equal(applier(call, _fake_unet()), _fake_unet()(call))
    assert applier.calls == 0


def test_reference_with_the_predictions_low_frequencies_changes_nothing() -> None:
    call = _call(t=400.0, parts=("cond",))
    out = _fake_unet()(call)
    x0 = _x0_eps(out, call.x, 400.0)
    # any reference whose (2k+1)-box blur equals the prediction's: the prediction itself
    got = cl.ColorFixApplier([_unit(reference=x0)], ABAR)(call, _fake_unet())
    torch.testing.assert_close(got, out, rtol=0, atol=2e-4)


@pytest.mark.parametrize("variation", [3.0, 8.0, 8.9])
def test_low_frequencies_of_x0_become_the_references(variation: float) -> None:
    t = 500.6  # rounded to 501 for the schedule
    call = _call(t=t)
    ref = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 + 1
    unit = _unit(reference=ref, threshold_a=variation)
    got = cl.ColorFixApplier([unit], ABAR)(call, _fake_unet())
    out = _fake_unet()(call)
    k = int(variation)
    x0_before, x0_after = _x0_eps(out, call.x, t), _x0_eps(got, call.x, t)
    # the prediction's high frequencies are kept, its (2k+1)-box low frequencies are the reference's
    torch.testing.assert_close(x0_after - _np_blur(ref, k), x0_before - _np_blur(x0_before, k), rtol=0, atol=1e-4)
    assert not torch.allclose(got, out, atol=1e-2)
    assert unit.sizes == [(64, 64)]  # type: ignore[attr-defined]  # the call's size in pixels


def test_constant_reference_sets_the_mean_colour() -> None:
    """A flat reference and a flat prediction: x0 becomes the reference exactly."""
    call = _call(parts=("cond",))
    a, s = _coef(500.0)
    flat_x0 = torch.full((1, 4, 8, 8), 0.3)
    eps = (call.x - a * flat_x0) / s  # the UNet predicts a flat image
    ref = torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 4, 1, 1).expand(1, 4, 8, 8)
    got = cl.ColorFixApplier([_unit(reference=ref)], ABAR)(call, lambda c: eps)
    torch.testing.assert_close(_x0_eps(got, call.x, 500.0), ref, rtol=0, atol=1e-4)


def test_v_prediction_round_trip() -> None:
    call = _call(t=300.0)
    a, s = _coef(300.0)
    g = torch.Generator().manual_seed(11)
    x0_true = torch.randn(2, 4, 8, 8, generator=g)
    eps_true = (call.x - a * x0_true) / s
    v = a * eps_true - s * x0_true
    same = cl.ColorFixApplier([_unit(reference=x0_true[:1])], ABAR, "v_prediction")
    one = _call(t=300.0, parts=("cond",))
    v1 = a * (one.x - a * x0_true[:1]) / s - s * x0_true[:1]
    torch.testing.assert_close(same(one, lambda c: v1), v1, rtol=0, atol=2e-4)
    ref = torch.randn(1, 4, 8, 8, generator=g)
    got = cl.ColorFixApplier([_unit(reference=ref, threshold_a=3)], ABAR, "v_prediction")(call, lambda c: v)
    x0_after = _x0_v(got, call.x, 300.0)
    torch.testing.assert_close(x0_after - _np_blur(ref, 3), x0_true - _np_blur(x0_true, 3), rtol=0, atol=1e-4)


def test_weight_mixes_and_is_clamped() -> None:
    call = _call()
    out = _fake_unet()(call)
    full = cl.ColorFixApplier([_unit(weight=1.0)], ABAR)(call, _fake_unet())
    half = cl.ColorFixApplier([_unit(weight=0.5)], ABAR)(call, _fake_unet())
    over = cl.ColorFixApplier([_unit(weight=1.7)], ABAR)(call, _fake_unet())
    torch.testing.assert_close(half, 0.5 * full + 0.5 * out, rtol=0, atol=1e-5)
    torch.testing.assert_close(over, full, rtol=0, atol=0)


def test_sharp_changes_only_the_unconditional_rows() -> None:
    call = _call(parts=("cond", "uncond", "none"))
    plain = cl.ColorFixApplier([_unit()], ABAR)(call, _fake_unet())
    sharp = cl.ColorFixApplier([_unit(cl.COLORFIX_SHARP, threshold_b=2.0)], ABAR)(call, _fake_unet())
    torch.testing.assert_close(sharp[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(sharp[2], plain[2], rtol=0, atol=1e-6)  # unmarked rows count as cond
    x0 = _x0_eps(plain[1:2], call.x[1:2], 500.0)
    d = 2.0 * 0.01  # Sharpness 2 -> 2 % of the blurred x0
    want = d * _np_blur(x0, 8) + (1 - d) * x0
    torch.testing.assert_close(_x0_eps(sharp[1:2], call.x[1:2], 500.0), want, rtol=0, atol=1e-4)
    assert not torch.allclose(sharp[1], plain[1], atol=1e-4)
    zero = cl.ColorFixApplier([_unit(cl.COLORFIX_SHARP, threshold_b=0.0)], ABAR)(call, _fake_unet())
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("hr_option", "k"), [("Both", 6), ("High res only", 6), ("Low res only", 3)])
def test_hires_doubles_the_blur_where_the_unit_works(hr_option: str, k: int) -> None:
    call = _call(size=16, parts=("cond",))
    ref = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    applier = cl.ColorFixApplier([_unit(reference=ref, threshold_a=3, hr_option=hr_option)], ABAR)
    applier.begin_hires()
    got = applier(call, _fake_unet())
    out = _fake_unet()(call)
    before, after = _x0_eps(out, call.x, 500.0), _x0_eps(got, call.x, 500.0)
    torch.testing.assert_close(after - _np_blur(ref, k), before - _np_blur(before, k), rtol=0, atol=1e-4)


def test_colorfix_runs_outside_the_guidance_range_and_ignores_other_units() -> None:
    call = _call(step=9)
    out = _fake_unet()(call)
    late = cl.ColorFixApplier([_unit(guidance_end=0.2)], ABAR)(call, _fake_unet())
    assert not torch.allclose(late, out, atol=1e-3)  # the extension's colour fix has no guidance test
    other = cl.ColorFixApplier([_unit("tile_resample"), _unit(cl.INPAINT_ONLY)], ABAR)
    assert torch.equal(other(call, _fake_unet()), out)


def test_two_units_apply_in_turn() -> None:
    call = _call(parts=("cond",))
    a, b = _unit(threshold_a=3), _unit(reference=torch.zeros(1, 4, 8, 8), threshold_a=5)
    both = cl.ColorFixApplier([a, b], ABAR)(call, _fake_unet())
    first = cl.ColorFixApplier([a], ABAR)(call, _fake_unet())
    then = cl.ColorFixApplier([b], ABAR)(call, lambda c: first)
    torch.testing.assert_close(both, then, rtol=0, atol=1e-5)


def test_real_tiny_unet_is_left_as_it_was() -> None:
    from diffusers import UNet2DConditionModel

    from modules.engine.sampling import _call_unet
    from tests.fixtures.ldm_checkpoints import unet_config

    torch.manual_seed(0)
    cfg = {k: v for k, v in unet_config("sd1").items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    processors = dict(unet.attn_processors)
    context = int(unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(1)
    call = UNetCall(
        x=torch.randn(2, 4, 8, 8, generator=g),
        timestep=torch.tensor([500.0, 500.0]),
        text=TextCond(torch.randn(2, 77, context, generator=g)),
        image_cond=None,
        added_time_ids=None,
        step=0,
        steps=10,
        sigma=1.0,
        part="cond+uncond",
        owners=(0, 1),
        row_parts=("cond", "uncond"),
    )

    class Job:
        def unet_dtype(self) -> torch.dtype:
            return unet.dtype

    job: Any = Job()
    job.unet, job.upcast = unet, False

    def base(c: UNetCall) -> torch.Tensor:
        with torch.no_grad():
            return _call_unet(job, c)

    plain = base(call)
    ref = torch.randn(1, 4, 8, 8, generator=g)
    got = cl.ColorFixApplier([_unit(cl.COLORFIX_SHARP, reference=ref, threshold_a=3)], ABAR)(call, base)
    cond = slice(0, 1)
    x0p, x0g = _x0_eps(plain[cond], call.x[cond], 500.0), _x0_eps(got[cond], call.x[cond], 500.0)
    torch.testing.assert_close(x0g - _np_blur(ref, 3), x0p - _np_blur(x0p, 3), rtol=0, atol=1e-4)

    def boom(c: UNetCall) -> torch.Tensor:
        raise RuntimeError("unet failed")

    with pytest.raises(RuntimeError):
        cl.InpaintOnlyApplier([_unit(cl.INPAINT_ONLY, mask_of=lambda w, h: torch.ones(1, 1, h, w))], ABAR)(call, boom)
    assert dict(unet.attn_processors) == processors
    for key, value in unet.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(base(call), plain, rtol=0, atol=0)


# ------------------------------------------------------------------------------ inpaint_only


def _block_mask(width: int, height: int, top: int = 16, bottom: int = 32) -> torch.Tensor:
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:bottom, top:bottom] = 1.0
    return mask


def test_inpaint_only_restores_the_unmasked_cells_from_the_reference() -> None:
    call = _call(t=700.0)
    ref = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    masks: list[tuple[int, int]] = []

    def mask_of(width: int, height: int) -> torch.Tensor:
        masks.append((width, height))
        return _block_mask(width, height)

    unit = _unit(cl.INPAINT_ONLY, reference=ref, mask_of=mask_of)
    got = cl.InpaintOnlyApplier([unit], ABAR)(call, _fake_unet())
    out = _fake_unet()(call)
    assert masks == [(64, 64)]
    # pixels 16..31 are masked; the 10/8/1 pool makes latent cells 1..4 masked (each cell sees one
    # pixel beyond its 8x8 block), cells 0 and 5..7 restored
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[1:5, 1:5] = True
    x0 = _x0_eps(got, call.x, 700.0)
    torch.testing.assert_close(got[..., inside], out[..., inside], rtol=0, atol=1e-5)
    torch.testing.assert_close(x0[..., ~inside], ref.expand(2, -1, -1, -1)[..., ~inside], rtol=0, atol=1e-4)
    assert not torch.allclose(got[..., ~inside], out[..., ~inside], atol=1e-3)


def test_inpaint_only_soft_mask_weight_and_lama() -> None:
    call = _call(t=200.0, parts=("cond",))
    ref = torch.zeros(1, 4, 8, 8)
    out = _fake_unet()(call)
    x0_prd = _x0_eps(out, call.x, 200.0)
    half_mask = lambda w, h: torch.full((1, 1, h, w), 0.25)  # noqa: E731
    unit = _unit(cl.INPAINT_ONLY_LAMA, reference=ref, mask_of=half_mask, weight=0.5)
    got = cl.InpaintOnlyApplier([unit], ABAR, "epsilon")(call, _fake_unet())
    # x0 = 0.25 * x0_prd + 0.75 * ref, then mixed half with the plain output
    a, s = _coef(200.0)
    restored = (call.x - a * (0.25 * x0_prd)) / s
    torch.testing.assert_close(got, 0.5 * restored + 0.5 * out, rtol=0, atol=1e-4)
    ignored = cl.InpaintOnlyApplier([_unit("inpaint", mask_of=half_mask), _unit(cl.COLORFIX)], ABAR)
    assert torch.equal(ignored(call, _fake_unet()), out)


def test_inpainting_unet_gets_the_units_image_conditioning() -> None:
    call = dataclasses.replace(_call(parts=("cond", "uncond")), image_cond=torch.full((2, 5, 8, 8), 7.0))
    masked = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    seen: list[UNetCall] = []

    def unet(c: UNetCall) -> torch.Tensor:
        seen.append(c)
        return torch.zeros_like(c.x)

    mask = _block_mask(64, 64, 20, 30) * 0.6  # > 0.5: masked
    unit = _unit("inpaint", mask_of=lambda w, h: mask, masked_latent_of=lambda w, h: masked)
    cl.InpaintOnlyApplier([unit], ABAR)(call, unet)
    cond = seen[0].image_cond
    assert cond is not None and cond.shape == (2, 5, 8, 8)
    want_mask = torch.zeros(8, 8)
    want_mask[2:4, 2:4] = 1.0  # pixels 20..29 touch latent cells 2 and 3 (max-pool 8)
    assert torch.equal(cond[:, 0], want_mask.expand(2, -1, -1))
    assert torch.equal(cond[:, 1:], masked.expand(2, -1, -1, -1))
    assert torch.equal(call.image_cond, torch.full((2, 5, 8, 8), 7.0))  # the caller's call is not changed
    seen.clear()
    cl.InpaintOnlyApplier([_unit("inpaint", mask_of=lambda w, h: mask)], ABAR)(call, unet)
    assert seen[0] is call  # no masked latent given: nothing replaced


# ------------------------------------------------------------------------------ after decoding


def test_paste_unmasked_keeps_the_original_outside_and_blends_at_the_border() -> None:
    w, h, c0 = 48, 16, 24
    generated = Image.new("RGB", (w, h), (200, 100, 0))
    original = Image.new("RGB", (w, h), (10, 20, 250))
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[:, c0:] = 255
    got = np.asarray(cl.paste_unmasked(generated, original, Image.fromarray(mask)), dtype=np.float64)
    gen, org = np.array([200, 100, 0.0]), np.array([10, 20, 250.0])
    # dilated by 3 columns (7-square), then a 7-wide box: column c0-3 sees 4 of 7 masked columns
    for col, m in ((0, 0.0), (c0 - 7, 0.0), (c0 - 6, 1 / 7), (c0 - 3, 4 / 7), (c0, 1.0), (w - 1, 1.0)):
        np.testing.assert_allclose(got[h // 2, col], np.rint(m * gen + (1 - m) * org), atol=0)
    # sigma 3: dilated by one column, a 3-wide box: column c0-2 sees 1 of 3 masked columns
    sharper = np.asarray(cl.paste_unmasked(generated, original, Image.fromarray(mask), sigma=3), dtype=np.float64)
    np.testing.assert_allclose(sharper[h // 2, c0 - 2], np.rint(1 / 3 * gen + 2 / 3 * org), atol=0)


def test_paste_unmasked_size_mismatch_leaves_the_image() -> None:
    generated = Image.new("RGB", (32, 32), (1, 2, 3))
    out = cl.paste_unmasked(generated, Image.new("RGB", (16, 16)), Image.new("L", (16, 16), 255))
    assert out is generated


def test_lama_initial_noise() -> None:
    g = torch.Generator().manual_seed(8)
    noise, latent = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    a, s = _coef(999)
    torch.testing.assert_close(cl.lama_initial_noise(noise, latent, ABAR), a * latent + s * noise, rtol=0, atol=1e-6)
    other = torch.randn(2, 4, 16, 16, generator=g)
    assert cl.lama_initial_noise(other, latent, ABAR) is other


def test_inpaint_only_fallback() -> None:
    assert cl.inpaint_only_fallback("inpaint_only", True) == cl.FALLBACK_WARNING
    assert "inpaint_global_harmonious" in cl.FALLBACK_WARNING
    assert cl.inpaint_only_fallback("inpaint_only", False) is None
    assert cl.inpaint_only_fallback("inpaint_only+lama", True) is None
    assert cl.inpaint_only_fallback("inpaint", True) is None
