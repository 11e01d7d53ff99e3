"""A1111's `modules.sd_vae` for extension code (a facade: internal packages never import it): the
VAE files of the app's model registry (`vae_dict`: name -> file) and switching the VAE through the
engine."""

from __future__ import annotations

import os
from typing import Any

from modules.extensions import runtime
from modules.paths_internal import app_paths

unspecified = object()
vae_dict: dict[str, str] = {}


def refresh_vae_list() -> None:
    """Scan the VAE folders again and rebuild `vae_dict` (A1111 keys it by file name)."""
    env = runtime.maybe_environment()
    vae_dict.clear()
    if env is None or env.registry is None:
        return
    env.registry.refresh()
    for info in env.registry.vaes():
        vae_dict[os.path.basename(info.name)] = str(info.filename)


def find_vae_near_checkpoint(checkpoint_file: str) -> str | None:
    env = runtime.maybe_environment()
    if env is None or env.registry is None:
        return None
    for info in env.registry.checkpoints():
        if str(info.filename) == str(checkpoint_file):
            found = env.registry.vae_near_checkpoint(info)
            return str(found) if found is not None else None
    return None


def reload_vae_weights(sd_model: Any = None, vae_file: Any = unspecified) -> Any:
    """Use `vae_file` (a path or name; default: the `sd_vae` option) and return `shared.sd_model`."""
    env = runtime.environment()
    if env.engine is None:
        raise RuntimeError("no engine in this app")
    if vae_file is unspecified:
        choice = str(env.options.get("sd_vae"))
    elif vae_file is None:
        choice = "None"
    else:
        choice = os.path.basename(str(vae_file))
        for name, path in vae_dict.items():
            if str(vae_file) in (name, path):
                choice = name
    env.engine.switch_model(vae=choice)
    from modules.extensions.model_views import ModelView

    return ModelView.current(env)


def __getattr__(name: str) -> Any:
    if name == "vae_path":
        return os.path.abspath(app_paths().vae_dir)
    if name == "loaded_vae_file":
        env = runtime.maybe_environment()
        return env.engine.model_status().vae if env is not None and env.engine is not None else None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
