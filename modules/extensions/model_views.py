"""A1111's model objects as extension code sees them: `CheckpointView` (A1111's
`sd_models.CheckpointInfo` fields) and `ModelView` (what `shared.sd_model` and the
`model_loaded` callback give).

A1111's `sd_model` is the torch module itself; here the weights live behind the engine, so the
view carries what extensions read of it: the checkpoint info, its hash and file, and the
architecture flags (`is_sdxl`, `is_sd2`, `is_sd1`). Reading anything else raises an
AttributeError that says so, instead of handing out a stand-in that would act differently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modules.extensions.runtime import ScriptEnvironment
    from modules.models.registry import CheckpointInfo


class CheckpointView:
    """A1111's `CheckpointInfo`: `filename` (a str), `name`, `name_for_extra`, `model_name`,
    `hash` (the old 8-digit hash), `sha256`, `shorthash`, `title`, `short_title`, `ids`."""

    def __init__(self, info: CheckpointInfo) -> None:
        self.info = info
        self.filename = str(info.filename)
        self.name = info.name
        self.name_for_extra = os.path.splitext(os.path.basename(self.filename))[0]
        self.model_name = info.model_name
        self.is_safetensors = self.filename.lower().endswith(".safetensors")
        self.hash = info.old_hash or None
        self.sha256 = info.sha256
        self.shorthash = info.shorthash
        self.title = info.title
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra
        self.ids = info.aliases()
        self.metadata: dict[str, Any] = {}

    def calculate_shorthash(self) -> str | None:
        """The short hash (it is worked out in the background once a checkpoint is used)."""
        return self.shorthash

    def register(self) -> None:
        """A1111 adds the info to its global list; the registry here is the list."""

    def __repr__(self) -> str:
        return f"CheckpointView({self.title!r})"


@dataclass
class ModelView:
    """The loaded model as A1111 extension code reads `shared.sd_model`."""

    sd_checkpoint_info: CheckpointView | None
    family: str = ""
    is_sdxl: bool = False
    is_sd2: bool = False
    is_sd1: bool = False
    is_ssd: bool = False
    is_sd3: bool = False
    vae: str | None = None  # the separate VAE file in use, None = the checkpoint's own
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sd_model_checkpoint(self) -> str | None:
        return self.sd_checkpoint_info.filename if self.sd_checkpoint_info else None

    @property
    def sd_model_hash(self) -> str | None:
        return self.sd_checkpoint_info.shorthash if self.sd_checkpoint_info else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"shared.sd_model.{name}: the model's modules are not reachable from extension code here "
            "(sd_model is a description of the loaded checkpoint: sd_checkpoint_info, is_sdxl, is_sd2, is_sd1)"
        )

    @classmethod
    def current(cls, env: ScriptEnvironment) -> ModelView | None:
        """The loaded model now, or None when none is loaded."""
        if env.engine is None:
            return None
        status = env.engine.model_status()
        if not status.checkpoint:
            return None
        info: CheckpointView | None = None
        if env.registry is not None:
            try:
                info = CheckpointView(env.registry.find_checkpoint(status.checkpoint))
            except Exception:  # the file went away since it was loaded: describe without it
                info = None
        label = status.family or ""
        return cls(
            sd_checkpoint_info=info,
            family=label,
            is_sdxl=status.is_sdxl,
            is_sd2=label.startswith("SD 2"),
            is_sd1=label.startswith("SD 1"),
            vae=status.vae,
        )
