"""ControlNet reference modes (`modules.engine.controlnet_reference`) on tiny random diffusers
UNets: inactive units leave the call alone; reference_only's self-attention equals a
hand-computed softmax(QK^T)V over [own states, recorded reference states]; style fidelity mixes
the plain attention into the unconditional rows; AdaIN moves a block's statistics to the
reference's; the extension's weight order picks the modules; the write pass is a plain UNet pass
on the noised reference; processors and hooks are back after the call and after an error; SDXL
and inpainting UNets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from modules.core.errors import ValidationError
from modules.engine import controlnet_reference as cr
from modules.engine.sampling import TextCond, UNetCall, a1111_alphas_cumprod
from tests.fixtures.ldm_checkpoints import unet_config

ABAR = a1111_alphas_cumprod()
SEED = 1234


def _unet(family: str = "sd1", in_channels: int | None = None) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    cfg = {k: v for k, v in unet_config(family).items() if not k.startswith("_")}
    if in_channels is not None:
        cfg["in_channels"] = in_channels
    return UNet2DConditionModel(**cfg).eval()


@pytest.fixture(scope="module")
def sd1() -> Any:
    return _unet("sd1")


def _call(
    unet: Any, parts: tuple[str, ...] = ("cond", "uncond"), *, step: int = 0, steps: int = 10, **kw: Any
) -> UNetCall:
    g = torch.Generator().manual_seed(5)
    rows = len(parts)
    sdxl = unet.config.addition_embed_type == "text_time"
    pooled = None
    if sdxl:
        pooled = torch.randn(rows, int(unet.config.projection_class_embeddings_input_dim) - 6 * 256, generator=g)
    return UNetCall(
        x=torch.randn(rows, 4, 8, 8, generator=g),
        timestep=torch.tensor([500.3] * rows),
        text=TextCond(torch.randn(rows, 77, int(unet.config.cross_attention_dim), generator=g), pooled),
        image_cond=kw.pop("image_cond", None),
        added_time_ids=torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * rows) if sdxl else None,
        step=step,
        steps=steps,
        sigma=None,
        part="cond+uncond",
        owners=tuple(range(rows)),
        row_parts=parts,  # type: ignore[arg-type]
        **kw,
    )


def _latent(seed: int = 9) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _unit(module: str = cr.REFERENCE_ONLY, latent: torch.Tensor | None = None, **kw: Any) -> cr.ReferenceUnit:
    ref = _latent() if latent is None else latent
    return cr.ReferenceUnit(index=kw.pop("index", 0), module=module, latent_of=lambda w, h: ref, **kw)


def _run_unet(unet: Any, call: UNetCall) -> torch.Tensor:
    x = call.x if call.image_cond is None else torch.cat([call.x, call.image_cond], dim=1)
    kw: dict[str, Any] = {}
    if call.text.pooled is not None and call.added_time_ids is not None:
        kw["added_cond_kwargs"] = {"text_embeds": call.text.pooled, "time_ids": call.added_time_ids}
    if call.down_block_additional_residuals is not None:
        kw["down_block_additional_residuals"] = call.down_block_additional_residuals
        kw["mid_block_additional_residual"] = call.mid_block_additional_residual
    with torch.no_grad():
        return unet(x, call.timestep, encoder_hidden_states=call.text.hidden, **kw).sample  # type: ignore[no-any-return]


@contextlib.contextmanager
def _capture(module: nn.Module, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> Iterator[None]:
    """Records a module's first positional input and its output (hooks added after the
    applier's, so they see what the applier made of the output)."""
    handles = [
        module.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone())),
        module.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().clone())),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Spy:
    """A UNet function that records its calls and, optionally, one module's inputs/outputs."""

    def __init__(self, unet: Any, watch: nn.Module | None = None) -> None:
        self.unet, self.watch = unet, watch
        self.calls: list[UNetCall] = []
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def __call__(self, call: UNetCall) -> torch.Tensor:
        self.calls.append(call)
        if self.watch is None:
            return _run_unet(self.unet, call)
        with _capture(self.watch, self.inputs, self.outputs):
            return _run_unet(self.unet, call)


