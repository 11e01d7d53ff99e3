"""ControlNet's reference modes (reference_only, reference_adain, reference_adain+attn) as a UNet
wrapper, the way sd-webui-controlnet does them (facts read from the extension's
`scripts/hook.py` and `scripts/controlnet.py`; no code taken).

At every UNet call where a reference unit works (guidance range, `hr_option`, weight != 0):

- write: the unit's image, VAE-encoded at the call's size (`latent_of`, the reference x0), is
  noised to the call's timestep rounded to an integer, ``x_t = sqrt(abar_t) * x0 + sqrt(1 -
  abar_t) * noise`` with noise of its own for every row (hook.py's `predict_q_sample` with
  `randn_like`; here drawn from a generator seeded with `seed`), and the bare UNet runs once on
  it with the call's text rows and (fractional) timesteps, without ControlNet residuals. An
  inpainting UNet (5 extra channels) gets ``[0-mask, x0]`` as its image channels in that pass
  (hook.py's "Inpaint Hijack"); any other `image_cond` is passed as the call has it. That pass
  records, per unit:
  - reference_only and reference_adain+attn: the input of every transformer block's
    self-attention (`attn1`, i.e. ``norm1(hidden)``);
  - reference_adain and reference_adain+attn: per row and channel the mean and variance
    (population) of the outputs of the extension's "gn" blocks: the middle block, LDM input
    blocks 4, 5, 7, 8, 10, 11 and output blocks 0..7 (SDXL: 4, 5, 7, 8 and 0..5), mapped to
    the diffusers modules whose output is that LDM block's output (a level's transformer, or its
    resnet where the level has none, or its upsampler for the level's last output block).
- which modules a unit records is the extension's weight ordering: the transformer blocks,
  sorted by channel count, largest first (stable, in LDM order: input, middle, output), block i
  of n has ``attn_weight = i / n``; the gn blocks have ``2 * (1 - w / 6)`` (input, w = 0..5;
  SDXL ``/ 4``), 0 (middle) and ``2 * w / 8`` (output, w = 0..7; SDXL ``/ 6``); a unit records
  into a module when ``weight > module weight`` (so weight 1 reaches every transformer block
  but only part of the gn blocks).
- read, the real call (passed on down the chain unchanged): a transformer block with records
  attends, in `attn1`, to ``[own hidden states, every unit's recorded states]`` along the token
  axis; a gn block with records re-normalises its output: ``(x - mean) / std * std_ref +
  mean_ref`` (means and variances averaged over the units, std = sqrt(max(var, 1e-6))).
- style fidelity: ``f = clamp(threshold_a, 0, 1)`` ("Style Fidelity", default 0.5), cubed on
  SDXL; "ControlNet is more important" makes it 1, "My prompt is more important" or the hires
  pass 0 (hook.py, "Handle attention and AdaIn control"). A module averages the fidelities of
  the units that recorded into it; its result is ``f * y_c + (1 - f) * y_ref`` where y_ref is
  the referenced result for all rows and y_c the same except that the unconditional rows take
  the plain result (own keys only; the un-normalised output) -- computed only when ``f > 1e-5``
  and the call has unconditional rows.
- several reference units work together: each has its own write pass; the records add up.

Everything is installed for one call only, with diffusers' `Attention.set_processor` on the
`attn1` modules and forward hooks on the gn blocks, and taken away in a `finally`: between calls
and after an error the UNet is exactly as it was.

Deviations from the extension: its records are consumed by the first read (a second unit's
write pass of another mode would read and drop the first unit's records of that kind, so
reference_only + reference_adain do not combine there); here every write pass is a plain
UNet pass and the real call reads all records. AdaIN statistics are computed in float32. A
self-attention given an attention mask is left plain.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from modules.core.errors import ValidationError
from modules.engine.controlnet import BALANCED, CONTROL_MORE_IMPORTANT, HR_BOTH, in_guidance, works_in_pass
from modules.engine.sampling import UNetCall, UNetFn

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STYLE_FIDELITY",
    "REFERENCE_ADAIN",
    "REFERENCE_ADAIN_ATTN",
    "REFERENCE_MODULES",
    "REFERENCE_ONLY",
    "ReferenceApplier",
    "ReferenceUnit",
    "is_reference",
]

REFERENCE_ONLY = "reference_only"
REFERENCE_ADAIN = "reference_adain"
REFERENCE_ADAIN_ATTN = "reference_adain+attn"
REFERENCE_MODULES = (REFERENCE_ONLY, REFERENCE_ADAIN, REFERENCE_ADAIN_ATTN)
DEFAULT_STYLE_FIDELITY = 0.5  # the "Style Fidelity" slider (threshold_a)
_ADAIN_EPS = 1e-6
_FIDELITY_EPS = 1e-5
# the extension's gn blocks by LDM index (hook.py, `hook`)
_GN_INPUT = (4, 5, 7, 8, 10, 11)
_GN_OUTPUT = (0, 1, 2, 3, 4, 5, 6, 7)
_GN_INPUT_SDXL = (4, 5, 7, 8)
_GN_OUTPUT_SDXL = (0, 1, 2, 3, 4, 5)

LatentOf = Callable[[int, int], torch.Tensor]  # (width_px, height_px) -> (1, 4, h, w) scaled latent


def is_reference(module: str) -> bool:
    return module in REFERENCE_MODULES


@dataclass
class ReferenceUnit:
    """One enabled reference unit. `latent_of(width_px, height_px)` is the unit's image fitted
    to that size by the unit's resize mode, VAE-encoded and scaled (1, 4, h, w). `threshold_a`
    is the Style Fidelity slider; `threshold_b` is unused by the reference modes (kept for the
    lead's bookkeeping)."""

    index: int
    module: str
    latent_of: LatentOf
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = BALANCED
    hr_option: str = HR_BOTH
    threshold_a: float = DEFAULT_STYLE_FIDELITY
    threshold_b: float = 0.0

    def __post_init__(self) -> None:
        if not is_reference(self.module):
            raise ValidationError(
                f"ControlNet unit {self.index}: {self.module!r} is not a reference preprocessor "
                f"(one of {', '.join(REFERENCE_MODULES)})"
            )

    @property
    def uses_attention(self) -> bool:
        return self.module in (REFERENCE_ONLY, REFERENCE_ADAIN_ATTN)

    @property
    def uses_adain(self) -> bool:
        return self.module in (REFERENCE_ADAIN, REFERENCE_ADAIN_ATTN)

    def active_at(self, step: int, steps: int) -> bool:
        return in_guidance(step, steps, self.guidance_start, self.guidance_end)

    def works_in(self, hires: bool) -> bool:
        return works_in_pass(self.hr_option, hires)

    def style_fidelity(self, sdxl: bool, hires: bool) -> float:
        """The unit's style fidelity at a call (hook.py's `current_style_fidelity`)."""
        fidelity = max(0.0, min(1.0, float(self.threshold_a)))
        if sdxl:
            fidelity = fidelity**3.0
        if self.control_mode == CONTROL_MORE_IMPORTANT:
            return 1.0
        if self.control_mode != BALANCED or hires:
            return 0.0
        return fidelity


# ------------------------------------------------------------------------------ the UNet's sites


@dataclass(eq=False)
class _Site:
    """A module the reference modes touch, with its place in the extension's weight order and
    what one call recorded there."""

    name: str
    module: nn.Module  # the `attn1` Attention (attention sites) or the block (gn sites)
    order_weight: float
    records: list[torch.Tensor] = field(default_factory=list)  # attention: hidden states
    means: list[torch.Tensor] = field(default_factory=list)  # gn: per row and channel
    variances: list[torch.Tensor] = field(default_factory=list)
    fidelities: list[float] = field(default_factory=list)
    used: bool = False  # read at the last call

    def clear(self) -> None:
        self.records, self.means, self.variances, self.fidelities = [], [], [], []
        self.used = False

    def fidelity(self) -> float:
        return sum(self.fidelities) / float(len(self.fidelities))


def _transformer_blocks(unet: Any) -> list[tuple[str, nn.Module]]:
    """Every diffusers BasicTransformerBlock in LDM order (down, middle, up), named as in the UNet."""
    from diffusers.models.attention import BasicTransformerBlock

    names = {id(m): n for n, m in unet.named_modules()}
    parts: list[nn.Module] = [*unet.down_blocks]
    if unet.mid_block is not None:
        parts.append(unet.mid_block)
    parts.extend(unet.up_blocks)
    return [(names[id(m)], m) for part in parts for m in part.modules() if isinstance(m, BasicTransformerBlock)]


def _layer_module(block: nn.Module, j: int) -> nn.Module:
    attentions = getattr(block, "attentions", None)
    if attentions is not None and j < len(attentions):
        return attentions[j]
    return cast(nn.ModuleList, block.resnets)[j]


def _ldm_input_blocks(unet: Any) -> list[nn.Module]:
    """The diffusers module whose output is LDM input block i: conv_in, then per level its
    layers (transformer, or resnet without attention) and its downsampler."""
    blocks: list[nn.Module] = [unet.conv_in]
    for block in unet.down_blocks:
        blocks.extend(_layer_module(block, j) for j in range(len(block.resnets)))
        if getattr(block, "downsamplers", None):
            blocks.append(block.downsamplers[0])
    return blocks


def _ldm_output_blocks(unet: Any) -> list[nn.Module]:
    """The diffusers module whose output is LDM output block i: per level its layers, the
    last one ending with the level's upsampler where there is one."""
    blocks: list[nn.Module] = []
    for block in unet.up_blocks:
        count = len(block.resnets)
        for j in range(count):
            if j == count - 1 and getattr(block, "upsamplers", None):
                blocks.append(block.upsamplers[0])
            else:
                blocks.append(_layer_module(block, j))
    return blocks


def _is_sdxl(unet: Any) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def attention_sites(unet: Any) -> list[_Site]:
    """The self-attentions in the extension's order, with their `attn_weight`."""
    blocks = _transformer_blocks(unet)
    ordered = sorted(blocks, key=lambda nb: -int(nb[1].norm1.normalized_shape[0]))  # type: ignore[union-attr,index]
    return [
        _Site(f"{name}.attn1", block.attn1, i / float(len(ordered)))  # type: ignore[arg-type]
        for i, (name, block) in enumerate(ordered)
    ]


def adain_sites(unet: Any) -> list[_Site]:
    """The gn blocks with their `gn_weight` (already doubled, as the extension does). LDM
    indices the UNet does not have (small test layouts) are left out."""
    names = {id(m): n for n, m in unet.named_modules()}
    inputs, outputs = (_GN_INPUT_SDXL, _GN_OUTPUT_SDXL) if _is_sdxl(unet) else (_GN_INPUT, _GN_OUTPUT)
    ldm_in, ldm_out = _ldm_input_blocks(unet), _ldm_output_blocks(unet)
    sites: list[_Site] = []
    if unet.mid_block is not None:
        sites.append(_Site(names[id(unet.mid_block)], unet.mid_block, 0.0))
    for w, i in enumerate(inputs):
        if i < len(ldm_in):
            sites.append(_Site(names[id(ldm_in[i])], ldm_in[i], 2.0 * (1.0 - w / float(len(inputs)))))
    for w, i in enumerate(outputs):
        if i < len(ldm_out):
            sites.append(_Site(names[id(ldm_out[i])], ldm_out[i], 2.0 * (w / float(len(outputs)))))
    return sites


# ------------------------------------------------------------------------------ one call's state


@dataclass
class _CallState:
    mode: str = "off"  # "write" | "read" | "off"
    fidelity: float = 0.0
    writing: frozenset[int] = frozenset()  # id() of the sites the current write pass records into
    uncond_rows: list[int] = field(default_factory=list)


class _ReferenceAttnProcessor:
    """Wraps a self-attention's processor for one call: records its input (write) or lets it
    attend to the records too (read)."""

    def __init__(self, inner: Any, site: _Site, state: _CallState) -> None:
        self.inner = inner
        self.site = site
        self.state = state

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        inner, site, state = self.inner, self.site, self.state
        if encoder_hidden_states is not None:  # a cross-attention-only block: not self-attention
            return inner(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                **kwargs,
            )
        if state.mode == "write" and id(site) in state.writing:
            site.records.append(hidden_states.detach().clone())
            site.fidelities.append(state.fidelity)
        elif state.mode == "read" and site.records and attention_mask is None:
            site.used = True
            fidelity = site.fidelity()
            context = torch.cat([hidden_states, *(r.to(hidden_states.dtype) for r in site.records)], dim=1)
            referenced: torch.Tensor = inner(attn, hidden_states, encoder_hidden_states=context, **kwargs)
            plain = referenced.clone()
            rows = state.uncond_rows
            if rows and fidelity > _FIDELITY_EPS:
                plain[rows] = inner(attn, hidden_states[rows], **kwargs)
            return fidelity * plain + (1.0 - fidelity) * referenced
        return inner(attn, hidden_states, attention_mask=attention_mask, **kwargs)


def _unwrap(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """A block's output tensor and how to put a changed one back in its place."""
    if isinstance(output, torch.Tensor):
        return output, lambda y: y
    if isinstance(output, tuple):
        rest = output[1:]
        return output[0], lambda y: (y, *rest)
    sample = output.sample  # diffusers BaseOutput (Transformer2DModelOutput)
    return sample, lambda y: dataclasses.replace(output, sample=y)


def _adain_hook(site: _Site, state: _CallState) -> Callable[[nn.Module, Any, Any], Any]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        x, rebuild = _unwrap(output)
        if state.mode == "write" and id(site) in state.writing:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            site.means.append(mean)
            site.variances.append(var)
            site.fidelities.append(state.fidelity)
            return None
        if state.mode != "read" or not site.means:
            return None
        site.used = True
        fidelity = site.fidelity()
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
        std = var.clamp(min=_ADAIN_EPS) ** 0.5
        mean_ref = sum(site.means) / float(len(site.means))
        var_ref = sum(site.variances) / float(len(site.variances))
        std_ref = torch.as_tensor(var_ref).clamp(min=_ADAIN_EPS) ** 0.5
        normalised = (xf - mean) / std * std_ref + mean_ref
        plain = normalised.clone()
        rows = state.uncond_rows
        if rows and fidelity > _FIDELITY_EPS:
            plain[rows] = xf[rows]
        y = fidelity * plain + (1.0 - fidelity) * normalised
        return rebuild(y.to(x.dtype))

    return hook


# ------------------------------------------------------------------------------ the wrapper


def _bare_unet(unet: Any) -> UNetFn:
    """The UNet itself on a UNetCall (the write pass): no residuals, no extras."""

    def run(call: UNetCall) -> torch.Tensor:
        dtype = unet.dtype
        x = call.x
        if call.image_cond is not None:
            x = torch.cat([x, call.image_cond.to(x.dtype)], dim=1)
        kwargs: dict[str, Any] = {}
        if call.text.pooled is not None and call.added_time_ids is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": call.text.pooled.to(dtype),
                "time_ids": call.added_time_ids.to(dtype),
            }
        out = unet(x.to(dtype), call.timestep, encoder_hidden_states=call.text.hidden.to(dtype), **kwargs)
        return out.sample

    return run


class ReferenceApplier:
    """The UNet wrapper of a generation's reference units (`Hooks.add_unet_wrapper`);
    `begin_hires()` marks the hires-fix pass. `write_unet` runs the bare UNet on a UNetCall for
    the write passes (default: the UNet called directly in its dtype; the lead may pass the
    job's own UNet call, e.g. for --upcast-sampling). `calls` counts the write passes; after a
    call `last_used` names the sites (attention `...attn1` modules, gn blocks) that read records."""

    def __init__(
        self,
        unet: Any,
        units: Sequence[ReferenceUnit],
        alphas_cumprod: torch.Tensor,
        seed: int,
        *,
        write_unet: UNetFn | None = None,
    ) -> None:
        self.unet = unet
        self.units = list(units)
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float64).cpu()
        self.generator = torch.Generator().manual_seed(int(seed))
        self.write_unet = write_unet if write_unet is not None else _bare_unet(unet)
        self.hires = False
        self.calls = 0
        self.sdxl = _is_sdxl(unet)
        self.attention = attention_sites(unet)
        self.adain = adain_sites(unet)
        self.last_used: frozenset[str] = frozenset()

    def begin_hires(self, *_args: object) -> None:
        self.hires = True

    def attention_order(self) -> list[tuple[str, float]]:
        """The self-attention modules with their weight threshold, in the extension's order."""
        return [(s.name, s.order_weight) for s in self.attention]

    def adain_order(self) -> list[tuple[str, float]]:
        """The gn blocks with their (doubled) weight threshold."""
        return [(s.name, s.order_weight) for s in self.adain]

    def _sites_of(self, unit: ReferenceUnit) -> frozenset[int]:
        chosen = [s for s in self.attention if unit.uses_attention and unit.weight > s.order_weight]
        chosen += [s for s in self.adain if unit.uses_adain and unit.weight > s.order_weight]
        return frozenset(id(s) for s in chosen)

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        active = [
            u for u in self.units if u.works_in(self.hires) and u.weight != 0 and u.active_at(call.step, call.steps)
        ]
        writes = [(u, self._sites_of(u)) for u in active]
        writes = [(u, sites) for u, sites in writes if sites]
        if not writes:
            self.last_used = frozenset()
            return call_next(call)
        parts = call.parts_of_rows()
        state = _CallState(uncond_rows=[i for i, p in enumerate(parts) if p == "uncond"])
        restore: list[tuple[nn.Module, Any]] = []
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            wanted = frozenset().union(*(sites for _, sites in writes))
            for site in self.attention:
                site.clear()
                if id(site) in wanted:
                    inner = site.module.processor
                    restore.append((site.module, inner))
                    site.module.set_processor(_ReferenceAttnProcessor(inner, site, state))  # type: ignore[operator]
            for site in self.adain:
                site.clear()
                if id(site) in wanted:
                    handles.append(site.module.register_forward_hook(_adain_hook(site, state)))
            for unit, sites in writes:
                state.mode, state.writing = "write", sites
                state.fidelity = unit.style_fidelity(self.sdxl, self.hires)
                with torch.no_grad():
                    self.write_unet(self._write_call(unit, call))
                self.calls += 1
            state.mode, state.writing = "read", frozenset()
            out = call_next(call)
            self.last_used = frozenset(s.name for s in (*self.attention, *self.adain) if s.used)
            return out
        finally:
            state.mode = "off"
            for handle in handles:
                handle.remove()
            for module, inner in reversed(restore):
                module.set_processor(inner)
            for site in (*self.attention, *self.adain):
                site.clear()

    def _write_call(self, unit: ReferenceUnit, call: UNetCall) -> UNetCall:
        """The call of the write pass: the reference noised to the call's timestep."""
        x = call.x
        rows, height, width = int(x.shape[0]), int(x.shape[2]), int(x.shape[3])
        x0 = unit.latent_of(width * 8, height * 8).detach().float()
        if tuple(x0.shape[-2:]) != (height, width):
            log.warning("ControlNet reference: latent %s for a %s call; resized", tuple(x0.shape[-2:]), (height, width))
            x0 = F.interpolate(x0, size=(height, width), mode="bilinear")
        x0 = x0.cpu()[:1].expand(rows, -1, -1, -1)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32)
        last = int(self.alphas_cumprod.shape[0]) - 1
        t = torch.round(call.timestep.detach().float().cpu()).long().clamp(0, last)
        if t.ndim == 0:
            t = t.expand(rows)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = (abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise).to(device=x.device, dtype=x.dtype)
        image_cond = call.image_cond
        if image_cond is not None and int(image_cond.shape[1]) == 5:  # inpainting UNet: mask 0, image = x0
            latent = x0.to(device=x.device, dtype=image_cond.dtype)
            image_cond = torch.cat([torch.zeros_like(latent[:, :1]), latent], dim=1)
        return dataclasses.replace(
            call,
            x=xt,
            image_cond=image_cond,
            down_block_additional_residuals=None,
            mid_block_additional_residual=None,
            extra={},
        )
