"""Scripts and extensions for one app: the composition root calls `setup_scripts` once.

It installs the `ScriptEnvironment` the facades read, loads the built-in scripts and the enabled
extensions' scripts (errors reported per extension), builds the `ScriptRunner` and hands it to the
engine as its `ScriptHost`, and collects the extensions' page assets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modules.extensions import gradio_compat, runtime
from modules.extensions.callbacks import CallbackRegistry
from modules.extensions.loading import (
    BUILTIN_SCRIPTS_DIR,
    ExtensionDir,
    PageAssets,
    Preload,
    load_script_classes,
    page_assets,
    preload_functions,
)
from modules.extensions.runner import ScriptRunner

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import ModuleType

    from modules.core.settings import Settings
    from modules.engine.service import GenerationService

log = logging.getLogger(__name__)


@dataclass
class ScriptSetup:
    runner: ScriptRunner
    callbacks: CallbackRegistry
    assets: PageAssets
    environment: runtime.ScriptEnvironment
    errors: dict[str | None, list[str]] = field(default_factory=dict)


def setup_scripts(
    env: runtime.ScriptEnvironment,
    generation: GenerationService,
    extensions: Sequence[ExtensionDir],
    *,
    on_error: Callable[[str | None, str], None] | None = None,
    adapt_module: Callable[[ModuleType], None] | None = None,
) -> ScriptSetup:
    """Load the scripts of the built-in dir and of `extensions` (the enabled ones, in order); `env`
    (the app's parts as scripts see them) becomes the installed environment."""
    errors: dict[str | None, list[str]] = {}

    def report(extension: str | None, text: str) -> None:
        errors.setdefault(extension, []).append(text)
        if on_error is not None:
            on_error(extension, text)

    callbacks = CallbackRegistry()
    env.callbacks = callbacks
    runtime.install(env)  # before the scripts' modules run: their top level may read the facades
    dirs = [ExtensionDir(None, BUILTIN_SCRIPTS_DIR), *extensions]
    classes = load_script_classes(dirs, report, adapt_module=adapt_module or gradio_compat.adapt_module)
    runner = ScriptRunner(classes, on_error=report)
    env.runner = runner
    generation.scripts = runner
    return ScriptSetup(runner, callbacks, page_assets(extensions), env, errors)


def extension_preloads(settings: Settings, repo_root: Path, environ: Mapping[str, str]) -> list[Preload]:
    """The enabled extensions' `preload(parser)` functions, found from a first parse of the flags
    (data dir, --disable-*-extensions) and the saved `disabled_extensions` option. Nothing is
    written: no folders made, no options saved."""
    from modules.core.options import Options, default_option_infos
    from modules.core.paths import Paths
    from modules.extensions.manager import ExtensionManager

    paths = Paths.from_settings(settings, repo_root, environ)
    options = Options(default_option_infos(), paths.config_file)
    options.load()
    manager = ExtensionManager(settings, paths, options, environ=environ)
    dirs = [ExtensionDir(ext.name, ext.path) for ext in manager.active()]

    def report(name: str | None, text: str) -> None:
        log.error("extension %s: %s", name, text)

    return preload_functions(dirs, report)
