"""Dependencies point inward: core imports no torch (nor any heavy library); nothing under models
or engine imports gradio or fastapi. Checked statically and by really importing in a clean process.

Between our own packages: core <- models <- engine <- api / ui (through `modules.services`); only
`modules.app` wires everything together. Adapters may use a few named public models modules; the
adapter imports of models internals that exist today are listed and may only go away."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.source_ast import parse_source

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "torchvision", "diffusers", "transformers", "safetensors", "numpy", "gradio", "fastapi", "starlette"}
ADAPTERS = {"gradio", "fastapi", "starlette", "uvicorn"}


def _modules(package: str) -> list[str]:
    base = ROOT / "modules" / package
    return [
        "modules." + ".".join(p.relative_to(ROOT / "modules").with_suffix("").parts)
        for p in sorted(base.rglob("*.py"))
        if p.name != "__init__.py"
    ]


def _imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "modules" / package).rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(parse_source(path)):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


def test_core_imports_only_light_modules_statically() -> None:
    bad = {f: r & HEAVY for f, r in _imported_roots("core").items() if r & HEAVY}
    assert not bad, bad


def test_models_and_engine_never_import_adapters_statically() -> None:
    for package in ("models", "engine"):
        bad = {f: r & ADAPTERS for f, r in _imported_roots(package).items() if r & ADAPTERS}
        assert not bad, bad


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_core_loads_no_heavy_library() -> None:
    loaded = _loaded_after_import(_modules("core"))
    assert not (loaded & HEAVY), loaded & HEAVY


def test_importing_models_and_engine_loads_no_web_framework() -> None:
    loaded = _loaded_after_import(_modules("models") + _modules("engine"))
    assert "torch" in loaded  # the check itself is live: these modules do import torch
    assert not (loaded & ADAPTERS), loaded & ADAPTERS


# --- direction between our own packages -----------------------------------------------------------

# What each of our packages may import from `modules` (itself always). `modules.app` is the
# composition root and may import anything; `modules.services` is the bundle it hands the adapters.
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "models": frozenset({"core"}),
    "engine": frozenset({"core", "models"}),
    "extensions": frozenset({"core", "engine"}),  # the extension manager and the script runtime
    "services": frozenset({"core", "models", "engine", "extensions"}),
    "api": frozenset({"core", "engine", "services", "extensions"}),
    "ui": frozenset({"core", "engine", "services", "extensions"}),
    "serve": frozenset({"core", "engine", "services"}),  # --ray: the replicas and the RayEngine the app builds
    "app": frozenset({"core", "models", "engine", "services", "api", "ui", "extensions", "serve"}),
    "facade": frozenset({"core", "models", "engine", "services", "api", "ui", "extensions", "facade", "app"}),
}
ADAPTER_LAYERS = ("api", "ui", "extensions")

# The public faces of `modules.models` that adapters may use directly (types they show or accept).
# Loader, manager, patches, merge internals are not: adapters reach models through the engine.
ADAPTER_MODELS_PUBLIC = frozenset({"modules.models.registry"})  # CheckpointInfo for /sd-models

# Adapter imports of models internals that exist today (none left: VAE choice names live in core,
# the merger reads checkpoint metadata through core's header reader, token counting is an engine
# service). Each entry is (importing module, imported models module). An entry that no longer
# occurs fails the test, so the list only shrinks.
KNOWN_ADAPTER_MODELS_IMPORTS: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_our_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _our_imports(path: Path, name: str | None = None) -> set[str]:
    """Every `modules...` module imported anywhere in the file (top level, functions,
    TYPE_CHECKING blocks), relative imports resolved; `from pkg import mod` names the module."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse_source(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "modules")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "modules":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if _is_our_module(sub) else source)
    return found


# A1111's module names that extension code imports (`modules.scripts`, `modules.shared`, ...): single
# files at the top of the package, views over the internal packages. They may import anything; no
# internal package may import them (no rule below lists "facade").
_NOT_FACADES = frozenset({"app", "services"})
# Facades whose A1111 path lies inside one of our packages: named one by one.
FACADES_IN_PACKAGES = frozenset({"modules.api.api"})


def _is_facade(name: str) -> bool:
    return name not in _NOT_FACADES and (ROOT / "modules" / f"{name}.py").is_file()


def _layer(module: str) -> str:
    """`modules.engine.samplers` -> "engine", `modules.app` -> "app", `modules` -> "" (the package),
    `modules.scripts` and `modules.api.api` -> "facade"."""
    parts = module.split(".")
    if module in FACADES_IN_PACKAGES or (len(parts) == 2 and _is_facade(parts[1])):
        return "facade"
    return parts[1] if len(parts) > 1 else ""


def _internal_imports() -> dict[str, set[str]]:
    return {_module_name(p): _our_imports(p) for p in sorted((ROOT / "modules").rglob("*.py"))}


def test_facades_inside_packages_exist() -> None:
    for name in FACADES_IN_PACKAGES:
        assert _is_our_module(name), f"{name} is listed as a facade but does not exist"


