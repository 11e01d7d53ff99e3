"""A1111's "X/Y/Z plot" script: vary up to three parameters and lay the images out in labelled grids.

Arguments (A1111's `ui()` order, 18 values; the API's `script_args`): x_type, x_values,
x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y,
vary_seeds_z, margin_size, csv_mode. An axis type is an index into the tab's axis list (the same
numbering as A1111 for txt2img and img2img: `axis_options(is_img2img)`), or an axis label.

Values are comma-separated (CSV, quotes allowed). Number axes take ranges: `1-5` (every integer),
`1-5 (+2)` (a step), `1-10 [5]` (a count, evenly spaced), and the same with decimals for float
axes. Axes with a fixed list of choices (Sampler, Checkpoint name, VAE ...) read the dropdown list
unless `csv_mode` (then the text; an empty dropdown with text given reads the text too). Every
value of every axis is checked before the first image is made: an unknown sampler, checkpoint,
VAE, style, upscaler, a bad size or number, a Prompt S/R term missing from the prompt are user
errors. Axes A1111 has but this engine cannot act on keep their number and are refused with the
reason.

Each cell is one `process_images` of a copy of `p` (its batch size and batch count as set); the
cell's picture is that result's first image (the batch grid when it makes one). Settings-backed
axes go through `p.override_settings`, which the engine applies to that generation alone (a
checkpoint or VAE is leased per request). Output as A1111: the main grid (one column per Z value,
each a sub-grid of X columns and Y rows, labelled when `draw_legend`), then the sub-grids
(`include_sub_grids`), then every cell's image (`include_lone_images`); the main grid is saved with
`grid_save` as `xyz_grid-NNNN`.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import logging
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.core.errors import NotFoundError, UserError, ValidationError
from modules.core.filenames import FilenameContext
from modules.core.infotext import build_infotext, format_params_line
from modules.core.requests import Limits, validate_request
from modules.engine import samplers as smp
from modules.engine.hooks import BatchEvent, Hooks
from modules.engine.processing import LATENT_UPSCALE_MODES
from modules.extensions import runtime
from modules.extensions.builtin_scripts.grid_labels import (
    GridAnnotation,
    GridStyle,
    draw_grid_annotations,
    image_grid,
)
from modules.extensions.processing_api import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
    fix_seed,
    process_images,
)
from modules.extensions.script_base import Script

log = logging.getLogger(__name__)

TITLE = "X/Y/Z plot"
FILL_SYMBOL = "\U0001f4d2"  # 📒
SEED_AXES = ("Seed", "Var. seed")
LATENT_UPSCALERS = tuple(LATENT_UPSCALE_MODES)  # the hires latent modes the engine runs
PLAIN_UPSCALERS = ("None", "Lanczos", "Nearest")
RNG_SOURCES = ("GPU", "CPU", "NV")
FACE_MODELS = ("CodeFormer", "GFPGAN")
_TRUE = ("true", "yes", "y", "1")
_FALSE = ("false", "no", "n", "0")

Apply = Callable[[StableDiffusionProcessing, Any, Sequence[Any]], None]
Confirm = Callable[[StableDiffusionProcessing, Sequence[Any]], None]


# -- values: CSV and ranges ------------------------------------------------------------------


def csv_values(text: str) -> list[str]:
    """`a, "b, c", d` -> ["a", "b, c", "d"] (A1111's reading: CSV, spaces after commas skipped)."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [value.strip() for row in rows for value in row]


def to_csv(values: Sequence[Any]) -> str:
    """The values as one CSV line (quoted where needed): how a dropdown's choice reads as text."""
    out = io.StringIO()
    csv.writer(out).writerow([str(v) for v in values])
    return out.getvalue().strip()


_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_RE_INT_STEP = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*(?:\(\s*({_INT})\s*\))?\s*")
_RE_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]\s*")
_RE_FLOAT_STEP = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*(?:\(\s*({_FLOAT})\s*\))?\s*")
_RE_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+)\s*\]\s*")


