"""webui.sh / test.sh / scripts/prepare_env.sh, run for real against fakes.

Each test copies the launcher files and pyproject.toml into a temp dir and runs them with a
minimal environment whose PATH starts with fakes: ``id`` (prints $FAKE_UID), ``ldconfig`` (prints
$FAKE_LDCONFIG) and a fake python (``python_cmd``). The fake python logs what it is asked to do
(create a venv, pip install, run webui.py or pytest) as JSON lines instead of doing it, and hands
everything else (the version check, the tomllib/hash snippets) to the real interpreter. Nothing
touches the real venv or the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, vendored by pip (as scripts/prepare_env.sh does)
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_FILES = ["webui.sh", "test.sh", "scripts/prepare_env.sh", "pyproject.toml"]
DEFAULT_TORCH = ["pip", "install", "torch==2.14.1", "torchvision==0.29.1"]
BASH = shutil.which("bash") or "/bin/bash"

FAKE_PYTHON = f"""#!{sys.executable}
import json, os, shutil, sys

REAL = {sys.executable!r}
args = sys.argv[1:]


def log(kind, **extra):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({{"kind": kind, "argv": args, **extra}}) + "\\n")


if args[:2] == ["-m", "venv"]:
    log("venv")
    bin_dir = os.path.join(args[2], "bin")
    os.makedirs(bin_dir, exist_ok=True)
    shutil.copy(sys.argv[0], os.path.join(bin_dir, "python"))
    sys.exit(0)
if args[:2] == ["-m", "pip"]:
    log("pip")
    fail = os.environ.get("FAKE_PIP_FAIL")
    sys.exit(1 if fail and fail in args else 0)
if args[:1] == ["webui.py"] or args[:2] == ["-m", "pytest"]:
    env = {{k: os.environ.get(k) for k in (
        "COMMANDLINE_ARGS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
        "LD_PRELOAD", "VIRTUAL_ENV", "MALLOC_MMAP_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")}}
    log("webui" if args[0] == "webui.py" else "pytest", exe=sys.argv[0], cwd=os.getcwd(), env=env)
    codes_file = os.environ.get("FAKE_EXIT_CODES")
    code = 0
    # a whole test.sh run starts its two parts at once: each part has its own code
    part = {{"browser": "FAKE_EXIT_BROWSER", "not browser": "FAKE_EXIT_FAST"}}.get(
        args[3] if args[:3] == ["-m", "pytest", "-m"] and len(args) > 3 else "")
    if part and os.environ.get(part):
        sys.exit(int(os.environ[part]))
    if codes_file and os.path.exists(codes_file):
        codes = open(codes_file).read().split()
        if codes:
            code = int(codes[0])
            open(codes_file, "w").write(" ".join(codes[1:]))
    sys.exit(code)
