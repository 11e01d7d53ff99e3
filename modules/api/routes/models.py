"""/sdapi/v1 routes: checkpoints, VAEs and the extra networks (LoRA, embeddings, hypernetworks).

LoRA, embeddings and hypernetworks are not built yet: their lists are empty and their refresh
routes do nothing, in A1111's shapes, so clients that probe them keep working.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from modules.api.deps import get_services
from modules.api.schemas_resources import EmbeddingsResponse, HypernetworkItem, LoraItem, SDModelItem, SDVaeItem
from modules.core.jobs import ReloadModel, UnloadModel
from modules.models.registry import CheckpointInfo
from modules.services import Services

router = APIRouter(tags=["models"])


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


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
def list_hypernetworks() -> list[HypernetworkItem]:
    return []


@router.get("/loras", response_model=list[LoraItem])
def list_loras() -> list[LoraItem]:
    return []


@router.post("/refresh-loras")
def refresh_loras() -> None:
    return None


@router.get("/embeddings", response_model=EmbeddingsResponse)
def list_embeddings() -> EmbeddingsResponse:
    return EmbeddingsResponse(loaded={}, skipped={})


@router.post("/refresh-embeddings")
def refresh_embeddings() -> None:
    return None
