"""Dependencies point inward: core imports no torch (nor any heavy library); nothing under models
or engine imports gradio or fastapi. Checked statically and by really importing in a clean process."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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