def test_every_package_of_ours_has_a_layering_rule() -> None:
    layers = {_layer(m) for m in _internal_imports()} - {""}
    assert layers <= set(ALLOWED_LAYERS), f"add a rule for {sorted(layers - set(ALLOWED_LAYERS))}"


def test_the_modules_package_itself_imports_nothing_of_ours() -> None:
    # `from modules import __version__` is allowed everywhere because the package holds only metadata
    assert _our_imports(ROOT / "modules" / "__init__.py") == set()


def _layering_violations(imports: dict[str, set[str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """(imports against the rules, adapter -> models-internal imports found) for a module map."""
    violations: list[str] = []
    adapter_models: set[tuple[str, str]] = set()
    for module, targets in imports.items():
        layer = _layer(module)
        if not layer:
            continue  # the package's own __init__ (checked on its own)
        allowed = ALLOWED_LAYERS[layer] | {layer, ""}
        for target in sorted(targets):
            target_layer = _layer(target)
            if target_layer in allowed:
                continue
            if layer in ADAPTER_LAYERS and target_layer == "models":
                if target in ADAPTER_MODELS_PUBLIC:
                    continue
                adapter_models.add((module, target))
                if (module, target) in KNOWN_ADAPTER_MODELS_IMPORTS:
                    continue
            violations.append(f"{module} ({layer}) imports {target} ({target_layer})")
    return violations, adapter_models


def test_imports_point_inward() -> None:
    violations, adapter_models = _layering_violations(_internal_imports())
    assert not violations, "\n".join(violations)
    stale = KNOWN_ADAPTER_MODELS_IMPORTS - adapter_models
    assert not stale, f"no longer imported, remove from KNOWN_ADAPTER_MODELS_IMPORTS: {sorted(stale)}"


@pytest.mark.parametrize(
    ("module", "target", "ok"),
    [
        ("modules.core.requests", "modules.engine.samplers", False),
        ("modules.core.requests", "modules.core.errors", True),
        ("modules.models.loader", "modules.engine.noise", False),
        ("modules.models.loader", "modules.services", False),
        ("modules.engine.processing", "modules.models.loader", True),
        ("modules.engine.processing", "modules.api.errors", False),
        ("modules.engine.processing", "modules.ui.common", False),
        ("modules.services", "modules.api.mount", False),
        ("modules.api.routes.info", "modules.engine.samplers", True),
        ("modules.api.routes.models", "modules.models.registry", True),
        ("modules.api.routes.models", "modules.models.loader", False),
        ("modules.ui.save", "modules.models.manager", False),
        ("modules.ui.quicksettings", "modules.models.manager", False),
        ("modules.ui.common", "modules.api.errors", False),
        ("modules.api.mount", "modules.ui.mount", False),
        ("modules.api.mount", "modules.app", False),
        ("modules.engine.service", "modules", True),  # `from modules import __version__`
        ("modules.app", "modules.ui.mount", True),
        # the facades A1111's extensions import: they may use anything, nothing of ours uses them
        ("modules.shared", "modules.extensions.runtime", True),
        ("modules.images", "modules.engine.outputs", True),
        ("modules.sd_models", "modules.models.registry", True),
        ("modules.api.api", "modules.api.images", True),
        ("modules.shared", "modules.script_callbacks", True),
        ("modules.extensions.runner", "modules.shared", False),
        ("modules.extensions.callbacks", "modules.script_callbacks", False),
        ("modules.engine.processing", "modules.processing", False),
        ("modules.api.routes.info", "modules.api.api", False),
        ("modules.api.images", "modules.api.api", False),
        ("modules.ui.common", "modules.images", False),
        ("modules.app", "modules.shared", False),
        ("modules.app", "modules.serve.cluster", True),
        ("modules.serve.replica", "modules.services", True),
        ("modules.serve.front", "modules.api.errors", False),
        ("modules.serve.replica", "modules.app", False),  # the composition root is handed in, not imported
        ("modules.api.routes.progress", "modules.serve.front", False),
    ],
)
def test_the_rules_judge_each_direction(module: str, target: str, ok: bool) -> None:
    violations, _ = _layering_violations({module: {target}})
    assert (not violations) is ok, violations


def test_the_scanner_finds_every_import_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import os\n"
        "import modules.core.errors\n"
        "from typing import TYPE_CHECKING\n"
        "from modules.engine import samplers\n"
        "from modules.engine.outputs import ImageSaver\n"
        "from . import images\n"
        "from ..models.registry import CheckpointInfo\n"
        "if TYPE_CHECKING:\n"
        "    from modules.models.manager import ModelManager\n"
        "def late() -> None:\n"
        "    from modules.services import Services\n",
        encoding="utf-8",
    )
    assert _our_imports(source, "modules.api.sample") == {
        "modules.core.errors",
        "modules.engine.samplers",
        "modules.engine.outputs",
        "modules.api.images",
        "modules.models.registry",
        "modules.models.manager",
        "modules.services",
    }
