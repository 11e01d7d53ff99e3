"""/sdapi/v1 routes: png-info (the infotext and other metadata of an image)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.images import DecodeOptions, decode_image
from modules.core.infotext import parse_infotext
from modules.engine.image_metadata import read_image_info
from modules.services import Services

router = APIRouter()


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = ""


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def png_info(image_b64: str, decode: DecodeOptions) -> dict[str, Any]:
    if not image_b64.strip():
        return {"info": "", "items": {}, "parameters": {}}
    image = decode_image(image_b64, "image", decode, convert=False)
    infotext, items = read_image_info(image)
    parameters = parse_infotext(infotext) if infotext else {}
    return {
        "info": infotext or "",
        "items": {str(k): _jsonable(v) for k, v in items.items()},
        "parameters": _jsonable(parameters),
    }


@router.post("/png-info")
async def pnginfo(body: PngInfoRequest, services: Services = Depends(get_services)) -> dict[str, Any]:
    decode = DecodeOptions.from_options(services.options)
    return await run_in_threadpool(png_info, body.image, decode)
