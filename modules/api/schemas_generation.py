"""Hand-written request models for `POST /sdapi/v1/txt2img` and `/img2img` (a1111.md 1.4, 1.5).

A1111's names and API defaults; every field optional, unknown keys ignored, an explicit `null`
means the default. `sampler_index` is the legacy name used when `sampler_name` is empty, so the
API's effective default sampler is Euler. The converters build the core requests (images are
decoded here) and apply an optional `infotext` to the fields the client did not send.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modules.api.images import DecodeOptions, decode_image
from modules.core.controlnet import ControlNetUnit, controlnet_script_args, parse_units
from modules.core.errors import NotFoundError
from modules.core.fields import HIRES, IMG2IMG, TXT2IMG, option_fields, overrides_from_infotext, values_from_infotext
from modules.core.infotext import parse_infotext
from modules.core.option_defaults import unimplemented_options
from modules.core.requests import GenerationRequest, Img2ImgRequest, Txt2ImgRequest


class GenerationPayload(BaseModel):
    """Fields shared by txt2img and img2img."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
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
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """A1111's fields are all Optional: `"steps": null` means the default, not an error."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def echo(self) -> dict[str, Any]:
        """The request as received, defaults filled (the response's `parameters`)."""
        data = self.model_dump(mode="json")
        data["do_not_save_samples"] = data["do_not_save_grid"] = not self.save_images
        return data


class Txt2ImgPayload(GenerationPayload):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgPayload(GenerationPayload):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    def echo(self) -> dict[str, Any]:
        data = super().echo()
        if not self.include_init_images:
            data["init_images"] = None
            data["mask"] = None
        return data


# -- infotext -> fields ----------------------------------------------------------------------

# Settings the API's `infotext` may override (A1111's get_override_settings): the options of the
# field table that something acts on, except the model choices (a pasted infotext never switches
# the checkpoint or the VAE: A1111's disable_weights_auto_swap default).
INFOTEXT_OVERRIDES: frozenset[str] = frozenset(
    entry.option
    for entry in option_fields()
    if entry.option is not None
    and entry.option not in unimplemented_options()
    and entry.option not in ("sd_model_checkpoint", "sd_vae")
)


def _tabs(payload: GenerationPayload) -> tuple[str, ...] | None:
    if isinstance(payload, Txt2ImgPayload):
        return (TXT2IMG, HIRES)
    if isinstance(payload, Img2ImgPayload):
        return (IMG2IMG,)
    return None


def infotext_values(payload: GenerationPayload) -> dict[str, Any]:
    """Field values from `payload.infotext` for the fields the client did not send (the field table
    in `modules.core.fields`), plus settings overrides for the settings it did not override."""
    if not payload.infotext:
        return {}
    parsed = parse_infotext(payload.infotext)
    sent = payload.model_fields_set
    fields = type(payload).model_fields
    values = {
        name: value
        for name, value in values_from_infotext(parsed, _tabs(payload)).items()
        if name not in sent and name in fields
    }
    if values.get("scheduler") == "Automatic":
        values.pop("scheduler")
    overrides = dict(payload.override_settings or {})
    for setting, value in overrides_from_infotext(parsed, INFOTEXT_OVERRIDES).items():
        overrides.setdefault(setting, value)
    if overrides.get("CLIP_stop_at_last_layers") == 1 and "Clip skip" not in payload.infotext:
        overrides.pop("CLIP_stop_at_last_layers")
    if overrides != (payload.override_settings or {}):
        values["override_settings"] = overrides
    return values


# -- converters ------------------------------------------------------------------------------


def _common(payload: GenerationPayload) -> dict[str, Any]:
    data = payload.model_dump()
    data.update(infotext_values(payload))
    common = {name: data[name] for name in GenerationRequest.__dataclass_fields__ if name in data}
    common["styles"] = tuple(data.get("styles") or ())
    common["script_name"] = data.get("script_name") or None
    common["script_args"] = tuple(data.get("script_args") or ())
    common["alwayson_scripts"] = dict(data.get("alwayson_scripts") or {})
    common["override_settings"] = dict(data.get("override_settings") or {})
    common["do_not_save_samples"] = not payload.save_images
    common["do_not_save_grid"] = not payload.save_images
    if not common.get("sampler_name"):
        common["sampler_name"] = None
        common["sampler_index"] = common.get("sampler_index") or "Euler"
    return {**data, **common}


def _controlnet(data: dict[str, Any], decode: DecodeOptions) -> None:
    """`alwayson_scripts.controlnet` (any case) -> `controlnet_units` with their images decoded;
    the entry leaves `alwayson_scripts` (ControlNet is built in, not a script here)."""
    found = controlnet_script_args(data.get("alwayson_scripts"))
    if found is None:
        return
    key, args = found
    parsed = parse_units(args if args is not None else [], source=f"alwayson_scripts.{key}.args")
    data["alwayson_scripts"] = {k: v for k, v in data["alwayson_scripts"].items() if k != key}
    units = []
    for unit in parsed.units:
        if unit.enabled:
            unit = _decoded_unit(unit, decode)
        units.append(unit)
    data["controlnet_units"] = tuple(units)
    data["adapter_warnings"] = tuple(parsed.warnings)


def _decoded_unit(unit: ControlNetUnit, decode: DecodeOptions) -> ControlNetUnit:
    inputs = unit.image_inputs()
    if not inputs:
        return unit
    first = inputs[0]
    image = decode_image(first.image, first.field, decode)
    mask = decode_image(first.mask, first.mask_field, decode) if first.mask is not None else None
    return dataclasses.replace(unit, image=image, mask=mask)


def to_txt2img(payload: Txt2ImgPayload, decode: DecodeOptions) -> Txt2ImgRequest:
    data = _common(payload)
    _controlnet(data, decode)
    if payload.firstpass_image:
        data["firstpass_image"] = decode_image(payload.firstpass_image, "firstpass_image", decode)
    fields = Txt2ImgRequest.__dataclass_fields__
    return Txt2ImgRequest(**{k: v for k, v in data.items() if k in fields})


def to_img2img(payload: Img2ImgPayload, decode: DecodeOptions) -> Img2ImgRequest:
    if not payload.init_images:
        raise NotFoundError("Init image not found")
    data = _common(payload)
    _controlnet(data, decode)
    data["init_images"] = tuple(
        decode_image(value, f"init_images[{i}]", decode) for i, value in enumerate(payload.init_images)
    )
    data["mask"] = decode_image(payload.mask, "mask", decode) if payload.mask else None
    data["latent_mask"] = decode_image(payload.latent_mask, "latent_mask", decode) if payload.latent_mask else None
    fields = Img2ImgRequest.__dataclass_fields__
    return Img2ImgRequest(**{k: v for k, v in data.items() if k in fields})
