"""/sdapi/v1 routes: what the server offers (samplers, schedules, upscalers, styles, scripts,
extensions) and how much memory it uses. Read-only; none of them waits for a running job."""

from __future__ import annotations

import os
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Depends

from modules.api.deps import get_services
from modules.api.schemas_resources import (
    FaceRestorerItem,
    LatentUpscalerModeItem,
    MemoryResponse,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    ScriptInfo,
    ScriptsList,
    UpscalerItem,
)
from modules.engine.processing import LATENT_UPSCALE_MODES
from modules.engine.samplers import list_samplers, list_schedulers
from modules.services import Services

router = APIRouter(tags=["info"])

# The upscalers that need no model file (A1111 lists them first, with scale 4).
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


@router.get("/samplers", response_model=list[SamplerItem])
def get_samplers() -> list[dict[str, object]]:
    return [sampler.to_dict() for sampler in list_samplers()]


@router.get("/schedulers", response_model=list[SchedulerItem])
def get_schedulers() -> list[dict[str, object]]:
    return [schedule.to_dict() for schedule in list_schedulers()]


@router.get("/upscalers", response_model=list[UpscalerItem])
def get_upscalers(services: Services = Depends(get_services)) -> list[UpscalerItem]:
    """The built-ins (None, Lanczos, Nearest) then every model file in the upscaler folders."""
    return [UpscalerItem(**item) for item in services.upscalers.list()]


@router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
def get_latent_upscale_modes() -> list[LatentUpscalerModeItem]:
    return [LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]


@router.get("/face-restorers", response_model=list[FaceRestorerItem])
def get_face_restorers(services: Services = Depends(get_services)) -> list[FaceRestorerItem]:
    """GFPGAN / CodeFormer when their weights are in models/GFPGAN, models/Codeformer."""
    restorers = services.face_restorers
    return [FaceRestorerItem(name=name, cmd_dir=str(restorers.folders[name])) for name in restorers.available()]


@router.get("/realesrgan-models", response_model=list[RealesrganItem])
def get_realesrgan_models(services: Services = Depends(get_services)) -> list[RealesrganItem]:
    return [RealesrganItem(**item) for item in services.upscalers.realesrgan_models()]


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
def get_prompt_styles(services: Services = Depends(get_services)) -> list[PromptStyleItem]:
    return [
        PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
        for style in services.styles.styles()
    ]


@router.get("/scripts", response_model=ScriptsList)
def get_scripts(services: Services = Depends(get_services)) -> ScriptsList:
    """The lower-cased titles of each tab's scripts (A1111 lists selectable and always-on ones)."""
    # ControlNet is built in (`alwayson_scripts.controlnet` is read); clients look for its name here
    builtin = ["controlnet"] if services.controlnet is not None else []
    if services.scripts is None:
        return ScriptsList(txt2img=list(builtin), img2img=list(builtin))
    runner = services.scripts.runner
    txt2img, img2img = runner.titles(False), runner.titles(True)
    return ScriptsList(
        txt2img=txt2img + [b for b in builtin if b not in txt2img],
        img2img=img2img + [b for b in builtin if b not in img2img],
    )


@router.get("/script-info", response_model=list[ScriptInfo])
def get_script_info(services: Services = Depends(get_services)) -> list[ScriptInfo]:
    """Every script of both tabs with its arguments (label, default, range, choices)."""
    if services.scripts is None:
        return []
    return [ScriptInfo(**item) for item in services.scripts.runner.script_info()]


@router.get("/memory", response_model=MemoryResponse)
def get_memory(services: Services = Depends(get_services)) -> MemoryResponse:
    return MemoryResponse(ram=ram_usage(), cuda=cuda_usage(services.policy.placement.device))


def ram_usage() -> dict[str, float]:
    """A1111's meaning: `used` = this process's resident memory, `total` = the machine's RAM,
    `free` = total - used."""
    used = float(psutil.Process(os.getpid()).memory_info().rss)
    total = float(psutil.virtual_memory().total)
    return {"free": total - used, "used": used, "total": total}


def cuda_usage(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"error": "unavailable"}
    try:
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
    except RuntimeError as exc:
        return {"error": str(exc)}

    def pair(prefix: str) -> dict[str, int]:
        return {"current": int(stats.get(f"{prefix}.all.current", 0)), "peak": int(stats.get(f"{prefix}.all.peak", 0))}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
    }
