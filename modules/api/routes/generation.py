"""/sdapi/v1 routes: txt2img and img2img.

The routes are `async`: the body is converted (images decoded) in the threadpool, the job is
queued on the single worker and awaited, so waiting requests hold no thread and `/progress`
answers while they wait. A full queue is 429 (QueueFullError); a job still queued when the server
stops is 503 (ServerShuttingDown).

While the job waits or runs, the route also watches the ASGI receive channel: when the client
disconnects, its job is dropped from the queue (it never runs) or, if it is running, interrupted
(A1111 runs it to the end; nobody is left to receive the result here). Either is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.images import DecodeOptions, encode_b64
from modules.api.schemas_generation import GenerationPayload, Img2ImgPayload, Txt2ImgPayload, to_img2img, to_txt2img
from modules.core.generation_info import generation_info
from modules.core.requests import GenerationRequest
from modules.core.results import Result
from modules.engine.facade import JobCancelled
from modules.services import Services

log = logging.getLogger(__name__)


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


async def _disconnected(http: Request) -> None:
    """Return when the client has gone (the ASGI `http.disconnect` message; the body was read)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


async def _await_job(services: Services, http: Request | None, job_id: str, future: Future[Result]) -> Result:
    """The job's result; if the client disconnects first, cancel the job and raise JobCancelled."""
    waiting = asyncio.wrap_future(future)
    if http is None:
        return await waiting
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(http))
    watched: set[asyncio.Future[Any]] = {waiting, gone}
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not gone.done():
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await gone
    if waiting.done() or not gone.done() or gone.cancelled() or gone.exception() is not None:
        return await waiting
    if services.engine.cancel(future):
        log.info("client disconnected: queued job %s dropped, it will not run", job_id)
    elif not future.done():
        services.engine.interrupt(job_id)  # a job on a Ray replica is not on the local worker
        log.info("client disconnected: job %s interrupted", job_id)
    waiting.cancel()
    raise JobCancelled(f"job {job_id} cancelled: the client disconnected")


async def _generate(
    services: Services, payload: GenerationPayload, request: GenerationRequest, http: Request | None = None
) -> dict[str, Any]:
    handle = services.engine.submit(request)  # validates; 404/422/429 before anything is queued
    result = await _await_job(services, http, handle.id, handle.future)
    return await run_in_threadpool(build_response, services, payload, request, result)


@router.post("/txt2img")
async def txt2img(payload: Txt2ImgPayload, http: Request, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    request = await run_in_threadpool(to_txt2img, payload, decode)
    return await _generate(services, payload, request, http)


@router.post("/img2img")
async def img2img(payload: Img2ImgPayload, http: Request, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    request = await run_in_threadpool(to_img2img, payload, decode)
    return await _generate(services, payload, request, http)
