"""A1111's `launch` module, for extensions' `install.py` (`import launch; launch.run_pip(...)`),
and a second way to start the app (`python launch.py` works as `python webui.py` does).

Extensions' installers run as subprocesses with this folder on PYTHONPATH (see
modules/extensions/manager.py), only when an extension is installed or updated.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
python = sys.executable
git = os.environ.get("GIT", "git")
index_url = os.environ.get("INDEX_URL", "")
dir_repos = "repositories"
_TIMEOUT_S = float(os.environ.get("SDW_INSTALL_TIMEOUT", "900"))


def _args() -> Any:
    """The command line as A1111's `launch.args` shows it (our flags; unknown ones ignored)."""
    from modules.core.settings import parse_settings

    try:
        return parse_settings(sys.argv[1:], os.environ, known_only=True)
    except Exception:  # an installer must not fail on the flags of a process it did not start
        return parse_settings([], {}, known_only=True)


args = _args()


def commit_hash() -> str:
    try:
        return subprocess.check_output([git, "-C", str(ROOT), "rev-parse", "HEAD"], text=True, timeout=10).strip()
    except Exception:
        return "<none>"


def git_tag() -> str:
    try:
        return subprocess.check_output([git, "-C", str(ROOT), "describe", "--tags"], text=True, timeout=10).strip()
    except Exception:
        return "<none>"


def run(
    command: str | list[str],
    desc: str | None = None,
    errdesc: str | None = None,
    custom_env: dict[str, str] | None = None,
    live: bool = False,
) -> str:
    """Run a command (a shell string, as A1111 takes it, or an argument list); its output, or a
    RuntimeError with `errdesc` and the output when it fails."""
    if desc:
        print(desc)
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    result = subprocess.run(
        argv,
        capture_output=not live,
        text=True,
        env=custom_env if custom_env is not None else os.environ.copy(),
        timeout=_TIMEOUT_S,
    )
    if result.returncode != 0:
        message = f"{errdesc or 'Error running command'}.\nCommand: {command}\nError code: {result.returncode}"
        if not live:
            message += f"\nstdout: {result.stdout or '<empty>'}\nstderr: {result.stderr or '<empty>'}"
        raise RuntimeError(message)
    return result.stdout or ""


def is_installed(package: str) -> bool:
    """True when the distribution (or, failing that, a module of that name) is importable here."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def run_pip(command: str, desc: str | None = None, live: bool = False) -> str:
    """`pip install ...` (or another pip command) with this Python; `--skip-install` does nothing."""
    if getattr(args, "skip_install", False):
        return ""
    index = ["--index-url", index_url] if index_url else []
    argv = [python, "-m", "pip", *shlex.split(command), "--prefer-binary", *index]
    return run(argv, desc=f"Installing {desc}" if desc else None, errdesc=f"Couldn't install {desc}", live=live)


def check_run_python(code: str) -> bool:
    return subprocess.run([python, "-c", code], capture_output=True, timeout=_TIMEOUT_S).returncode == 0


def repo_dir(name: str) -> str:
    return str(ROOT / dir_repos / name)


def git_clone(url: str, dir: str, name: str, commithash: str | None = None) -> None:
    """Clone `url` into `dir` (https only, no hooks, no prompts), or fetch and check out `commithash`."""
    if not url.startswith("https://"):
        raise RuntimeError(f"Couldn't clone {name}: only https:// URLs are allowed ({url})")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    safe = [git, "-c", "core.hooksPath=/dev/null", "-c", "credential.helper="]
    if Path(dir, ".git").exists():
        if commithash:
            run([*safe, "-C", dir, "fetch"], f"Fetching updates for {name}...", custom_env=env)
            run([*safe, "-C", dir, "checkout", commithash], f"Checking out {commithash} for {name}", custom_env=env)
        return
    run([*safe, "clone", "--", url, dir], f"Cloning {name} into {dir}...", f"Couldn't clone {name}", custom_env=env)
    if commithash:
        run([*safe, "-C", dir, "checkout", commithash], None, f"Couldn't checkout {name}'s hash", custom_env=env)


_REQUIREMENT = re.compile(r"\s*([-_a-zA-Z0-9]+)\s*(?:==\s*([-+_.a-zA-Z0-9]+))?\s*")


def requirements_met(requirements_file: str) -> bool:
    """Every `name` / `name==version` line of the file is installed (at that version)."""
    for line in Path(requirements_file).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _REQUIREMENT.fullmatch(line)
        if m is None:
            return False
        name, version = m.group(1), m.group(2)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if version and installed != version:
            return False
    return True


def main() -> int:
    from modules.app import main as app_main

    return app_main(sys.argv[1:], os.environ)


if __name__ == "__main__":
    raise SystemExit(main())
