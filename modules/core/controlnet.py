"""ControlNet units as the sd-webui-controlnet extension defines them: the unit schema, the API
payload parser, the infotext line, preprocessor slider defaults and the control-type filter.

Facts from the extension (Mikubill/sd-webui-controlnet @56cec5b2: `internal_controlnet/args.py`,
`internal_controlnet/external_code.py`, `scripts/enums.py`, `scripts/infotext.py`,
`scripts/global_state.py`, `scripts/supported_preprocessor.py`) and its clients (the `webuiapi`
package's `ControlNetUnit.to_dict`, old and new). Built from those facts, not copied.

* `parse_units(args)` reads `alwayson_scripts: {"controlnet": {"args": [...]}}`: a list of unit
  objects (or a dict of them by index, or one unit object), with the legacy names (`input_image`,
  `lowvram`, `guidance`, `mask_image`), enums as names, ints or the old aliases, and every image
  form the extension takes. It returns the units and the warnings (unknown keys, fields of the
  extension that are not applied, deprecated names); bad values raise `ValidationError` naming the
  field. Images stay opaque (the adapter decodes them; `ControlNetUnit.image_inputs()` says which
  field each came from).
* `unit_infotext(index, unit, model_title)` gives the extension's
  `ControlNet 0: "Module: canny, Model: ..., Weight: 1.0, ..."` entry (the params-line writer
  quotes it); `parse_unit_infotext(value)` reads it back (both the current eleven-key line and
  the longer one written before May 2024).
* `apply_preprocessor_defaults(unit, info)`: the extension's bound check (processor_res and the
  thresholds outside the preprocessor's slider range become the slider's default).
* `control_types(preprocessors, models)`: the `/controlnet/control_types` answer;
  `controlnet_script_args(alwayson_scripts)`: the ControlNet entry, found case-insensitively.

Stdlib only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modules.core.errors import ValidationError

API_VERSION = 3
"""`GET /controlnet/version` (external_code.get_api_version)."""

DEFAULT_UNIT_COUNT = 3
"""The extension's `control_net_unit_count` default (`/controlnet/settings`)."""

RESIZE_MODES: tuple[str, ...] = ("Just Resize", "Crop and Resize", "Resize and Fill")
"""ResizeMode values, in the order of their int values 0, 1, 2 (3, A1111's "Just Resize (latent
upscale)", means Just Resize)."""
CONTROL_MODES: tuple[str, ...] = ("Balanced", "My prompt is more important", "ControlNet is more important")
"""ControlMode values, in the order of their int values 0, 1, 2."""
HR_OPTIONS: tuple[str, ...] = ("Both", "Low res only", "High res only")
"""HiResFixOption values (ints 0, 1, 2 in this order)."""

RESIZE_MODE_ALIASES: Mapping[str, str] = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Envelope (Outer Fit)": "Resize and Fill",
}
_ENUM_MEMBER_NAMES: Mapping[str, Mapping[str, str]] = {
    # Python enum member names, as `str(ResizeMode.INNER_FIT)` wrote them into some infotexts.
    "resize_mode": {"RESIZE": "Just Resize", "INNER_FIT": "Crop and Resize", "OUTER_FIT": "Resize and Fill"},
    "control_mode": {
        "BALANCED": "Balanced",
        "PROMPT": "My prompt is more important",
        "CONTROL": "ControlNet is more important",
    },
    "hr_option": {"BOTH": "Both", "LOW_RES_ONLY": "Low res only", "HIGH_RES_ONLY": "High res only"},
}
_ENUM_CLASS_NAMES = {"resize_mode": "ResizeMode", "control_mode": "ControlMode", "hr_option": "HiResFixOption"}

LEGACY_ALIASES: Mapping[str, str] = {
    "input_image": "image",
    "lowvram": "low_vram",
    "guidance": "guidance_end",
    "mask_image": "mask",  # SD Forge's name
}
"""Old field names -> current ones (`ControlNetUnit.legacy_field_alias` / `mask_alias`)."""

INFOTEXT_FIELDS: tuple[str, ...] = (
    "module",
    "model",
    "weight",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "control_mode",
)
"""The fields of the infotext line, in order (`ControlNetUnit.infotext_fields`)."""

