"""/sdapi/v1 routes: extra-single-image and extra-batch-images (a1111.md 1.6).

Images are decoded in the threadpool (size caps of `modules.api.images`), then the work runs on
the single worker (queued behind generation, as A1111's queue lock does) and is awaited.

Face restorers and model upscalers are the shared ones of the Services bundle (the engine's
hires fix and restore_faces use the same loaded models); the built-ins (None, Lanczos,
Nearest) are done by `run_extras` itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.images import DecodeOptions, decode_image, encode_b64
from modules.core.jobs import ExtrasRequest
from modules.core.results import ExtrasResult
from modules.services import Services

router = APIRouter()


class ExtrasBase(BaseModel):
    """A1111's `ExtrasBaseRequest` with its defaults; unknown keys ignored."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscaling_resize: float = Field(2.0, gt=0.0, le=16.0)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False

    def extras_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"show_extras_results", "image", "imageList"})


class ExtrasSingleImageRequest(ExtrasBase):
    image: str = ""


class FileData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[FileData] = Field(default_factory=list)  # A1111's name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


# -- routes ----------------------------------------------------------------------------------


async def _run(services: Services, body: ExtrasBase, images: list[Image.Image]) -> list[ExtrasResult]:
    request = ExtrasRequest(images=tuple(images), **body.extras_kwargs())
    results: list[ExtrasResult] = await asyncio.wrap_future(services.engine.submit(request).future)
    return results


def _encode(services: Services, results: list[ExtrasResult], show: bool) -> list[str]:
    if not show:
        return []
    return [encode_b64(r.image, services.options, infotext=r.infotext or None) for r in results]


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
async def extra_single_image(
    body: ExtrasSingleImageRequest, services: Services = Depends(get_services)
) -> ExtrasSingleImageResponse:
    decode = DecodeOptions.from_options(services.options)
    image = await run_in_threadpool(decode_image, body.image, "image", decode)
    results = await _run(services, body, [image])
    encoded = await run_in_threadpool(_encode, services, results, body.show_extras_results)
    return ExtrasSingleImageResponse(html_info=results[0].html_info, image=encoded[0] if encoded else None)


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
async def extra_batch_images(
    body: ExtrasBatchImagesRequest, services: Services = Depends(get_services)
) -> ExtrasBatchImagesResponse:
    decode = DecodeOptions.from_options(services.options)

    def decode_all() -> list[Image.Image]:
        return [decode_image(item.data, f"imageList[{i}].data", decode) for i, item in enumerate(body.imageList)]

    images = await run_in_threadpool(decode_all)
    results = await _run(services, body, images)  # no images: still checked (unknown upscaler: 404)
    encoded = await run_in_threadpool(_encode, services, results, body.show_extras_results)
    html_info = results[0].html_info if results else ""
    return ExtrasBatchImagesResponse(html_info=html_info, images=encoded)
