"""Tiny interrogator weights in A1111's folders, built once per session, and interrogators /
an app over them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.core.option_defaults import default_option_infos
from modules.core.options import Options
from modules.engine.interrogation import Interrogator
from tests.fixtures import interrogate_models as fx


@dataclass
class Weights:
    root: Path  # a data dir: models/..., interrogate/
    models: Path
    blip: Any  # the transformers model both BLIP forms hold
    clip: torch.nn.Module  # the open_clip model traced into ViT-L-14.pt
    clip_folder: Path
    clip_folder_model: torch.nn.Module

    @property
    def categories(self) -> Path:
        return self.root / "interrogate"


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Weights:
    root = tmp_path_factory.mktemp("interrogate-data")
    models = root / "models"
    fx.write_deepbooru(models)
    blip = fx.write_blip(models / "BLIP", folder=True, original=True)
    _, clip = fx.write_clip_torchscript(models / "CLIP")
    spare = tmp_path_factory.mktemp("clip-folder")
    folder, folder_model = fx.write_clip_folder(spare)
    fx.write_categories(root / "interrogate")
    return Weights(root, models, blip, clip, folder, folder_model)


def options(**values: object) -> Options:
    opts = Options(default_option_infos(), None)
    for key, value in values.items():
        opts.set(key, value)
    return opts


def make_interrogator(
    weights: Weights,
    *,
    blip_dir: Path | None = None,
    clip_dir: Path | None = None,
    deepbooru_dir: Path | None = None,
    category_dir: Path | None = None,
    **option_values: object,
) -> Interrogator:
    return Interrogator(
        blip_dir=blip_dir or weights.models / "BLIP",
        clip_dir=clip_dir or weights.models / "CLIP",
        deepbooru_dirs=(deepbooru_dir or weights.models / "torch_deepdanbooru",),
        category_dirs=(category_dir or weights.categories,),
        options=options(**option_values),
    )


def copy_weights(weights: Weights, dest: Path, *parts: str) -> Path:
    """Copy `models/<part>` folders (or "interrogate") of the fixture data dir into `dest`."""
    for part in parts:
        source = weights.categories if part == "interrogate" else weights.models / part
        target = dest / "interrogate" if part == "interrogate" else dest / "models" / part
        shutil.copytree(source, target, dirs_exist_ok=True)
    return dest
