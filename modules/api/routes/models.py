"""/sdapi/v1 routes: checkpoints, VAEs and the extra networks (LoRA, embeddings, hypernetworks).

`/loras`, `/refresh-loras` and `/hypernetworks` list the network registry in A1111's shapes (a
corrupt file is listed like any other, as A1111 does; strings a JSON body cannot carry, such as an
undecodable file name or a non-finite number in a header, are replaced rather than failing the
route). `/embeddings` lists the textual-inversion
embeddings for the active model (loaded) and those made for another family (skipped).
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from fastapi import APIRouter, Depends

from modules.api.deps import get_services
from modules.api.schemas_resources import (
    EmbeddingsResponse,
    HypernetworkItem,
    LoraItem,
    SDModelItem,
    SDVaeItem,
)
from modules.core.jobs import ReloadModel, UnloadModel
from modules.models.registry import CheckpointInfo
from modules.services import Services

router = APIRouter(tags=["models"])

_SURROGATES = re.compile("[\ud800-\udfff]")


def sd_model_item(info: CheckpointInfo) -> SDModelItem:
    config = info.config_yaml
    return SDModelItem(
        title=info.title,
        model_name=info.model_name,
        hash=info.shorthash,
        sha256=info.sha256,
        filename=str(info.filename),
        config=str(config) if config is not None else None,
    )


@router.get("/sd-models", response_model=list[SDModelItem])
def list_sd_models(services: Services = Depends(get_services)) -> list[SDModelItem]:
    return [sd_model_item(info) for info in services.registry.checkpoints()]


@router.get("/sd-vae", response_model=list[SDVaeItem])
def list_sd_vaes(services: Services = Depends(get_services)) -> list[SDVaeItem]:
    return [SDVaeItem(model_name=info.name, filename=str(info.filename)) for info in services.registry.vaes()]


@router.post("/refresh-checkpoints")
def refresh_checkpoints(services: Services = Depends(get_services)) -> None:
    services.registry.refresh()


@router.post("/refresh-vae")
def refresh_vae(services: Services = Depends(get_services)) -> None:
    services.registry.refresh()


@router.post("/unload-checkpoint")
async def unload_checkpoint(services: Services = Depends(get_services)) -> dict[str, Any]:
    """Take the active model off the device (kept in the RAM cache when it fits): a model job,
    answered when it is done."""
    await asyncio.wrap_future(services.engine.submit(UnloadModel()).future)
    return {}


@router.post("/reload-checkpoint")
async def reload_checkpoint(services: Services = Depends(get_services)) -> dict[str, Any]:
    """Bring the most recently used checkpoint back (a no-op when one is active): a model job,
    answered when it is done."""
    await asyncio.wrap_future(services.engine.submit(ReloadModel()).future)
    return {}


def _json_safe(value: object) -> Any:
    """`value` with what JSON cannot carry replaced: lone surrogates (file names that are not
    UTF-8, `\\udXXX` escapes in a header) by U+FFFD, NaN/infinity by their text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:  # an undecodable byte of a file name (os.fsdecode's escape)
                return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            except UnicodeEncodeError:
                return _SURROGATES.sub("\ufffd", value)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
def list_hypernetworks(services: Services = Depends(get_services)) -> list[HypernetworkItem]:
    return [
        HypernetworkItem(name=_json_safe(info.name), path=_json_safe(str(info.filename)))
        for info in services.networks.hypernetworks()
    ]


@router.get("/loras", response_model=list[LoraItem])
def list_loras(services: Services = Depends(get_services)) -> list[LoraItem]:
    """A1111's Lora extension shape: `alias` is the file's own (`ss_output_name`, else the name),
    `metadata` the safetensors header metadata with JSON values decoded."""
    return [
        LoraItem(
            name=_json_safe(info.name),
            alias=_json_safe(info.file_alias),
            path=_json_safe(str(info.filename)),
            metadata=_json_safe(info.metadata),
        )
        for info in services.networks.loras()
    ]


@router.post("/refresh-loras")
def refresh_loras(services: Services = Depends(get_services)) -> None:
    services.networks.refresh("lora")


@router.get("/embeddings", response_model=EmbeddingsResponse)
def list_embeddings(services: Services = Depends(get_services)) -> EmbeddingsResponse:
    """A1111's shape: `loaded` = the embeddings the active model can use, `skipped` = those made
    for another model family (files that are not embeddings at all are left out, as A1111 does)."""
    found = services.engine.embeddings()
    if found is None:
        return EmbeddingsResponse(loaded={}, skipped={})
    return EmbeddingsResponse.model_validate(found.api_json())


@router.post("/refresh-embeddings")
def refresh_embeddings(services: Services = Depends(get_services)) -> None:
    services.engine.refresh_embeddings()
