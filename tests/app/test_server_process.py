"""The real entry point as a process: serves, answers, and stops or restarts on request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# each test starts webui.py as a process (torch, diffusers and Gradio imported from scratch)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "webui.py",
        "--data-dir",
        str(tmp_path),
        "--port",
        str(port),
        "--skip-load-model-at-start",
        *flags,
    ]
    environ = {k: v for k, v in os.environ.items() if k not in ("SDW_ROOT", "INVOCATION_ID", "COMMANDLINE_ARGS")}
    environ.update(env or {})
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120  # torch, diffusers and Gradio imported from scratch on a shared CPU
    while time.time() < deadline:
        try:
            # ping answers at once (fast start); the API is there once /health stops saying "starting"
            if httpx.get(url + "/health", timeout=1).json().get("status") == "ok":
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
    proc.kill()
    raise AssertionError("server did not start")


@pytest.mark.parametrize(
    ("route", "env", "code"), [("server-stop", {}, 0), ("server-restart", {"SDW_ROOT": str(ROOT)}, 3)]
)
def test_stop_and_restart_exit_codes(tmp_path: Path, route: str, env: dict[str, str], code: int) -> None:
    proc, url = _start(tmp_path, "--api", "--api-server-stop", env=env)
    try:
        assert httpx.get(url + "/sdapi/v1/options", timeout=5).status_code == 200
        assert httpx.post(url + f"/sdapi/v1/{route}", timeout=5).status_code == 200
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()


def test_server_routes_are_absent_without_the_flag_and_nowebui_uses_7861_by_default(tmp_path: Path) -> None:
    proc, url = _start(tmp_path, "--api")
    try:
        assert httpx.post(url + "/sdapi/v1/server-stop", timeout=5).status_code == 404
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from modules.core.settings import parse_settings

    assert parse_settings(["--nowebui"], {}).effective_port == 7861
    assert parse_settings(["--nowebui"], {}).api_enabled