IGNORED_EXTENSION_FIELDS: Mapping[str, Any] = {
    "is_ui": False,
    "input_mode": "simple",
    "batch_images": None,
    "output_dir": "",
    "loopback": False,
    "pulid_mode": "Fidelity",
    "union_control_type": "Unknown",
    "ipadapter_input": None,
    "batch_mask_dir": None,
    "animatediff_batch": False,
    "batch_modifiers": [],
    "batch_image_files": [],
    "batch_keyframe_idx": None,
}
"""Fields of the extension's unit that are not applied here, with their defaults: a client that
serializes a whole unit sends them; a value other than the default is reported as ignored."""

DEPRECATED_IGNORED = {
    "guess_mode": "Guess Mode was removed from the extension (1.1.136); use control_mode",
    "guessmode": "Guess Mode was removed from the extension (1.1.136); use control_mode",
}

_TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off", "n", "f"})


# -- the unit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlImage:
    """One input of a unit: the image (and maybe its mask) as sent, with the fields they came
    from (for the decoder's messages). Opaque: a base64 string or data URL from the API, a PIL
    image at run time."""

    image: Any
    mask: Any = None
    field: str = "image"
    mask_field: str = "mask"


@dataclass(frozen=True)
class ControlNetUnit:
    """One ControlNet unit, with the extension's field names and defaults.

    `image` and `mask` are kept as sent (opaque, after the legacy aliases); `image_inputs()` lists
    them in one shape. `source` is where the unit came from (e.g.
    `alwayson_scripts.controlnet.args[0]`), `image_key`/`mask_key` the keys the image and mask
    were sent under (`input_image`, `mask_image` for old clients): both only name fields in
    messages."""

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Any = field(default=None, repr=False)
    mask: Any = field(default=None, repr=False)
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"
    save_detected_map: bool = True
    inpaint_crop_input_image: bool = True
    advanced_weighting: tuple[float, ...] | None = None
    effective_region_mask: Any = field(default=None, repr=False)
    source: str = field(default="", compare=False)
    image_key: str = field(default="image", compare=False)
    mask_key: str = field(default="mask", compare=False)

    @property
    def has_model(self) -> bool:
        """False for the extension's "no model" ("None", any case)."""
        return self.model.strip().lower() != "none"

    @property
    def resize_mode_index(self) -> int:
        """0 Just Resize, 1 Crop and Resize, 2 Resize and Fill (ResizeMode.int_value)."""
        return RESIZE_MODES.index(self.resize_mode)

    @property
    def control_mode_index(self) -> int:
        return CONTROL_MODES.index(self.control_mode)

    def image_inputs(self) -> tuple[ControlImage, ...]:
        """The unit's images in one shape (`get_input_images_rgba`'s forms): `image` as one
        image (+ `mask`), `{"image", "mask"}`, `[{"image", "mask"}, ...]` or `[image, mask]`.
        Empty when the unit has no image (the img2img image is used then)."""
        return _image_inputs(self.image, self.mask, self._path(self.image_key), self._path(self.mask_key))

    def _path(self, key: str) -> str:
        return f"{self.source}.{key}" if self.source else key


class ParsedUnits(NamedTuple):
    units: list[ControlNetUnit]
    warnings: list[str]


# -- parsing -----------------------------------------------------------------------------------

_UNIT_FIELDS = frozenset(f.name for f in dataclasses.fields(ControlNetUnit)) - {"source", "image_key", "mask_key"}


