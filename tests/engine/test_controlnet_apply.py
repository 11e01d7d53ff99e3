"""ControlNet through the UNet-call wrapper, on tiny fixture ControlNets (SD1 and SDXL): the
residuals handed to the UNet equal a hand-made diffusers `ControlNetModel` call on the same
inputs, scaled as the extension does; weight 0 and inactive steps leave the call untouched;
guidance_end 0.5 stops after the right step; two units add; the three control modes, shuffle,
hr_option; the map's resize modes and pixel-perfect resolution."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from modules.engine import controlnet as cn
from modules.engine.sampling import TextCond, UNetCall
from tests.fixtures.controlnet_files import build_controlnet_by_hand, controlnet_diffusers_state_dict


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {
        family: build_controlnet_by_hand(family, controlnet_diffusers_state_dict(family, seed=seed))
        for family, seed in (("sd1", 0), ("sdxl", 0))
    } | {"sd1-b": build_controlnet_by_hand("sd1", controlnet_diffusers_state_dict("sd1", seed=7))}


def _call(model: Any, *, step: int = 0, steps: int = 10, parts: tuple[str, ...] = ("cond", "uncond")) -> UNetCall:
    torch.manual_seed(0)
    rows = len(parts)
    context = int(model.config.cross_attention_dim)
    sdxl = model.config.addition_embed_type == "text_time"
    pooled = torch.randn(rows, int(model.config.projection_class_embeddings_input_dim) - 6 * 256) if sdxl else None
    return UNetCall(
        x=torch.randn(rows, 4, 8, 8),
        timestep=torch.tensor([500.0] * rows),
        text=TextCond(torch.randn(rows, 77, context), pooled),
        image_cond=None,
        added_time_ids=torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * rows) if sdxl else None,
        step=step,
        steps=steps,
        sigma=1.0,
        part="cond+uncond" if rows > 1 else parts[0],  # type: ignore[arg-type]
        owners=tuple(range(rows)),
        row_parts=parts,  # type: ignore[arg-type]
    )


def _map(seed: int = 1, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


class Capture:
    def __init__(self) -> None:
        self.calls: list[UNetCall] = []

    def __call__(self, call: UNetCall) -> torch.Tensor:
        self.calls.append(call)
        return torch.zeros_like(call.x)


def _by_hand(model: Any, call: UNetCall, detected: np.ndarray) -> list[torch.Tensor]:
    hint = torch.from_numpy(detected).float().div(255).permute(2, 0, 1)[None].expand(call.x.shape[0], -1, -1, -1)
    kwargs: dict[str, Any] = {}
    if call.text.pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": call.text.pooled, "time_ids": call.added_time_ids}
    with torch.no_grad():
        down, mid = model(
            call.x,
            call.timestep,
            encoder_hidden_states=call.text.hidden,
            controlnet_cond=hint,
            return_dict=False,
            **kwargs,
        )
    return [*down, mid]


def _residuals(call: UNetCall) -> list[torch.Tensor]:
    assert call.down_block_additional_residuals is not None and call.mid_block_additional_residual is not None
    return [*call.down_block_additional_residuals, call.mid_block_additional_residual]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_residuals_equal_a_hand_made_diffusers_call(models: dict[str, Any], family: str) -> None:
    model, detected = models[family], _map()
    unit = cn.ActiveUnit(0, model, detected, weight=0.7)
    capture = Capture()
    call = _call(model)
    cn.ControlNetApplier([unit])(call, capture)
    got, want = _residuals(capture.calls[0]), _by_hand(model, call, detected)
    assert len(got) == len(want) > 2  # the down residuals and the middle one (fewer in the tiny models)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w * 0.7, rtol=1e-5, atol=1e-6)
        assert w.abs().sum() > 0  # real residuals, not zeros


def test_weight_zero_and_inactive_steps_leave_the_call_untouched(models: dict[str, Any]) -> None:
    model = models["sd1"]
    call = _call(model)
    for unit in (
        cn.ActiveUnit(0, model, _map(), weight=0.0),
        cn.ActiveUnit(0, model, _map(), guidance_start=0.5),
        cn.ActiveUnit(0, model, _map(), hr_option=cn.HR_HIGH_ONLY),
    ):
        capture = Capture()
        applier = cn.ControlNetApplier([unit])
        applier(call, capture)
        assert capture.calls == [call] and applier.calls == 0


def test_guidance_end_half_stops_after_the_right_step(models: dict[str, Any]) -> None:
    model = models["sd1"]
    applier = cn.ControlNetApplier([cn.ActiveUnit(0, model, _map(), guidance_end=0.5)])
    used = []
    for step in range(10):
        capture = Capture()
        applier(_call(model, step=step, steps=10), capture)
        used.append(capture.calls[0].mid_block_additional_residual is not None)
    assert used == [True] * 6 + [False] * 4  # 5/10 = 0.5 is still inside, 6/10 is past the end


def test_two_units_add(models: dict[str, Any]) -> None:
    a, b = models["sd1"], models["sd1-b"]
    call = _call(a)
    ua, ub = cn.ActiveUnit(0, a, _map(1), weight=0.5), cn.ActiveUnit(1, b, _map(2), weight=1.2)
    both, only_a, only_b = Capture(), Capture(), Capture()
    cn.ControlNetApplier([ua, ub])(call, both)
    cn.ControlNetApplier([ua])(call, only_a)
    cn.ControlNetApplier([ub])(call, only_b)
    for r, ra, rb in zip(
        _residuals(both.calls[0]), _residuals(only_a.calls[0]), _residuals(only_b.calls[0]), strict=True
    ):
        torch.testing.assert_close(r, ra + rb)


def test_control_modes(models: dict[str, Any]) -> None:
    model, detected = models["sd1"], _map()
    call = _call(model)  # row 0 cond, row 1 uncond
    plain = _by_hand(model, call, detected)
    n = len(plain)  # 13 in SD 1.x, 10 in SDXL, 7 in the tiny SD1: the soft scales are taken in order
    soft = [0.8 * 0.825 ** (12 - i) for i in range(n)]
    for mode, scales, uncond_zero in (
        (cn.BALANCED, [0.8] * n, False),
        (cn.PROMPT_MORE_IMPORTANT, soft, False),
        (cn.CONTROL_MORE_IMPORTANT, soft, True),
    ):
        capture = Capture()
        cn.ControlNetApplier([cn.ActiveUnit(0, model, detected, weight=0.8, control_mode=mode)])(call, capture)
        for got, want, scale in zip(_residuals(capture.calls[0]), plain, scales, strict=True):
            torch.testing.assert_close(got[0], want[0] * scale, rtol=1e-5, atol=1e-6)
            expected_uncond = torch.zeros_like(want[1]) if uncond_zero else want[1] * scale
            torch.testing.assert_close(got[1], expected_uncond, rtol=1e-5, atol=1e-6)


def test_hires_pass_softens_canny_and_hr_option(models: dict[str, Any]) -> None:
    model, detected = models["sd1"], _map()
    call = _call(model)
    plain = _by_hand(model, call, detected)
    applier = cn.ControlNetApplier(
        [
            cn.ActiveUnit(0, model, detected, module="canny"),
            cn.ActiveUnit(1, model, detected, hr_option=cn.HR_LOW_ONLY),
        ]
    )
    applier.begin_hires()
    capture = Capture()
    applier(call, capture)
    assert applier.calls == 1  # the low-res-only unit is off in the hires pass
    for got, want, i in zip(_residuals(capture.calls[0]), plain, range(len(plain)), strict=True):
        torch.testing.assert_close(got, want * 0.825 ** (12 - i), rtol=1e-5, atol=1e-6)


def test_shuffle_is_cond_only_and_pooled(models: dict[str, Any]) -> None:
    model, detected = models["sd1"], _map()
    call = _call(model)
    capture = Capture()
    cn.ControlNetApplier([cn.ActiveUnit(0, model, detected, global_pool=True)])(call, capture)
    for got, want in zip(_residuals(capture.calls[0]), _by_hand(model, call, detected), strict=True):
        assert got.shape[2:] == (1, 1)
        torch.testing.assert_close(got[0], want[0].mean(dim=(1, 2), keepdim=True), rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(got[1]) == 0


def test_residuals_from_an_earlier_wrapper_are_kept(models: dict[str, Any]) -> None:
    model = models["sd1"]
    call = _call(model)
    first = Capture()
    cn.ControlNetApplier([cn.ActiveUnit(0, model, _map())])(call, first)
    earlier = dataclasses.replace(
        call,
        down_block_additional_residuals=first.calls[0].down_block_additional_residuals,
        mid_block_additional_residual=first.calls[0].mid_block_additional_residual,
    )
    second = Capture()
    cn.ControlNetApplier([cn.ActiveUnit(0, model, _map())])(earlier, second)
    for a, b in zip(_residuals(second.calls[0]), _residuals(first.calls[0]), strict=True):
        torch.testing.assert_close(a, b * 2)


# ------------------------------------------------------------------------------ the map


def test_resize_modes_and_pixel_perfect() -> None:
    wide = np.zeros((50, 100, 3), dtype=np.uint8)
    wide[:, :50] = 200  # left half light, right half dark
    wide[0, :] = wide[-1, :] = 10  # border median is 10 (the top/bottom rows dominate)
    just = cn.fit_map(wide, 64, 64, cn.JUST_RESIZE)
    assert just.shape == (64, 64, 3)
    crop = cn.fit_map(wide, 64, 64, cn.CROP_AND_RESIZE)  # covers 128x64, keeps the middle 64 columns
    assert crop.shape == (64, 64, 3) and crop[32, 10, 0] == 200 and crop[32, 54, 0] == 0
    fill = cn.fit_map(wide, 64, 64, cn.RESIZE_AND_FILL)  # fits 64x32, centred, median border colour
    assert fill.shape == (64, 64, 3) and (fill[0, 0] == 10).all() and (fill[63, 63] == 10).all()
    assert fill[32, 10, 0] == 200
    assert cn.pixel_perfect_resolution((50, 100), 64, 64, cn.CROP_AND_RESIZE) == 64  # max(1.28, 0.64) * 50
    assert cn.pixel_perfect_resolution((50, 100), 64, 64, cn.RESIZE_AND_FILL) == 32


def test_inpaint_map_protocol() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half masked
    t = cn.map_tensor(rgba)
    assert t.shape == (1, 3, 8, 8)
    assert torch.all(t[:, :, :4] == -1) and torch.all(t[:, :, 4:] == 1)
