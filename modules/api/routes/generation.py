"""/sdapi/v1 routes: txt2img and img2img.

The routes are `async`: the body is converted (images decoded) in the threadpool, the job is
queued on the single worker and awaited, so waiting requests hold no thread and `/progress`
answers while they wait. A full queue is 429 (QueueFullError).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.images import DecodeOptions, encode_b64
from modules.api.schemas_generation import GenerationPayload, Img2ImgPayload, Txt2ImgPayload, to_img2img, to_txt2img
from modules.core.generation_info import generation_info
from modules.core.requests import GenerationRequest
from modules.core.results import Result
from modules.services import Services


def _first(values: list[Any], default: Any = None) -> Any:
    return values[0] if values else default


router = APIRouter()


def build_response(
    services: Services, payload: GenerationPayload, request: GenerationRequest, result: Result
) -> dict[str, Any]:
    images = list(result.images)
    infotexts = list(result.infotexts)
    first = 0
    return_grid = bool(services.options.get("return_grid")) if "return_grid" in services.options else True
    if result.leading_images:
        first = result.leading_images  # a script's grids are already in front
    elif payload.save_images and len(images) > 1 and result.grid is not None and return_grid:
        images.insert(0, result.grid)
        infotexts.insert(0, _first(infotexts, ""))
        first = 1
    encoded: list[str] = []
    if payload.send_images:
        encoded = [
            encode_b64(image, services.options, infotext=infotexts[i] if i < len(infotexts) else None)
            for i, image in enumerate(images)
        ]
        # ControlNet's detected maps follow the images, as the extension returns them
        encoded += [encode_b64(image, services.options, infotext=None) for image in result.extra_images]
    info = generation_info(request, result, first)
    return {"images": encoded, "parameters": payload.echo(), "info": json.dumps(info, ensure_ascii=False)}


async def _generate(services: Services, payload: GenerationPayload, request: GenerationRequest) -> dict[str, Any]:
    handle = services.engine.submit(request)  # validates; 404/422/429 before anything is queued
    result: Result = await asyncio.wrap_future(handle.future)
    return await run_in_threadpool(build_response, services, payload, request, result)


@router.post("/txt2img")
async def txt2img(payload: Txt2ImgPayload, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    request = await run_in_threadpool(to_txt2img, payload, decode)
    return await _generate(services, payload, request)


@router.post("/img2img")
async def img2img(payload: Img2ImgPayload, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    request = await run_in_threadpool(to_img2img, payload, decode)
    return await _generate(services, payload, request)
