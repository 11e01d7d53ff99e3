"""Infotext: the A1111 "generation parameters" text stored in images and shown in the UI.

Layout (reference a1111.md 3.1)::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (line omitted when empty)
    Key: value, Key: value, Key: "quoted, value", ...       (one last line)

`build_infotext` writes it, `parse_infotext` reads it back into A1111's dict (the shape
`/sdapi/v1/png-info` answers with and the UI pastes from). Stdlib only.

Key order: `infotext_key_order()` lists A1111's `create_infotext` order (3.2); build the params
mapping in that order (`order_params` does it for you) and `build_infotext` keeps it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULTS_FOR_MISSING_KEYS",
    "EXTRA_PARAM_KEYS",
    "INFOTEXT_KEYS_AFTER_EXTRA",
    "INFOTEXT_KEYS_BEFORE_EXTRA",
    "NEGATIVE_PROMPT_PREFIX",
    "SCHEDULER_LABELS",
    "build_infotext",
    "format_params_line",
    "infotext_key_order",
    "order_params",
    "parse_infotext",
    "parse_params_line",
    "parse_version",
    "quote",
    "split_sampler_scheduler",
    "unquote",
]

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# --- key order (a1111.md 3.2) -----------------------------------------------------------------

INFOTEXT_KEYS_BEFORE_EXTRA: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
"""`create_infotext`'s fixed keys, in order, before `extra_generation_params`."""

EXTRA_PARAM_KEYS: tuple[str, ...] = (
    "Hires upscale",
    "Hires resize",
    "Hires steps",
    "Hires upscaler",
    "Hires checkpoint",
    "Hires sampler",
    "Hires schedule type",
    "Hires prompt",
    "Hires negative prompt",
    "Mask blur",
    "Mask mode",
    "Masked content",
    "Inpaint area",
    "Masked area padding",
    "Noise multiplier",
    "Refiner",
    "Refiner switch at",
    "Lora hashes",
    "TI hashes",
    "Emphasis",
    "Schedule min sigma",
    "Schedule max sigma",
    "Schedule rho",
    "Beta schedule alpha",
    "Beta schedule beta",
    "Discard penultimate sigma",
    "Extra noise",
    "SGM noise multiplier",
    "Pad conds",
    "NGMS",
    "Skip Early CFG",
    "Eta",
    "Eta DDIM",
    "Sigma churn",
    "Sigma tmin",
    "Sigma tmax",
    "Sigma noise",
    "UniPC variant",
    "UniPC skip type",
    "UniPC order",
    "UniPC lower order final",
    "VAE Encoder",
    "VAE Decoder",
    "Downcast alphas_cumprod",
    "Noise Schedule",
    "Old prompt editing timelines",
)
"""The common `extra_generation_params` keys (a1111.md 3.2, item 23) in the order the engine
should add them. In A1111 this block is in insertion order; keys not listed here (scripts,
extensions) follow in the order they were added."""

INFOTEXT_KEYS_AFTER_EXTRA: tuple[str, ...] = ("Version", "User")
"""Always last."""


def infotext_key_order() -> tuple[str, ...]:
    """A1111's full key order for txt2img/img2img infotext: fixed keys, common extras, Version, User.

    Unknown keys go between the known extras and `Version` (see `order_params`).
    """
    return INFOTEXT_KEYS_BEFORE_EXTRA + EXTRA_PARAM_KEYS + INFOTEXT_KEYS_AFTER_EXTRA


