"""/sdapi/v1/extensions: A1111's list (only extensions with a git remote) and our install / update /
check-updates / enabled routes over a local bare repository; under --listen every write route is a
403 in A1111's error shape and nothing is cloned. The app itself (build_services + create_app)
serves them too."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.errors import install_error_handlers
from modules.api.routes import extensions as routes
from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.extensions.manager import ExtensionManager
from tests.fixtures.extension_repos import git, make_extension_repo, push_commit

PREFIX = "/sdapi/v1"
FILES = {"install.py": "open('ran.txt', 'a').write('x')\n", "scripts/a.py": "A = 1\n"}

ClientFactory = Callable[..., tuple[TestClient, ExtensionManager]]


@pytest.fixture()
def bare(tmp_path: Path) -> Path:
    return make_extension_repo(tmp_path / "repos", "api-ext", FILES)


@pytest.fixture()
def make_client(tmp_path: Path) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def make(*flags: str) -> tuple[TestClient, ExtensionManager]:
        settings = parse_settings(["--data-dir", str(tmp_path / "data"), "--api", *flags], {})
        paths = Paths.from_settings(settings, tmp_path / "root", {})
        options = Options(default_option_infos(), paths.config_file)
        options.load()
        manager = ExtensionManager(settings, paths, options, environ={})
        app = FastAPI()
        app.state.services = SimpleNamespace(settings=settings, extensions=manager)
        install_error_handlers(app)
        app.include_router(routes.router, prefix=PREFIX)
        client = TestClient(app)
        clients.append(client)
        return client, manager

    yield make
    for client in clients:
        client.close()


def test_install_list_update_and_disable(make_client: ClientFactory, bare: Path) -> None:
    client, manager = make_client()
    assert client.get(f"{PREFIX}/extensions").json() == []
    (manager.paths.extensions_dir / "plain-folder").mkdir(parents=True)  # no git remote: not listed

    response = client.post(f"{PREFIX}/extensions/install", json={"url": str(bare), "branch": "", "name": ""})
    assert response.status_code == 200, response.text
    body = response.json()
    first = git("rev-parse", "main", cwd=bare)
    assert body["name"] == "api-ext" and body["commit_hash"] == first
    assert body["install_py"]["ok"] is True
    assert (manager.paths.extensions_dir / "api-ext" / "ran.txt").read_text() == "x"

    listed = client.get(f"{PREFIX}/extensions").json()
    assert listed == [
        {
            "name": "api-ext",
            "remote": str(bare),
            "branch": "main",
            "commit_hash": first,
            "version": first[:8],
            "commit_date": "1704164645",  # A1111's field is a str holding the epoch seconds
            "enabled": True,
        }
    ]

    second = push_commit(bare, {"scripts/a.py": "A = 2\n"})
    checked = client.post(f"{PREFIX}/extensions/check-updates").json()
    assert [(c["name"], c["can_update"], c["status"]) for c in checked] == [("api-ext", True, "new commits")]
    updated = client.post(f"{PREFIX}/extensions/update", json={"names": ["api-ext"]}).json()
    assert updated["restart_required"] is True
    (result,) = updated["results"]
    assert result["ok"] and result["old_commit"] == first and result["new_commit"] == second
    assert client.get(f"{PREFIX}/extensions").json()[0]["commit_hash"] == second

    missing = client.post(f"{PREFIX}/extensions/update", json={"names": ["nope"]})
    assert missing.status_code == 404 and missing.json()["error"] == "NotFoundError"

    response = client.post(f"{PREFIX}/extensions/enabled", json={"disabled": ["api-ext"], "disable_all": "none"})
    assert response.status_code == 200 and response.json()["changed"] == ["disabled_extensions"]
    assert json.loads(manager.paths.config_file.read_text())["disabled_extensions"] == ["api-ext"]
    assert client.get(f"{PREFIX}/extensions").json()[0]["enabled"] is False
    bad = client.post(f"{PREFIX}/extensions/enabled", json={"disabled": [], "disable_all": "everything"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "http://github.com/x/y.git"}, 422),
        ({"url": "ext::sh -c touch% /tmp/pwned"}, 422),
        ({"url": "git://github.com/x/y.git"}, 422),
        ({"url": "https://github.com/x/y.git", "name": "../x"}, 422),
        ({"url": "https://github.com/x/y.git", "name": "x/../../y"}, 422),
        ({"url": "https://github.com/x/y.git", "name": ".git"}, 422),
    ],
)
def test_bad_install_requests(make_client: ClientFactory, body: dict[str, str], status: int) -> None:
    client, manager = make_client()
    response = client.post(f"{PREFIX}/extensions/install", json=body)
    assert response.status_code == status and response.json()["error"] == "ValidationError"
    assert not manager.paths.extensions_dir.exists() or not any(manager.paths.extensions_dir.iterdir())


def test_every_write_route_is_forbidden_under_listen(make_client: ClientFactory, bare: Path) -> None:
    client, manager = make_client("--listen")
    requests = [
        ("/extensions/install", {"url": str(bare)}),
        ("/extensions/install", {"url": "https://github.com/x/y.git"}),
        ("/extensions/update", {"names": ["api-ext"]}),
        ("/extensions/check-updates", None),
        ("/extensions/enabled", {"disabled": ["x"], "disable_all": "all"}),
    ]
    for path, body in requests:
        response = client.post(PREFIX + path, json=body)
        assert response.status_code == 403, (path, response.text)
        error = response.json()
        assert error["error"] == "ForbiddenError" and "--enable-insecure-extension-access" in error["detail"]
        assert set(error) == {"error", "detail", "body", "errors"}
    assert client.get(f"{PREFIX}/extensions").status_code == 200  # reading stays open
    assert not manager.paths.extensions_dir.exists() or not any(manager.paths.extensions_dir.iterdir())
    assert not manager.paths.tmp_dir.exists() or not any(manager.paths.tmp_dir.iterdir())
    assert not manager.paths.config_file.exists()


def test_the_app_serves_the_routes_and_refuses_under_listen(tmp_path: Path, bare: Path) -> None:
    from modules.app import build_services, create_app

    settings = parse_settings(["--data-dir", str(tmp_path), "--api", "--nowebui", "--listen", "--api-auth", "u:p"], {})
    services = build_services(settings, tmp_path, {})
    try:
        assert isinstance(services.extensions, ExtensionManager)
        with TestClient(create_app(services)) as client:
            auth = ("u", "p")
            assert client.get(f"{PREFIX}/extensions", auth=auth).json() == []
            response = client.post(f"{PREFIX}/extensions/install", json={"url": str(bare)}, auth=auth)
            assert response.status_code == 403 and response.json()["error"] == "ForbiddenError"
        assert not any((tmp_path / "extensions").iterdir()) and not any((tmp_path / "tmp").iterdir())
    finally:
        services.worker.shutdown()
