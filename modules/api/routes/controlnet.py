"""The sd-webui-controlnet extension's routes, `/controlnet/*`, in its shapes (scripts/api.py,
@56cec5b2; API version 3):

* `GET /controlnet/version` -> `{"version": 3}`
* `GET /controlnet/model_list?update=true` -> `{"model_list": ["name [hash8]", ...]}` (rescans the
  folders first unless `update=false`; "None" is not listed)
* `GET /controlnet/module_list?alias_names=false` -> `{"module_list": [...], "module_detail":
  {name: {"model_free", "sliders": [{"name", "value", "min", "max", "step"}...]}}}` (labels as keys
  with `alias_names=true`)
* `GET /controlnet/control_types` -> `{"control_types": {tag: {"module_list", "model_list",
  "default_option", "default_model"}}}`
* `GET /controlnet/settings` -> `{"control_net_unit_count": N}`
* `POST /controlnet/detect` with `controlnet_module`, `controlnet_input_images` (base64 or data
  URLs; webuiapi's `controlnet_images` is read too: with the extension it answered "No image
  selected"), `controlnet_processor_res`, `controlnet_threshold_a/b` (-1 or out of the slider's
  range: the slider's default), `controlnet_masks`, `low_vram` -> `{"info": "Success",
  "images": [base64...]}`; 422 "Module not available" (unknown module, by name or label), 422 "No
  image selected", 422 "Preprocessor X requires `controlnet_masks` param." (A1111's error object).
  Not served: `poses` (no openpose without its weights), `tensor` outputs, `render_openpose_json`.

The routes get what they need from `services.controlnet`, a `ControlNetProvider` (the model
registry, the preprocessors, the unit count); 503 while none is set. Images are decoded with
`modules.api.images.decode_image` (its size limit; URLs only when `api_enable_requests` is on).

Security: the app-wide middleware (`modules.api.security.install_security`) puts these routes
behind auth and CSRF like every path (A1111 leaves them open: the extension adds them with
`app.get`, outside `--api-auth`). They are not in `API_PATH_PREFIXES`, so they take the UI
realm's logins (the `--api-auth` ones only when no `--gradio-auth` is given) and are not in
`--api-log`: the router's mount should add "/controlnet/" there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from modules.api.images import DecodeOptions, decode_image, encode_b64
from modules.core.controlnet import (
    API_VERSION,
    ControlNetUnit,
    PreprocessorInfo,
    apply_preprocessor_defaults,
    control_types,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/controlnet", tags=["controlnet"])

FALLBACK_RESOLUTION = 512
"""The resolution handed to a preprocessor that shows no resolution slider (it does not read it)."""


class ControlNetProvider(Protocol):
    """What the `/controlnet` routes need; the composition root sets one as `services.controlnet`."""

    def list_models(self) -> list[str]:
        """Model titles as the extension names them ("stem [hash8]"), without "None"."""
        ...

    def refresh_models(self) -> None:
        """Rescan the ControlNet model folders."""
        ...

    def preprocessors(self) -> Sequence[PreprocessorInfo]:
        """Every preprocessor in the extension's `module_list` order ("none" first)."""
        ...

    def run_preprocessor(
        self,
        module: str,
        image: Image.Image,
        *,
        mask: Image.Image | None,
        resolution: int,
        threshold_a: float,
        threshold_b: float,
        low_vram: bool,
    ) -> Image.Image:
        """The detected map (RGB) of `image` (RGB; `mask` "L" when the preprocessor accepts
        one). `module` is the preprocessor's name. Raises NotFoundError when its weights are
        missing."""
        ...

    def unit_count(self) -> int:
        """The number of units the UI shows (`control_net_unit_count`)."""
        ...


def get_controlnet(request: Request) -> ControlNetProvider:
    services = getattr(request.app.state, "services", None)
    provider: ControlNetProvider | None = getattr(services, "controlnet", None)
    if provider is None:
        raise HTTPException(status_code=503, detail="ControlNet is not available")
    return provider


def get_decode_options(request: Request) -> DecodeOptions:
    return DecodeOptions.from_options(request.app.state.services.options)


def find_preprocessor(provider: ControlNetProvider, module: str) -> PreprocessorInfo | None:
    """By label first, then by name (`Preprocessor.get_preprocessor`)."""
    infos = list(provider.preprocessors())
    for info in infos:
        if info.display_name == module:
            return info
    for info in infos:
        if info.name == module:
            return info
    return None


# -- schemas ------------------------------------------------------------------------------------


class VersionResponse(BaseModel):
    version: int


class ModelListResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_list: list[str]


class ModuleListResponse(BaseModel):
    module_list: list[str]
    module_detail: dict[str, Any]


class ControlTypesResponse(BaseModel):
    control_types: dict[str, Any]