def order_params(params: Mapping[str, object], extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Params in A1111's order.

    Keys of `INFOTEXT_KEYS_BEFORE_EXTRA` come first in that order (A1111's `create_infotext`
    dict); then the extra params (`extra`, then any other keys of `params`), known extras in
    `EXTRA_PARAM_KEYS` order and the rest in insertion order; then `Version`, `User`. A key in
    both mappings takes the value from `extra` but keeps its fixed position (A1111's
    `dict.update`). `None` values are kept (build_infotext skips them).
    """
    merged: dict[str, object] = dict(params)
    if extra:
        merged.update(extra)
    fixed = {k: i for i, k in enumerate(INFOTEXT_KEYS_BEFORE_EXTRA)}
    extras = {k: i for i, k in enumerate(EXTRA_PARAM_KEYS)}
    tail = {k: i for i, k in enumerate(INFOTEXT_KEYS_AFTER_EXTRA)}
    insertion = {k: i for i, k in enumerate(merged)}

    def rank(key: str) -> tuple[int, int]:
        if key in fixed:
            return (0, fixed[key])
        if key in extras:
            return (1, extras[key])
        if key in tail:
            return (3, tail[key])
        return (2, insertion[key])

    return {key: merged[key] for key in sorted(merged, key=rank)}


# --- writing ----------------------------------------------------------------------------------


def quote(value: object) -> str:
    """A value as written in the params line: JSON-quoted if it contains `,`, `:` or a newline."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Inverse of `quote` for one value: JSON-decode `"..."`, else return the text unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def format_params_line(params: Mapping[str, object]) -> str:
    """`Key: value, ...` in the mapping's order; `None` skipped; a value equal to its key is `Key`."""
    parts: list[str] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, str) and value == key:
            parts.append(key)
        else:
            parts.append(f"{key}: {quote(value)}")
    return ", ".join(parts)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The full infotext: prompt, optional `Negative prompt:` line, params line (a1111.md 3.1)."""
    negative = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params_line(params)}".strip()


# --- reading ----------------------------------------------------------------------------------

# Key: a word character then word characters, spaces, '-' or '/'; value: a JSON string or text up
# to the next comma (a1111.md 3.3, `re_param`).
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_MIN_PARAMS_ON_LAST_LINE = 3


def parse_params_line(line: str) -> dict[str, str]:
    """The pairs of one params line; quoted values decoded, `WxH` values split into `-1`/`-2`.

    Values stay strings, as A1111 returns them ("Size-1": "512"); an empty value is dropped.
    """
    out: dict[str, str] = {}
    for key, raw in _RE_PARAM.findall(line):
        if not raw:
            continue  # "Key: ," carries nothing; A1111 drops it too
        value = unquote(raw)
        match = _RE_IMAGE_SIZE.match(value)
        if match is not None:
            out[f"{key}-1"] = match.group(1)
            out[f"{key}-2"] = match.group(2)
        else:
            out[key] = value
    return out


DEFAULTS_FOR_MISSING_KEYS: tuple[tuple[str, object], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),
    ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
    ("Cache FP16 weight for LoRA", False),
    ("Refiner switch by sampling steps", False),
)
"""What `parse_infotext` fills in for keys the text does not have (a1111.md 3.3 step 5): an
infotext written before a feature existed meant that feature's default."""

# Scheduler (label, name, aliases) from a1111.md section 5, `/schedulers` order.
_SCHEDULERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Automatic", "automatic", ()),
    ("Uniform", "uniform", ()),
    ("Karras", "karras", ()),
    ("Exponential", "exponential", ()),
    ("Polyexponential", "polyexponential", ()),
    ("SGM Uniform", "sgm_uniform", ("SGMUniform",)),
    ("KL Optimal", "kl_optimal", ()),
    ("Align Your Steps", "align_your_steps", ()),
    ("Simple", "simple", ()),
    ("Normal", "normal", ()),
    ("DDIM", "ddim", ()),
    ("Beta", "beta", ()),
)
SCHEDULER_LABELS: tuple[str, ...] = tuple(label for label, _, _ in _SCHEDULERS)
"""Scheduler labels as infotext writes them in `Schedule type`."""


def split_sampler_scheduler(sampler: str) -> tuple[str, str | None]:
    """Split an old combined sampler name: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras").

    A name ending in " <scheduler label|name|alias>" is split and the scheduler's label returned;
    otherwise `(sampler, None)`.
    """
    for label, name, aliases in _SCHEDULERS:
        for option in (label, name, *aliases):
            suffix = " " + option
            if sampler.endswith(suffix) and len(sampler) > len(suffix):
                return sampler[: -len(suffix)], label
    return sampler, None


_RE_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-?rc\d*)?(?:-(\d+))?", re.IGNORECASE)


def parse_version(text: object) -> tuple[int, int, int, int] | None:
    """An A1111 `Version` value as (major, minor, patch, commits since tag); None if not one.

    "v1.10.1" -> (1, 10, 1, 0); "v1.7.0-225-g1234abc" -> (1, 7, 0, 225). Forge's "f2.0.1v1.10.1-..."
    and unknown strings give None (no back-compat shims are applied for them, like A1111).
    """
    if not isinstance(text, str):
        return None
    match = _RE_VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, patch, commits = match.groups()
    return int(major), int(minor), int(patch or 0), int(commits or 0)


