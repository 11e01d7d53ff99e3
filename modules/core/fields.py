"""One table of A1111 infotext keys, request fields and options, and of what we accept but ignore.

`INFOTEXT_FIELDS` maps each infotext key (as `parse_infotext` returns it: "Steps", "Size-1",
"Clip skip") to the request field or the option it restores, with its parser and the tabs it
applies to. The UI's paste (`modules/ui/paste.py`) and the API's `infotext` field
(`modules/api/schemas_generation.py`) both read it; `option_for_infotext` / `infotext_for_option`
answer for options.

`IGNORED_FIELDS` declares the request fields we accept (A1111 clients send them) but do not act on
yet, each with its reason; `ignored_field_warnings(request)` turns the ones a caller actually set
into warnings (`validate_request` adds them, the engine copies them into `Result.warnings`).
Stdlib only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BOTH",
    "HIRES",
    "IGNORED_FIELDS",
    "IMG2IMG",
    "INFOTEXT_FIELDS",
    "TXT2IMG",
    "IgnoredField",
    "InfotextField",
    "ignored_field_warnings",
    "infotext_for_field",
    "infotext_for_option",
    "option_fields",
    "option_for_infotext",
    "overrides_from_infotext",
    "parse_bool",
    "parse_chosen",
    "parse_float",
    "parse_int",
    "parse_str",
    "request_fields",
    "values_from_infotext",
]

TXT2IMG: Final = "txt2img"
IMG2IMG: Final = "img2img"
HIRES: Final = "hires"
"""Tabs/requests an entry applies to; `HIRES` is txt2img's hires fix (a `Txt2ImgRequest` field)."""
BOTH: Final = frozenset({TXT2IMG, IMG2IMG})

Parser = Callable[[object], object]
"""Infotext value (a string, or a typed default from `parse_infotext`) -> field value; raises
ValueError/TypeError when the text is not one."""


def parse_int(value: object) -> int:
    """ "20" -> 20; "20.0" -> 20 (A1111 writes some ints as floats)."""
    return int(float(str(value)))


def parse_float(value: object) -> float:
    return float(str(value))


def parse_str(value: object) -> str:
    return str(value)


def parse_chosen(same: str) -> Parser:
    """A parser for a choice whose value `same` ("Use same sampler", or "" for a hires prompt)
    means "as the first pass": that value is no value (left out, the request's default stands),
    any other is the string. `parse_infotext` fills these keys with `same` when an infotext has
    none; this way an infotext restores only what it actually says."""

    def parse(value: object) -> str:
        text = str(value)
        if text == same:
            raise ValueError(f"{same!r} is the first pass's own")
        return text

    return parse


