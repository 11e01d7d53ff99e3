"""/sdapi/v1/interrogate: A1111's `{image, model}` -> `{"caption": str}`.

`model` is "clip" (BLIP caption + CLIP ranking of the category lists, the default) or
"deepdanbooru" (tags); any other name is A1111's 404 "Model not found". A missing image is
A1111's 404 "Image not found". Missing weights are a 404 naming the file and the folder to put it
in (nothing is downloaded). The interrogation is a job on the worker, awaited here."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.images import DecodeOptions, decode_image
from modules.core.errors import NotFoundError
from modules.engine.interrogation import submit_interrogation
from modules.services import Services

router = APIRouter()


class InterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    image: str | None = Field(default="", description="Image to work on, a base64 string of the image's data.")
    model: str = Field(default="clip", description="The interrogate model used: clip or deepdanbooru.")


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, description="The generated caption for the image.")


@router.post("/interrogate", response_model=InterrogateResponse)
async def interrogate(body: InterrogateRequest, services: Services = Depends(get_services)) -> InterrogateResponse:
    if body.image is None or not body.image.strip():
        raise NotFoundError("Image not found")
    decode = DecodeOptions.from_options(services.options)
    text = body.image

    def submit() -> Any:
        image = decode_image(text, "image", decode).convert("RGB")
        return submit_interrogation(services.engine, image, body.model)

    handle = await run_in_threadpool(submit)
    caption: str = await asyncio.wrap_future(handle.future)
    return InterrogateResponse(caption=caption)
