"""A1111's `modules.paths` for extension code (a facade: internal packages never import it): the
same names as `modules.paths_internal` (`script_path`, `models_path`, `data_path`, ...; the data
paths are the running app's) and `paths`, A1111's map of bundled repositories (none here: the
engine needs no `repositories/` checkouts)."""

from __future__ import annotations

from typing import Any

from modules import paths_internal
from modules.paths_internal import cwd, modules_path, script_path, sd_configs_path, sd_default_config

__all__ = ["cwd", "modules_path", "paths", "script_path", "sd_configs_path", "sd_default_config"]

paths: dict[str, str] = {}


def __getattr__(name: str) -> Any:
    return getattr(paths_internal, name)