def parse_bool(value: object) -> bool:
    """A1111 writes booleans as "True"/"False"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class InfotextField:
    """One infotext key and what it restores: a request field (`field`) or an option (`option`)."""

    key: str
    parse: Parser
    field: str | None = None
    option: str | None = None
    tabs: frozenset[str] = BOTH

    def value(self, raw: object) -> object | None:
        """The parsed value, or None when the text is not one."""
        try:
            return self.parse(raw)
        except (TypeError, ValueError):
            return None


def _f(key: str, field: str, parse: Parser, tabs: Iterable[str] = BOTH) -> InfotextField:
    return InfotextField(key, parse, field=field, tabs=frozenset(tabs))


def _o(key: str, option: str, parse: Parser) -> InfotextField:
    return InfotextField(key, parse, option=option)


INFOTEXT_FIELDS: tuple[InfotextField, ...] = (
    # request fields (A1111's PasteField(component, "Key", api="field") lists)
    _f("Prompt", "prompt", parse_str),
    _f("Negative prompt", "negative_prompt", parse_str),
    _f("Steps", "steps", parse_int),
    _f("Sampler", "sampler_name", parse_str),
    _f("Schedule type", "scheduler", parse_str),
    _f("CFG scale", "cfg_scale", parse_float),
    _f("Seed", "seed", parse_int),
    _f("Size-1", "width", parse_int),
    _f("Size-2", "height", parse_int),
    _f("Variation seed", "subseed", parse_int),
    _f("Variation seed strength", "subseed_strength", parse_float),
    _f("Seed resize from-1", "seed_resize_from_w", parse_int),
    _f("Seed resize from-2", "seed_resize_from_h", parse_int),
    _f("Denoising strength", "denoising_strength", parse_float, (IMG2IMG, HIRES)),
    _f("Image CFG scale", "image_cfg_scale", parse_float, (IMG2IMG,)),
    _f("Mask blur", "mask_blur", parse_int, (IMG2IMG,)),
    _f("Hires upscale", "hr_scale", parse_float, (HIRES,)),
    _f("Hires upscaler", "hr_upscaler", parse_str, (HIRES,)),
    _f("Hires steps", "hr_second_pass_steps", parse_int, (HIRES,)),
    _f("Hires resize-1", "hr_resize_x", parse_int, (HIRES,)),
    _f("Hires resize-2", "hr_resize_y", parse_int, (HIRES,)),
    _f("Hires checkpoint", "hr_checkpoint_name", parse_chosen("Use same checkpoint"), (HIRES,)),
    _f("Hires sampler", "hr_sampler_name", parse_chosen("Use same sampler"), (HIRES,)),
    _f("Hires schedule type", "hr_scheduler", parse_chosen("Use same scheduler"), (HIRES,)),
    _f("Hires prompt", "hr_prompt", parse_chosen(""), (HIRES,)),
    _f("Hires negative prompt", "hr_negative_prompt", parse_chosen(""), (HIRES,)),
    _f("Refiner", "refiner_checkpoint", parse_chosen(""), BOTH),
    _f("Refiner switch at", "refiner_switch_at", parse_float, BOTH),
    # options (A1111's OptionInfo(..., infotext="Key")): settings overrides
    _o("Model hash", "sd_model_checkpoint", parse_str),
    _o("VAE", "sd_vae", parse_str),
    _o("Face restoration", "face_restoration", parse_bool),
    _o("Tiling", "tiling", parse_bool),
    _o("Clip skip", "CLIP_stop_at_last_layers", parse_int),
    _o("ENSD", "eta_noise_seed_delta", parse_int),
    _o("RNG", "randn_source", parse_str),
    _o("Emphasis", "emphasis", parse_str),
    _o("Conditional mask weight", "inpainting_mask_weight", parse_float),
    _o("Noise multiplier", "initial_noise_multiplier", parse_float),
    _o("Old prompt editing timelines", "use_old_scheduling", parse_bool),
    _o("VAE Encoder", "sd_vae_encode_method", parse_str),
    _o("VAE Decoder", "sd_vae_decode_method", parse_str),
    _o("Extra noise", "img2img_extra_noise", parse_float),
    _o("NGMS", "s_min_uncond", parse_float),
    _o("Token merging ratio", "token_merging_ratio", parse_float),
    _o("Token merging ratio hr", "token_merging_ratio_hr", parse_float),
    _o("Pad conds", "pad_cond_uncond", parse_bool),
    _o("Pad conds v0", "pad_cond_uncond_v0", parse_bool),
    _o("FP8 weight", "fp8_storage", parse_str),
    _o("Downcast alphas_cumprod", "use_downcasted_alpha_bar", parse_bool),
    _o("Refiner switch by sampling steps", "refiner_switch_by_sample_steps", parse_bool),
    _o("Eta DDIM", "eta_ddim", parse_float),
    _o("Eta", "eta_ancestral", parse_float),
    _o("Sigma churn", "s_churn", parse_float),
    _o("Sigma tmin", "s_tmin", parse_float),
    _o("Sigma tmax", "s_tmax", parse_float),
    _o("Sigma noise", "s_noise", parse_float),
    _o("Schedule min sigma", "sigma_min", parse_float),
    _o("Schedule max sigma", "sigma_max", parse_float),
    _o("Schedule rho", "rho", parse_float),
    _o("Discard penultimate sigma", "always_discard_next_to_last_sigma", parse_bool),
    _o("SGM noise multiplier", "sgm_noise_multiplier", parse_bool),
    _o("UniPC variant", "uni_pc_variant", parse_str),
    _o("UniPC skip type", "uni_pc_skip_type", parse_str),
    _o("UniPC order", "uni_pc_order", parse_int),
    _o("Noise Schedule", "sd_noise_schedule", parse_str),
    _o("Skip Early CFG", "skip_early_cond", parse_float),
    _o("Beta schedule alpha", "beta_dist_alpha", parse_float),
    _o("Beta schedule beta", "beta_dist_beta", parse_float),
)
"""Every infotext key we map, once."""


def request_fields(tabs: Collection[str] | None = None) -> tuple[InfotextField, ...]:
    """The entries that restore a request field; with `tabs`, only those applying to one of them."""
    return tuple(f for f in INFOTEXT_FIELDS if f.field is not None and (tabs is None or f.tabs & set(tabs)))


def option_fields() -> tuple[InfotextField, ...]:
    """The entries that restore an option (as a settings override)."""
    return tuple(f for f in INFOTEXT_FIELDS if f.option is not None)


def option_for_infotext(key: str) -> str | None:
    """The option an infotext key restores ("Clip skip" -> "CLIP_stop_at_last_layers")."""
    return next((f.option for f in INFOTEXT_FIELDS if f.key == key and f.option is not None), None)


def infotext_for_option(option: str) -> str | None:
    """The infotext key an option is written as ("CLIP_stop_at_last_layers" -> "Clip skip")."""
    return next((f.key for f in INFOTEXT_FIELDS if f.option == option), None)


def infotext_for_field(field: str) -> str | None:
    """The infotext key a request field is written as ("steps" -> "Steps", "width" -> "Size-1":
    the writer joins the -1/-2 pair as "WxH" under "Size")."""
    return next((f.key for f in INFOTEXT_FIELDS if f.field == field), None)


def values_from_infotext(parsed: Mapping[str, object], tabs: Collection[str] | None = None) -> dict[str, object]:
    """Request field name -> value for the keys present in a `parse_infotext` result (values that
    do not parse are left out); with `tabs`, only the fields applying to one of them."""
    values: dict[str, object] = {}
    for entry in request_fields(tabs):
        if entry.key in parsed and entry.field is not None:
            value = entry.value(parsed[entry.key])
            if value is not None:
                values[entry.field] = value
    return values


def overrides_from_infotext(parsed: Mapping[str, object], options: Collection[str]) -> dict[str, object]:
    """Option key -> value for the keys present in a `parse_infotext` result whose option is one
    of `options` (the caller decides which settings an infotext may override)."""
    out: dict[str, object] = {}
    for entry in option_fields():
        if entry.option in options and entry.key in parsed:
            value = entry.value(parsed[entry.key])
            if value is not None:
                out[entry.option] = value  # type: ignore[index]
    return out


# --- accepted but not acted on ------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoredField:
    """A request field we accept (A1111 clients send it) but do not act on yet.

    `unset` lists values that mean "not asked for" besides the field's default and empty values
    (A1111's "Use same checkpoint"; the standard value the engine runs with anyway)."""

    field: str
    reason: str
    unset: tuple[object, ...] = ()


_LEGACY_HIRES = "legacy field of the old hires fix, ignored as in A1111: width/height give the first pass"

IGNORED_FIELDS: tuple[IgnoredField, ...] = (
    IgnoredField("firstphase_width", _LEGACY_HIRES),
    IgnoredField("firstphase_height", _LEGACY_HIRES),
    IgnoredField("comments", "not implemented yet: comments are neither shown nor saved"),
    IgnoredField("script_args", "no script is selected (script_name), so there is nothing to pass them to"),
)
"""Request fields accepted but not acted on. `alwayson_scripts` is checked per script name."""

_EMPTY: tuple[object, ...] = (None, "", (), [], {})


def _is_empty(value: object) -> bool:
    return any(value is e or (type(value) is type(e) and value == e) for e in _EMPTY)


def _default_of(request: object, name: str) -> object:
    for f in dataclasses.fields(request):  # type: ignore[arg-type]
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def ignored_field_warnings(request: Any, installed_scripts: Collection[str] = ()) -> list[str]:
    """One warning per ignored field the caller set to something other than its default (an empty
    `{}`/`[]`/`""` is no warning), and one per `alwayson_scripts` entry naming a script that is
    not in `installed_scripts` (compared case-insensitively, as A1111 does)."""
    warnings: list[str] = []
    for ignored in IGNORED_FIELDS:
        if not hasattr(request, ignored.field):
            continue
        value = getattr(request, ignored.field)
        if _is_empty(value) or value == _default_of(request, ignored.field) or value in ignored.unset:
            continue
        if ignored.field == "script_args" and getattr(request, "script_name", None):
            continue  # the selected script takes them
        warnings.append(f"{ignored.field}: accepted but not acted on ({ignored.reason})")
    installed = {name.lower() for name in installed_scripts}
    for name in getattr(request, "alwayson_scripts", None) or {}:
        if str(name).lower() not in installed:
            warnings.append(f"alwayson_scripts: script {str(name)!r} is not installed; its args were ignored")
    return warnings
