"""The one request type for generation, with A1111's field names and API defaults.

The UI builds these from its components, the API from its JSON body, scripts from either, each
through one converter. `validate_request` checks what can be checked without a model and returns
the request with sizes rounded down to multiples of 8 plus the warnings to report.
Images are opaque here (PIL images at run time): core imports no imaging library.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from modules.core.controlnet import ControlNetUnit
from modules.core.errors import ValidationError
from modules.core.fields import ignored_field_warnings
from modules.core.option_defaults import unimplemented_options

# img2img resize modes (A1111 numbering)
RESIZE_JUST = 0
RESIZE_CROP = 1
RESIZE_FILL = 2
RESIZE_LATENT = 3
# inpainting_fill
FILL_FILL = 0
FILL_ORIGINAL = 1
FILL_LATENT_NOISE = 2
FILL_LATENT_NOTHING = 3


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """Fields shared by txt2img and img2img (A1111 `/sdapi/v1` names and API defaults)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"  # legacy: used when sampler_name is empty
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: Mapping[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: Mapping[str, Any] | None = None
    force_task_id: str | None = None
    firstpass_image: Any | None = None  # a decoded image: hires fix starts from it instead of a first pass
    script_name: str | None = None  # a selectable script (A1111: its title, lower-cased)
    script_args: tuple[Any, ...] = ()
    alwayson_scripts: Mapping[str, Any] = field(default_factory=dict)
    # ControlNet units (sd-webui-controlnet's, from `alwayson_scripts.controlnet` or the UI), images
    # decoded by the adapter; applied by the engine (`modules.engine.controlnet_service`)
    controlnet_units: tuple[ControlNetUnit, ...] = ()
    # what the adapter found while reading the request and tells the caller (e.g. unknown unit keys)
    adapter_warnings: tuple[str, ...] = ()
    # Per-image values set by scripts (A1111's p.all_prompts / all_negative_prompts / all_seeds /
    # all_subseeds). Empty = derived from prompt/seed as usual. Prompts given here are final:
    # styles are not applied to them again.
    all_prompts: tuple[str, ...] = ()
    all_negative_prompts: tuple[str, ...] = ()
    all_seeds: tuple[int, ...] = ()
    all_subseeds: tuple[int, ...] = ()
    extra_generation_params: Mapping[str, Any] = field(default_factory=dict)  # more infotext keys (scripts)

    @property
    def effective_sampler(self) -> str:
        return self.sampler_name or self.sampler_index or "Euler"

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def prompt_at(self, index: int) -> str:
        """Image `index`'s prompt: `all_prompts[index]` when a script set them, else `prompt`."""
        return self.all_prompts[index] if self.all_prompts else self.prompt

    def negative_prompt_at(self, index: int) -> str:
        return self.all_negative_prompts[index] if self.all_negative_prompts else self.negative_prompt

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Txt2ImgRequest(GenerationRequest):
    denoising_strength: float | None = 0.75  # used by hires fix
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None  # None -> "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


@dataclass(frozen=True, kw_only=True)
class Img2ImgRequest(GenerationRequest):
    init_images: tuple[Any, ...] = ()
    resize_mode: int = RESIZE_JUST
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: Any | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = FILL_FILL
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Any | None = None
    include_init_images: bool = False

    @property
    def blur_xy(self) -> tuple[int, int]:
        if self.mask_blur is not None:
            return self.mask_blur, self.mask_blur
        return self.mask_blur_x, self.mask_blur_y


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@dataclass(frozen=True)
class Limits:
    """Caps from settings; the defaults are generous for one GPU and refuse absurd requests.

    `max_pixels_times_batch`, `max_side` and `max_prompt_length` are options
    (`max_pixels_times_batch`, `max_image_side`, `max_prompt_length`: `Limits.from_options`);
    steps, batch size and batch count are fixed caps."""

    max_pixels_times_batch: int = 2048 * 2048 * 8
    max_side: int = 8192
    max_steps: int = 1000
    max_batch_size: int = 64
    max_n_iter: int = 1000
    max_prompt_length: int = 20_000

    @classmethod
    def from_options(cls, options: Any) -> Limits:
        """The limits set in `options` (anything with `in` and `get(key)`; missing keys keep the defaults)."""
        base = cls()

        def get(key: str, default: int) -> int:
            return int(options.get(key)) if key in options else default

        return cls(
            max_pixels_times_batch=get("max_pixels_times_batch", base.max_pixels_times_batch),
            max_side=get("max_image_side", base.max_side),
            max_prompt_length=get("max_prompt_length", base.max_prompt_length),
        )


def hires_target(request: Txt2ImgRequest) -> tuple[int, int]:
    """The size the hires fix upscales the first pass to, as A1111's `calculate_target_resolution`
    works it out: `hr_scale` x the first pass, or `hr_resize_x/y` (one of them 0: the other side
    follows the first pass's aspect ratio; both set: the size that covers both, later cropped)."""
    width, height = max(request.width, 1), max(request.height, 1)
    rx, ry = request.hr_resize_x, request.hr_resize_y
    if rx == 0 and ry == 0:
        return int(width * request.hr_scale), int(height * request.hr_scale)
    if ry == 0:
        return rx, rx * height // width
    if rx == 0:
        return ry * width // height, ry
    if width / height < rx / ry:
        return rx, rx * height // width
    return ry * width // height, ry


def override_warnings(request: GenerationRequest) -> list[str]:
    """One warning per `override_settings` key that is a built-in option nothing acts on yet."""
    unread = unimplemented_options()
    return [
        f"override_settings: {key!r} is accepted but not acted on ({unread[key]})"
        for key in request.override_settings
        if key in unread
    ]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValidationError(message)


def validate_request(
    request: GenerationRequest, limits: Limits = Limits(), installed_scripts: Collection[str] = ()
) -> tuple[GenerationRequest, list[str]]:
    """Check a request; sizes are rounded down to multiples of 8 (A1111 does the same, silently;
    we report it). Raises `ValidationError` with a message naming the field.

    The warnings also name every field the caller set that we accept but do not act on
    (`fields.IGNORED_FIELDS`), `alwayson_scripts` entries for scripts not in `installed_scripts`,
    and `override_settings` keys of built-in options nothing reads yet."""
    warnings: list[str] = ignored_field_warnings(request, installed_scripts) + override_warnings(request)
    _check_numbers_and_text(request, limits)
    _require(request.steps >= 1, f"steps must be at least 1 (got {request.steps})")
    _require(request.steps <= limits.max_steps, f"steps must be at most {limits.max_steps} (got {request.steps})")
    _require(1 <= request.batch_size <= limits.max_batch_size, f"batch_size must be 1..{limits.max_batch_size}")
    _require(1 <= request.n_iter <= limits.max_n_iter, f"n_iter must be 1..{limits.max_n_iter}")
    _require(0.0 <= request.subseed_strength <= 1.0, "subseed_strength must be within 0..1")
    width, height = request.width, request.height
    _require(8 <= width <= limits.max_side, f"width must be 8..{limits.max_side} (got {width})")
    _require(8 <= height <= limits.max_side, f"height must be 8..{limits.max_side} (got {height})")
    if width % 8 or height % 8:
        warnings.append(f"size {width}x{height} rounded down to {width // 8 * 8}x{height // 8 * 8}")
        request = request.replace(width=width // 8 * 8, height=height // 8 * 8)
    pixels = request.width * request.height * request.batch_size
    _require(
        pixels <= limits.max_pixels_times_batch,
        f"width x height x batch_size = {pixels} exceeds the limit of {limits.max_pixels_times_batch} pixels",
    )
    if request.denoising_strength is not None:
        _require(0.0 <= request.denoising_strength <= 1.0, "denoising_strength must be within 0..1")
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        _require(request.hr_scale > 0 or (request.hr_resize_x > 0 or request.hr_resize_y > 0), "hr_scale must be > 0")
        _require(request.hr_second_pass_steps >= 0, "hr_second_pass_steps must be >= 0")
        _require(request.hr_resize_x >= 0 and request.hr_resize_y >= 0, "hr_resize_x/hr_resize_y must be >= 0")
        _check_hires_target(request, limits)
    if isinstance(request, Img2ImgRequest):
        _require(len(request.init_images) > 0, "init_images: at least one image is required")
        _require(request.resize_mode in (0, 1, 2, 3), f"resize_mode must be 0..3 (got {request.resize_mode})")
        _require(
            request.inpainting_fill in (0, 1, 2, 3), f"inpainting_fill must be 0..3 (got {request.inpainting_fill})"
        )
        _require(request.inpaint_full_res_padding >= 0, "inpaint_full_res_padding must be >= 0")
        blur_x, blur_y = request.blur_xy
        _require(blur_x >= 0 and blur_y >= 0, "mask_blur must be >= 0")
    total = request.image_count
    for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
        values = getattr(request, name)
        _require(
            not values or len(values) >= total,
            f"{name}: {len(values)} values for {total} images (batch_size x n_iter)",
        )
    return request, warnings


def _field_values(request: GenerationRequest) -> list[tuple[str, Any]]:
    """(name, value) of every plain field, items of tuples as `name[i]`."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, tuple):
            out += [(f"{f.name}[{i}]", item) for i, item in enumerate(value)]
        else:
            out.append((f.name, value))
    return out


def _check_numbers_and_text(request: GenerationRequest, limits: Limits) -> None:
    """Every int fits in 64 bits (seeds reach torch's generator as int64; seed + image index too),
    every float is finite, every text is valid Unicode (no lone surrogates) and prompts are at
    most `limits.max_prompt_length` characters."""
    for name, value in _field_values(request):
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            _require(INT64_MIN <= value <= INT64_MAX, f"{name}: {value} does not fit in a 64-bit integer")
        elif isinstance(value, float):
            _require(math.isfinite(value), f"{name}: must be a finite number (got {value})")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError(f"{name}: text is not valid Unicode (lone surrogate)") from None
            if "prompt" in name:
                _require(
                    len(value) <= limits.max_prompt_length,
                    f"{name}: {len(value)} characters, more than the limit of {limits.max_prompt_length} "
                    "(setting max_prompt_length)",
                )
    last = max(request.image_count - 1, 0)
    for name in ("seed", "subseed"):
        value = getattr(request, name)
        _require(value + last <= INT64_MAX, f"{name}: {value} + the image index does not fit in a 64-bit integer")


def _check_hires_target(request: Txt2ImgRequest, limits: Limits) -> None:
    """The second pass's size against the same limits as the first pass's (before any work)."""
    width, height = hires_target(request)
    _require(
        8 <= width <= limits.max_side and 8 <= height <= limits.max_side,
        f"hires fix: the upscaled size {width}x{height} is outside 8..{limits.max_side} per side "
        "(hr_scale / hr_resize_x / hr_resize_y; setting max_image_side)",
    )
    pixels = width * height * request.batch_size
    _require(
        pixels <= limits.max_pixels_times_batch,
        f"hires fix: the upscaled size {width}x{height} x batch_size = {pixels} pixels exceeds the limit of "
        f"{limits.max_pixels_times_batch} (setting max_pixels_times_batch)",
    )
