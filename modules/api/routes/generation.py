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
from modules.core.infotext import INFOTEXT_KEYS_AFTER_EXTRA, INFOTEXT_KEYS_BEFORE_EXTRA
from modules.core.requests import GenerationRequest
from modules.engine.processing import Result
from modules.engine.service import VERSION
from modules.services import Services

router = APIRouter()

# infotext keys with a fixed place in A1111's infotext; everything else is extra_generation_params
_OWN_KEYS = frozenset(INFOTEXT_KEYS_BEFORE_EXTRA) | frozenset(INFOTEXT_KEYS_AFTER_EXTRA)


def _first(values: list[Any], default: Any = None) -> Any:
    return values[0] if values else default


def build_info(
    services: Services, payload: GenerationPayload, request: GenerationRequest, result: Result, first: int
) -> dict[str, Any]:
    """A1111's `Processed.js()` keys, from the Result."""
    params = _first(result.params, {})
    active = services.models.active
    info = active.info if active is not None else None
    vae_source = active.model.vae_source if active is not None else None
    clip_skip = params.get("Clip skip")
    infotexts = list(result.infotexts)
    if first:
        infotexts = infotexts[:1] + infotexts
    return {
        "prompt": request.prompt,
        "all_prompts": list(result.prompts),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": list(result.negative_prompts),
        "seed": _first(result.seeds, request.seed),
        "all_seeds": list(result.seeds),
        "subseed": _first(result.subseeds, request.subseed),
        "all_subseeds": list(result.subseeds),
        "subseed_strength": request.subseed_strength,
        "width": result.width or request.width,
        "height": result.height or request.height,
        "sampler_name": params.get("Sampler", request.effective_sampler),
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": bool(request.restore_faces),
        "face_restoration_model": params.get("Face restoration"),
        "sd_model_name": params.get("Model") or (info.model_name if info is not None else None),
        "sd_model_hash": params.get("Model hash") or (info.shorthash if info is not None else None),
        "sd_vae_name": params.get("VAE") or (vae_source.name if vae_source is not None else None),
        "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {k: v for k, v in params.items() if k not in _OWN_KEYS},
        "index_of_first_image": first,
        "infotexts": infotexts,
        "styles": list(request.styles),
        "job_timestamp": result.job_timestamp,
        "clip_skip": int(clip_skip) if clip_skip is not None else 1,
        "is_using_inpainting_conditioning": "Conditional mask weight" in params,
        "version": VERSION,
    }


def build_response(
    services: Services, payload: GenerationPayload, request: GenerationRequest, result: Result
) -> dict[str, Any]:
    images = list(result.images)
    infotexts = list(result.infotexts)
    first = 0
    return_grid = bool(services.options.get("return_grid")) if "return_grid" in services.options else True
    if payload.save_images and len(images) > 1 and result.grid is not None and return_grid:
        images.insert(0, result.grid)
        infotexts.insert(0, _first(infotexts, ""))
        first = 1
    encoded: list[str] = []
    if payload.send_images:
        encoded = [
            encode_b64(image, services.options, infotext=infotexts[i] if i < len(infotexts) else None)
            for i, image in enumerate(images)
        ]
    info = build_info(services, payload, request, result, first)
    return {"images": encoded, "parameters": payload.echo(), "info": json.dumps(info, ensure_ascii=False)}


async def _generate(services: Services, payload: GenerationPayload, request: GenerationRequest) -> dict[str, Any]:
    job = services.engine.submit(request)  # validates; 404/422/429 before anything is queued
    result: Result = await asyncio.wrap_future(job.future)
    return await run_in_threadpool(build_response, services, payload, request, result)


@router.post("/txt2img")
async def txt2img(payload: Txt2ImgPayload, services: Services = Depends(get_services)) -> dict[str, Any]:
    request = to_txt2img(payload)
    return await _generate(services, payload, request)


@router.post("/img2img")
async def img2img(payload: Img2ImgPayload, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    request = await run_in_threadpool(to_img2img, payload, decode)
    return await _generate(services, payload, request)
