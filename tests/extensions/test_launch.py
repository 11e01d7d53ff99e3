"""`launch`, the module extensions' install.py imports (A1111's launch_utils names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import launch

ROOT = Path(__file__).resolve().parents[2]


def test_is_installed_and_requirements_met(tmp_path: Path) -> None:
    assert launch.is_installed("torch")
    assert not launch.is_installed("surely-not-a-package-xyz")
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntorch\n")
    assert launch.requirements_met(str(req))
    req.write_text("torch==0.0.1\n")
    assert not launch.requirements_met(str(req))
    req.write_text("surely-not-a-package-xyz\n")
    assert not launch.requirements_met(str(req))


def test_run_returns_output_and_raises_with_the_error_text() -> None:
    assert launch.run([sys.executable, "-c", "print('hi')"]).strip() == "hi"
    with pytest.raises(RuntimeError, match="boom failed"):
        launch.run([sys.executable, "-c", "import sys; sys.exit(3)"], errdesc="boom failed")


def test_git_clone_refuses_anything_but_https(tmp_path: Path) -> None:
    for url in ("http://example.com/x.git", "ext::sh -c touch% /tmp/pwned", "file:///etc", "git://x/y"):
        with pytest.raises(RuntimeError, match="only https"):
            launch.git_clone(url, str(tmp_path / "x"), "x")
    assert not (tmp_path / "x").exists()


def test_an_installer_imports_launch_as_a1111_installers_do(tmp_path: Path) -> None:
    script = tmp_path / "install.py"
    script.write_text(
        "import launch\n"
        "assert launch.is_installed('torch')\n"
        "print('skip_install', launch.args.skip_install, 'python', launch.python)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "skip_install False" in out.stdout


def test_installers_run_with_the_app_packages_pinned(tmp_path: Path) -> None:
    """An install.py's pip may add packages but not move torch or transformers (PIP_CONSTRAINT)."""
    import importlib.metadata

    from modules.core.options import Options, default_option_infos
    from modules.core.paths import Paths
    from modules.core.settings import parse_settings
    from modules.extensions.manager import ExtensionManager

    settings = parse_settings(["--data-dir", str(tmp_path)], {})
    paths = Paths.from_settings(settings, tmp_path, {})
    manager = ExtensionManager(settings, paths, Options(default_option_infos(), None))
    ext = tmp_path / "extensions" / "pins"
    ext.mkdir(parents=True)
    (ext / "install.py").write_text(
        "import os, pathlib\n"
        "files = os.environ['PIP_CONSTRAINT'].split()\n"
        "print(pathlib.Path(files[0]).read_text())\n"
    )
    run = manager.run_installer(ext)
    assert run is not None and run.ok, run
    assert f"torch=={importlib.metadata.version('torch')}" in run.output
    assert f"transformers=={importlib.metadata.version('transformers')}" in run.output