_V1_6_0 = (1, 6, 0, 0)
_V1_7_0_225 = (1, 7, 0, 225)
_V1_8_0 = (1, 8, 0, 0)


def _apply_backcompat(res: dict[str, object]) -> None:
    """Versioned shims (a1111.md 3.3 step 6): old infotexts reproduce the old behaviour."""
    version = parse_version(res.get("Version"))
    if version is None:
        return
    if version < _V1_6_0 and "[" in str(res.get("Prompt", "")):
        res["Old prompt editing timelines"] = True
    if version < _V1_6_0 and res.get("Sampler") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < _V1_7_0_225:
        res["Downcast alphas_cumprod"] = True
    if version < _V1_8_0 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def old_hires_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """First-pass size of the pre-1.0 hires fix when it was not given: about 512x512 pixels,
    same aspect, each side rounded up to a multiple of 64."""
    if width <= 0 or height <= 0:
        return width, height
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_params(res: dict[str, object]) -> None:
    """Old "First pass size: WxH" infotexts: Size was the final size and the first pass was given
    separately; today Size is the first pass and `Hires resize` the final size."""
    first_w = res.get("First pass size-1")
    first_h = res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        fw, fh = int(str(first_w)), int(str(first_h))
        width = int(str(res.get("Size-1", 512)))
        height = int(str(res.get("Size-2", 512)))
    except ValueError:
        return
    if fw == 0 or fh == 0:
        fw, fh = old_hires_first_pass_size(width, height)
    res["Size-1"] = fw
    res["Size-2"] = fh
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


def _split_prompt_lines(lines: Iterable[str]) -> tuple[str, str]:
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines)


def parse_infotext(
    text: str,
    *,
    backcompat: bool = True,
    skip_keys: Iterable[str] = (),
) -> dict[str, object]:
    """A1111's `parse_generation_parameters` (a1111.md 3.3).

    Returns "Prompt", "Negative prompt" and every pair of the params line with values as strings
    (quoted values JSON-decoded, "WxH" split into "<Key>-1"/"<Key>-2", e.g. "Size-1": "512",
    as A1111 returns them), then the defaults of `DEFAULTS_FOR_MISSING_KEYS` for absent keys
    (those keep their typed values: `Masked area padding` 32, `Hires resize-1` 0, ...).

    Also: old combined sampler names are split ("Sampler: DPM++ 2M Karras" -> Sampler "DPM++ 2M",
    Schedule type "Karras"; same for "Hires sampler"); `Hypernet`/`Hypernet strength` are
    appended to the prompt as `<hypernet:name:strength>`; old "First pass size" hires fields are
    converted; `Emphasis` defaults to "Original" when a prompt uses brackets; with `backcompat`
    (setting `auto_backcompat`) the versioned shims are added; `skip_keys` (setting
    `infotext_skip_pasting`) are removed last. Styles are not inferred here (that needs the
    styles database; the caller does it).
    """
    res: dict[str, object] = {}
    *lines, last_line = text.strip().split("\n")
    if len(_RE_PARAM.findall(last_line)) < _MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        last_line = ""

    prompt, negative_prompt = _split_prompt_lines(lines)
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.update(parse_params_line(last_line))

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    for key, default in DEFAULTS_FOR_MISSING_KEYS:
        if key not in res:
            res[key] = default

    for sampler_key, schedule_key in (("Sampler", "Schedule type"), ("Hires sampler", "Hires schedule type")):
        sampler = res.get(sampler_key)
        if isinstance(sampler, str):
            name, scheduler = split_sampler_scheduler(sampler)
            if scheduler is not None:
                res[sampler_key] = name
                res[schedule_key] = scheduler

    if "Emphasis" not in res and any(c in f"{prompt}\n{negative_prompt}" for c in "()[]"):
        res["Emphasis"] = "Original"

    _restore_old_hires_params(res)

    if backcompat:
        _apply_backcompat(res)

    for key in skip_keys:
        res.pop(key, None)
    return res