os.execv(REAL, [REAL, *args])
"""


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.app = root / "app"
        self.bin = root / "bin"
        self.home = root / "home"
        self.log = root / "calls.jsonl"
        for d in (self.app / "scripts", self.bin, self.home):
            d.mkdir(parents=True)
        for name in LAUNCHER_FILES:
            shutil.copy2(REPO / name, self.app / name)
        self.fake_python = self.bin / "fakepython"
        self._write_exe(self.fake_python, FAKE_PYTHON)
        self._write_exe(self.bin / "id", '#!/bin/sh\necho "${FAKE_UID:-1000}"\n')
        self._write_exe(self.bin / "ldconfig", '#!/bin/sh\nprintf "%b" "${FAKE_LDCONFIG:-}"\n')
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.home),
            "LC_ALL": "C",
            "FAKE_LOG": str(self.log),
            "python_cmd": str(self.fake_python),
        }

    @staticmethod
    def _write_exe(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def user_sh(self, text: str) -> None:
        (self.app / "webui-user.sh").write_text(text)

    def exit_codes(self, *codes: int) -> None:
        path = self.root / "codes"
        path.write_text(" ".join(map(str, codes)))
        self.env["FAKE_EXIT_CODES"] = str(path)

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        return subprocess.run(
            [BASH, str(self.app / script), *args],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, kind: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if kind is None or c["kind"] == kind]

    def pip_calls(self) -> list[list[str]]:
        return [c["argv"][2:] for c in self.calls("pip")]


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def runtime_install() -> list[str]:
    return ["install", *project()["dependencies"]]


def extra_install(name: str = "test") -> list[str]:
    return ["install", *project()["optional-dependencies"][name]]


def testing_installs() -> list[list[str]]:
    """What the test setup adds to the runtime: the test extra, and Ray (tests/serve)."""
    return [extra_install("test"), extra_install("ray")]


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr


# --- root check ---------------------------------------------------------------------------


def test_root_is_refused_without_f_and_nothing_happens(sb: Sandbox) -> None:
    proc = sb.run("webui.sh", "--listen", FAKE_UID="0")
    assert proc.returncode != 0
    assert "refusing to run as root" in proc.stderr
    assert "-f" in proc.stderr
    assert sb.calls() == []
    assert not (sb.app / "venv").exists()


def test_root_with_f_proceeds_and_f_is_not_passed_on(sb: Sandbox) -> None:
    proc = sb.run("webui.sh", "-f", "--port", "7000", FAKE_UID="0")
    ok(proc)
    [webui] = sb.calls("webui")
    assert webui["argv"] == ["webui.py", "--port", "7000"]


def test_test_sh_runs_as_root(sb: Sandbox) -> None:
    ok(sb.run("test.sh", FAKE_UID="0"))
    # a whole run: the non-browser tests on two workers and the browser tests beside them
    calls = sorted(sb.calls("pytest"), key=lambda c: c["argv"][3])
    assert [c["argv"][2:4] for c in calls] == [["-m", "browser"], ["-m", "not browser"]]
    assert calls[1]["argv"][4:6] == ["-n", "2"]


def test_test_sh_with_a_selection_is_one_plain_pytest_run(sb: Sandbox) -> None:
    for args in (["-m", "not browser"], ["tests/unit"], ["tests/unit/test_x.py::test_y"], ["-k", "lora"]):
        ok(sb.run("test.sh", "-q", *args))
        [call] = sb.calls("pytest")
        assert call["argv"][2:] == ["-q", *args]


# --- install / stamp ----------------------------------------------------------------------


def test_first_run_installs_then_second_run_installs_nothing(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    assert [c["kind"] for c in sb.calls()] == ["venv", "pip", "pip", "webui"]
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install()]
    [webui] = sb.calls("webui")
    assert webui["exe"] == str(sb.app / "venv" / "bin" / "python")
    assert webui["cwd"] == str(sb.app)
    assert webui["env"]["VIRTUAL_ENV"] == str(sb.app / "venv")
    assert (sb.app / "venv" / ".sd-webui-install-stamp").is_file()

    ok(sb.run("webui.sh"))
    assert [c["kind"] for c in sb.calls()] == ["webui"]


def test_changed_torch_command_reinstalls(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    # Quoted words survive (TORCH_COMMAND is a shell fragment, as in A1111).
    sb.user_sh("export TORCH_COMMAND=\"pip install torch==2.14.1 --index-url 'https://example.invalid/a b'\"\n")
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == [
        ["install", "torch==2.14.1", "--index-url", "https://example.invalid/a b"],
        runtime_install(),
    ]
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == []


def test_changed_dependencies_reinstall(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    pyproject = sb.app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"psutil==7.2.2",', '"psutil==7.2.3",'))
    ok(sb.run("webui.sh"))
    assert len(sb.pip_calls()) == 2
    assert "psutil==7.2.3" in sb.pip_calls()[1]


def test_failed_install_is_retried_and_app_not_started(sb: Sandbox) -> None:
    proc = sb.run("webui.sh", FAKE_PIP_FAIL="torch==2.14.1")
    assert proc.returncode != 0
    assert "TORCH_COMMAND failed" in proc.stderr
    assert sb.calls("webui") == []
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install()]


def test_skip_install_skips_and_is_passed_on(sb: Sandbox) -> None:
    ok(sb.run("webui.sh", "--skip-install"))
    assert [c["kind"] for c in sb.calls()] == ["venv", "webui"]
    assert sb.calls("webui")[0]["argv"] == ["webui.py", "--skip-install"]


def test_skip_prepare_environment_in_commandline_args(sb: Sandbox) -> None:
    sb.user_sh('export COMMANDLINE_ARGS="--api --skip-prepare-environment"\n')
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == []
    assert len(sb.calls("webui")) == 1


def test_reinstall_flags(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    ok(sb.run("webui.sh", "--reinstall", "--api"))
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install()]
    assert sb.calls("webui")[0]["argv"] == ["webui.py", "--api"]  # consumed by webui.sh

    ok(sb.run("webui.sh", "--reinstall-torch"))
    assert sb.pip_calls() == [DEFAULT_TORCH[1:]]
    assert sb.calls("webui")[0]["argv"] == ["webui.py", "--reinstall-torch"]  # A1111 flag

    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == []


def test_no_venv_mode_uses_python_cmd(sb: Sandbox) -> None:
    sb.user_sh("venv_dir=-\n")
    ok(sb.run("webui.sh"))
    assert [c["kind"] for c in sb.calls()] == ["pip", "pip", "webui"]
    assert sb.calls("webui")[0]["exe"] == str(sb.fake_python)
    assert not (sb.app / "venv").exists()
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == []


# --- environment and argv handed to webui.py -----------------------------------------------


@pytest.mark.parametrize("assignment", ["export COMMANDLINE_ARGS", "COMMANDLINE_ARGS"])
def test_commandline_args_reach_webui_once_via_environment(sb: Sandbox, assignment: str) -> None:
    sb.user_sh(f"{assignment}=\"--api --gradio-auth 'u:p'\"\n")
    ok(sb.run("webui.sh", "--port", "7001"))
    [webui] = sb.calls("webui")
    assert webui["argv"] == ["webui.py", "--port", "7001"]
    assert webui["env"]["COMMANDLINE_ARGS"] == "--api --gradio-auth 'u:p'"


def test_commandline_args_unset_stays_unset(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    assert sb.calls("webui")[0]["env"]["COMMANDLINE_ARGS"] is None


def test_offline_defaults_and_override(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    env = sb.calls("webui")[0]["env"]
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    ok(sb.run("webui.sh", HF_HUB_OFFLINE="0"))
    assert sb.calls("webui")[0]["env"]["HF_HUB_OFFLINE"] == "0"


def test_tcmalloc_preloaded_when_found(sb: Sandbox) -> None:
    line = "\\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => /usr/lib/libtcmalloc_minimal.so.4\\n"
    ok(sb.run("webui.sh", FAKE_LDCONFIG=line))
    assert sb.calls("webui")[0]["env"]["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    ok(sb.run("webui.sh", FAKE_LDCONFIG=line, NO_TCMALLOC="1"))
    assert sb.calls("webui")[0]["env"]["LD_PRELOAD"] is None
    ok(sb.run("webui.sh"))
    assert sb.calls("webui")[0]["env"]["LD_PRELOAD"] is None


def test_huge_pages_for_large_cpu_tensors_unless_set(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    assert sb.calls("webui")[0]["env"]["THP_MEM_ALLOC_ENABLE"] == "1"
    ok(sb.run("webui.sh", THP_MEM_ALLOC_ENABLE="0"))
    assert sb.calls("webui")[0]["env"]["THP_MEM_ALLOC_ENABLE"] == "0"


def test_fixed_malloc_mmap_threshold_without_tcmalloc(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    assert sb.calls("webui")[0]["env"]["MALLOC_MMAP_THRESHOLD_"] == "1048576"
    ok(sb.run("webui.sh", MALLOC_MMAP_THRESHOLD_="4096"))
    assert sb.calls("webui")[0]["env"]["MALLOC_MMAP_THRESHOLD_"] == "4096"
    line = "\\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => /usr/lib/libtcmalloc_minimal.so.4\\n"
    ok(sb.run("webui.sh", FAKE_LDCONFIG=line))
    assert sb.calls("webui")[0]["env"]["MALLOC_MMAP_THRESHOLD_"] is None


# --- exit codes ----------------------------------------------------------------------------


def test_exit_code_3_restarts(sb: Sandbox) -> None:
    sb.exit_codes(3, 3, 0)
    proc = sb.run("webui.sh", "--api")
    ok(proc)
    assert [c["argv"] for c in sb.calls("webui")] == [["webui.py", "--api"]] * 3
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install()]  # installed once


def test_other_exit_codes_are_returned(sb: Sandbox) -> None:
    sb.exit_codes(7)
    assert sb.run("webui.sh").returncode == 7
    assert len(sb.calls("webui")) == 1


def test_under_systemd_no_restart_loop(sb: Sandbox) -> None:
    sb.exit_codes(3, 0)
    assert sb.run("webui.sh", INVOCATION_ID="abc").returncode == 3
    assert len(sb.calls("webui")) == 1


# --- test.sh -------------------------------------------------------------------------------


def test_test_sh_installs_test_extra_and_runs_pytest(sb: Sandbox) -> None:
    sb.user_sh('export COMMANDLINE_ARGS="--listen"\n')
    ok(sb.run("test.sh", "-q", "tests/unit", HF_HUB_OFFLINE="0"))
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install(), *testing_installs()]
    [pytest_call] = sb.calls("pytest")
    assert pytest_call["argv"] == ["-m", "pytest", "-q", "tests/unit"]
    assert pytest_call["exe"] == str(sb.app / "venv" / "bin" / "python")
    env = pytest_call["env"]
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["COMMANDLINE_ARGS"] is None

    ok(sb.run("test.sh"))
    assert sb.pip_calls() == []
    ok(sb.run("webui.sh"))  # a test install satisfies the app
    assert sb.pip_calls() == []


def test_test_sh_after_webui_sh_adds_only_test_extra(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    ok(sb.run("test.sh"))
    assert sb.pip_calls() == testing_installs()
    # A later runtime reinstall keeps the test extra recorded (nothing to redo for test.sh).
    ok(sb.run("webui.sh", "--reinstall"))
    ok(sb.run("test.sh"))
    assert sb.pip_calls() == []


# --- the ray extra (webui.sh --ray) -----------------------------------------------------------


def test_ray_flag_installs_the_ray_extra_once_and_is_passed_on(sb: Sandbox) -> None:
    ok(sb.run("webui.sh"))
    assert extra_install("ray") not in sb.pip_calls()  # the single-process server never needs Ray
    ok(sb.run("webui.sh", "--ray", "--ray-replicas", "2"))
    assert sb.pip_calls() == [extra_install("ray")]
    assert sb.calls("webui")[0]["argv"] == ["webui.py", "--ray", "--ray-replicas", "2"]
    ok(sb.run("webui.sh", "--ray"))
    assert sb.pip_calls() == []
    ok(sb.run("test.sh"))  # the test setup adds only what is missing
    assert sb.pip_calls() == [extra_install("test")]


def test_ray_flag_in_commandline_args_installs_the_ray_extra(sb: Sandbox) -> None:
    sb.user_sh('export COMMANDLINE_ARGS="--api --ray"\n')
    ok(sb.run("webui.sh"))
    assert sb.pip_calls() == [DEFAULT_TORCH[1:], runtime_install(), extra_install("ray")]


def test_ray_extra_pins_ray_serve() -> None:
    [requirement] = project()["optional-dependencies"]["ray"]
    assert requirement.startswith("ray[serve]==")


def test_test_sh_returns_pytest_exit_code(sb: Sandbox) -> None:
    sb.exit_codes(5)
    assert sb.run("test.sh", "tests/unit").returncode == 5
    # a whole run fails when either part fails; "no tests collected" (5) only when both collect none
    for (fast, browser), expected in (((5, 5), 5), ((1, 0), 1), ((0, 2), 2), ((5, 0), 0), ((0, 5), 0)):
        proc = sb.run("test.sh", FAKE_EXIT_FAST=str(fast), FAKE_EXIT_BROWSER=str(browser))
        assert proc.returncode == expected, (fast, browser)


def test_scripts_are_executable() -> None:
    for name in ("webui.sh", "test.sh", ".ci/run"):
        assert os.access(REPO / name, os.X_OK), name