def _attention(attn: Any, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V by hand, per head, then the output projection."""
    q, k, v = attn.to_q(h), attn.to_k(context), attn.to_v(context)
    rows, heads = q.shape[0], attn.heads
    d = q.shape[-1] // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(rows, -1, heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(rows, -1, heads * d)
    return attn.to_out[0](out)  # type: ignore[no-any-return]


def _assert_untouched(unet: Any, before: dict[str, Any]) -> None:
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def _noised(latent: torch.Tensor, rows: int, t: int, seed: int = SEED) -> torch.Tensor:
    noise = torch.randn((rows, *latent.shape[1:]), generator=torch.Generator().manual_seed(seed))
    a = ABAR[t].double()
    return (a.sqrt() * latent.double() + (1 - a).sqrt() * noise.double()).float()


# ------------------------------------------------------------------------------ inactive units


@pytest.mark.parametrize(
    ("unit_kw", "step", "hires"),
    [
        ({"weight": 0.0}, 0, False),
        ({"guidance_start": 0.5}, 2, False),
        ({"guidance_end": 0.3}, 4, False),
        ({"hr_option": "Low res only"}, 0, True),
        ({"hr_option": "High res only"}, 0, False),
    ],
)
def test_inactive_unit_leaves_the_call_alone(sd1: Any, unit_kw: dict[str, Any], step: int, hires: bool) -> None:
    call = _call(sd1, step=step)
    write = Spy(sd1)
    applier = cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN_ATTN, **unit_kw)], ABAR, SEED, write_unet=write)
    if hires:
        applier.begin_hires()
    seen: list[UNetCall] = []

    def base(c: UNetCall) -> torch.Tensor:
        seen.append(c)
        return _run_unet(sd1, c)

    out = applier(call, base)
    assert write.calls == [] and seen == [call]
    assert torch.equal(out, _run_unet(sd1, call))


def test_active_unit_changes_the_output_and_is_deterministic(sd1: Any) -> None:
    call = _call(sd1, step=5)
    plain = _run_unet(sd1, call)
    outs = []
    for _ in range(2):
        applier = cr.ReferenceApplier(sd1, [_unit(guidance_start=0.5)], ABAR, SEED)
        outs.append(applier(call, lambda c: _run_unet(sd1, c)))
        assert applier.calls == 1
    assert not torch.allclose(outs[0], plain, atol=1e-4)
    assert torch.equal(outs[0], outs[1])
    # another seed draws other noise for the reference
    other = cr.ReferenceApplier(sd1, [_unit(guidance_start=0.5)], ABAR, SEED + 1)(call, lambda c: _run_unet(sd1, c))
    assert not torch.equal(other, outs[0])


# ------------------------------------------------------------------------------ attention


def _mid_attn1(unet: Any) -> Any:
    return unet.mid_block.attentions[0].transformer_blocks[0].attn1


@pytest.mark.parametrize(
    ("threshold_a", "control_mode", "fidelity"),
    [
        (0.0, "Balanced", 0.0),
        (0.5, "Balanced", 0.5),
        (1.0, "Balanced", 1.0),
        (0.0, "ControlNet is more important", 1.0),
        (1.0, "My prompt is more important", 0.0),
    ],
)
def test_reference_only_attention_is_hand_computed(
    sd1: Any, threshold_a: float, control_mode: str, fidelity: float
) -> None:
    attn = _mid_attn1(sd1)
    call = _call(sd1, ("cond", "uncond"))
    write = Spy(sd1, attn)
    real = Spy(sd1, attn)
    unit = _unit(threshold_a=threshold_a, control_mode=control_mode)
    applier = cr.ReferenceApplier(sd1, [unit], ABAR, SEED, write_unet=write)
    applier(call, real)
    assert len(write.inputs) == 1 and len(real.inputs) == 1
    ref, h, got = write.inputs[0], real.inputs[0], real.outputs[0]
    with torch.no_grad():
        referenced = _attention(attn, h, torch.cat([h, ref], dim=1))
        plain = _attention(attn, h, h)
    # conditional row: always the referenced attention
    torch.testing.assert_close(got[0], referenced[0], rtol=1e-4, atol=1e-5)
    # unconditional row: the style-fidelity mix of plain and referenced attention
    torch.testing.assert_close(got[1], fidelity * plain[1] + (1 - fidelity) * referenced[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(referenced, plain, atol=1e-4)


def test_two_units_attend_to_both_records(sd1: Any) -> None:
    attn = _mid_attn1(sd1)
    call = _call(sd1, ("cond",))
    write, real = Spy(sd1, attn), Spy(sd1, attn)
    units = [_unit(latent=_latent(1)), _unit(latent=_latent(2), index=1)]
    applier = cr.ReferenceApplier(sd1, units, ABAR, SEED, write_unet=write)
    applier(call, real)
    assert applier.calls == 2 and len(write.inputs) == 2
    # each write pass noised its own reference
    assert not torch.equal(write.calls[0].x, write.calls[1].x)
    h = real.inputs[0]
    with torch.no_grad():
        want = _attention(attn, h, torch.cat([h, write.inputs[0], write.inputs[1]], dim=1))
    torch.testing.assert_close(real.outputs[0], want, rtol=1e-4, atol=1e-5)


def test_weight_order_restricts_the_attention_modules(sd1: Any) -> None:
    applier = cr.ReferenceApplier(sd1, [_unit(weight=0.5)], ABAR, SEED)
    order = applier.attention_order()
    wide = [  # 64 channels, in LDM order (input, middle, output)
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn1",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn1",
    ]
    narrow = [  # 32 channels
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
    ]
    assert order == [(name, i / 11) for i, name in enumerate(wide + narrow)]
    applier(_call(sd1), lambda c: _run_unet(sd1, c))
    assert applier.last_used == frozenset(wide)  # i / 11 < 0.5 for the first six only
    full = cr.ReferenceApplier(sd1, [_unit(weight=1.0)], ABAR, SEED)
    full(_call(sd1), lambda c: _run_unet(sd1, c))
    assert full.last_used == frozenset(wide + narrow)


# ------------------------------------------------------------------------------ AdaIN


def test_adain_moves_block_statistics_to_the_reference(sd1: Any) -> None:
    call = _call(sd1, ("cond", "uncond"))
    write, real = Spy(sd1, sd1.mid_block), Spy(sd1, sd1.mid_block)
    applier = cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN, threshold_a=0.0)], ABAR, SEED, write_unet=write)
    out = applier(call, real)
    ref, got = write.outputs[0], real.outputs[0]
    ref_var, ref_mean = torch.var_mean(ref, dim=(2, 3), correction=0)
    var, mean = torch.var_mean(got, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, ref_var, rtol=1e-3, atol=1e-5)
    plain_mid: list[torch.Tensor] = []
    with _capture(sd1.mid_block, [], plain_mid):
        plain = _run_unet(sd1, call)
    assert not torch.allclose(plain_mid[0].mean(dim=(2, 3)), ref_mean, atol=1e-3)
    assert not torch.allclose(out, plain, atol=1e-4)
    # weight 1 reaches the middle block and LDM output blocks 0..3 (2 * w / 8 < 1), not the
    # input blocks 4, 5 (weights 2 and 5/3)
    assert applier.last_used == {
        "mid_block",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.0.upsamplers.0",
        "up_blocks.1.attentions.0",
    }


def test_adain_fidelity_one_keeps_the_unconditional_row(sd1: Any) -> None:
    """Nothing before the middle block is touched at weight 1, so with style fidelity 1 the
    unconditional row's middle output is the plain UNet's, the conditional one the reference's."""
    call = _call(sd1, ("cond", "uncond"))
    write, real = Spy(sd1, sd1.mid_block), Spy(sd1, sd1.mid_block)
    cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN, threshold_a=1.0)], ABAR, SEED, write_unet=write)(call, real)
    plain_mid: list[torch.Tensor] = []
    with _capture(sd1.mid_block, [], plain_mid):
        _run_unet(sd1, call)
    torch.testing.assert_close(real.outputs[0][1], plain_mid[0][1], rtol=0, atol=1e-6)
    ref_var, ref_mean = torch.var_mean(write.outputs[0][0], dim=(1, 2), correction=0)
    var, mean = torch.var_mean(real.outputs[0][0], dim=(1, 2), correction=0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, ref_var, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------ write pass


def test_write_pass_is_a_plain_pass_on_the_noised_reference(sd1: Any) -> None:
    g = torch.Generator().manual_seed(3)
    down = tuple(
        torch.randn(2, c, s, s, generator=g) for c, s in ((32, 8), (32, 8), (32, 8), (32, 4), (64, 4), (64, 4))
    )
    mid = torch.randn(2, 64, 4, 4, generator=g)
    call = _call(sd1, down_block_additional_residuals=down, mid_block_additional_residual=mid, extra={"x": 1})
    latent = _latent(4)
    sizes: list[tuple[int, int]] = []

    def latent_of(w: int, h: int) -> torch.Tensor:
        sizes.append((w, h))
        return latent

    unit = cr.ReferenceUnit(index=0, module=cr.REFERENCE_ONLY, latent_of=latent_of)
    write, real = Spy(sd1), Spy(sd1)
    cr.ReferenceApplier(sd1, [unit], ABAR, SEED, write_unet=write)(call, real)
    assert sizes == [(64, 64)]
    (w,) = write.calls
    assert w.down_block_additional_residuals is None and w.mid_block_additional_residual is None
    assert w.extra == {} and w.image_cond is None
    assert w.timestep is call.timestep and w.text is call.text and w.row_parts == call.row_parts
    torch.testing.assert_close(w.x, _noised(latent, 2, 500), rtol=1e-6, atol=1e-6)  # timestep 500.3 rounds to 500
    assert real.calls == [call]  # the real call goes on as it came, residuals and all


def test_inpainting_unet_gets_the_reference_as_its_image_channels() -> None:
    unet = _unet("sd1", in_channels=9)
    image_cond = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(2))
    call = _call(unet, image_cond=image_cond)
    latent = _latent(6)
    write, real = Spy(unet), Spy(unet)
    before = dict(unet.attn_processors)
    out = cr.ReferenceApplier(unet, [_unit(cr.REFERENCE_ADAIN_ATTN, latent)], ABAR, SEED, write_unet=write)(call, real)
    (w,) = write.calls
    assert w.image_cond is not None
    assert torch.equal(w.image_cond[:, :1], torch.zeros(2, 1, 8, 8))
    assert torch.equal(w.image_cond[:, 1:], latent.expand(2, -1, -1, -1))
    assert real.calls == [call] and real.calls[0].image_cond is image_cond
    assert not torch.allclose(out, _run_unet(unet, call), atol=1e-4)
    _assert_untouched(unet, before)


