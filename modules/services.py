"""The services the composition root (`modules.app`) builds and hands to the adapters (API, UI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.engine import upscaling
from modules.engine.extras import ExtrasResult, dest_side, run_extras
from modules.engine.service import EngineService
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
