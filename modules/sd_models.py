"""A1111's `modules.sd_models` for extension code (a facade: internal packages never import it):
the checkpoints of the app's model registry as A1111's `CheckpointInfo`s (title -> info in
`checkpoints_list`), and loading through the engine (`reload_model_weights` switches models as
a model job on the worker)."""

from __future__ import annotations

import os
from typing import Any

from modules.core.hashes import old_model_hash
from modules.core.jobs import UnloadModel
from modules.core.safetensors_header import parse_metadata_json_values, read_safetensors_header
from modules.extensions import runtime
from modules.extensions.model_views import CheckpointView, ModelView
from modules.paths_internal import app_paths

CheckpointInfo = CheckpointView
model_dir = "Stable-diffusion"


def _checkpoints() -> list[CheckpointView]:
    env = runtime.maybe_environment()
    if env is None or env.registry is None:
        return []
    return [CheckpointView(info) for info in env.registry.checkpoints()]


def list_models() -> None:
    """Scan the checkpoint folders again."""
    env = runtime.environment()
    if env.registry is not None:
        env.registry.refresh()


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    return [c.short_title if use_short else c.title for c in _checkpoints()]


def get_closet_checkpoint_match(search_string: str | None) -> CheckpointView | None:
    """The checkpoint an alias names, else the shortest title containing `search_string`."""
    if not search_string:
        return None
    env = runtime.maybe_environment()
    if env is not None and env.registry is not None:
        try:
            return CheckpointView(env.registry.find_checkpoint(search_string))
        except Exception:
            pass
    found = sorted((c for c in _checkpoints() if search_string in c.title), key=lambda c: len(c.title))
    return found[0] if found else None


def select_checkpoint() -> CheckpointView | None:
    """The checkpoint generations run with (the loaded one, else the first found)."""
    env = runtime.maybe_environment()
    if env is not None and env.engine is not None and env.registry is not None:
        title = env.engine.selected_checkpoint or env.engine.model_status().checkpoint
        if title:
            try:
                return CheckpointView(env.registry.find_checkpoint(title))
            except Exception:
                pass
    found = _checkpoints()
    return found[0] if found else None


def model_hash(filename: str | os.PathLike[str]) -> str:
    """A1111's old 8-digit checkpoint hash."""
    try:
        return old_model_hash(filename)
    except OSError:
        return "NOFILE"


def read_metadata_from_safetensors(filename: str | os.PathLike[str]) -> dict[str, Any]:
    return parse_metadata_json_values(read_safetensors_header(filename).metadata)


def reload_model_weights(sd_model: Any = None, info: Any = None, forced_reload: bool = False) -> ModelView | None:
    """Load `info`'s checkpoint (default: the selected one) and return `shared.sd_model`."""
    env = runtime.environment()
    if env.engine is None:
        raise RuntimeError("no engine in this app")
    target = info if info is not None else select_checkpoint()
    title = getattr(target, "title", None) or (str(target) if target is not None else None)
    env.engine.switch_model(checkpoint=title)
    return ModelView.current(env)


def load_model(checkpoint_info: Any = None, already_loaded_state_dict: Any = None) -> ModelView | None:
    return reload_model_weights(info=checkpoint_info)


def unload_model_weights(sd_model: Any = None, info: Any = None) -> None:
    env = runtime.environment()
    if env.engine is not None:
        env.engine.run_sync(UnloadModel())


class _ModelData:
    @property
    def sd_model(self) -> ModelView | None:
        env = runtime.maybe_environment()
        return ModelView.current(env) if env is not None else None

    def get_sd_model(self) -> ModelView | None:
        return self.sd_model


model_data = _ModelData()


def __getattr__(name: str) -> Any:
    """The values that follow the app's registry."""
    if name == "checkpoints_list":
        return {c.title: c for c in _checkpoints()}
    if name in ("checkpoint_aliases", "checkpoint_alisases"):
        return {alias: c for c in _checkpoints() for alias in c.ids}
    if name == "model_path":
        return os.path.abspath(app_paths().checkpoint_dir)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