def parse_units(args: Any, *, source: str = "alwayson_scripts.controlnet.args") -> ParsedUnits:
    """The units of a ControlNet `args` value, as clients send it.

    `args`: a list (or tuple) of unit objects, a dict of them by index (`{"0": {...}}`), or one
    unit object. `None` entries are skipped (a unit left empty); anything else that is not an
    object is refused (the flat positional form of extension versions before 1.1 is not read; the
    current extension drops such entries without a word). Units come back in order, enabled or
    not; `warnings` lists unknown keys, deprecated names and extension fields that are not applied.
    """
    warnings: list[str] = []
    entries: list[tuple[str, Any]]
    if args is None:
        return ParsedUnits([], warnings)
    if isinstance(args, Mapping):
        if args and all(_is_index(key) for key in args):
            entries = [(f"{source}[{int(key)}]", args[key]) for key in sorted(args, key=lambda k: int(k))]
        elif any(isinstance(key, str) and (key in _UNIT_FIELDS or key in LEGACY_ALIASES) for key in args):
            entries = [(source, args)]
        elif not args:
            entries = []
        else:
            raise ValidationError(f"{source}: expected a list of ControlNet units or a dict of them by index")
    elif isinstance(args, (list, tuple)):
        entries = [(f"{source}[{i}]", entry) for i, entry in enumerate(args)]
    else:
        raise ValidationError(f"{source}: expected a list of ControlNet units, got {type(args).__name__}")
    units: list[ControlNetUnit] = []
    for path, entry in entries:
        if entry is None:
            continue
        if isinstance(entry, ControlNetUnit):
            units.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ValidationError(
                f"{path}: expected a ControlNet unit object ({{'enabled': true, 'module': ..., 'model': ...}}), "
                f"got {type(entry).__name__} {_short(entry)} (the old positional form is not supported)"
            )
        units.append(parse_unit(entry, source=path, warnings=warnings))
    return ParsedUnits(units, warnings)