def test_default_write_pass_runs_the_unet_itself(sd1: Any) -> None:
    call = _call(sd1)
    spy = Spy(sd1)
    a = cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN_ATTN)], ABAR, SEED)(call, lambda c: _run_unet(sd1, c))
    b = cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN_ATTN)], ABAR, SEED, write_unet=spy)(
        call, lambda c: _run_unet(sd1, c)
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ install / restore


def test_processors_and_hooks_are_restored_after_the_call_and_after_an_error(sd1: Any) -> None:
    before = dict(sd1.attn_processors)
    applier = cr.ReferenceApplier(sd1, [_unit(cr.REFERENCE_ADAIN_ATTN)], ABAR, SEED)
    call = _call(sd1)
    seen: list[Any] = []

    def base(c: UNetCall) -> torch.Tensor:
        seen.append(_mid_attn1(sd1).processor)
        return _run_unet(sd1, c)

    applier(call, base)
    assert seen and seen[0] is not before["mid_block.attentions.0.transformer_blocks.0.attn1.processor"]
    _assert_untouched(sd1, before)

    def failing(c: UNetCall) -> torch.Tensor:
        def boom(*_a: Any) -> None:
            raise RuntimeError("inside the UNet")

        handle = sd1.up_blocks[0].register_forward_pre_hook(boom)
        try:
            return _run_unet(sd1, c)
        finally:
            handle.remove()

    with pytest.raises(RuntimeError, match="inside the UNet"):
        applier(call, failing)
    _assert_untouched(sd1, before)
    # nothing recorded in the failed call is kept for the next one
    assert not any(s.records or s.means or s.fidelities for s in (*applier.attention, *applier.adain))


# ------------------------------------------------------------------------------ SDXL, rules


def test_sdxl_tiny_unet() -> None:
    unet = _unet("sdxl")
    before = dict(unet.attn_processors)
    call = _call(unet)
    applier = cr.ReferenceApplier(unet, [_unit(cr.REFERENCE_ADAIN_ATTN)], ABAR, SEED)
    out = applier(call, lambda c: _run_unet(unet, c))
    assert out.shape == call.x.shape
    assert not torch.allclose(out, _run_unet(unet, call), atol=1e-4)
    _assert_untouched(unet, before)
    assert applier.sdxl
    names = [n for n, _ in applier.attention_order()]
    assert len(names) == 2 * 2 + 2 + 3 * 2  # down level 1 (2 layers), the middle, up level 0 (3 layers); depth 2
    assert "mid_block.attentions.0.transformer_blocks.0.attn1" in applier.last_used


def test_style_fidelity_rules() -> None:
    def f(threshold: float, mode: str = "Balanced", sdxl: bool = False, hires: bool = False) -> float:
        return _unit(threshold_a=threshold, control_mode=mode).style_fidelity(sdxl, hires)

    assert f(0.5) == 0.5 and f(1.7) == 1.0 and f(-1.0) == 0.0
    assert f(0.5, sdxl=True) == 0.125
    assert f(0.5, "My prompt is more important") == 0.0
    assert f(0.2, "ControlNet is more important") == 1.0
    assert f(0.2, "ControlNet is more important", hires=True) == 1.0
    assert f(0.5, hires=True) == 0.0


def test_full_size_layouts_map_the_extension_blocks() -> None:
    """SD1's gn blocks: middle, LDM input 4, 5, 7, 8, 10, 11, output 0..7; SDXL's input 4, 5, 7,
    8, output 0..5 (built on the meta device: no weights)."""
    from diffusers import UNet2DConditionModel

    def order(family: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        cfg = {k: v for k, v in unet_config(family, "full").items() if not k.startswith("_")}
        with torch.device("meta"):
            unet = UNet2DConditionModel(**cfg)
        applier = cr.ReferenceApplier(unet, [], ABAR, 0)
        return applier.adain_order(), applier.attention_order()

    gn, attn = order("sd1")
    assert gn == [
        ("mid_block", 0.0),
        ("down_blocks.1.attentions.0", 2.0),
        ("down_blocks.1.attentions.1", 2 * (1 - 1 / 6)),
        ("down_blocks.2.attentions.0", 2 * (1 - 2 / 6)),
        ("down_blocks.2.attentions.1", 2 * (1 - 3 / 6)),
        ("down_blocks.3.resnets.0", 2 * (1 - 4 / 6)),
        ("down_blocks.3.resnets.1", 2 * (1 - 5 / 6)),
        ("up_blocks.0.resnets.0", 0.0),
        ("up_blocks.0.resnets.1", 2 / 8),
        ("up_blocks.0.upsamplers.0", 4 / 8),
        ("up_blocks.1.attentions.0", 6 / 8),
        ("up_blocks.1.attentions.1", 8 / 8),
        ("up_blocks.1.upsamplers.0", 10 / 8),
        ("up_blocks.2.attentions.0", 12 / 8),
        ("up_blocks.2.attentions.1", 14 / 8),
    ]
    assert len(attn) == 16
    assert [n for n, _ in attn[:6]] == [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
    ]
    assert attn[-1] == ("up_blocks.3.attentions.2.transformer_blocks.0.attn1", 15 / 16)

    gn, attn = order("sdxl")
    assert [n for n, _ in gn] == [
        "mid_block",
        "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1",
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.0.upsamplers.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.upsamplers.0",
    ]
    assert len(attn) == 2 * 2 + 2 * 10 + 10 + 3 * 2 + 3 * 10  # 2 + 10 deep levels, 10 in the middle


def test_unknown_module_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a reference"):
        _unit("canny")


def test_unconditional_call_at_fidelity_one_is_plain_attention(sd1: Any) -> None:
    """A call of unconditional rows only (CFG batch split) at fidelity 1 attends to itself only."""
    call = _call(sd1, ("uncond",))
    attn = _mid_attn1(sd1)
    write, real = Spy(sd1, attn), Spy(sd1, attn)
    cr.ReferenceApplier(sd1, [_unit(threshold_a=1.0)], ABAR, SEED, write_unet=write)(call, real)
    h = real.inputs[0]
    with torch.no_grad():
        torch.testing.assert_close(real.outputs[0], _attention(attn, h, h), rtol=1e-4, atol=1e-5)