def _num(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _evenly(start: float, end: float, count: int) -> list[float]:
    if count <= 1:
        return [start][:count]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def expand_int_ranges(values: Sequence[str]) -> list[str | int]:
    """`1-5` -> 1..5, `1-10 (+3)` -> 1, 4, 7, 10, `1-10 [4]` -> 1, 4, 7, 10 (A1111's count form:
    evenly spaced, truncated); a descending range counts down. Other values are kept as text."""
    out: list[str | int] = []
    for value in values:
        if not value.strip():
            continue
        count = _RE_INT_COUNT.fullmatch(value)
        step_form = _RE_INT_STEP.fullmatch(value)
        if count is not None:
            start, end, n = int(_num(count[1])), int(_num(count[2])), int(count[3])
            out.extend(int(v) for v in _evenly(start, end, n))
        elif step_form is not None:
            start, end = int(_num(step_form[1])), int(_num(step_form[2]))
            step = int(_num(step_form[3])) if step_form[3] else (1 if end >= start else -1)
            if step == 0:
                raise ValueError(f"{value!r}: the step must not be 0")
            out.extend(range(start, end + (1 if step > 0 else -1), step))
        else:
            out.append(value)
    return out


def expand_float_ranges(values: Sequence[str]) -> list[str | float]:
    """As `expand_int_ranges` for decimals: `0.5-1.5 (+0.25)`, `1-2 [5]`; without a step the step
    is 1. The end is included when the steps land on it (no value past the end)."""
    out: list[str | float] = []
    for value in values:
        if not value.strip():
            continue
        count = _RE_FLOAT_COUNT.fullmatch(value)
        step_form = _RE_FLOAT_STEP.fullmatch(value)
        if count is not None:
            start, end, n = float(_num(count[1])), float(_num(count[2])), int(count[3])
            out.extend(round(v, 10) for v in _evenly(start, end, n))
        elif step_form is not None:
            start, end = float(_num(step_form[1])), float(_num(step_form[2]))
            step = float(_num(step_form[3])) if step_form[3] else (1.0 if end >= start else -1.0)
            if step == 0:
                raise ValueError(f"{value!r}: the step must not be 0")
            n = math.floor((end - start) / step + 1e-9) + 1
            out.extend(round(start + i * step, 10) for i in range(max(n, 0)))
        else:
            out.append(value)
    return out


# -- axis options ----------------------------------------------------------------------------


class Permutations:
    """The type of the Prompt order axis: every ordering of the given terms."""


@dataclass(frozen=True)
class AxisOption:
    """One entry of the axis type lists. `tab`: None on both tabs, else "txt2img" / "img2img"
    only. `unsupported`: why this engine cannot act on it (its number stays, choosing it is an
    error). `cost`: slow-to-change axes (checkpoints) are iterated outermost."""

    label: str
    type: type
    apply: Apply
    format_value: Callable[[AxisOption, Any], str] | None = None
    confirm: Confirm | None = None
    cost: float = 0.0
    choices: Callable[[], list[str]] | None = None
    tab: str | None = None
    unsupported: str | None = None

    def label_for(self, value: Any) -> str:
        """The value's text in the grid legend."""
        if self.format_value is not None:
            return self.format_value(self, value)
        if isinstance(value, float):
            value = round(value, 8)
        return f"{self.label}: {value}"


def _env() -> runtime.ScriptEnvironment | None:
    return runtime.maybe_environment()


def _option(key: str, default: Any) -> Any:
    env = _env()
    if env is None or key not in env.options:
        return default
    return env.options.get(key)


def _field(name: str) -> Apply:
    def apply(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
        setattr(p, name, x)

    return apply


def _override(key: str, *, boolean: bool = False) -> Apply:
    def apply(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
        p.override_settings[key] = str(x).strip().lower() == "true" if boolean else x

    return apply


def _nothing(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    return None


def _plain(opt: AxisOption, x: Any) -> str:
    return str(round(x, 8) if isinstance(x, float) else x)


def _no_label(opt: AxisOption, x: Any) -> str:
    return ""


def _joined(opt: AxisOption, x: Any) -> str:
    return ", ".join(str(v) for v in x)


def _basename(opt: AxisOption, x: Any) -> str:
    return os.path.basename(str(x))


def _invalid(opt_label: str, value: Any, why: str = "") -> ValidationError:
    return ValidationError(f"X/Y/Z plot: {opt_label}: {value!r} {why}".rstrip())


# prompt search and replace, prompt order


def _prompt_text(p: StableDiffusionProcessing, attr: str) -> str:
    value = getattr(p, attr)
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value or "")


def _confirm_prompt_sr(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    if not xs:
        return
    term = str(xs[0])
    if term not in _prompt_text(p, "prompt") and term not in _prompt_text(p, "negative_prompt"):
        raise ValidationError(f"X/Y/Z plot: Prompt S/R did not find {term!r} in the prompt or the negative prompt")


def _apply_prompt_sr(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    term, replacement = str(xs[0]), str(x)

    def swap(value: Any) -> Any:
        if isinstance(value, list):
            return [str(v).replace(term, replacement) for v in value]
        return str(value or "").replace(term, replacement)

    p.prompt = swap(p.prompt)
    p.negative_prompt = swap(p.negative_prompt)


def _confirm_prompt_order(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    prompt = _prompt_text(p, "prompt")
    for ordering in xs[:1]:
        missing = [t for t in ordering if t not in prompt]
        if missing:
            raise ValidationError(f"X/Y/Z plot: Prompt order: {', '.join(map(repr, missing))} not in the prompt")


def reorder_prompt(prompt: str, ordering: Sequence[str]) -> str:
    """The terms of `ordering` put into the places where those terms first stand in `prompt`, in
    the given order (the earliest place gets the first term)."""
    places = sorted((prompt.find(term), term) for term in ordering)
    out: list[str] = []
    cursor = 0
    for (pos, term), new in zip(places, ordering, strict=True):
        if pos < cursor:  # overlapping terms: leave the rest as it is
            break
        out.append(prompt[cursor:pos])
        out.append(new)
        cursor = pos + len(term)
    out.append(prompt[cursor:])
    return "".join(out)


def _apply_prompt_order(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    if isinstance(p.prompt, list):
        p.prompt = [reorder_prompt(str(v), list(x)) for v in p.prompt]
    else:
        p.prompt = reorder_prompt(str(p.prompt or ""), list(x))


# samplers, schedules, upscalers


def _sampler_names() -> list[str]:
    return [s.name for s in smp.list_samplers()]


def _schedule_labels() -> list[str]:
    return [s.label for s in smp.list_schedulers()]


def _confirm_samplers(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    for x in xs:
        try:
            smp.resolve_sampler(str(x), None)
        except NotFoundError:
            raise ValidationError(f"X/Y/Z plot: unknown sampler: {x}") from None


def _confirm_schedules(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    base = _sampler_names()[0]
    for x in xs:
        try:
            smp.resolve_sampler(base, str(x))
        except NotFoundError:
            raise ValidationError(f"X/Y/Z plot: unknown schedule type: {x}") from None


def _upscaler_names() -> list[str]:
    env = _env()
    names: list[str] = []
    if env is not None and env.upscalers is not None:
        names = [str(n) for n in env.upscalers.names()]
    return [*LATENT_UPSCALERS, *(n for n in names if n not in LATENT_UPSCALERS)]


def _upscaler_name(x: Any) -> str:
    text = str(x).strip()
    for name in (*LATENT_UPSCALERS, *PLAIN_UPSCALERS):
        if name.lower() == text.lower():
            return name
    env = _env()
    if env is not None and env.upscalers is not None:
        try:
            return str(env.upscalers.get(text).name)
        except NotFoundError:
            pass
    raise ValidationError(f"X/Y/Z plot: unknown hires upscaler: {text}")


def _confirm_upscalers(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    for x in xs:
        _upscaler_name(x)


def _apply_upscaler(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    p.hr_upscaler = _upscaler_name(x)  # type: ignore[attr-defined]


# checkpoints, VAE


def _checkpoint_titles() -> list[str]:
    env = _env()
    if env is None or env.registry is None:
        return []
    return sorted((c.title for c in env.registry.checkpoints()), key=str.casefold)


def find_checkpoint(query: str) -> Any:
    """A1111's closest match: any exact alias (name, title, hash ...), else the shortest title
    that contains the text. None when nothing matches."""
    env = _env()
    if env is None or env.registry is None:
        return None
    try:
        return env.registry.find_checkpoint(query)
    except NotFoundError:
        pass
    lowered = query.strip().lower()
    found = [c for c in env.registry.checkpoints() if lowered and lowered in c.title.lower()]
    return min(found, key=lambda c: len(c.title)) if found else None


def _confirm_checkpoints(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    for x in xs:
        if find_checkpoint(str(x)) is None:
            raise ValidationError(f"X/Y/Z plot: unknown checkpoint: {x}")


def _confirm_checkpoints_or_none(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    _confirm_checkpoints(p, [x for x in xs if x not in (None, "", "None", "none")])


def _apply_checkpoint(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    info = find_checkpoint(str(x))
    if info is None:
        raise ValidationError(f"X/Y/Z plot: unknown checkpoint: {x}")
    p.override_settings["sd_model_checkpoint"] = info.name


def _apply_refiner(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    if x in (None, "", "None", "none"):
        p.refiner_checkpoint = None
        return
    info = find_checkpoint(str(x))
    p.refiner_checkpoint = info.name if info is not None else str(x)


def _vae_names() -> list[str]:
    env = _env()
    names = [v.name for v in env.registry.vaes()] if env is not None and env.registry is not None else []
    return ["Automatic", "None", *names]


def vae_choice(x: Any) -> str:
    """The `sd_vae` value for a VAE axis value (case-insensitive; "auto" = Automatic)."""
    text = str(x).strip()
    if text.lower() in ("auto", "automatic"):
        return "Automatic"
    if text.lower() == "none":
        return "None"
    for name in _vae_names()[2:]:
        if name.lower() == text.lower():
            return name
    env = _env()
    if env is not None and env.registry is not None:
        try:
            return str(env.registry.find_vae(text).name)
        except NotFoundError:
            pass
    raise ValidationError(f"X/Y/Z plot: unknown VAE: {text}")


def _confirm_vaes(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    for x in xs:
        vae_choice(x)


def _apply_vae(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    p.override_settings["sd_vae"] = vae_choice(x)


# styles, face restore, size, UniPC, choices checks


def _style_names() -> list[str]:
    env = _env()
    if env is None or env.styles is None:
        return []
    return [s.name for s in env.styles.styles()]


def _style_parts(x: Any) -> list[str]:
    return [part.strip() for part in str(x).split(",") if part.strip()]


def _confirm_styles(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    known = set(_style_names())
    for x in xs:
        unknown = [part for part in _style_parts(x) if part not in known]
        if unknown:
            raise ValidationError(f"X/Y/Z plot: unknown style: {', '.join(unknown)}")


def _apply_styles(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    p.styles = [*p.styles, *_style_parts(x)]


def _confirm_face_restore(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    current = str(_option("face_restoration_model", "CodeFormer") or "CodeFormer")
    for x in xs:
        value = str(x).strip().lower()
        if value in _TRUE or value in _FALSE:
            continue
        if value in (m.lower() for m in FACE_MODELS):
            if value != current.lower():
                raise ValidationError(
                    f"X/Y/Z plot: Face restore: {x!r} needs the face restoration model changed per image, which "
                    f"this engine does not do; choose {x} in Settings (face_restoration_model, now {current}) "
                    "and use True/False here"
                )
            continue
        raise _invalid("Face restore", x, "is not True/False/CodeFormer/GFPGAN")


def _apply_face_restore(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    value = str(x).strip().lower()
    p.restore_faces = value in _TRUE or value in (m.lower() for m in FACE_MODELS)


def parse_size(x: Any) -> tuple[int, int]:
    """`"512x768"` -> (512, 768)."""
    width, sep, height = str(x).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise _invalid("Size", x, "is not a size like 512x768") from None


def _confirm_sizes(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
    for x in xs:
        parse_size(x)


def _apply_size(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    p.width, p.height = parse_size(x)


def _apply_uni_pc_order(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    p.override_settings["uni_pc_order"] = min(int(x), max(int(p.steps) - 1, 1))


def _one_of(label: str, choices: Sequence[str]) -> Confirm:
    def confirm(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
        lowered = [c.lower() for c in choices]
        for x in xs:
            if str(x).strip().lower() not in lowered:
                raise _invalid(label, x, f"is not one of {', '.join(choices)}")

    return confirm


def _canonical(choices: Sequence[str], apply: Apply) -> Apply:
    """`apply` with the value spelled as in `choices` (matched case-insensitively)."""

    def wrapped(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
        text = str(x).strip()
        apply(p, next((c for c in choices if c.lower() == text.lower()), text), xs)

    return wrapped


def _in_range(label: str, low: float, high: float) -> Confirm:
    def confirm(p: StableDiffusionProcessing, xs: Sequence[Any]) -> None:
        for x in xs:
            if not low <= float(x) <= high:
                raise _invalid(label, x, f"is out of range [{low}, {high}]")

    return confirm


def _booleans() -> list[str]:
    return ["False", "True"]


_TOME = "token merging (ToMe) is not implemented in this engine"

AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", str, _nothing, format_value=_no_label),
    AxisOption("Seed", int, _field("seed")),
    AxisOption("Var. seed", int, _field("subseed")),
    AxisOption("Var. strength", float, _field("subseed_strength"), confirm=_in_range("Var. strength", 0, 1)),
    AxisOption("Steps", int, _field("steps")),
    AxisOption("Hires steps", int, _field("hr_second_pass_steps"), tab="txt2img"),
    AxisOption("CFG Scale", float, _field("cfg_scale")),
    AxisOption("Image CFG Scale", float, _field("image_cfg_scale"), tab="img2img"),
    AxisOption("Prompt S/R", str, _apply_prompt_sr, format_value=_plain, confirm=_confirm_prompt_sr),
    AxisOption("Prompt order", Permutations, _apply_prompt_order, format_value=_joined, confirm=_confirm_prompt_order),
    AxisOption(
        "Sampler",
        str,
        _field("sampler_name"),
        format_value=_plain,
        confirm=_confirm_samplers,
        choices=_sampler_names,
        tab="txt2img",
    ),
    AxisOption(
        "Hires sampler",
        str,
        _field("hr_sampler_name"),
        confirm=_confirm_samplers,
        choices=_sampler_names,
        tab="txt2img",
    ),
    AxisOption(
        "Sampler",
        str,
        _field("sampler_name"),
        format_value=_plain,
        confirm=_confirm_samplers,
        choices=_sampler_names,
        tab="img2img",
    ),
    AxisOption(
        "Checkpoint name",
        str,
        _apply_checkpoint,
        format_value=_basename,
        confirm=_confirm_checkpoints,
        cost=1.0,
        choices=_checkpoint_titles,
    ),
    AxisOption("Negative Guidance minimum sigma", float, _field("s_min_uncond")),
    AxisOption("Sigma Churn", float, _field("s_churn")),
    AxisOption("Sigma min", float, _field("s_tmin")),
    AxisOption("Sigma max", float, _field("s_tmax")),
    AxisOption("Sigma noise", float, _field("s_noise")),
    AxisOption("Schedule type", str, _field("scheduler"), confirm=_confirm_schedules, choices=_schedule_labels),
    AxisOption("Schedule min sigma", float, _override("sigma_min")),
    AxisOption("Schedule max sigma", float, _override("sigma_max")),
    AxisOption("Schedule rho", float, _override("rho")),
    AxisOption("Beta schedule alpha", float, _override("beta_dist_alpha")),
    AxisOption("Beta schedule beta", float, _override("beta_dist_beta")),
    AxisOption("Eta", float, _field("eta")),
    AxisOption("Clip skip", int, _override("CLIP_stop_at_last_layers"), confirm=_in_range("Clip skip", 1, 12)),
    AxisOption("Denoising", float, _field("denoising_strength"), confirm=_in_range("Denoising", 0, 1)),
    AxisOption(
        "Initial noise multiplier",
        float,
        _field("initial_noise_multiplier"),
        tab="img2img",
    ),
    AxisOption("Extra noise", float, _override("img2img_extra_noise")),
    AxisOption(
        "Hires upscaler", str, _apply_upscaler, confirm=_confirm_upscalers, choices=_upscaler_names, tab="txt2img"
    ),
    AxisOption("Cond. Image Mask Weight", float, _override("inpainting_mask_weight"), tab="img2img"),
    AxisOption("VAE", str, _apply_vae, confirm=_confirm_vaes, cost=0.7, choices=_vae_names),
    AxisOption("Styles", str, _apply_styles, confirm=_confirm_styles, choices=_style_names),
    AxisOption("UniPC Order", int, _apply_uni_pc_order, cost=0.5, confirm=_in_range("UniPC Order", 1, 50)),
    AxisOption("Face restore", str, _apply_face_restore, format_value=_plain, confirm=_confirm_face_restore),
    AxisOption("Token merging ratio", float, _nothing, unsupported=_TOME),
    AxisOption("Token merging ratio high-res", float, _nothing, unsupported=_TOME),
    AxisOption(
        "Always discard next-to-last sigma",
        str,
        _override("always_discard_next_to_last_sigma", boolean=True),
        confirm=_one_of("Always discard next-to-last sigma", _booleans()),
        choices=_booleans,
    ),
    AxisOption(
        "SGM noise multiplier",
        str,
        _override("sgm_noise_multiplier", boolean=True),
        confirm=_one_of("SGM noise multiplier", _booleans()),
        choices=_booleans,
    ),
    AxisOption(
        "Refiner checkpoint",
        str,
        _apply_refiner,
        format_value=_basename,
        confirm=_confirm_checkpoints_or_none,
        cost=1.0,
        choices=lambda: ["None", *_checkpoint_titles()],
    ),
    AxisOption("Refiner switch at", float, _field("refiner_switch_at"), confirm=_in_range("Refiner switch at", 0, 1)),
    AxisOption(
        "RNG source",
        str,
        _canonical(RNG_SOURCES, _override("randn_source")),
        confirm=_one_of("RNG source", RNG_SOURCES),
        choices=lambda: list(RNG_SOURCES),
    ),
    AxisOption(
        "FP8 mode",
        str,
        _nothing,
        cost=0.9,
        choices=lambda: ["Disable", "Enable for SDXL", "Enable"],
        unsupported="fp8 weight storage is not implemented in this engine",
    ),
    AxisOption("Size", str, _apply_size, confirm=_confirm_sizes),
)
"""A1111's axis list in A1111's order; `axis_options(is_img2img)` is one tab's numbering."""

# txt2img has no Initial noise multiplier effect (A1111 lists it there, where it changes nothing)
_TXT2IMG_NOOP = AxisOption(
    "Initial noise multiplier",
    float,
    _nothing,
    unsupported="it only acts on img2img (the noise txt2img starts from is never scaled)",
)


def axis_options(is_img2img: bool) -> list[AxisOption]:
    """One tab's axis types, numbered as A1111 numbers them (the index is the API's `x_type`)."""
    tab = "img2img" if is_img2img else "txt2img"
    out: list[AxisOption] = []
    for opt in AXIS_OPTIONS:
        if opt.label == "Initial noise multiplier" and not is_img2img:
            out.append(_TXT2IMG_NOOP)
        elif opt.tab is None or opt.tab == tab:
            out.append(opt)
    return out


def pick_axis(options: Sequence[AxisOption], value: Any, axis: str) -> AxisOption:
    """An axis type from the API or the page: its index (A1111), or its label."""
    if value is None or value == "":
        return options[0]
    index: int | None = None
    if isinstance(value, bool):
        index = int(value)
    elif isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            index = int(text)
        else:
            for opt in options:
                if opt.label.lower() == text.lower():
                    return opt
            raise ValidationError(f"X/Y/Z plot: {axis} type {value!r} is not an axis of this tab")
    if index is None or not 0 <= index < len(options):
        raise ValidationError(
            f"X/Y/Z plot: {axis} type {value!r} is not an axis number of this tab (0-{len(options) - 1})"
        )
    return options[index]


def axis_values(
    opt: AxisOption, text: Any, dropdown: Any, csv_mode: bool, p: StableDiffusionProcessing, axis: str
) -> list[Any]:
    """The axis's values, expanded, converted and checked (user errors name the axis)."""
    if opt.unsupported:
        raise ValidationError(f"X/Y/Z plot: the {axis} axis {opt.label!r} cannot be used here: {opt.unsupported}")
    if opt.label == "Nothing":
        return [None]
    if isinstance(dropdown, str):
        dropdown = csv_values(dropdown)
    from_dropdown = opt.choices is not None and not csv_mode and bool(dropdown)
    raw = [str(v).strip() for v in dropdown] if from_dropdown else csv_values(str(text or ""))
    raw = [v for v in raw if v]
    try:
        values: list[Any]
        if opt.type is int:
            values = [int(_num(v)) if isinstance(v, str) else v for v in expand_int_ranges(raw)]
        elif opt.type is float:
            values = [float(_num(v)) if isinstance(v, str) else v for v in expand_float_ranges(raw)]
        elif opt.type is Permutations:
            values = list(itertools.permutations(raw)) if raw else []
        else:
            values = raw
    except ValueError as exc:
        raise ValidationError(f"X/Y/Z plot: {axis} values for {opt.label}: {exc}") from None
    if not values:
        raise ValidationError(f"X/Y/Z plot: no {axis} values for {opt.label}")
    if opt.confirm is not None:
        opt.confirm(p, values)
    return values


def axis_text(opt: AxisOption, text: Any, dropdown: Any, csv_mode: bool) -> str:
    """The axis values as the infotext writes them ("X Values")."""
    if opt.choices is not None and not csv_mode and dropdown and not isinstance(dropdown, str):
        return to_csv(list(dropdown))
    return str(text or "")


# -- the page's axis controls (what the X/Y/Z rows show for an axis type) ----------------------


def _option_at(options: Sequence[AxisOption], kind: Any) -> AxisOption:
    try:
        return pick_axis(options, kind, "axis")
    except ValidationError:
        return options[0]


def axis_controls(
    options: Sequence[AxisOption], kind: Any, text: Any, chosen: Any, csv_mode: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Updates of the fill button, the values textbox and the values dropdown when the axis type
    or the CSV mode changes: axes with choices show the dropdown (or, in CSV mode, the textbox)
    and carry over the values that are valid choices."""
    opt = _option_at(options, kind)
    if opt.choices is None:
        return {"visible": False}, {"visible": True, "value": text}, {"visible": False}
    choices = opt.choices()
    chosen = list(chosen or []) if not isinstance(chosen, str) else csv_values(chosen)
    if csv_mode:
        if chosen:
            text = to_csv([c for c in chosen if c in choices])
            chosen = []
    elif text:
        chosen = [c for c in csv_values(str(text)) if c in choices]
        text = ""
    return (
        {"visible": True},
        {"visible": bool(csv_mode), "value": text},
        {"choices": choices, "visible": not csv_mode, "value": chosen},
    )


def fill_values(options: Sequence[AxisOption], kind: Any, csv_mode: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fill button: every choice of the axis, into the textbox (CSV mode) or the dropdown."""
    opt = _option_at(options, kind)
    if opt.choices is None:
        return {}, {}
    if csv_mode:
        return {"value": to_csv(opt.choices())}, {}
    return {}, {"choices": opt.choices(), "value": opt.choices()}


def swap_axes(options: Sequence[AxisOption], t1: Any, v1: Any, d1: Any, t2: Any, v2: Any, d2: Any) -> tuple[Any, ...]:
    """The swap buttons: two axes' type (as its label), values and chosen values exchanged."""
    return _option_at(options, t2).label, v2, d2, _option_at(options, t1).label, v1, d1


# -- the grid ---------------------------------------------------------------------------------


def _with_params(infotext: str, p: StableDiffusionProcessing, extra: dict[str, Any]) -> str:
    """`infotext` with `extra` appended to its parameters line."""
    if not extra:
        return infotext
    if not infotext:
        return build_infotext(_prompt_text(p, "prompt"), _prompt_text(p, "negative_prompt"), extra)
    return f"{infotext}, {format_params_line(extra)}"


def cell_p(p: StableDiffusionProcessing, axes: Sequence[_Axis], ix: int, iy: int, iz: int) -> StableDiffusionProcessing:
    """A copy of `p` with the cell's axis values applied (and its seed varied as asked)."""
    xa, ya, za = axes
    pc = copy.copy(p)
    pc.styles = list(p.styles or [])
    pc.override_settings = dict(p.override_settings or {})
    pc.extra_generation_params = dict(p.extra_generation_params or {})
    xa.opt.apply(pc, xa.values[ix], xa.values)
    ya.opt.apply(pc, ya.values[iy], ya.values)
    za.opt.apply(pc, za.values[iz], za.values)
    if isinstance(pc.seed, int) and pc.seed != -1:
        xdim = len(xa.values) if xa.vary_seeds else 1
        ydim = len(ya.values) if ya.vary_seeds else 1
        if xa.vary_seeds:
            pc.seed += ix
        if ya.vary_seeds:
            pc.seed += iy * xdim
        if za.vary_seeds:
            pc.seed += iz * xdim * ydim
    return pc


def check_cells(p: StableDiffusionProcessing, axes: Sequence[_Axis]) -> None:
    """Every cell's request passes the engine's request checks (sizes, steps, ...) before the
    first image is made; the error names the cell."""
    env = _env()
    limits = Limits.from_options(env.options) if env is not None else Limits()  # max_image_side too
    xa, ya, za = axes
    for iz, iy, ix in itertools.product(range(len(za.values)), range(len(ya.values)), range(len(xa.values))):
        request = cell_p(p, axes, ix, iy, iz).to_request()
        try:
            validate_request(request, limits)
        except ValidationError as exc:
            where = ", ".join(
                f"{a.name}={a.labels[i] or a.values[i]}"
                for a, i in ((xa, ix), (ya, iy), (za, iz))
                if a.opt.label != "Nothing"
            )
            raise ValidationError(f"X/Y/Z plot: cell {where}: {exc.message}") from None


@dataclass
class _Cell:
    processed: Processed | None = None
    image: Image.Image | None = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    infotext: str = ""


@dataclass
class _Axis:
    name: str
    opt: AxisOption
    values: list[Any]
    text: str
    vary_seeds: bool

    @property
    def labels(self) -> list[str]:
        return [self.opt.label_for(v) for v in self.values]


class XYZPlot(Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return True

    def ui(self, is_img2img: bool) -> Any:
        import gradio as gr

        options = axis_options(is_img2img)
        self.current_axis_options = options
        labels = [o.label for o in options]

        def axis_row(name: str, default: int) -> tuple[Any, Any, Any, Any]:
            with gr.Row():
                kind = gr.Dropdown(
                    label=f"{name} type",
                    choices=labels,
                    value=labels[default],
                    type="index",
                    elem_id=self.elem_id(f"{name.lower()}_type"),
                )
                values = gr.Textbox(label=f"{name} values", lines=1, elem_id=self.elem_id(f"{name.lower()}_values"))
                dropdown = gr.Dropdown(
                    label=f"{name} values",
                    choices=[],
                    value=[],
                    visible=False,
                    multiselect=True,
                    interactive=True,
                    elem_id=self.elem_id(f"{name.lower()}_values_dropdown"),
                )
                fill = gr.Button(
                    FILL_SYMBOL,
                    elem_id=f"xyz_grid_fill_{name.lower()}_tool_button",
                    elem_classes=["tool"],
                    size="sm",
                    min_width=40,
                    scale=0,
                    visible=False,
                )
            return kind, values, dropdown, fill

        with gr.Row(), gr.Column(scale=19):
            x_type, x_values, x_values_dropdown, fill_x = axis_row("X", 1)
            y_type, y_values, y_values_dropdown, fill_y = axis_row("Y", 0)
            z_type, z_values, z_values_dropdown, fill_z = axis_row("Z", 0)

        with gr.Row(variant="compact", elem_id="axis_options"):
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(
                    label="Keep -1 for seeds", value=False, elem_id=self.elem_id("no_fixed_seeds")
                )
                with gr.Row():
                    vary_seeds_x = gr.Checkbox(
                        label="Vary seeds for X",
                        value=False,
                        min_width=80,
                        elem_id=self.elem_id("vary_seeds_x"),
                        info="Use different seeds for images along X axis.",
                    )
                    vary_seeds_y = gr.Checkbox(
                        label="Vary seeds for Y",
                        value=False,
                        min_width=80,
                        elem_id=self.elem_id("vary_seeds_y"),
                        info="Use different seeds for images along Y axis.",
                    )
                    vary_seeds_z = gr.Checkbox(
                        label="Vary seeds for Z",
                        value=False,
                        min_width=80,
                        elem_id=self.elem_id("vary_seeds_z"),
                        info="Use different seeds for images along Z axis.",
                    )
            with gr.Column():
                include_lone_images = gr.Checkbox(
                    label="Include Sub Images", value=False, elem_id=self.elem_id("include_lone_images")
                )
                include_sub_grids = gr.Checkbox(
                    label="Include Sub Grids", value=False, elem_id=self.elem_id("include_sub_grids")
                )
                csv_mode = gr.Checkbox(
                    label="Use text inputs instead of dropdowns", value=False, elem_id=self.elem_id("csv_mode")
                )
            with gr.Column():
                margin_size = gr.Slider(
                    label="Grid margins (px)",
                    minimum=0,
                    maximum=500,
                    value=0,
                    step=2,
                    elem_id=self.elem_id("margin_size"),
                )

        with gr.Row(variant="compact", elem_id="swap_axes"):
            swap_xy = gr.Button("Swap X/Y axes", elem_id="xy_grid_swap_axes_button")
            swap_yz = gr.Button("Swap Y/Z axes", elem_id="yz_grid_swap_axes_button")
            swap_xz = gr.Button("Swap X/Z axes", elem_id="xz_grid_swap_axes_button")

        def swap(t1: Any, v1: Any, d1: Any, t2: Any, v2: Any, d2: Any) -> tuple[Any, ...]:
            return swap_axes(options, t1, v1, d1, t2, v2, d2)

        for button, first, second in (
            (swap_xy, (x_type, x_values, x_values_dropdown), (y_type, y_values, y_values_dropdown)),
            (swap_yz, (y_type, y_values, y_values_dropdown), (z_type, z_values, z_values_dropdown)),
            (swap_xz, (x_type, x_values, x_values_dropdown), (z_type, z_values, z_values_dropdown)),
        ):
            both = [*first, *second]
            button.click(swap, inputs=both, outputs=both)

        def fill(kind: Any, csv: bool) -> tuple[Any, Any]:
            text, dropdown = fill_values(options, kind, csv)
            return gr.update(**text), gr.update(**dropdown)

        def select_axis(kind: Any, text: Any, chosen: Any, csv: bool) -> tuple[Any, Any, Any]:
            button, textbox, dropdown = axis_controls(options, kind, text, chosen, csv)
            return gr.update(**button), gr.update(**textbox), gr.update(**dropdown)

        rows = (
            (x_type, x_values, x_values_dropdown, fill_x),
            (y_type, y_values, y_values_dropdown, fill_y),
            (z_type, z_values, z_values_dropdown, fill_z),
        )
        for kind, values, dropdown, fill_button in rows:
            fill_button.click(fill, inputs=[kind, csv_mode], outputs=[values, dropdown])
            kind.change(select_axis, inputs=[kind, values, dropdown, csv_mode], outputs=[fill_button, values, dropdown])

        def change_mode(csv: bool, *state: Any) -> tuple[Any, ...]:
            out: list[Any] = []
            for i in range(3):
                kind, text, chosen = state[3 * i : 3 * i + 3]
                out.extend(select_axis(kind, text, chosen, csv))
            return tuple(out)

        all_axes = [c for kind, values, dropdown, _ in rows for c in (kind, values, dropdown)]
        csv_mode.change(
            change_mode,
            inputs=[csv_mode, *all_axes],
            outputs=[c for kind, values, dropdown, fill_button in rows for c in (fill_button, values, dropdown)],
        )

        def dropdown_from_params(axis: str) -> Callable[[dict[str, Any]], Any]:
            def read(params: dict[str, Any]) -> Any:
                return gr.update(value=csv_values(str(params.get(f"{axis} Values", ""))))

            return read

        self.infotext_fields = [
            (x_type, "X Type"),
            (x_values, "X Values"),
            (x_values_dropdown, dropdown_from_params("X")),
            (y_type, "Y Type"),
            (y_values, "Y Values"),
            (y_values_dropdown, dropdown_from_params("Y")),
            (z_type, "Z Type"),
            (z_values, "Z Values"),
            (z_values_dropdown, dropdown_from_params("Z")),
        ]

        return [
            x_type,
            x_values,
            x_values_dropdown,
            y_type,
            y_values,
            y_values_dropdown,
            z_type,
            z_values,
            z_values_dropdown,
            draw_legend,
            include_lone_images,
            include_sub_grids,
            no_fixed_seeds,
            vary_seeds_x,
            vary_seeds_y,
            vary_seeds_z,
            margin_size,
            csv_mode,
        ]

    # -- run ----------------------------------------------------------------------------------

    def run(
        self,
        p: StableDiffusionProcessing,
        x_type: Any = 1,
        x_values: Any = "",
        x_values_dropdown: Any = None,
        y_type: Any = 0,
        y_values: Any = "",
        y_values_dropdown: Any = None,
        z_type: Any = 0,
        z_values: Any = "",
        z_values_dropdown: Any = None,
        draw_legend: Any = True,
        include_lone_images: Any = False,
        include_sub_grids: Any = False,
        no_fixed_seeds: Any = False,
        vary_seeds_x: Any = False,
        vary_seeds_y: Any = False,
        vary_seeds_z: Any = False,
        margin_size: Any = 0,
        csv_mode: Any = False,
        *_ignored: Any,
    ) -> Processed:
        is_img2img = isinstance(p, StableDiffusionProcessingImg2Img)
        options = axis_options(is_img2img)
        csv_mode = bool(csv_mode)
        try:
            margin = max(0, int(float(margin_size or 0)))
        except (TypeError, ValueError):
            raise ValidationError(f"X/Y/Z plot: grid margins: {margin_size!r} is not a number") from None
        picked = [
            ("X", pick_axis(options, x_type, "X"), x_values, x_values_dropdown, vary_seeds_x),
            ("Y", pick_axis(options, y_type, "Y"), y_values, y_values_dropdown, vary_seeds_y),
            ("Z", pick_axis(options, z_type, "Z"), z_values, z_values_dropdown, vary_seeds_z),
        ]
        if not no_fixed_seeds:
            fix_seed(p)
        if not bool(_option("return_grid", True)):
            p.batch_size = 1
        axes: list[_Axis] = []
        for name, opt, text, dropdown, vary in picked:
            values = axis_values(opt, text, dropdown, csv_mode, p, name)
            if not no_fixed_seeds and opt.label in SEED_AXES:
                values = [random.randrange(4294967294) if v in (None, "", -1) else v for v in values]
            axes.append(_Axis(name, opt, values, axis_text(opt, text, dropdown, csv_mode), bool(vary)))
        xa, ya, za = axes

        count = len(xa.values) * len(ya.values) * len(za.values)
        limit = float(_option("img_max_size_mp", 200) or 200)
        grid_mp = round(count * int(p.width) * int(p.height) / 1_000_000)
        if grid_mp >= limit:
            raise ValidationError(
                f"X/Y/Z plot: the grid would be too large ({grid_mp} MPixels; the limit, img_max_size_mp, is {limit:g})"
            )
        check_cells(p, axes)
        warnings = self._warnings(p, axes)
        for text in warnings:
            log.warning("%s", text)
        job = runtime.current_job()
        if job is not None:
            job.warnings.extend(w for w in warnings if w not in job.warnings)

        log.info(
            "X/Y/Z plot will create %d images on %d %dx%d grid%s (%d per cell)",
            count * p.batch_size * p.n_iter,
            len(za.values),
            len(xa.values),
            len(ya.values),
            "s" if len(za.values) > 1 else "",
            p.batch_size * p.n_iter,
        )
        cells = self._process_cells(p, axes, job)
        return self._assemble(
            p,
            axes,
            cells,
            draw_legend=bool(draw_legend),
            include_lone_images=bool(include_lone_images),
            include_sub_grids=bool(include_sub_grids),
            margin=margin,
            no_fixed_seeds=bool(no_fixed_seeds),
        )

    @staticmethod
    def _warnings(p: StableDiffusionProcessing, axes: Sequence[_Axis]) -> list[str]:
        labels = {a.opt.label for a in axes}
        out: list[str] = []
        if isinstance(p, StableDiffusionProcessingTxt2Img) and not getattr(p, "enable_hr", False):
            for label in ("Hires steps", "Hires sampler", "Hires upscaler", "Denoising", "Extra noise"):
                if label in labels:
                    out.append(f"X/Y/Z plot: the {label} axis changes nothing: hires fix is off (enable_hr)")
        if "Refiner switch at" in labels and "Refiner checkpoint" not in labels and not p.refiner_checkpoint:
            out.append("X/Y/Z plot: the Refiner switch at axis changes nothing: no refiner checkpoint is set")
        return out

    def _process_cells(
        self, p: StableDiffusionProcessing, axes: Sequence[_Axis], job: runtime.ScriptJob | None
    ) -> list[_Cell]:
        xa, ya, za = axes
        nx, ny, nz = len(xa.values), len(ya.values), len(za.values)
        count = nx * ny * nz
        cells = [_Cell() for _ in range(count)]
        n_iter = max(int(p.n_iter), 1)
        ctx = job.ctx if job is not None else None
        current = [0]

        def on_batch(event: BatchEvent) -> None:
            if ctx is not None:
                ctx.job_count = count * n_iter
                ctx.job_no = current[0] * n_iter + event.batch_number
                ctx.textinfo = f"X/Y/Z plot: {current[0] + 1} out of {count}"

        # slow-to-change axes outermost (checkpoints), else Z, then Y, then X
        order = sorted(((2, za), (1, ya), (0, xa)), key=lambda item: -item[1].opt.cost)
        position = {0: 0, 1: 0, 2: 0}
        loops = [range(len(axis.values)) for _, axis in order]
        original = job.process if job is not None else None
        if job is not None and original is not None:
            inner = original

            def process_with_progress(request: Any, hooks: Hooks | None) -> Any:
                progress = Hooks()
                progress.before_batch.add(on_batch)
                return inner(request, progress.combined(hooks))

            job.process = process_with_progress
            if ctx is not None:
                ctx.job_count = count * n_iter
        try:
            for combo in itertools.product(*loops):
                for (axis_no, _), i in zip(order, combo, strict=True):
                    position[axis_no] = i
                ix, iy, iz = position[0], position[1], position[2]
                index = ix + iy * nx + iz * nx * ny
                if ctx is not None and (ctx.interrupted or ctx.stopping_generation):
                    break
                current[0] = index
                cells[index] = self._cell(p, axes, ix, iy, iz, job)
        finally:
            if job is not None and original is not None:
                job.process = original
        return cells

    @staticmethod
    def _cell(
        p: StableDiffusionProcessing, axes: Sequence[_Axis], ix: int, iy: int, iz: int, job: runtime.ScriptJob | None
    ) -> _Cell:
        pc = cell_p(p, axes, ix, iy, iz)
        try:
            processed = process_images(pc)
        except UserError:
            raise
        except Exception as exc:  # A1111 goes on with the other cells
            log.exception("X/Y/Z plot: generating cell %d, %d, %d failed", ix, iy, iz)
            text = f"X/Y/Z plot: a cell failed ({type(exc).__name__}: {exc}); it is left empty"
            if job is not None and text not in job.warnings:
                job.warnings.append(text)
            return _Cell()
        if not processed.images:
            return _Cell(processed=processed)
        return _Cell(
            processed=processed,
            image=processed.images[0],
            prompt=processed.prompt,
            negative_prompt=processed.negative_prompt,
            seed=processed.seed,
            subseed=processed.subseed if processed.subseed is not None else -1,
            infotext=processed.infotexts[0] if processed.infotexts else processed.info,
        )

    def _assemble(
        self,
        p: StableDiffusionProcessing,
        axes: Sequence[_Axis],
        cells: list[_Cell],
        *,
        draw_legend: bool,
        include_lone_images: bool,
        include_sub_grids: bool,
        margin: int,
        no_fixed_seeds: bool,
    ) -> Processed:
        xa, ya, za = axes
        nx, ny, nz = len(xa.values), len(ya.values), len(za.values)
        made = [c for c in cells if c.image is not None]
        done = [c.processed for c in cells if c.processed is not None]
        if not made:
            empty = Processed(p, [])
            for processed in done:
                empty.results.extend(processed.results)
            return empty
        template = made[0]
        blank_size = template.image.size if template.image is not None else (p.width, p.height)
        images = [c.image if c.image is not None else Image.new("RGB", blank_size) for c in cells]
        style = GridStyle.current()

        sub_grids: list[Image.Image] = []
        for iz in range(nz):
            part = images[iz * nx * ny : (iz + 1) * nx * ny]
            grid = image_grid(part, rows=ny, style=style)
            if draw_legend:
                width, height = max(im.width for im in part), max(im.height for im in part)
                grid = draw_grid_annotations(
                    grid,
                    width,
                    height,
                    [[GridAnnotation(label)] for label in xa.labels],
                    [[GridAnnotation(label)] for label in ya.labels],
                    margin,
                    style=style,
                )
            sub_grids.append(grid)
        main = image_grid(sub_grids, rows=1, style=style)
        if draw_legend:
            width, height = max(g.width for g in sub_grids), max(g.height for g in sub_grids)
            main = draw_grid_annotations(
                main, width, height, [[GridAnnotation(label)] for label in za.labels], [[GridAnnotation()]], style=style
            )

        def first_of(iz: int) -> _Cell:
            cell = cells[iz * nx * ny]
            return cell if cell.image is not None else template

        def grid_params(with_z: bool) -> dict[str, Any]:
            params: dict[str, Any] = {"Script": TITLE}
            for axis in (xa, ya, za) if with_z else (xa, ya):
                if axis.opt.label == "Nothing":
                    continue
                params[f"{axis.name} Type"] = axis.opt.label
                params[f"{axis.name} Values"] = axis.text
                if axis.opt.label in SEED_AXES and not no_fixed_seeds:
                    params[f"Fixed {axis.name} Values"] = ", ".join(str(v) for v in axis.values)
            return params

        main_info = _with_params(first_of(0).infotext, p, grid_params(True))
        sub_infos = [_with_params(first_of(iz).infotext, p, grid_params(False)) for iz in range(nz)]

        out_images: list[Any] = [main]
        infotexts = [main_info]
        listed: list[_Cell] = []  # what images[1:] are, for prompts and seeds
        if include_sub_grids:
            out_images.extend(sub_grids)
            infotexts.extend(sub_infos)
            listed.extend(first_of(iz) for iz in range(nz))
        if include_lone_images:
            out_images.extend(images)
            infotexts.extend(c.infotext for c in cells)
            listed.extend(c if c.image is not None else template for c in cells)
        if not listed:  # only the main grid: its prompt and seed stand for the whole
            listed = [template]

        base = template.processed
        assert base is not None
        result = copy.copy(base)
        result.images = out_images
        result.infotexts = infotexts
        result.index_of_first_image = 1
        result.info = main_info
        result.all_prompts = [c.prompt for c in listed]
        result.all_negative_prompts = [c.negative_prompt for c in listed]
        result.all_seeds = [c.seed for c in listed]
        result.all_subseeds = [c.subseed for c in listed]
        result.extra_generation_params = {**base.extra_generation_params, **grid_params(True)}
        result.results = [r for processed in done for r in processed.results]
        result.warnings = list(base.warnings)
        self._save(p, result, sub_grids, sub_infos, include_sub_grids)
        return result

    @staticmethod
    def _save(
        p: StableDiffusionProcessing,
        result: Processed,
        sub_grids: list[Image.Image],
        sub_infos: list[str],
        include_sub_grids: bool,
    ) -> None:
        """`grid_save`: the main grid (and with sub-grids, each Z value's) as `xyz_grid-NNNN`."""
        env = _env()
        if env is None or env.saver is None or p.do_not_save_grid or not bool(_option("grid_save", True)):
            return
        saver = env.saver
        kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
        extended = bool(_option("grid_extended_filename", False))
        fmt = str(_option("grid_format", "png") or "png")
        pending = [(result.images[0], result.infotexts[0])]
        if include_sub_grids and len(sub_grids) > 1:
            pending.extend(zip(sub_grids, sub_infos, strict=True))
        ctx = FilenameContext(
            seed=result.all_seeds[0] if result.all_seeds else None,
            prompt=result.all_prompts[0] if result.all_prompts else result.prompt,
            job_timestamp=result.job_timestamp or None,
        )
        for image, info in pending:
            saved = saver.save_image(
                image,
                saver.grids_dir(kind),
                ctx,
                infotext=info,
                basename="xyz_grid",
                extension=fmt,
                short_filename=not extended,
                grid=True,
            )
            log.info("X/Y/Z plot: grid saved as %s", saved.path)
