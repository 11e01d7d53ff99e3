"""A1111's `modules.scripts` for extension code (a facade: internal packages never import it).

`Script` and its argument classes are `modules.extensions.script_base`'s. `basedir()` is the folder
of the extension whose code calls it (A1111 sets a global while it loads each script; here it is
worked out from the caller's file, so it is also right when called later). `scripts_txt2img` /
`scripts_img2img` are the running app's tabs (`.scripts`, `.alwayson_scripts`,
`.selectable_scripts`, `.titles`), `scripts_data` the loaded script classes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from modules import paths_internal
from modules.extensions import runtime
from modules.extensions.runner import TabScripts
from modules.extensions.script_base import (
    AlwaysVisible,
    PostprocessBatchListArgs,
    PostprocessImageArgs,
    Script,
)

__all__ = [
    "AlwaysVisible",
    "PostprocessBatchListArgs",
    "PostprocessImageArgs",
    "Script",
    "ScriptClassData",
    "ScriptFile",
    "basedir",
    "list_scripts",
]


class PostSampleArgs:
    def __init__(self, samples: Any) -> None:
        self.samples = samples


class MaskBlendArgs:
    def __init__(
        self,
        current_latent: Any,
        nmask: Any,
        init_latent: Any,
        mask: Any,
        blended_latent: Any,
        denoiser: Any = None,
        sigma: Any = None,
    ) -> None:
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class ScriptFile(NamedTuple):
    basedir: str
    filename: str
    path: str


class ScriptClassData(NamedTuple):
    script_class: Any
    path: str
    basedir: str
    module: Any


def _caller_file() -> str | None:
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else None


def _extension_root(filename: str) -> str | None:
    """The extension folder `filename` lies in (under extensions/ or extensions-builtin/)."""
    paths = paths_internal.app_paths()
    path = Path(filename).resolve()
    for root in (paths.extensions_dir, paths.extensions_builtin_dir):
        try:
            rel = path.relative_to(Path(root).resolve())
        except (ValueError, OSError):
            continue
        if len(rel.parts) > 1:
            return str(Path(root) / rel.parts[0])
    return None


def basedir() -> str:
    """The folder of the extension whose code calls this (the program folder for other code)."""
    filename = _caller_file()
    found = _extension_root(filename) if filename else None
    return found or paths_internal.script_path


def list_scripts(scriptdirname: str, extension: str, *, include_extensions: bool = True) -> list[ScriptFile]:
    """The `<dir>/<scriptdirname>/*<extension>` files of the program folder and of each extension."""
    paths = paths_internal.app_paths()
    bases = [Path(paths_internal.script_path)]
    if include_extensions:
        for root in (paths.extensions_builtin_dir, paths.extensions_dir):
            if Path(root).is_dir():
                bases.extend(sorted(p for p in Path(root).iterdir() if p.is_dir()))
    found: list[ScriptFile] = []
    for base in bases:
        folder = base / scriptdirname
        if not folder.is_dir():
            continue
        for name in sorted(os.listdir(folder)):
            if os.path.splitext(name)[1].lower() == extension.lower() and (folder / name).is_file():
                found.append(ScriptFile(str(base), name, str(folder / name)))
    return found


class ScriptRunnerView:
    """One tab's scripts as A1111's `ScriptRunner` shows them."""

    def __init__(self, is_img2img: bool) -> None:
        self.is_img2img = is_img2img

    def _tab(self) -> TabScripts:
        env = runtime.environment()
        if env.runner is None:
            raise RuntimeError("no scripts are loaded in this app")
        return env.runner.tab(self.is_img2img)

    @property
    def scripts(self) -> list[Script]:
        return list(self._tab().scripts)

    @property
    def alwayson_scripts(self) -> list[Script]:
        return list(self._tab().alwayson)

    @property
    def selectable_scripts(self) -> list[Script]:
        return list(self._tab().selectable)

    @property
    def titles(self) -> list[str]:
        return [s.title() for s in self._tab().selectable]

    @property
    def title_map(self) -> dict[str, Script]:
        return {s.title().lower(): s for s in self._tab().selectable}

    def script(self, title: str) -> Script | None:
        return self.title_map.get(title.lower())

    def __iter__(self) -> Iterator[Script]:
        return iter(self.scripts)


scripts_txt2img = ScriptRunnerView(False)
scripts_img2img = ScriptRunnerView(True)


def __getattr__(name: str) -> Any:
    if name == "scripts_data":
        env = runtime.maybe_environment()
        if env is None or env.runner is None:
            return []
        return [
            ScriptClassData(c.cls, str(c.path), str(c.basedir), sys.modules.get(c.cls.__module__))
            for c in env.runner.classes
        ]
    if name == "scripts_current":
        return None
    if name == "current_basedir":
        return basedir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
