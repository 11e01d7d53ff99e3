"""The services the composition root (`modules.app`) builds and hands to the adapters (API, UI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.core.infotext import INFOTEXT_KEYS_AFTER_EXTRA, INFOTEXT_KEYS_BEFORE_EXTRA
from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.requests import GenerationRequest
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.engine import upscaling
from modules.engine.extras import ExtrasResult, dest_side, run_extras
from modules.engine.processing import Result
from modules.engine.service import VERSION, EngineService
from modules.engine.worker import Job, JobContext, Worker
from modules.models.devices import DevicePolicy
from modules.models.face_restoration import FaceRestorers
from modules.models.manager import ModelManager
from modules.models.registry import ModelRegistry
from modules.models.upscalers import UpscalerRegistry


@dataclass
class Services:
    """Everything the adapters (API, UI) are handed."""

    settings: Settings
    paths: Paths
    options: Options
    registry: ModelRegistry
    policy: DevicePolicy
    models: ModelManager
    worker: Worker
    engine: EngineService
    styles: StyleDatabase
    upscalers: UpscalerRegistry
    face_restorers: FaceRestorers


def submit_extras(services: Services, images: Sequence[Image.Image], kwargs: dict[str, Any]) -> Job[list[ExtrasResult]]:
    """`run_extras` over `images` as one job on the worker (queued behind generation, as A1111's
    lock does), with the shared upscalers and face restorers. The API awaits the job; the UI
    waits for it."""
    options = services.options
    tiles = upscaling.tile_settings(options)
    order = options.get("postprocessing_operation_order") if "postprocessing_operation_order" in options else []

    def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
        size = (dest_side(image.width, scale), dest_side(image.height, scale))
        return upscaling.upscale(image, name, scale, registry=services.upscalers, tiles=tiles, size=size)

    def restore(image: Image.Image, name: str, visibility: float, weight: float) -> Image.Image:
        return services.face_restorers.get(name, visibility=visibility, codeformer_weight=weight).restore(image)

    def work(_ctx: JobContext) -> list[ExtrasResult]:
        return [
            run_extras(image, upscale=upscale, restore_faces=restore, operation_order=list(order or []), **kwargs)
            for image in images
        ]

    return services.worker.submit(work, description="extras")


# infotext keys with a fixed place in A1111's infotext; everything else is extra_generation_params
_OWN_KEYS = frozenset(INFOTEXT_KEYS_BEFORE_EXTRA) | frozenset(INFOTEXT_KEYS_AFTER_EXTRA)


def _first(values: list[Any], default: Any = None) -> Any:
    return values[0] if values else default


def build_generation_info(services: Services, request: GenerationRequest, result: Result, first: int) -> dict[str, Any]:
    """A1111's `Processed.js()` keys, from the Result: the API's `info` and the UI's generation
    info. `first` is 1 when a grid leads the images, else 0."""
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
