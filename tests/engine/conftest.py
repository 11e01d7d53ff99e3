"""An engine over every tiny model family, shared by the engine tests of one module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.core.hashes import HashCache
from modules.core.options import Options, default_option_infos
from modules.engine.service import GenerationService
from modules.engine.worker import Worker
from modules.models.loader import Placement
from modules.models.manager import ModelManager
from modules.models.registry import ModelRegistry
from tests.fixtures.module_tmp import ModuleTempDirs

FAMILIES = {
    "sd1": "sd1",
    "sd2": "sd2",
    "xl": "sdxl",
    "inpaint": "sd1-inpaint",
    "ip2p": "sd1-ip2p",
    "xlinpaint": "sdxl-inpaint",
    "refiner": "sdxl-refiner",
}


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[GenerationService]:
    root = module_tmp.mktemp("engine")
    sd = root / "Stable-diffusion"
    sd.mkdir()
    for name, family in FAMILIES.items():
        shutil.copy(tiny_models[family], sd / f"{name}.safetensors")
    registry = ModelRegistry([sd], [], HashCache(root / "cache.json"), hashing=False)
    models = ModelManager(registry, Placement(), cache_bytes=1 << 34)
    options = Options(default_option_infos(), None)
    worker = Worker()
    service = GenerationService(models, options, worker)
    yield service
    worker.shutdown()