def controlnet_script_args(alwayson_scripts: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """(the key as sent, its `args`) of the ControlNet entry of `alwayson_scripts`, found as A1111
    finds a script by title: case-insensitively ("controlnet" in the extension's example,
    "ControlNet" in webuiapi's). None when there is none; `args` is None when the entry has none."""
    if not alwayson_scripts:
        return None
    for key, value in alwayson_scripts.items():
        if isinstance(key, str) and key.strip().lower() == "controlnet":
            if isinstance(value, Mapping):
                return key, value.get("args")
            raise ValidationError(f'alwayson_scripts.{key}: expected an object {{"args": [...]}}')
    return None


def parse_unit(values: Mapping[str, Any], *, source: str = "unit", warnings: list[str] | None = None) -> ControlNetUnit:
    """One unit object (see `parse_units`); warnings are appended to `warnings`."""
    notes: list[str] = [] if warnings is None else warnings
    data: dict[str, Any] = {}
    image_key, mask_key = "image", "mask"
    for key, value in values.items():
        if not isinstance(key, str):
            raise ValidationError(f"{source}: keys must be strings, got {key!r}")
        name = LEGACY_ALIASES.get(key, key)
        if name != key:  # a legacy name
            if _is_empty(value):
                continue
            if not _is_empty(values.get(name)) and values[name] != value:
                raise ValidationError(f"{source}: both '{key}' and '{name}' are given, with different values")
            if key == "input_image":
                image_key = key
            elif key == "mask_image":
                mask_key = key
            data[name] = value
        elif name in _UNIT_FIELDS:
            if name not in data or not _is_empty(value):
                data[name] = value
        elif key in IGNORED_EXTENSION_FIELDS:
            if not _is_default(value, IGNORED_EXTENSION_FIELDS[key]):
                notes.append(f"{source}.{key}: not supported here, ignored")
        elif key in DEPRECATED_IGNORED:
            if value not in (None, False, 0):
                notes.append(f"{source}.{key}: {DEPRECATED_IGNORED[key]}; ignored")
        else:
            notes.append(f"{source}.{key}: unknown ControlNet unit field, ignored")
    if "enabled" not in values and (not _is_empty(data.get("image")) or _named_model(data.get("model"))):
        notes.append(
            f"{source}: no 'enabled' key, so the unit is off (the extension's default since v1.1.448; "
            'send "enabled": true)'
        )

    def path(name: str) -> str:
        return f"{source}.{name}"

    kwargs: dict[str, Any] = {}
    for name in ("enabled", "low_vram", "pixel_perfect", "save_detected_map", "inpaint_crop_input_image"):
        if data.get(name) is not None:
            kwargs[name] = _bool(data[name], path(name))
    for name in ("module", "model"):
        if data.get(name) is not None:
            if not isinstance(data[name], str):
                raise ValidationError(f"{path(name)}: expected a string, got {type(data[name]).__name__}")
            kwargs[name] = data[name]
    if data.get("weight") is not None:
        kwargs["weight"] = _float(data["weight"], path("weight"), low=0.0, high=2.0)
    for name in ("threshold_a", "threshold_b"):
        if data.get(name) is not None:
            kwargs[name] = _float(data[name], path(name))
    if data.get("processor_res") is not None:
        kwargs["processor_res"] = _int(data["processor_res"], path("processor_res"), notes)
    for name in ("guidance_start", "guidance_end"):
        if data.get(name) is not None:
            kwargs[name] = _float(data[name], path(name), low=0.0, high=1.0)
    if data.get("resize_mode") is not None:
        kwargs["resize_mode"] = resize_mode_from_value(data["resize_mode"], path("resize_mode"))
    if data.get("control_mode") is not None:
        kwargs["control_mode"] = control_mode_from_value(data["control_mode"], path("control_mode"))
    if data.get("hr_option") is not None:
        kwargs["hr_option"] = hr_option_from_value(data["hr_option"], path("hr_option"))
    if data.get("advanced_weighting") is not None:
        weights = data["advanced_weighting"]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ValidationError(f"{path('advanced_weighting')}: expected a non-empty list of numbers")
        kwargs["advanced_weighting"] = tuple(
            _float(w, f"{path('advanced_weighting')}[{i}]") for i, w in enumerate(weights)
        )
    if data.get("effective_region_mask") is not None:
        kwargs["effective_region_mask"] = _opaque_image(data["effective_region_mask"], path("effective_region_mask"))

    start = kwargs.get("guidance_start", 0.0)
    end = kwargs.get("guidance_end", 1.0)
    if start > end:
        raise ValidationError(f"{source}: guidance_start ({start}) is greater than guidance_end ({end})")

    image = None if _is_empty(data.get("image")) else data.get("image")  # webuiapi sends "" for none
    mask = None if _is_empty(data.get("mask")) else data.get("mask")
    unit = ControlNetUnit(
        image=image,
        mask=mask,
        source=source,
        image_key=image_key,
        mask_key=mask_key,
        **kwargs,
    )
    inputs = unit.image_inputs()  # shape check now, before anything is queued
    if mask is not None and not inputs:
        raise ValidationError(f"{source}.{mask_key}: a mask was given without an image")
    if mask is not None and not (isinstance(image, str) or _is_opaque(image)):
        notes.append(f"{source}.{mask_key}: ignored, the image field carries its own masks")
    return unit


def _image_inputs(image: Any, mask: Any, image_path: str, mask_path: str) -> tuple[ControlImage, ...]:
    if image is None or (isinstance(image, str) and not image.strip()):
        return ()
    if isinstance(image, Mapping):
        return (_image_dict(image, image_path),)
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValidationError(f"{image_path}: an empty list is not an image")
        if isinstance(image[0], Mapping):
            out = []
            for i, item in enumerate(image):
                if not isinstance(item, Mapping):
                    raise ValidationError(f"{image_path}[{i}]: expected an {{'image', 'mask'}} object")
                out.append(_image_dict(item, f"{image_path}[{i}]"))
            return tuple(out)
        if len(image) != 2:
            raise ValidationError(
                f"{image_path}: a list is either [image, mask] or a list of {{'image', 'mask'}} objects "
                f"(got {len(image)} items)"
            )
        first = _opaque_image(image[0], f"{image_path}[0]")
        second = None if image[1] is None else _opaque_image(image[1], f"{image_path}[1]")
        return (ControlImage(first, second, f"{image_path}[0]", f"{image_path}[1]"),)
    return (ControlImage(_opaque_image(image, image_path), mask, image_path, mask_path),)


def _image_dict(item: Mapping[str, Any], path: str) -> ControlImage:
    image = item.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValidationError(f"{path}.image: missing")
    mask = item.get("mask")
    if isinstance(mask, str) and not mask.strip():
        mask = None
    return ControlImage(
        _opaque_image(image, f"{path}.image"),
        None if mask is None else _opaque_image(mask, f"{path}.mask"),
        f"{path}.image",
        f"{path}.mask",
    )


def _is_opaque(value: Any) -> bool:
    """An image value as such: a string or an object (PIL image, array), not a number or container."""
    return value is not None and not isinstance(value, (bool, int, float, Mapping, list, tuple))


def _opaque_image(value: Any, path: str) -> Any:
    if not _is_opaque(value):
        raise ValidationError(f"{path}: expected an image (a base64 string), got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise ValidationError(f"{path}: empty image")
    return value


def _enum_value(value: Any, path: str, field_name: str, values: Sequence[str], *, extra_ints: int = 0) -> str:
    """An enum field from its value, member name, int (0..len-1 + extra_ints) or old aliases."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (str, int)):
        value = value[0]  # webuiapi 0.9.10-0.9.11 sent control_mode 0 as ('Balanced',)
    if isinstance(value, bool):
        raise ValidationError(f"{path}: expected one of {list(values)}, got {value!r}")
    if isinstance(value, int):
        if 0 <= value < len(values):
            return values[value]
        if field_name == "resize_mode" and value == 3:
            return "Just Resize"  # A1111's "Just Resize (latent upscale)"
        raise ValidationError(f"{path}: {value} is not one of 0..{len(values) - 1 + extra_ints} ({list(values)})")
    if isinstance(value, str):
        text = value.strip()
        if text in values:
            return text
        if field_name == "resize_mode" and text in RESIZE_MODE_ALIASES:
            return RESIZE_MODE_ALIASES[text]
        member = text.removeprefix(_ENUM_CLASS_NAMES[field_name] + ".")
        if member in _ENUM_MEMBER_NAMES[field_name]:
            return _ENUM_MEMBER_NAMES[field_name][member]
        if text.isdigit():
            return _enum_value(int(text), path, field_name, values, extra_ints=extra_ints)
        lowered = {v.lower(): v for v in values}
        if text.lower() in lowered:
            return lowered[text.lower()]
    raise ValidationError(f"{path}: {value!r} is not one of {list(values)}")


def resize_mode_from_value(value: Any, path: str = "resize_mode") -> str:
    """ "Just Resize", "Crop and Resize" or "Resize and Fill" from the value, 0/1/2 (3 = Just
    Resize), the old names ("Inner Fit (Scale to Fit)", ...) or the enum member names."""
    return _enum_value(value, path, "resize_mode", RESIZE_MODES, extra_ints=1)


def control_mode_from_value(value: Any, path: str = "control_mode") -> str:
    return _enum_value(value, path, "control_mode", CONTROL_MODES)


def hr_option_from_value(value: Any, path: str = "hr_option") -> str:
    return _enum_value(value, path, "hr_option", HR_OPTIONS)


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValidationError(f"{path}: expected true or false, got {value!r}")


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise ValidationError(f"{path}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValidationError(f"{path}: expected a number, got {value!r}") from None
    else:
        raise ValidationError(f"{path}: expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValidationError(f"{path}: expected a finite number, got {value!r}")
    return number


def _float(value: Any, path: str, *, low: float | None = None, high: float | None = None) -> float:
    number = _number(value, path)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValidationError(f"{path}: must be between {low:g} and {high:g}, got {number:g}")
    return number


def _int(value: Any, path: str, notes: list[str]) -> int:
    number = _number(value, path)
    whole = int(number)
    if whole != number:
        notes.append(f"{path}: {number:g} is not a whole number, {whole} used")
    return whole


def _is_index(key: Any) -> bool:
    if isinstance(key, bool):
        return False
    if isinstance(key, int):
        return key >= 0
    return isinstance(key, str) and key.isdigit()


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _named_model(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() not in ("", "none")


def _is_default(value: Any, default: Any) -> bool:
    if _is_empty(value) or value == default:
        return True
    return isinstance(default, list) and isinstance(value, (list, tuple)) and not value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- infotext ----------------------------------------------------------------------------------


def infotext_key(index: int) -> str:
    """`ControlNet {index}`; the index counts the enabled units only (the extension numbers the
    units it writes, in order)."""
    return f"ControlNet {index}"


def _display_name(field_name: str) -> str:
    return " ".join(word.capitalize() for word in field_name.split("_"))


def _field_name(display: str) -> str:
    return "_".join(word.lower() for word in display.split(" "))


_ALWAYS_FLOAT = ("weight", "guidance_start", "guidance_end")


def unit_infotext(index: int, unit: ControlNetUnit, model_title: str | None = None) -> tuple[str, str] | None:
    """(`ControlNet {index}`, `Module: canny, Model: ..., Weight: 1.0, Resize Mode: ..., Processor
    Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0, Pixel
    Perfect: False, Control Mode: Balanced`), the eleven `INFOTEXT_FIELDS` as the extension writes
    them (`str()` of each value: floats as Python prints them). `model_title` replaces
    `unit.model` (pass the resolved `name [hash]` so a paste finds the file exactly). The params
    line quotes the value (it holds commas). None when a value holds `,` or `:` (the extension
    logs an error and writes nothing for that unit then)."""
    values: dict[str, object] = {name: getattr(unit, name) for name in INFOTEXT_FIELDS}
    for name in _ALWAYS_FLOAT:  # float-typed in the extension's unit: 1 is written "1.0"
        values[name] = float(getattr(unit, name))
    if model_title is not None:
        values["model"] = model_title
    parts = []
    for name, value in values.items():
        text = str(value)
        if "," in text or ":" in text:
            return None
        parts.append(f"{_display_name(name)}: {text}")
    return infotext_key(index), ", ".join(parts)


def infotext_params(
    units: Iterable[ControlNetUnit], model_titles: Sequence[str | None] | None = None
) -> dict[str, str]:
    """The infotext entries of the enabled units, numbered among them. `model_titles[i]` (if
    given) is the title of `units[i]`'s model."""
    params: dict[str, str] = {}
    index = 0
    for position, unit in enumerate(units):
        if not unit.enabled:
            continue
        title = model_titles[position] if model_titles is not None else None
        entry = unit_infotext(index, unit, title)
        index += 1
        if entry is not None:
            params[entry[0]] = entry[1]
    return params


def _parse_value(text: str) -> bool | int | float | str:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_unit_infotext(value: str) -> dict[str, Any]:
    """A `ControlNet N` infotext value -> unit fields (`enabled` True), for `parse_unit`.

    `Key: value` items separated by commas; keys are the fields in title case ("Processor Res");
    values `True`/`False`, ints, floats or text. Also reads the longer line written before May
    2024 (`Low Vram`, `Hr Option`, `Save Detected Map`...). A quoted value (as it stands in the
    params line) is unquoted first. Raises `ValidationError` for an item without `: `."""
    text = value.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            text = str(json.loads(text))
        except ValueError:
            text = text[1:-1]
    fields: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition(": ")
        if not sep:
            raise ValidationError(f"ControlNet infotext: {item!r} is not 'Key: value'")
        fields[_field_name(key.strip())] = _parse_value(raw.strip())
    return fields


def unit_from_infotext(value: str, *, source: str = "infotext") -> ControlNetUnit:
    """`parse_unit(parse_unit_infotext(value))`; keys the unit does not have are dropped."""
    fields = {k: v for k, v in parse_unit_infotext(value).items() if k in _UNIT_FIELDS}
    return parse_unit(fields, source=source)


# -- preprocessors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slider:
    """A preprocessor slider (`PreprocessorParameter`): label, default, range, step. Values keep
    the type they were given (ints print as ints, as in the extension's JSON and infotext)."""

    name: str
    value: float
    minimum: float = 0.0
    maximum: float = 1.0
    step: float = 0.01

    def api_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


HIDDEN_SLIDER = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, 0.01)
"""A slider the preprocessor does not show: the extension still range-checks the thresholds
against it (0..1, default 0.5)."""
RESOLUTION_SLIDER = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class PreprocessorInfo:
    """What the API and the unit checks need to know of a preprocessor. A slider of None is
    hidden."""

    name: str
    label: str = ""
    tags: tuple[str, ...] = ()
    model_free: bool = False
    resolution: Slider | None = RESOLUTION_SLIDER
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    slider_3: Slider | None = None
    accepts_mask: bool = False
    requires_mask: bool = False

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def module_detail(self) -> dict[str, Any]:
        """The `/controlnet/module_list` `module_detail` entry: `{"model_free", "sliders"}`,
        the shown sliders in the order resolution, 1, 2, 3."""
        sliders = [s.api_json() for s in (self.resolution, self.slider_1, self.slider_2, self.slider_3) if s]
        return {"model_free": self.model_free, "sliders": sliders}

    @classmethod
    def from_detail(
        cls,
        name: str,
        detail: Mapping[str, Any],
        *,
        label: str = "",
        tags: Iterable[str] = (),
        accepts_mask: bool = False,
        requires_mask: bool = False,
    ) -> PreprocessorInfo:
        """From a `module_detail` entry: a first slider named "Resolution" is the resolution
        slider (its label is always that in the extension); the others are sliders 1, 2, 3."""
        sliders: list[Slider | None] = [
            Slider(
                str(s.get("name", "")),
                s.get("value", 0.5),
                s.get("min", 0.0),
                s.get("max", 1.0),
                s.get("step", 0.01),
            )
            for s in detail.get("sliders", ())
        ]
        first = sliders[0] if sliders else None
        resolution = sliders.pop(0) if first is not None and first.name == "Resolution" else None
        sliders += [None] * (3 - len(sliders))
        return cls(
            name=name,
            label=label,
            tags=tuple(tags),
            model_free=bool(detail.get("model_free", False)),
            resolution=resolution,
            slider_1=sliders[0],
            slider_2=sliders[1],
            slider_3=sliders[2],
            accepts_mask=accepts_mask,
            requires_mask=requires_mask,
        )


def apply_preprocessor_defaults(unit: ControlNetUnit, info: PreprocessorInfo) -> ControlNetUnit:
    """The extension's bound check for an enabled unit: `processor_res`, `threshold_a` and
    `threshold_b` outside their slider's range (so -1, "unset") become the slider's default.
    Hidden threshold sliders range 0..1 with default 0.5 (what the extension writes then). A
    hidden resolution slider leaves `processor_res` as it is (the extension would store 0.5, a
    value nothing reads)."""
    if not unit.enabled:
        return unit
    changes: dict[str, Any] = {}
    if info.resolution is not None and not (info.resolution.minimum <= unit.processor_res <= info.resolution.maximum):
        changes["processor_res"] = int(info.resolution.value)
    for name, slider in (("threshold_a", info.slider_1), ("threshold_b", info.slider_2)):
        spec = slider or HIDDEN_SLIDER
        if not spec.minimum <= getattr(unit, name) <= spec.maximum:
            changes[name] = spec.value
    return dataclasses.replace(unit, **changes) if changes else unit


# -- control types -----------------------------------------------------------------------------

_TAG_FILTER_ALIASES: Mapping[str, tuple[str, ...]] = {
    "instructp2p": ("ip2p",),
    "segmentation": ("seg",),
    "normalmap": ("normal",),
    "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"),
    "ip-adapter": ("ip_adapter", "ipadapter"),
    "openpose": ("openpose", "densepose"),
    "instant-id": ("instant_id", "instantid"),
    "scribble": ("sketch",),
    "tile": ("blur",),
}
_UNION_TAGS = frozenset(
    {
        "openpose",
        "depth",
        "softedge",
        "scribble",
        "canny",
        "lineart",
        "mlsd",
        "normalmap",
        "segmentation",
        "inpaint",
        "tile",
    }
)


