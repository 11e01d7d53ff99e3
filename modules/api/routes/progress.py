"""/sdapi/v1 routes: progress, interrupt, skip; and `POST /internal/progress` (not under /sdapi).

Nothing here waits for the worker: progress is read from the running job's context. Interrupt
and skip act on whatever runs (A1111's global semantics) unless an `id_task` names one job.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from modules.api.deps import get_services
from modules.api.images import encode_png_b64
from modules.services import Services

router = APIRouter()
internal_router = APIRouter()  # mounted without the /sdapi/v1 prefix


@router.get("/progress")
def progress(skip_current_image: bool = False, services: Services = Depends(get_services)) -> dict[str, Any]:
    body = services.engine.progress(with_preview=not skip_current_image)
    image = body.get("current_image")
    body["current_image"] = encode_png_b64(image) if image is not None and not skip_current_image else None
    body["current_task"] = services.engine.current_job_id()
    return body


async def _task_id(request: Request) -> str | None:
    """`id_task` from the query string or a JSON body; A1111 clients send no body at all."""
    task_id = request.query_params.get("id_task")
    if task_id:
        return task_id
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("id_task") if isinstance(data, dict) else None
    return str(value) if value else None


@router.post("/interrupt")
async def interrupt(request: Request, services: Services = Depends(get_services)) -> dict[str, Any]:
    services.engine.interrupt(await _task_id(request))
    return {}


@router.post("/skip")
async def skip(request: Request, services: Services = Depends(get_services)) -> None:
    services.engine.skip(await _task_id(request))
    return None


class InternalProgressRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


@internal_router.post("/internal/progress")
def internal_progress(body: InternalProgressRequest, services: Services = Depends(get_services)) -> dict[str, Any]:
    """A1111's per-task progress: queued tasks get "In queue: n/m"."""
    task_id = body.id_task or ""
    status = services.engine.queue_status(task_id)
    current = services.engine.running(task_id) if status.active else None
    if current is None:
        textinfo = "Waiting..."
        if status.queued:
            textinfo = f"In queue: {status.position}/{max(status.pending, status.position)}"
        return {
            "active": False,
            "queued": status.queued,
            "completed": status.completed,
            "progress": None,
            "eta": None,
            "live_preview": None,
            "id_live_preview": -1,
            "textinfo": textinfo,
        }
    live_preview: str | None = None
    id_live_preview = body.id_live_preview
    if body.live_preview:
        version = current.preview_version()
        if version != id_live_preview:
            image = current.preview()
            if image is not None:
                live_preview = "data:image/png;base64," + encode_png_b64(image)
                id_live_preview = version
    return {
        "active": True,
        "queued": False,
        "completed": False,
        "progress": current.fraction(),
        "eta": current.eta(),
        "live_preview": live_preview,
        "id_live_preview": id_live_preview,
        "textinfo": current.textinfo or "",
    }
