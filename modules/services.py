"""The services the composition root (`modules.app`) builds and hands to the adapters (API, UI).

The adapters use `engine` (the one job interface) for all work and model state, plus the
read-only registries, options, styles and paths. `models` and `worker` are here for the
composition root and the tests; adapters never read them (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.engine.controlnet_service import ControlNetService
from modules.engine.extra_networks import ExtraNetworks
from modules.engine.facade import Engine
from modules.engine.worker import Worker
from modules.extensions.manager import ExtensionManager
from modules.models.devices import DevicePolicy
from modules.models.face_restoration import FaceRestorers
from modules.models.manager import ModelManager
from modules.models.network_registry import NetworkRegistry
from modules.models.registry import ModelRegistry
from modules.models.upscalers import UpscalerRegistry

if TYPE_CHECKING:
    from modules.extensions.setup import ScriptSetup


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
    engine: Engine
    styles: StyleDatabase
    upscalers: UpscalerRegistry
    face_restorers: FaceRestorers
    networks: NetworkRegistry  # LoRA / LyCORIS and hypernetwork files (read-only listing)
    extra_networks: ExtraNetworks  # the engine's LoRA / hypernetwork cache and embeddings (composition root, tests)
    extensions: ExtensionManager | None = None  # installed extensions: list, install, update, enable
    scripts: ScriptSetup | None = None  # the script runner, callbacks and extension page assets
    controlnet: ControlNetService | None = None  # ControlNet models and preprocessors (/controlnet/*, the UI)
