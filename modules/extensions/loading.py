"""Loading extensions' code: `scripts/*.py` (script classes; module-level code may register
callbacks), `javascript/*.js` and `style.css` for the page, and `preload.py` (command-line flags).

Each file is imported on its own, with its extension's folder first on `sys.path` while it loads
(A1111 does the same, so `import helper_module` works). A file that fails to import, or a script
class that fails to build, is logged with its traceback and reported to `on_error(extension, text)`
(the Extensions tab shows it); the other files and extensions load on. `install.py` is not run
here: only on install and update (`modules.extensions.manager`).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from modules.extensions.runner import ScriptClass
from modules.extensions.script_base import Script

log = logging.getLogger(__name__)

BUILTIN_SCRIPTS_DIR = Path(__file__).resolve().parent / "builtin_scripts"

OnError = Callable[[str | None, str], None]


@dataclass(frozen=True)
class ExtensionDir:
    """An enabled extension's folder (or None for the built-in scripts)."""

    name: str | None
    path: Path


@dataclass
class PageAssets:
    """What the extensions add to the page: scripts (`javascript/*.js`, `*.mjs` as modules) and
    stylesheets (`style.css`), in extension order."""

    scripts: list[Path] = field(default_factory=list)
    module_scripts: list[Path] = field(default_factory=list)
    styles: list[Path] = field(default_factory=list)


def _module_name(path: Path, extension: str | None) -> str:
    # A1111 names a script module by its file name; ours is prefixed so two extensions' files
    # with one name do not replace each other in sys.modules
    prefix = f"sdw_ext.{extension}." if extension else "sdw_builtin."
    return prefix + path.stem.replace(".", "_")


def import_file(path: Path, name: str, basedir: Path) -> ModuleType:
    """Import one file as module `name` with `basedir` first on sys.path while it runs."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    added = str(basedir) not in sys.path
    if added:
        sys.path.insert(0, str(basedir))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added and str(basedir) in sys.path:
            sys.path.remove(str(basedir))
    return module


def script_classes_in(module: ModuleType) -> list[type[Script]]:
    """Script subclasses a module defines or imports (A1111 takes both), the base class left out."""
    found: list[type[Script]] = []
    for value in list(vars(module).values()):
        if isinstance(value, type) and issubclass(value, Script) and value is not Script and value not in found:
            found.append(value)
    return found


def load_script_classes(
    dirs: Sequence[ExtensionDir],
    on_error: OnError,
    *,
    adapt_module: Callable[[ModuleType], None] | None = None,
) -> list[ScriptClass]:
    """Every script class of `dirs` (each one's `scripts/*.py`, sorted by file name; the built-in
    dir holds the files directly). Import errors are reported, never raised."""
    classes: list[ScriptClass] = []
    seen: set[type[Script]] = set()
    for ext in dirs:
        scripts_dir = ext.path if ext.name is None else ext.path / "scripts"
        if not scripts_dir.is_dir():
            continue
        for path in sorted(scripts_dir.glob("*.py"), key=lambda p: p.name.lower()):
            if path.name.startswith("_"):
                continue
            try:
                if ext.name is None:  # our own package: a plain import
                    module = importlib.import_module(f"{__package__}.builtin_scripts.{path.stem}")
                else:
                    module = import_file(path, _module_name(path, ext.name), ext.path)
                if adapt_module is not None:
                    adapt_module(module)
            except BaseException as exc:  # SystemExit / KeyboardInterrupt from a script too
                if isinstance(exc, KeyboardInterrupt):
                    raise
                text = f"{path.relative_to(ext.path)}: {type(exc).__name__}: {exc}"
                log.error(
                    "extension %s: error loading %s\n%s",
                    ext.name or "(built-in)",
                    path,
                    "".join(traceback.format_exception(exc)),
                )
                on_error(ext.name, text)
                continue
            for cls in script_classes_in(module):
                if cls in seen:
                    continue
                seen.add(cls)
                classes.append(ScriptClass(cls, path, ext.path, ext.name))
    return classes


def page_assets(dirs: Iterable[ExtensionDir]) -> PageAssets:
    assets = PageAssets()
    for ext in dirs:
        if ext.name is None:
            continue
        js_dir = ext.path / "javascript"
        if js_dir.is_dir():
            for path in sorted(js_dir.iterdir(), key=lambda p: p.name.lower()):
                if path.suffix == ".js" and path.is_file():
                    assets.scripts.append(path)
                elif path.suffix == ".mjs" and path.is_file():
                    assets.module_scripts.append(path)
        style = ext.path / "style.css"
        if style.is_file():
            assets.styles.append(style)
    return assets


Preload = Callable[[argparse.ArgumentParser], None]


def preload_functions(dirs: Iterable[ExtensionDir], on_error: OnError) -> list[Preload]:
    """Each enabled extension's `preload(parser)` from its `preload.py` (its flags join ours)."""
    out: list[Callable[[argparse.ArgumentParser], None]] = []
    for ext in dirs:
        if ext.name is None:
            continue
        path = ext.path / "preload.py"
        if not path.is_file():
            continue
        try:
            module = import_file(path, f"sdw_ext.{ext.name}.preload", ext.path)
        except Exception as exc:
            log.error("extension %s: error loading preload.py\n%s", ext.name, "".join(traceback.format_exception(exc)))
            on_error(ext.name, f"preload.py: {type(exc).__name__}: {exc}")
            continue
        fn = getattr(module, "preload", None)
        if callable(fn):
            out.append(_guarded_preload(ext.name, fn, on_error))
    return out


def _guarded_preload(
    name: str, fn: Callable[[argparse.ArgumentParser], None], on_error: OnError
) -> Callable[[argparse.ArgumentParser], None]:
    def run(parser: argparse.ArgumentParser) -> None:
        try:
            fn(parser)
        except Exception as exc:  # a clashing flag, say: the extension's flags are skipped
            log.error("extension %s: preload(parser) failed: %s", name, exc)
            on_error(name, f"preload.py: preload(parser): {type(exc).__name__}: {exc}")

    return run
