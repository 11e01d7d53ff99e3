"""/sdapi/v1 resource routes: options, cmd-flags, models, info lists, memory, server control.

Shapes are A1111 v1.10.1's (reference/a1111.md 1.3); the options round trip is Open WebUI's
(GET the whole dict, POST it back with one key changed).
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.api.routes.server import EXIT_KILL, EXIT_RESTART, ServerControl
from modules.app import build_services, create_app
from modules.core.requests import Txt2ImgRequest
from modules.core.settings import parse_settings
from modules.services import Services

pytestmark = pytest.mark.usefixtures("no_network")

V1 = "/sdapi/v1"


def _data_dir(root: Path, tiny_models: dict[str, Path]) -> Path:
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "one.safetensors")
    shutil.copy(tiny_models["sd2"], sd / "two.safetensors")
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nphoto,"a photo of {prompt}",blurry\n')
    return root


def _build(data_dir: Path, *flags: str) -> Services:
    settings = parse_settings(["--api", "--data-dir", str(data_dir), "--use-cpu", "all", *flags], {})
    return build_services(settings, data_dir, {})


@pytest.fixture()
def services(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[Services]:
    built = _build(_data_dir(tmp_path, tiny_models), "--api-auth", "alice:s3cret")
    built.engine.switch_model(checkpoint="one")
    built.models.wait_for_hashes(30)  # the title and sd_checkpoint_hash settle before the test reads them
    yield built
    built.worker.shutdown()
    built.models.wait_for_hashes(30)


@pytest.fixture()
def api(services: Services) -> TestClient:
    # --api-auth is only parsed here (to check its redaction); auth itself is another module's job.
    token = base64.b64encode(b"alice:s3cret").decode()
    return TestClient(create_app(services), headers={"Authorization": f"Basic {token}"})


def _is_a1111_error(body: Any) -> bool:
    return isinstance(body, dict) and {"error", "detail", "body", "errors"} <= body.keys()


# --- options -------------------------------------------------------------------------------


def test_get_options_is_every_option_with_defaults(api: TestClient, services: Services) -> None:
    body = api.get(f"{V1}/options").json()
    assert set(services.options.infos()) <= body.keys()
    assert body["sd_vae"] == "Automatic"
    assert body["sd_model_checkpoint"].startswith("one.safetensors")
    assert "CLIP_stop_at_last_layers" in body


def test_full_round_trip_changes_nothing_and_returns_null(api: TestClient, services: Services) -> None:
    services.models.wait_for_hashes(30)
    before = api.get(f"{V1}/options").json()
    before["an_extension_setting"] = {"kept": True}  # unknown keys are ignored, not a 500
    response = api.post(f"{V1}/options", json=before)
    assert response.status_code == 200, response.text
    assert response.json() is None
    after = api.get(f"{V1}/options").json()
    before.pop("an_extension_setting")
    assert after == before
    assert services.models.active.info.name == "one.safetensors"  # type: ignore[union-attr]


def test_round_trip_with_a_new_checkpoint_switches_before_answering(api: TestClient, services: Services) -> None:
    body = api.get(f"{V1}/options").json()
    body["sd_model_checkpoint"] = "two.safetensors"
    body["CLIP_stop_at_last_layers"] = 2
    assert api.post(f"{V1}/options", json=body).json() is None
    active = services.models.active
    assert active is not None and active.info.name == "two.safetensors"
    assert active.model.family.id == "sd2"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = api.get(f"{V1}/options").json()
        if got["sd_checkpoint_hash"]:
            break
        time.sleep(0.05)
    sha = active.info.sha256
    assert sha and got["sd_checkpoint_hash"] == sha
    assert got["sd_model_checkpoint"] == f"two.safetensors [{sha[:10]}]"
    assert got["CLIP_stop_at_last_layers"] == 2
    saved = json.loads(services.paths.config_file.read_text())
    assert saved["CLIP_stop_at_last_layers"] == 2


def test_checkpoint_by_alias_is_reported_by_title(api: TestClient, services: Services) -> None:
    api.post(f"{V1}/options", json={"sd_model_checkpoint": "two"})
    # the title gains "[hash]" when the background hash of the loaded file lands: compare once it
    # has (under CI load it landed between reading the API and reading the model)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = api.get(f"{V1}/options").json()
        if got["sd_checkpoint_hash"]:
            break
        time.sleep(0.05)
    title = got["sd_model_checkpoint"]
    assert title.startswith("two.safetensors [")
    assert services.models.active.info.title == title  # type: ignore[union-attr]


def test_bad_checkpoint_is_a_4xx_a1111_error_and_keeps_the_model(api: TestClient, services: Services) -> None:
    before = api.get(f"{V1}/options").json()["sd_model_checkpoint"]
    response = api.post(f"{V1}/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == 404
    assert _is_a1111_error(response.json())
    assert "nope.safetensors" in response.json()["detail"]
    assert services.models.active.info.name == "one.safetensors"  # type: ignore[union-attr]
    assert api.get(f"{V1}/options").json()["sd_model_checkpoint"] == before


def test_bad_vae_is_a_404_and_keeps_the_setting(api: TestClient) -> None:
    response = api.post(f"{V1}/options", json={"sd_vae": "missing.safetensors"})
    assert response.status_code == 404 and _is_a1111_error(response.json())
    assert api.get(f"{V1}/options").json()["sd_vae"] == "Automatic"


def test_restricted_key_is_403_unless_unchanged(api: TestClient) -> None:
    response = api.post(f"{V1}/options", json={"api_forbid_local_requests": False})
    assert response.status_code == 403 and _is_a1111_error(response.json())
    assert api.get(f"{V1}/options").json()["api_forbid_local_requests"] is True
    assert api.post(f"{V1}/options", json={"api_forbid_local_requests": True}).status_code == 200


def test_readonly_hash_from_a_client_is_ignored(api: TestClient, services: Services) -> None:
    services.models.wait_for_hashes(30)
    before = api.get(f"{V1}/options").json()["sd_checkpoint_hash"]
    assert api.post(f"{V1}/options", json={"sd_checkpoint_hash": "0" * 64}).status_code == 200
    assert api.get(f"{V1}/options").json()["sd_checkpoint_hash"] == before


def test_bad_value_is_422(api: TestClient) -> None:
    response = api.post(f"{V1}/options", json={"CLIP_stop_at_last_layers": "many"})
    assert response.status_code == 422 and _is_a1111_error(response.json())
    assert api.post(f"{V1}/options", json=["not", "a", "dict"]).status_code == 422


def test_get_options_answers_while_a_long_job_runs(api: TestClient, services: Services) -> None:
    job = services.engine.submit(Txt2ImgRequest(prompt="a cat", steps=40, width=64, height=64, seed=1))
    try:
        deadline = time.monotonic() + 20
        while services.worker.current is None and not job.future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert services.worker.current is not None, "the job finished before it could be observed"
        started = time.monotonic()
        response = api.get(f"{V1}/options")
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert elapsed < 1.0
        assert not job.future.done(), "the job must still be running for this test to mean anything"
    finally:
        services.worker.interrupt()
        job.future.result(timeout=30)


def test_cmd_flags_redacts_secrets(api: TestClient) -> None:
    flags = api.get(f"{V1}/cmd-flags").json()
    assert flags["api"] is True
    assert flags["api_auth"] and "s3cret" not in json.dumps(flags)
    assert flags["api_server_stop"] is False


# --- models --------------------------------------------------------------------------------


def test_sd_models_shape(api: TestClient, services: Services) -> None:
    services.models.wait_for_hashes(30)
    models = api.get(f"{V1}/sd-models").json()
    assert [m["model_name"] for m in models] == ["one", "two"]
    one = models[0]
    assert set(one) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert one["sha256"] and one["hash"] == one["sha256"][:10]
    assert one["title"] == f"one.safetensors [{one['hash']}]"
    assert one["filename"].endswith("one.safetensors") and one["config"] is None
    assert models[1]["hash"] is None and models[1]["sha256"] is None  # not loaded, not hashed yet
    assert models[1]["title"] == "two.safetensors"


def test_refresh_checkpoints_finds_a_new_file(
    api: TestClient, services: Services, tiny_models: dict[str, Path]
) -> None:
    sd = services.paths.checkpoint_dirs[0]
    (sd / "sub").mkdir()
    shutil.copy(tiny_models["sd1"], sd / "sub" / "three.safetensors")
    (sd / "sub" / "three.yaml").write_text("model: {}\n")
    assert "sub/three.safetensors" not in [m["title"] for m in api.get(f"{V1}/sd-models").json()]
    response = api.post(f"{V1}/refresh-checkpoints")
    assert response.status_code == 200 and response.json() is None
    models = {m["model_name"]: m for m in api.get(f"{V1}/sd-models").json()}
    assert models["sub_three"]["title"] == "sub/three.safetensors"
    assert models["sub_three"]["config"].endswith("three.yaml")


def test_sd_vae_and_refresh_vae(api: TestClient, services: Services, tiny_models: dict[str, Path]) -> None:
    assert api.get(f"{V1}/sd-vae").json() == []
    vae_dir = services.paths.vae_dirs[0]
    shutil.copy(tiny_models["sd1"], vae_dir / "my.vae.safetensors")
    assert api.post(f"{V1}/refresh-vae").json() is None
    assert api.get(f"{V1}/sd-vae").json() == [
        {"model_name": "my.vae.safetensors", "filename": str(vae_dir / "my.vae.safetensors")}
    ]


def test_unload_and_reload_checkpoint(api: TestClient, services: Services) -> None:
    assert api.post(f"{V1}/unload-checkpoint").json() == {}
    assert services.models.active is None
    assert api.post(f"{V1}/reload-checkpoint").json() == {}
    assert services.models.active is not None and services.models.active.info.name == "one.safetensors"


def test_extra_network_lists_are_empty_in_a1111_shapes(api: TestClient) -> None:
    assert api.get(f"{V1}/hypernetworks").json() == []
    assert api.get(f"{V1}/loras").json() == []
    assert api.post(f"{V1}/refresh-loras").json() is None
    assert api.get(f"{V1}/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert api.post(f"{V1}/refresh-embeddings").json() is None


# --- info ----------------------------------------------------------------------------------


def test_samplers_and_schedulers(api: TestClient) -> None:
    samplers = api.get(f"{V1}/samplers").json()
    assert samplers and all(set(s) == {"name", "aliases", "options"} for s in samplers)
    names = [s["name"] for s in samplers]
    assert "Euler a" in names and "DPM++ 2M" in names
    schedulers = api.get(f"{V1}/schedulers").json()
    assert all(set(s) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for s in schedulers)
    assert schedulers[0]["name"] == "automatic" and "karras" in [s["name"] for s in schedulers]


def test_upscalers_and_latent_modes(api: TestClient) -> None:
    upscalers = api.get(f"{V1}/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert upscalers[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
    modes = api.get(f"{V1}/latent-upscale-modes").json()
    assert modes[0] == {"name": "Latent"} and {"name": "Latent (nearest-exact)"} in modes and len(modes) == 6


def test_prompt_styles(api: TestClient) -> None:
    assert api.get(f"{V1}/prompt-styles").json() == [
        {"name": "photo", "prompt": "a photo of {prompt}", "negative_prompt": "blurry"}
    ]


def test_empty_lists_in_a1111_shapes(api: TestClient) -> None:
    assert api.get(f"{V1}/face-restorers").json() == []
    assert api.get(f"{V1}/realesrgan-models").json() == []
    assert api.get(f"{V1}/extensions").json() == []


def test_builtin_scripts_are_listed_as_a1111_lists_them(api: TestClient) -> None:
    scripts = api.get(f"{V1}/scripts").json()
    # ControlNet is built in: listed after the scripts, as A1111 lists the extension's always-on script
    assert scripts["txt2img"] == ["prompt matrix", "prompts from file or textbox", "x/y/z plot", "controlnet"]
    assert scripts["img2img"] == [
        "loopback",
        "outpainting mk2",
        "poor man's outpainting",
        "prompt matrix",
        "prompts from file or textbox",
        "sd upscale",
        "x/y/z plot",
        "controlnet",
    ]
    info = {(s["name"], s["is_img2img"]): s for s in api.get(f"{V1}/script-info").json()}
    upscale = info[("sd upscale", True)]
    assert not upscale["is_alwayson"]
    assert [a["label"] for a in upscale["args"]][1:] == ["Tile overlap", "Upscaler", "Scale Factor"]
    assert len(info[("x/y/z plot", False)]["args"]) == 18


def test_memory_on_cpu(api: TestClient) -> None:
    memory = api.get(f"{V1}/memory").json()
    ram = memory["ram"]
    assert set(ram) == {"free", "used", "total"}
    assert 0 < ram["used"] < ram["total"] and ram["free"] == pytest.approx(ram["total"] - ram["used"])
    assert memory["cuda"] == {"error": "unavailable"}


# --- server control ------------------------------------------------------------------------


def test_server_routes_are_absent_without_the_flag(api: TestClient) -> None:
    for route in ("server-stop", "server-restart", "server-kill"):
        response = api.post(f"{V1}/{route}")
        assert response.status_code == 404, route
        assert _is_a1111_error(response.json())


class FakeServer:
    should_exit = False


@pytest.fixture()
def stoppable(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[tuple[TestClient, ServerControl, list[int]]]:
    services = _build(_data_dir(tmp_path, tiny_models), "--api-server-stop")
    exits: list[int] = []
    control = ServerControl(exit_process=exits.append)
    app = create_app(services)
    app.state.server_control = control
    yield TestClient(app), control, exits
    services.worker.shutdown()


def test_server_stop_shuts_down_gracefully(stoppable: tuple[TestClient, ServerControl, list[int]]) -> None:
    client, control, exits = stoppable
    server = FakeServer()
    control.attach(server)
    response = client.post(f"{V1}/server-stop")
    assert response.status_code == 200 and response.text == "Stopping."
    assert server.should_exit and control.stop_requested.is_set()
    assert control.exit_code == 0 and exits == []


def test_server_restart_exits_with_3(stoppable: tuple[TestClient, ServerControl, list[int]]) -> None:
    client, control, exits = stoppable
    server = FakeServer()
    control.attach(server)
    assert client.post(f"{V1}/server-restart").status_code == 200
    assert server.should_exit and control.exit_code == EXIT_RESTART == 3 and exits == []


def test_server_restart_is_501_when_nothing_would_restart_it(
    stoppable: tuple[TestClient, ServerControl, list[int]],
) -> None:
    client, control, _ = stoppable
    control.restartable = False
    response = client.post(f"{V1}/server-restart")
    assert response.status_code == 501 and _is_a1111_error(response.json())
    assert not control.stop_requested.is_set()


def test_server_kill_exits_at_once(stoppable: tuple[TestClient, ServerControl, list[int]]) -> None:
    client, _, exits = stoppable
    assert client.post(f"{V1}/server-kill").status_code == 200
    assert exits == [EXIT_KILL]


def test_stop_requested_before_the_server_is_attached_still_stops_it() -> None:
    control = ServerControl(exit_process=lambda code: None)
    control.stop()
    server = FakeServer()
    control.attach(server)
    assert server.should_exit


def test_concurrent_gets_while_posting(api: TestClient) -> None:
    """Options reads and writes from several threads never corrupt the dict."""
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(20):
                assert api.get(f"{V1}/options").status_code == 200
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for value in (1, 2, 3, 1):
        assert api.post(f"{V1}/options", json={"CLIP_stop_at_last_layers": value}).status_code == 200
    for thread in threads:
        thread.join()
    assert not errors
