"""The composition root: flags -> services; options switch models; the minimal server answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.app import build_services, create_app, load_initial_model, main
from modules.core.settings import parse_settings

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture()
def data_dir(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "one.safetensors")
    shutil.copy(tiny_models["sd2"], sd / "two.safetensors")
    return tmp_path


def test_flags_reach_the_services(data_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    settings = parse_settings(["--data-dir", str(data_dir), "--ckpt-dir", str(extra), "--use-cpu", "all"], {})
    services = build_services(settings, data_dir, {})
    assert services.paths.models_dir == data_dir / "models"
    assert extra in services.registry.checkpoint_dirs
    assert (data_dir / "models" / "VAE").is_dir()  # standard folders are created at start
    assert str(services.policy.placement.device) == "cpu"
    assert [c.name for c in services.registry.checkpoints()] == ["one.safetensors", "two.safetensors"]


def test_setting_the_checkpoint_option_switches_and_reports_title_and_hash(data_dir: Path) -> None:
    services = build_services(parse_settings(["--data-dir", str(data_dir)], {}), data_dir, {})
    services.options.set("sd_model_checkpoint", "two")
    assert services.models.active.info.name == "two.safetensors"  # type: ignore[union-attr]
    services.models.wait_for_hashes(30)
    info = services.models.active.info  # type: ignore[union-attr]
    assert info.sha256
    assert services.options.get("sd_model_checkpoint") == f"two.safetensors [{info.sha256[:10]}]"
    assert services.options.get("sd_checkpoint_hash") == info.sha256
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["sd_model_checkpoint"] == f"two.safetensors [{info.sha256[:10]}]"


def test_initial_model_falls_back_when_the_saved_one_is_gone(data_dir: Path) -> None:
    (data_dir / "config.json").write_text('{"sd_model_checkpoint": "deleted.safetensors [0123456789]"}')
    services = build_services(parse_settings(["--data-dir", str(data_dir)], {}), data_dir, {})
    load_initial_model(services)
    assert services.models.active.info.name == "one.safetensors"  # type: ignore[union-attr]


def test_ckpt_flag_adds_and_loads_a_checkpoint_from_anywhere(data_dir: Path, tiny_models: dict[str, Path]) -> None:
    (data_dir / "config.json").write_text('{"sd_model_checkpoint": "one.safetensors"}')
    settings = parse_settings(["--data-dir", str(data_dir), "--ckpt", str(tiny_models["sdxl"])], {})
    services = build_services(settings, data_dir, {})
    assert tiny_models["sdxl"].name in [c.name for c in services.registry.checkpoints()]
    load_initial_model(services)
    assert services.models.active.model.family.id == "sdxl"  # type: ignore[union-attr]


def test_minimal_server_routes(data_dir: Path) -> None:
    services = build_services(parse_settings(["--data-dir", str(data_dir)], {}), data_dir, {})
    services.engine.switch_model(checkpoint="one")
    client = TestClient(create_app(services))
    assert client.get("/internal/ping").status_code == 200
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["checkpoint"].startswith("one.safetensors")
    page = client.get("/")
    assert page.status_code == 200 and "two.safetensors" in page.text


def test_bad_flag_is_a_clear_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "abc"], {}) == 2
    assert "--port" in capsys.readouterr().out
    assert main(["--no-such-flag"], {}) == 2


def test_freeze_settings_flag_makes_options_read_only(data_dir: Path) -> None:
    services = build_services(
        parse_settings(["--data-dir", str(data_dir), "--api", "--freeze-settings"], {}), data_dir, {}
    )
    client = TestClient(create_app(services))
    response = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3})
    assert response.status_code == 403, response.text
    assert "--freeze-settings" in response.text
    assert services.options.get("CLIP_stop_at_last_layers") == 1
    assert not any("freeze" in warning for warning in services.settings.warnings)


def test_freeze_specific_settings_leaves_the_others_changeable(data_dir: Path) -> None:
    settings = parse_settings(
        ["--data-dir", str(data_dir), "--api", "--freeze-specific-settings", "CLIP_stop_at_last_layers"], {}
    )
    client = TestClient(create_app(build_services(settings, data_dir, {})))
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 403
    assert client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 31337}).status_code == 200
