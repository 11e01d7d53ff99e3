"""A1111's `modules.paths_internal` for extension code (a facade: internal packages never import
it): where the program, the data and the models live.

`script_path` (the program folder) is fixed; the data paths (`data_path`, `models_path`,
`extensions_dir`, ...) are the running app's (`--data-dir`, `--models-dir`), read when asked for,
so `from modules.paths_internal import models_path` works at any time; before an app is set up
they are the defaults under the program folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modules.core.paths import Paths
from modules.core.settings import Settings
from modules.extensions import runtime

modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)
cwd = os.getcwd()
sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file


def normalized_filepath(filepath: str | os.PathLike[str]) -> str:
    return str(Path(filepath).absolute())


def app_paths() -> Paths:
    """The running app's paths (the defaults under the program folder when there is no app)."""
    env = runtime.maybe_environment()
    if env is not None:
        return env.paths
    return Paths.from_settings(Settings(), Path(script_path), {})


_DYNAMIC = {
    "data_path": lambda p: p.data_dir,
    "models_path": lambda p: p.models_dir,
    "extensions_dir": lambda p: p.extensions_dir,
    "extensions_builtin_dir": lambda p: p.extensions_builtin_dir,
    "config_states_dir": lambda p: p.config_states_dir,
    "default_output_dir": lambda p: p.outputs_dir,
}


def __getattr__(name: str) -> Any:
    get = _DYNAMIC.get(name)
    if get is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return str(get(app_paths()))
