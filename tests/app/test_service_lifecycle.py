"""The systemd service for real (issue 19, item 1): the unit verifies, the install script's plan,
and the unit's command line run under a small supervisor that restarts it as systemd would
(`Restart=on-failure`, `RestartForceExitStatus=3`), with readiness over `$NOTIFY_SOCKET`:
killed with -9 in the middle of saving it comes back and serves; a SIGTERM with a running job
and three queued ends it within the stop timeout, the queued clients get a 503 saying the server
is shutting down, and no output is half-written; a kill -9 loop during saves leaves every PNG,
JSON and CSV whole.

CPU: two starts of the real server (one model load each), tiny sd1, 64x64 images, few steps; the
save loop is a light process (no torch)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "sd-webui.service"
SECRET = "s3cret-pass-19"
AUTH = ("svc", SECRET)


# --- the unit file --------------------------------------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str]]:
    """(key, value) of every setting of the unit, in order (no continuation lines are used)."""
    entries: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        entries.append((key.strip(), value.strip()))
    return entries


def unit_value(entries: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in entries if k == key]
    assert values, f"{key}= missing from the unit"
    return values[-1]


def unit_for_here(text: str, env_file: Path) -> str:
    """The unit with its paths pointed at this checkout and `env_file` (both exist)."""
    return text.replace("/etc/sd-webui/sd-webui.env", str(env_file)).replace("/opt/sd-webui", str(ROOT))


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    unit = tmp_path / "sd-webui.service"
    unit.write_text(unit_for_here(UNIT.read_text(), ROOT / "systemd" / "sd-webui.env.example"))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    # verify only warns about unknown keys and bad values: any output at all is a finding
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    done = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in done.stderr  # the check itself sees a bad value


def test_the_install_script_dry_run_plans_every_step_and_changes_nothing() -> None:
    before = {p: p.exists() for p in (Path("/etc/sd-webui"), Path("/var/lib/sd-webui"))}
    done = subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "useradd --system" in out or "user sd-webui exists" in out
    assert "/var/lib/sd-webui" in out
    assert "/etc/sd-webui/sd-webui.env" in out
    assert f"/etc/systemd/system/sd-webui.service (from systemd/sd-webui.service, checkout {ROOT})" in out or (
        "is up to date" in out
    )
    assert "+ systemctl daemon-reload" in out
    assert "/etc/sd-webui/auth.txt" in out  # the env example's --gradio-auth-path
    assert {p: p.exists() for p in before} == before
    bad = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2


# --- a supervisor that restarts like systemd ------------------------------------------------------

CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}  # systemd.service(5)


def systemd_restarts(returncode: int, restart: str, force: set[int], prevent: set[int]) -> bool:
    """Would `Restart=<restart>` with `RestartForceExitStatus=<force>` and
    `RestartPreventExitStatus=<prevent>` start the unit again after its main process ended with
    `returncode` (Popen's: negative = killed by that signal)?"""
    if returncode >= 0 and returncode in prevent:
        return False
    if returncode >= 0 and returncode in force:
        return True
    if restart == "always":
        return True
    if restart != "on-failure":
        return False
    if returncode < 0:
        return signal.Signals(-returncode) not in CLEAN_SIGNALS
    return returncode != 0


def test_the_units_restart_policy() -> None:
    entries = unit_entries(UNIT.read_text())
    restart = unit_value(entries, "Restart")
    force = {int(v) for v in unit_value(entries, "RestartForceExitStatus").split()}
    prevent = {int(v) for v in unit_value(entries, "RestartPreventExitStatus").split()}
    assert systemd_restarts(3, restart, force, prevent)  # the app's restart code
    assert systemd_restarts(-signal.SIGKILL, restart, force, prevent)  # killed: start again
    assert systemd_restarts(1, restart, force, prevent)  # crashed
    assert not systemd_restarts(0, restart, force, prevent)  # stopped through the API
    assert not systemd_restarts(-signal.SIGTERM, restart, force, prevent)  # systemctl stop
    assert not systemd_restarts(2, restart, force, prevent)  # refused at start: no restart loop


class Supervisor:
    """Runs the unit's ExecStart with its environment, as `Type=notify`: started = READY=1 came."""

    def __init__(self, data: Path, port: int, logs: Path) -> None:
        self.entries = unit_entries(UNIT.read_text())
        self.restart = unit_value(self.entries, "Restart")
        self.force = {int(v) for v in unit_value(self.entries, "RestartForceExitStatus").split()}
        self.prevent = {int(v) for v in unit_value(self.entries, "RestartPreventExitStatus").split()}
        self.kill_signal = signal.Signals[unit_value(self.entries, "KillSignal")]
        self.stop_timeout = float(unit_value(self.entries, "TimeoutStopSec").rstrip("s"))
        assert unit_value(self.entries, "Type") == "notify"
        self.url = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._sockdir = tempfile.mkdtemp(prefix="sdw-notify-")  # short: AF_UNIX paths are limited
        self.notify_path = os.path.join(self._sockdir, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = {k: v for k, v in os.environ.items() if k not in ("SDW_ROOT", "COMMANDLINE_ARGS", "venv_dir")}
        for key, value in self.entries:
            if key == "Environment":
                for word in shlex.split(value):
                    name, _, val = word.partition("=")
                    env[name] = val
        in_venv = sys.prefix != sys.base_prefix
        env.update(
            {
                # the env file's settings, for a test: this checkout's venv, a tmp data dir
                "venv_dir": sys.prefix if in_venv else "-",
                "python_cmd": sys.executable,
                "COMMANDLINE_ARGS": (
                    f"--api --nowebui --port {port} --data-dir {data} --skip-install --api-log "
                    f"--api-auth {AUTH[0]}:{SECRET}"
                ),
                "HOME": str(data),
                "XDG_CACHE_HOME": str(data / "cache"),
                "INVOCATION_ID": "0123456789abcdef",  # what systemd sets: webui.sh execs webui.py
                "NOTIFY_SOCKET": self.notify_path,
                "OMP_NUM_THREADS": "1",
            }
        )
        self.env = env
        exec_start = shlex.split(unit_value(self.entries, "ExecStart").replace("/opt/sd-webui", str(ROOT)))
        self.command = exec_start + (["-f"] if os.getuid() == 0 else [])  # webui.sh refuses root without -f
        self.cwd = unit_value(self.entries, "WorkingDirectory").replace("/opt/sd-webui", str(ROOT))

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"start{self.starts}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.notify.settimeout(120)
        try:
            while True:
                message = self.notify.recv(4096).decode()
                if "READY=1" in message.split("\n"):
                    break
        except TimeoutError:
            raise AssertionError(f"no READY=1 from start {self.starts}: {self.log_text()[-2000:]}") from None
        # started means answering
        assert httpx.get(self.url + "/internal/ping", timeout=10).status_code == 200

    def supervise(self, timeout: float) -> int:
        """Wait for the process to end; start it again when systemd would. Its return code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if systemd_restarts(code, self.restart, self.force, self.prevent):
            self.start()
        return code

    def wait_for_model(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                health = httpx.get(self.url + "/health", auth=AUTH, timeout=10).json()
                if (health.get("model") or {}).get("checkpoint"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError("the model did not load: " + self.log_text()[-2000:])

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("start*.log")))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.notify.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)


@pytest.fixture()
def data_dir(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    folder = tmp_path / "data" / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], folder / "sd1-tiny.safetensors")
    return tmp_path / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _pngs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "outputs").rglob("*.png") if not p.name.startswith("."))


def assert_nothing_half_written(data: Path) -> None:
    """Every visible output and settings file is whole. (A kill -9 can leave an atomic write's
    hidden `.<name>.<random>.tmp`; never a torn file under the real name.)"""
    for png in _pngs(data):
        with Image.open(png) as image:
            image.load()
    for name in ("config.json", "ui-config.json", "cache.json"):
        if (data / name).exists():
            json.loads((data / name).read_text(encoding="utf-8"))
    if (data / "styles.csv").exists():
        rows = list(csv.DictReader((data / "styles.csv").read_text(encoding="utf-8-sig").splitlines()))
        assert all(set(r) == {"name", "prompt", "negative_prompt"} and None not in r.values() for r in rows)
    for path in data.rglob("*"):
        if path.is_file() and path.suffix == ".tmp":
            assert path.name.startswith("."), path  # only ever a hidden temp file


def _post(url: str, path: str, payload: dict[str, Any], out: dict[str, httpx.Response], key: str) -> None:
    try:
        out[key] = httpx.post(url + path, json=payload, auth=AUTH, timeout=180)
    except httpx.HTTPError as exc:  # the connection died with the process (kill -9)
        out[key] = httpx.Response(599, text=str(exc))


@pytest.mark.slow  # two starts of the real server, each loading the tiny model
def test_supervised_service_survives_kill_9_and_stops_gracefully(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    sup = Supervisor(data_dir, _free_port(), logs)
    try:
        sup.start()
        sup.wait_for_model()
        # 1. a job saving image after image, while settings are written too: kill -9 mid-job
        answers: dict[str, httpx.Response] = {}
        saving = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "n_iter": 40, "save_images": True}
        job = threading.Thread(target=_post, args=(sup.url, "/sdapi/v1/txt2img", saving, answers, "saving"))
        job.start()
        stop_options = threading.Event()

        def write_options() -> None:
            i = 0
            while not stop_options.is_set():
                i += 1
                try:
                    httpx.post(sup.url + "/sdapi/v1/options", json={"jpeg_quality": 50 + i % 40}, auth=AUTH, timeout=5)
                except httpx.HTTPError:
                    return
                stop_options.wait(0.1)

        options = threading.Thread(target=write_options)
        options.start()
        _wait_for(lambda: len(_pngs(data_dir)) >= 1, "the job to save images")
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        assert sup.supervise(timeout=30) == -signal.SIGKILL
        stop_options.set()
        job.join(30)
        options.join(30)
        assert sup.starts == 2  # started again, as systemd would
        assert answers["saving"].status_code == 599  # died with the process
        assert_nothing_half_written(data_dir)
        saved_before = len(_pngs(data_dir))

        # 2. it serves again
        sup.wait_for_model()
        served = httpx.post(
            sup.url + "/sdapi/v1/txt2img",
            json={"prompt": "b", "steps": 2, "width": 64, "height": 64},
            auth=AUTH,
            timeout=120,
        )
        assert served.status_code == 200 and len(served.json()["images"]) == 1

        # 3. the unit's stop signal with a running job and three queued
        slow = {
            "prompt": "c",
            "steps": 1000,
            "width": 64,
            "height": 64,
            "save_images": True,
            "force_task_id": "task(running)",
        }
        threads = [threading.Thread(target=_post, args=(sup.url, "/sdapi/v1/txt2img", slow, answers, "running"))]
        threads[0].start()

        def progress() -> dict[str, Any]:
            return httpx.get(sup.url + "/sdapi/v1/progress", auth=AUTH, timeout=10).json()  # type: ignore[no-any-return]

        _wait_for(lambda: progress()["state"]["sampling_step"] > 0, "the slow job to run")
        for i in range(3):
            queued = {"prompt": f"q{i}", "steps": 2, "width": 64, "height": 64, "save_images": True}
            thread = threading.Thread(target=_post, args=(sup.url, "/sdapi/v1/txt2img", queued, answers, f"queued{i}"))
            thread.start()
            threads.append(thread)
        _wait_for(
            lambda: httpx.get(sup.url + "/health", auth=AUTH, timeout=10).json()["queue"]["pending"] == 3, "3 queued"
        )
        assert sup.proc is not None
        sup.proc.send_signal(sup.kill_signal)
        code = sup.supervise(timeout=sup.stop_timeout)  # within TimeoutStopSec, or systemd would kill it
        assert code == -sup.kill_signal and sup.starts == 2  # a clean stop: not started again
        for thread in threads:
            thread.join(30)
        for i in range(3):
            answer = answers[f"queued{i}"]
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert set(body) == {"error", "detail", "body", "errors"}
            assert body["error"] == "ServerShuttingDown" and "shutting down" in body["detail"]
        running = answers["running"]
        assert running.status_code == 200  # interrupted: its partial image, as on any interrupt
        assert "Steps: 1000" in json.loads(running.json()["info"])["infotexts"][0]
        assert_nothing_half_written(data_dir)
        assert len(_pngs(data_dir)) == saved_before + 1  # the interrupted job's image; no queued job ran

        # 4. journald gets the --api-log request lines and no secret
        text = sup.log_text()
        assert "API 200 POST /sdapi/v1/txt2img" in text
        assert "API 503 POST /sdapi/v1/txt2img" in text
        assert "shutting down (signal SIGTERM)" in text
        assert SECRET not in text
    finally:
        sup.close()


# --- kill -9 while saving: a light writer using the app's own save paths ---------------------------

WRITER = textwrap.dedent(
    """
    import sys, itertools
    from pathlib import Path
    from PIL import Image
    from modules.core.atomic import atomic_write_json
    from modules.core.filenames import FilenameContext
    from modules.core.hashes import HashCache
    from modules.core.options import Options, default_option_infos
    from modules.core.paths import Paths
    from modules.core.settings import parse_settings
    from modules.core.styles import PromptStyle, StyleDatabase
    from modules.engine.outputs import ImageSaver

    data = Path(sys.argv[1])
    settings = parse_settings(["--data-dir", str(data)], {})
    paths = Paths.from_settings(settings, Path.cwd())
    options = Options(default_option_infos(), data / "config.json")
    saver = ImageSaver(options, paths)
    styles = StyleDatabase([data / "styles.csv"])
    cache = HashCache(data / "cache.json")
    blob = data / "blob.bin"
    blob.write_bytes(b"x")
    image = Image.new("RGB", (256, 256), (10, 20, 30))
    outdir = data / "outputs" / "txt2img-images"
    print("ready", flush=True)
    for i in itertools.count():
        saver.save_image(image, outdir, FilenameContext(seed=i, prompt="p" * 200), infotext="x" * 4000)
        options.set("jpeg_quality", 1 + i % 100)
        options.save()
        styles.save(PromptStyle(f"style{i % 50}", "prompt " * 50, "negative " * 50, None))
        cache.set_value("kill-loop", f"key{i % 200}", blob, "v" * 100)
        atomic_write_json(data / "ui-config.json", {f"txt2img/Steps{j}/value": i for j in range(200)})
    """
)


def test_kill_9_loop_during_saves_leaves_no_partial_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for iteration in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready", proc.stderr.read() if proc.stderr else b""
            target = len(_pngs(data)) + 3 + iteration  # a different point in the save cycle each time
            _wait_for(lambda t=target, p=proc: len(_pngs(data)) >= t or p.poll() is not None, "the writer to save")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        finally:
            proc.kill()
            proc.wait(30)
        assert_nothing_half_written(data)
    assert len(_pngs(data)) >= 12
    for name in ("config.json", "ui-config.json", "cache.json", "styles.csv"):
        assert (data / name).exists(), name
