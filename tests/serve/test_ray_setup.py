"""--ray's set-up without a cluster: how many replicas of what size, and the message when Ray is
missing (the single-process server never imports it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modules.core.errors import SettingsError
from modules.core.settings import Settings, parse_settings
from modules.serve.cluster import Plan, import_ray, plan_replicas

ROOT = Path(__file__).resolve().parents[2]


def _settings(*flags: str) -> Settings:
    return parse_settings(["--ray", *flags], {})


def test_flags_parse() -> None:
    settings = parse_settings(
        ["--ray", "--ray-address", "10.0.0.1:6379", "--ray-replicas", "3", "--ray-outputs", "front"], {}
    )
    assert (settings.ray, settings.ray_address, settings.ray_replicas, settings.ray_outputs) == (
        True,
        "10.0.0.1:6379",
        3,
        "front",
    )
    plain = parse_settings([], {})
    assert not plain.ray and plain.ray_outputs == "replica" and plain.ray_replicas is None
    with pytest.raises(SettingsError):
        parse_settings(["--ray-outputs", "nowhere"], {})
    with pytest.raises(SettingsError):
        parse_settings(["--ray-replicas", "0"], {})


def test_one_replica_per_gpu_by_default() -> None:
    assert plan_replicas(_settings(), {"CPU": 32, "GPU": 4}) == Plan(replicas=4, cpus=1, gpus=1)
    assert plan_replicas(_settings("--ray-replicas", "2"), {"CPU": 32, "GPU": 4}) == Plan(2, 1, 1)
    assert plan_replicas(_settings("--ray-replica-cpus", "3"), {"CPU": 32, "GPU": 2}) == Plan(2, 3, 1)


def test_cpu_replicas_without_gpus() -> None:
    assert plan_replicas(_settings(), {"CPU": 16}) == Plan(replicas=4, cpus=4, gpus=0)
    assert plan_replicas(_settings(), {"CPU": 2}) == Plan(replicas=1, cpus=2, gpus=0)
    assert plan_replicas(_settings("--ray-replicas", "2", "--ray-replica-cpus", "1"), {"CPU": 2}) == Plan(2, 1, 0)


def test_missing_ray_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(SettingsError) as caught:
        import_ray()
    message = str(caught.value)
    assert "--ray" in message and ".[ray]" in message and "webui.sh --ray" in message


def test_the_single_process_server_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from modules.app import build_services, create_app\n"
        "from modules.core.settings import Settings, parse_settings\n"
        f"services = build_services(parse_settings(['--data-dir', {str(tmp_path)!r}, '--api', '--nowebui'], {{}}), "
        f"__import__('pathlib').Path({str(tmp_path)!r}), {{}})\n"
        "create_app(services)\n"
        "services.worker.shutdown()\n"
        "print('ray' in sys.modules, type(services.engine).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False Engine"


def test_ray_flags_without_ray_say_they_are_not_acted_on() -> None:
    from modules.core.settings import parse_settings

    alone = parse_settings(["--ray-replicas", "3", "--ray-outputs", "front"], {})
    assert any(w.startswith("--ray-replicas: accepted, not acted on") for w in alone.warnings)
    assert any(w.startswith("--ray-outputs: accepted, not acted on") for w in alone.warnings)
    with_ray = parse_settings(["--ray", "--ray-replicas", "3"], {})
    assert not any("not acted on (only with --ray)" in w for w in with_ray.warnings)