class SettingsResponse(BaseModel):
    control_net_unit_count: int


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = Field(default="none", title="Controlnet Module")
    controlnet_input_images: list[str] = Field(default_factory=list, title="Controlnet Input Images")
    controlnet_images: list[str] | None = Field(
        default=None, title="Controlnet Images", description="webuiapi's name for controlnet_input_images."
    )
    controlnet_processor_res: int = Field(default=-1, title="Controlnet Processor Resolution")
    controlnet_threshold_a: float = Field(default=-1, title="Controlnet Threshold a")
    controlnet_threshold_b: float = Field(default=-1, title="Controlnet Threshold b")
    controlnet_masks: list[str] = Field(default_factory=list, title="Controlnet Masks")
    low_vram: bool = Field(default=False, title="Low vram")


class DetectResponse(BaseModel):
    info: str
    images: list[str]


# -- routes -------------------------------------------------------------------------------------


@router.get("/version", response_model=VersionResponse)
def version() -> VersionResponse:
    return VersionResponse(version=API_VERSION)


@router.get("/model_list", response_model=ModelListResponse)
def model_list(update: bool = True, provider: ControlNetProvider = Depends(get_controlnet)) -> ModelListResponse:
    if update:
        provider.refresh_models()
    return ModelListResponse(model_list=list(provider.list_models()))


@router.get("/module_list", response_model=ModuleListResponse)
def module_list(
    alias_names: bool = False, provider: ControlNetProvider = Depends(get_controlnet)
) -> ModuleListResponse:
    infos = list(provider.preprocessors())
    names = [info.display_name if alias_names else info.name for info in infos]
    return ModuleListResponse(
        module_list=names, module_detail={name: info.module_detail() for name, info in zip(names, infos, strict=True)}
    )


@router.get("/control_types", response_model=ControlTypesResponse)
def get_control_types(provider: ControlNetProvider = Depends(get_controlnet)) -> ControlTypesResponse:
    return ControlTypesResponse(control_types=control_types(list(provider.preprocessors()), provider.list_models()))


@router.get("/settings", response_model=SettingsResponse)
def settings(provider: ControlNetProvider = Depends(get_controlnet)) -> SettingsResponse:
    return SettingsResponse(control_net_unit_count=provider.unit_count())


@router.post("/detect", response_model=DetectResponse)
def detect(
    body: DetectRequest,
    request: Request,
    provider: ControlNetProvider = Depends(get_controlnet),
    decode: DecodeOptions = Depends(get_decode_options),
) -> DetectResponse:
    info = find_preprocessor(provider, body.controlnet_module)
    if info is None:
        raise HTTPException(status_code=422, detail="Module not available")
    images = body.controlnet_input_images or body.controlnet_images or []
    field = "controlnet_input_images" if body.controlnet_input_images else "controlnet_images"
    if not images:
        raise HTTPException(status_code=422, detail="No image selected")
    masks = body.controlnet_masks
    if info.requires_mask and len(masks) != len(images):
        raise HTTPException(
            status_code=422, detail=f"Preprocessor {body.controlnet_module} requires `controlnet_masks` param."
        )
    unit = apply_preprocessor_defaults(
        ControlNetUnit(
            enabled=True,
            module=info.name,
            processor_res=body.controlnet_processor_res,
            threshold_a=body.controlnet_threshold_a,
            threshold_b=body.controlnet_threshold_b,
        ),
        info,
    )
    resolution = unit.processor_res if unit.processor_res > 0 else FALLBACK_RESOLUTION
    log.info("Detecting %d images with the %s module.", len(images), info.name)
    inputs: list[tuple[Image.Image, Image.Image | None]] = []  # all decoded before any runs
    for i, text in enumerate(images):
        image = to_rgb(decode_image(text, f"{field}[{i}]", decode))
        mask = None
        if i < len(masks):
            if info.accepts_mask:
                mask = first_channel(decode_image(masks[i], f"controlnet_masks[{i}]", decode))
            else:
                log.warning("Preprocessor %s does not accept a mask; controlnet_masks[%d] ignored", info.name, i)
        inputs.append((image, mask))
    options = request.app.state.services.options
    out: list[str] = []
    for image, mask in inputs:
        result = provider.run_preprocessor(
            info.name,
            image,
            mask=mask,
            resolution=resolution,
            threshold_a=unit.threshold_a,
            threshold_b=unit.threshold_b,
            low_vram=body.low_vram,
        )
        out.append(encode_b64(result, options, infotext=None))
    return DetectResponse(info="Success", images=out)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparency over white, as the extension's HWC3 composes an RGBA input."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def first_channel(image: Image.Image) -> Image.Image:
    """The mask as "L": its first channel (the extension takes `mask[:, :, :1]`)."""
    if image.mode == "L":
        return image
    if image.mode in ("1", "P", "I", "I;16", "F"):
        return image.convert("L")
    return image.getchannel(0)