def tag_filters(tag: str) -> set[str]:
    """The substrings a model name is matched against for a control type (`tag_to_filters`)."""
    lowered = tag.lower()
    return {lowered, *_TAG_FILTER_ALIASES.get(lowered, ()), *(("union",) if lowered in _UNION_TAGS else ())}


def control_types(preprocessors: Sequence[PreprocessorInfo], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`/controlnet/control_types`: for "All" and each preprocessor tag (sorted), the module
    labels, the model titles, the default module and model (`global_state.select_control_type`
    with no base-model filter). `preprocessors` in `module_list` order ("none" first); `models`
    are titles ("None" is put first)."""
    all_models = ["None", *(m for m in models if m != "None")]
    tags = sorted({tag for p in preprocessors for tag in p.tags})
    labels = [p.display_name for p in preprocessors]
    out: dict[str, dict[str, Any]] = {
        "All": {"module_list": labels, "model_list": all_models, "default_option": "none", "default_model": "None"}
    }
    for tag in tags:
        filters = tag_filters(tag)
        pattern = tag.lower()
        model_list = [
            m for m in all_models if m.lower() == "none" or pattern in m.lower() or any(f in m.lower() for f in filters)
        ]
        default_model = "None"
        if len(model_list) > 1:
            default_model = model_list[1]
            for title in model_list:
                if "11" in title.split("[")[0]:
                    default_model = title
                    break
        modules = [p.display_name for p in preprocessors if tag in p.tags or p.display_name == "none"]
        default_option = modules[0] if len(modules) == 1 else modules[1] if modules else "none"
        out[tag] = {
            "module_list": modules,
            "model_list": model_list,
            "default_option": default_option,
            "default_model": default_model,
        }
    return out
