"""Issue 13's fixture extension end to end through the API: installed from a local bare git
repository, loaded at the next start, its scripts, callback and option at work; updated to a new
commit, disabled, and a broken extension beside it isolated and reported.

Each "start" builds the app again over the same data dir (what a restart does)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.services import Services
from tests.fixtures.extension_repos import make_extension_repo, push_commit
from tests.fixtures.fixture_extension import BROKEN_SCRIPT, fixture_extension_files
from tests.fixtures.module_tmp import ModuleTempDirs

BASE = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("ext-life")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    return root


@pytest.fixture(scope="module")
def repo(module_tmp: ModuleTempDirs) -> Path:
    return make_extension_repo(module_tmp.mktemp("repos"), "sdw-fixture", fixture_extension_files("v1"))


class Started:
    def __init__(self, data: Path, *flags: str) -> None:
        settings = parse_settings(["--data-dir", str(data), "--api", "--nowebui", *flags], {})
        self.services: Services = build_services(settings, data, {})
        self.services.engine.switch_model(checkpoint="sd1.safetensors")
        self.client = TestClient(create_app(self.services))

    def close(self) -> None:
        self.services.worker.shutdown()

    def txt2img(self, **changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        r = self.client.post("/sdapi/v1/txt2img", json={**BASE, **changes})
        assert r.status_code == 200, r.text
        return r.json(), json.loads(r.json()["info"])


@pytest.fixture
def start(data_dir: Path) -> Iterator[Any]:
    started: list[Started] = []

    def make(*flags: str) -> Started:
        s = Started(data_dir, *flags)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


def test_install_run_update_disable(start: Any, data_dir: Path, repo: Path) -> None:
    first = start()
    assert "fixture extra steps" not in first.client.get("/sdapi/v1/scripts").json()["txt2img"]
    result = first.services.extensions.install_from_url(str(repo))  # type: ignore[union-attr]
    assert (data_dir / "extensions" / "sdw-fixture" / "scripts" / "fixture_ext.py").is_file(), result
    broken = data_dir / "extensions" / "broken-ext" / "scripts"
    broken.mkdir(parents=True)
    (broken / "broken.py").write_text(BROKEN_SCRIPT)

    # next start: the scripts, the option and the callback are there; the broken one is reported
    app = start()
    scripts = app.client.get("/sdapi/v1/scripts").json()
    assert {"fixture extra steps", "fixture tag"} <= set(scripts["txt2img"]) & set(scripts["img2img"])
    listed = {e["name"]: e for e in app.client.get("/sdapi/v1/extensions").json()}
    assert listed["sdw-fixture"]["enabled"] and listed["sdw-fixture"]["commit_hash"]
    errors = {e.name: e.error for e in app.services.extensions.installed()}  # type: ignore[union-attr]
    assert "broken on purpose" in (errors["broken-ext"] or "")
    assert errors["sdw-fixture"] is None
    assert app.client.get("/sdapi/v1/options").json()["fixture_tag_note"] == "note"

    plain, _ = app.txt2img()
    _, info = app.txt2img(script_name="fixture extra steps", script_args=[2])
    assert "Steps: 4" in info["infotexts"][0] and "Fixture: v1" in info["infotexts"][0]

    r = app.client.post("/sdapi/v1/options", json={"fixture_tag_note": "noted"})
    assert r.status_code == 200, r.text
    tagged, tagged_info = app.txt2img(alwayson_scripts={"Fixture tag": {"args": [True, "shiny"]}}, save_images=True)
    assert tagged_info["all_prompts"] == ["a cat, shiny"]
    assert 'Fixture tag: "noted:shiny"' in tagged_info["infotexts"][0]  # quoted: it holds a colon (A1111)
    assert tagged["images"][0] != plain["images"][0]
    saved = (data_dir / "extensions" / "sdw-fixture" / "saved.txt").read_text().split()
    assert saved and saved[-1].endswith(".png")
    # the always-on script off (its default): the same pixels as before
    again, again_info = app.txt2img(alwayson_scripts={"fixture tag": {"args": [False]}})
    assert again["images"][0] == plain["images"][0] and again_info["all_prompts"] == ["a cat"]

    # update to a new commit: the next start runs the new code
    new_commit = push_commit(repo, fixture_extension_files("v2"), "v2")
    outcome = app.services.extensions.update(["sdw-fixture"])  # type: ignore[union-attr]
    assert outcome, outcome
    updated = start()
    assert {e["name"]: e for e in updated.client.get("/sdapi/v1/extensions").json()}["sdw-fixture"][
        "commit_hash"
    ] == new_commit
    _, info = updated.txt2img(script_name="Fixture extra steps", script_args=[1])
    assert "Fixture: v2" in info["infotexts"][0]

    # disabled: gone at the next start (scripts, always-on args are a 422 as for any unknown script)
    updated.services.extensions.set_enabled(["sdw-fixture"])  # type: ignore[union-attr]
    off = start()
    assert "fixture tag" not in off.client.get("/sdapi/v1/scripts").json()["txt2img"]
    r = off.client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"Fixture tag": {"args": [True]}}})
    assert r.status_code == 422
    r = off.client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "fixture extra steps"})
    assert r.status_code == 422


def test_listen_refuses_the_install_and_clones_nothing(start: Any, data_dir: Path, repo: Path) -> None:
    app = start("--listen", "--api-auth", "u:p")
    r = app.client.post("/sdapi/v1/extensions/install", json={"url": str(repo), "name": "via-listen"}, auth=("u", "p"))
    assert r.status_code == 403, r.text
    assert "--enable-insecure-extension-access" in r.text
    assert not (data_dir / "extensions" / "via-listen").exists()
    assert not list((data_dir / "tmp").glob("*via-listen*"))
