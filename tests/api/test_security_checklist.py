"""Issue 19 item 2 and the security checklist (reference/ecosystem-security.md 1.6, C1-C13): the
tests that were missing. Each test name carries the item it covers:

* A5 (1.1): `--listen` / `--server-name` without logins is refused at start (exit 2, the fix
  spelled out) unless `--allow-insecure-listen`, which starts with a loud warning.
* DNS rebinding (1.2 gap 3): a loopback-bound server answers loopback Host values only
  (+ `--allowed-hosts`).
* CVE-2024-1729 (1.3): failed logins are rate limited per address (429 + Retry-After).
* C3: cmd-flags and the logs never show a password or token.
* C4: Gradio's own CORS headers (it echoes any Origin when the Host is not localhost) are removed.
* C6: without `Origin`, a foreign `Referer` or `Sec-Fetch-Site` still marks a simple POST
  cross-site; clients that send none of them keep working.
* C9: pickles whose payload comes before a broken stream (zip, bare, 7z-wrapped) run nothing.
* C7: `POST /sdapi/v1/options` refuses folder settings and `restrict_api` keys, frozen keys, and
  with `--hide-ui-dir-config` every folder setting; the Settings tab hides / locks them.

Cheap on purpose: small FastAPI apps with the real `install_security` where no service is
needed, one `build_services` per flag set where options are; no model, no server process, no
clock waits (the limiter's clock is stepped by hand).
"""

from __future__ import annotations

import base64
import logging
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import gradio as gr
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from modules.api.exposure import (
    RedactingRecordFactory,
    check_exposure,
    install_log_redaction,
    secret_strings,
    startup_security,
)
from modules.api.host_guard import HostGuard, host_name, parse_allowed_hosts
from modules.api.login_limit import LoginLimiter
from modules.api.security import OriginPolicy, install_security, referer_origin
from modules.core.dir_config import DIR_CONFIG_KEYS
from modules.core.settings import NOT_ACTED_ON_FLAGS, REDACTED, parse_settings
from modules.services import Services

pytestmark = pytest.mark.usefixtures("no_network")

LOCAL = "http://127.0.0.1:7860"  # a TestClient on this base URL puts a loopback socket address in the scope


# --- small apps: the real security middleware over two probe routes ---------------------------


def small_app(*flags: str) -> FastAPI:
    settings = parse_settings(list(flags), {})
    app = FastAPI()
    install_security(app, cast(Services, SimpleNamespace(settings=settings)))

    @app.post("/sdapi/v1/x-probe")
    @app.get("/sdapi/v1/x-probe")
    async def probe() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/x-ui")
    async def ui() -> dict[str, str]:
        return {"ok": "ui"}

    @app.websocket("/x-ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return app


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- A5: --listen without logins --------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [["--listen"], ["--listen", "--api", "--nowebui"], ["--server-name", "192.168.1.5"], ["--server-name", "box.lan"]],
)
def test_A5_exposed_without_logins_is_refused_with_the_fix(flags: list[str], caplog: pytest.LogCaptureFixture) -> None:
    assert check_exposure(parse_settings(flags, {})) == 2
    text = caplog.text
    assert "refusing to start" in text
    for fix in ("--gradio-auth", "--api-auth", "--gradio-auth-path", "--allow-insecure-listen"):
        assert fix in text


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--server-name", "127.0.0.1"],
        ["--server-name", "localhost"],
        ["--server-name", "::1"],
        ["--listen", "--api-auth", "u:p"],
        ["--listen", "--gradio-auth", "u:p"],
        ["--share"],  # opens nothing here (accepted, not acted on)
    ],
)
def test_A5_local_or_logged_in_starts(flags: list[str]) -> None:
    assert check_exposure(parse_settings(flags, {})) is None


def test_A5_listen_with_a_login_file_starts(tmp_path: Path) -> None:
    logins = tmp_path / "auth.txt"
    logins.write_text("u:password1\n")
    assert check_exposure(parse_settings(["--listen", "--gradio-auth-path", str(logins)], {})) is None


def test_A5_allow_insecure_listen_starts_with_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert check_exposure(parse_settings(["--listen", "--allow-insecure-listen"], {})) is None
    [record] = [r for r in caplog.records if "WITHOUT ANY LOGIN" in r.getMessage()]
    assert record.levelno == logging.WARNING


def test_A5_main_exits_2_before_building_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from modules import app as app_module

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the refused start went on to build or serve")

    # without the check main would go on and serve 0.0.0.0: fail at once instead of hanging
    monkeypatch.setattr(app_module, "build_services", must_not_run)
    monkeypatch.setattr(uvicorn.Server, "__init__", must_not_run)
    data = tmp_path / "data"
    assert app_module.main(["--listen", "--api", "--data-dir", str(data), "--skip-load-model-at-start"], {}) == 2
    assert "refusing to start" in caplog.text
    assert not (data / "config.json").exists() and not (data / "models").exists()


def test_A5_flags_that_do_nothing_say_so(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(parse_settings(["--allow-insecure-listen"], {}))
    check_exposure(parse_settings(["--listen", "--api-auth", "u:p", "--allowed-hosts", "a.lan"], {}))
    assert "--allow-insecure-listen: accepted, not acted on" in caplog.text
    assert "--allowed-hosts: accepted, not acted on" in caplog.text


# --- DNS rebinding: the Host allow-list ---------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:7860", "LocalHost:1", "127.0.0.1", "127.0.0.1:7860", "[::1]:7860", "127.0.1.1"]
)
def test_rebinding_loopback_hosts_are_served(host: str) -> None:
    client = TestClient(small_app(), base_url=LOCAL)
    assert client.get("/x-ui", headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:7860", "localhost.evil.example", "127.0.0.1.nip.io", "192.168.1.5", ""]
)
def test_rebinding_foreign_hosts_get_400_in_a1111_shape(host: str) -> None:
    client = TestClient(small_app(), base_url=LOCAL)
    for method, path in (("GET", "/x-ui"), ("POST", "/sdapi/v1/x-probe")):
        r = client.request(method, path, headers={"host": host})
        assert r.status_code == 400, (host, r.status_code)
        assert set(r.json()) == {"error", "detail", "body", "errors"}
        assert "Invalid host header" in r.json()["detail"]
    with (
        pytest.raises(WebSocketDisconnect) as info,
        client.websocket_connect("ws://127.0.0.1:7860/x-ws", headers={"host": host}),
    ):
        pass
    assert info.value.code == 1008


def test_rebinding_allowed_hosts_extends_the_list_and_star_turns_it_off() -> None:
    client = TestClient(small_app("--allowed-hosts", "sd.lan, Proxy.Example:8443"), base_url=LOCAL)
    assert client.get("/x-ui", headers={"host": "sd.lan"}).status_code == 200
    assert client.get("/x-ui", headers={"host": "proxy.example"}).status_code == 200
    assert client.get("/x-ui", headers={"host": "evil.example"}).status_code == 400
    open_client = TestClient(small_app("--allowed-hosts", "*"), base_url=LOCAL)
    assert open_client.get("/x-ui", headers={"host": "evil.example"}).status_code == 200


def test_rebinding_check_is_off_for_a_non_loopback_bind() -> None:
    client = TestClient(small_app("--listen", "--allow-insecure-listen"), base_url=LOCAL)
    assert client.get("/x-ui", headers={"host": "sd-box.lan"}).status_code == 200


def test_rebinding_host_units() -> None:
    assert host_name("[::1]:7860") == "::1" and host_name("LOCALHOST.") == "localhost"
    for bad in ("a b", "x/y", "u@host", "host:notaport", ""):
        assert host_name(bad) is None, bad
    assert parse_allowed_hosts(" a.lan , ,B.lan:1") == {"a.lan", "b.lan"}
    guard = HostGuard({"a.lan"})
    assert guard.allows("a.lan:9") and guard.allows("127.0.0.1") and not guard.allows(None)
    assert not guard.allows("b.lan")


# --- failed-login rate limit (API Basic auth and the UI login) ---------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def limited() -> Iterator[Callable[..., tuple[TestClient, Clock]]]:
    clients: list[TestClient] = []

    def make(*flags: str, address: str = "10.0.0.7") -> tuple[TestClient, Clock]:
        app = small_app(*flags)
        clock = Clock()
        app.state.login_limiter.clock = clock
        client = TestClient(app, client=(address, 50000))
        clients.append(client)
        return client, clock

    yield make
    for c in clients:
        c.close()


@pytest.mark.parametrize(
    ("flags", "path"),
    [(("--api-auth", "bot:api-pw-1"), "/sdapi/v1/x-probe"), (("--gradio-auth", "bot:api-pw-1"), "/x-ui")],
    ids=["api-basic-auth", "ui-login"],
)
def test_login_limit_5_failures_then_429_with_retry_after(
    limited: Callable[..., tuple[TestClient, Clock]], flags: tuple[str, ...], path: str
) -> None:
    client, clock = limited(*flags)
    for _ in range(5):
        assert client.get(path, headers=basic("bot", "guess")).status_code == 401
    r = client.get(path, headers=basic("bot", "guess"))
    assert r.status_code == 429
    assert set(r.json()) == {"error", "detail", "body", "errors"}
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # the right password gets no different answer while blocked (no oracle for the guesser)
    assert client.get(path, headers=basic("bot", "api-pw-1")).status_code == 429
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/x-ws", headers=basic("bot", "api-pw-1")):
        pass
    clock.now += 61
    assert client.get(path, headers=basic("bot", "api-pw-1")).status_code == 200


def test_login_limit_is_per_address_and_ignores_successes_and_missing_credentials(
    limited: Callable[..., tuple[TestClient, Clock]],
) -> None:
    client, _ = limited("--api-auth", "bot:api-pw-1")
    for _ in range(50):  # a busy script with the right login never reaches the limit
        assert client.get("/sdapi/v1/x-probe", headers=basic("bot", "api-pw-1")).status_code == 200
    for _ in range(10):  # a browser's first request carries no credentials: not a failed login
        assert client.get("/sdapi/v1/x-probe").status_code == 401
    for _ in range(4):
        assert client.get("/sdapi/v1/x-probe", headers=basic("bot", "nope")).status_code == 401
    assert client.get("/sdapi/v1/x-probe", headers=basic("bot", "api-pw-1")).status_code == 200
    assert client.get("/sdapi/v1/x-probe", headers=basic("bot", "nope")).status_code == 401  # 5th: still 401
    assert client.get("/sdapi/v1/x-probe", headers=basic("bot", "api-pw-1")).status_code == 429
    # another address is not affected (each app has its own limiter: check the limiter itself)
    limiter = cast(FastAPI, client.app).state.login_limiter
    assert limiter.retry_after("10.0.0.7") is not None and limiter.retry_after("10.0.0.8") is None


def test_login_limiter_window_units() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=3, window_s=60, clock=clock)
    for step in (0, 10, 20):
        clock.now = 1000.0 + step
        assert limiter.retry_after("a") is None
        limiter.failed("a")
    assert limiter.retry_after("a") == 40  # the failure at t=0 leaves the window at t=60
    clock.now = 1060.0
    assert limiter.retry_after("a") is None  # one more try allowed
    limiter.failed("a")
    assert limiter.retry_after("a") == 10


# --- C6: Origin missing -> Referer / Sec-Fetch-Site ----------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Referer": "https://evil.example/attack.html"},
        {"Referer": "http://localhost:7860.evil.example/"},
        {"Referer": "about:blank"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of localhost is another origin
    ],
)
@pytest.mark.parametrize("content_type", [FORM, {"Content-Type": "text/plain"}, {}], ids=["form", "text", "none"])
def test_C6_no_origin_but_foreign_referer_or_fetch_site_is_refused(
    headers: dict[str, str], content_type: dict[str, str]
) -> None:
    client = TestClient(small_app(), base_url="http://localhost:7860")
    r = client.post("/sdapi/v1/x-probe", content=b"a=1", headers={**headers, **content_type})
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "Cross-site request refused"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, requests, webuiapi: no Origin, no Referer
        {"Referer": "http://localhost:7860/"},  # our own page
        {"Referer": "http://localhost:7860/?__theme=dark", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ],
)
def test_C6_clients_without_origin_keep_working(headers: dict[str, str]) -> None:
    client = TestClient(small_app(), base_url="http://localhost:7860")
    assert client.post("/sdapi/v1/x-probe", headers={**headers, **FORM}, content=b"a=1").status_code == 200
    assert client.post("/sdapi/v1/x-probe", headers=headers).status_code == 200  # body-less, like /interrupt
    # a foreign Referer on JSON: a browser preflights it, so it is not a simple request
    assert client.post("/sdapi/v1/x-probe", json={}, headers={"Referer": "https://evil.example/"}).status_code == 200


def test_C6_referer_origin_units() -> None:
    assert referer_origin("https://user:pw@a.example:8443/p?q#f") == "https://a.example:8443"
    assert referer_origin("about:blank") == "null" and referer_origin("/relative") == "null"
    policy = OriginPolicy()
    from starlette.datastructures import Headers

    assert policy.is_foreign(Headers({"host": "localhost:7860", "referer": "http://evil.example/"}))
    assert not policy.is_foreign(Headers({"host": "localhost:7860", "referer": "http://localhost:7860/x"}))
    assert not policy.is_foreign(Headers({"host": "localhost:7860"}))


# --- C4: Gradio's own CORS answers never reach the browser ---------------------------------------


def gradio_app(*flags: str) -> FastAPI:
    """The real security layer around a real (empty) Gradio app mounted as ours is (`mount_gradio_app`)."""
    app = small_app(*flags)
    with gr.Blocks() as blocks:
        gr.Markdown("probe")
    return gr.mount_gradio_app(app, blocks, path="/")


@pytest.mark.parametrize("host", ["sd-box.lan:7860", "localhost:7860"], ids=["lan-host", "localhost"])
def test_C4_gradio_routes_echo_no_foreign_origin(host: str) -> None:
    """Gradio echoes any Origin with credentials when the Host is not localhost (a --listen server
    reached by its LAN name) and approves preflights: a foreign page could read the UI's answers
    and post JSON to its functions. No Access-Control-* header may come out for such an origin."""
    client = TestClient(gradio_app())
    for origin in ("https://evil.example", "null", "http://localhost:3000"):
        for path in ("/", "/config", "/gradio_api/info"):
            r = client.get(path, headers={"Origin": origin, "host": host})
            assert r.status_code < 500, (path, r.status_code)
            leaked = [k for k in r.headers if k.lower().startswith("access-control-")]
            assert not leaked, (path, origin, leaked)
        pre = client.options(
            "/gradio_api/queue/join",
            headers={
                "Origin": origin,
                "host": host,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert "access-control-allow-origin" not in pre.headers, origin
        r = client.post("/gradio_api/queue/join", content=b"{}", headers={"Origin": origin, "host": host})
        assert r.status_code == 403, origin


def test_C4_configured_cors_origins_still_get_their_headers_on_gradio_routes() -> None:
    client = TestClient(gradio_app("--cors-allow-origins", "https://good.example"))
    r = client.get("/config", headers={"Origin": "https://good.example", "host": "sd-box.lan"})
    assert r.headers["access-control-allow-origin"] == "https://good.example"
    r = client.get("/config", headers={"Origin": "https://evil.example", "host": "sd-box.lan"})
    assert "access-control-allow-origin" not in r.headers


# --- C3: secrets in cmd-flags and in the logs ------------------------------------------------------


def test_C3_cmd_flags_redact_passwords_and_tokens_and_show_paths(make_client: Any, tmp_path: Path) -> None:
    """Passwords and tokens are redacted; file paths are shown as A1111 shows them (the login file's
    and the TLS key's contents never are)."""
    logins = tmp_path / "auth.txt"
    logins.write_text("u:file-pass-123\n")
    client, _ = make_client(
        "--api-auth",
        "bot:api-secret-1",
        "--gradio-auth",
        "ui:ui-secret-2",
        "--gradio-auth-path",
        str(logins),
        "--ngrok",
        "ngrok-token-3",
        "--ngrok-options",
        '{"authtoken": "ngrok-token-4"}',
    )
    r = client.get("/sdapi/v1/cmd-flags", auth=("bot", "api-secret-1"))
    assert r.status_code == 200
    flags = r.json()
    for name in ("api_auth", "gradio_auth", "ngrok", "ngrok_options"):
        assert flags[name] == REDACTED, name
    assert flags["gradio_auth_path"] == str(logins)
    for secret in ("api-secret-1", "ui-secret-2", "file-pass-123", "ngrok-token-3", "ngrok-token-4"):
        assert secret not in r.text


@pytest.fixture()
def restore_record_factory() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(before)


@pytest.mark.usefixtures("restore_record_factory")
def test_C3_logs_never_show_passwords(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logins = tmp_path / "auth.txt"
    logins.write_text("u:file-pass-123\n")
    settings = parse_settings(
        ["--api-auth", "bot:api-secret-1,b2:pw", "--gradio-auth-path", str(logins), "--ngrok", "tok-3"], {}
    )
    assert startup_security(settings) is None
    log = logging.getLogger("sd_webui.test")
    log.warning("ignored unknown command-line arguments: --api-auht bot:api-secret-1")
    log.warning("login %s failed, file had %s", "b2:pw", "file-pass-123")
    try:
        raise RuntimeError("token tok-3 rejected for bot:api-secret-1")
    except RuntimeError:
        log.exception("ngrok failed")
    text = caplog.text
    for secret in ("api-secret-1", "b2:pw", "file-pass-123", "tok-3"):
        assert secret not in text, secret
    assert text.count(REDACTED) >= 5
    assert "ngrok failed" in text and "RuntimeError" in text
    # a second install replaces the secrets instead of stacking factories
    install_log_redaction(["other-secret"])
    factory = logging.getLogRecordFactory()
    assert isinstance(factory, RedactingRecordFactory) and not isinstance(factory.previous, RedactingRecordFactory)


def test_C3_short_passwords_are_redacted_only_inside_their_entry() -> None:
    secrets = secret_strings(parse_settings(["--api-auth", "u:pw,admin:longer-pass"], {}))
    assert "u:pw" in secrets and "longer-pass" in secrets and "pw" not in secrets
    assert secrets == sorted(secrets, key=len, reverse=True)


# --- C7: options the API may not write; freeze and --hide-ui-dir-config ----------------------------


@pytest.fixture()
def make_client(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, Services]]]:
    from modules.app import build_services, create_app

    made: list[tuple[TestClient, Services]] = []

    def make(*flags: str) -> tuple[TestClient, Services]:
        data = tmp_path / f"data{len(made)}"
        data.mkdir()
        services = build_services(parse_settings(["--api", "--nowebui", *flags], {}), data, {})
        pair = (TestClient(create_app(services), raise_server_exceptions=False), services)
        made.append(pair)
        return pair

    yield make
    for client, services in made:
        client.close()
        services.worker.shutdown()


def test_C7_options_api_refuses_folders_and_restricted_keys(
    make_client: Callable[..., tuple[TestClient, Services]], tmp_path: Path
) -> None:
    client, services = make_client()
    before = services.options.as_dict()
    for key, value in (
        ("outdir_samples", str(tmp_path / "anywhere")),
        ("outdir_txt2img_samples", "/etc"),
        ("temp_dir", "/tmp/x"),
        ("samples_filename_pattern", "../../[seed]"),
        ("api_enable_requests", not before["api_enable_requests"]),
        ("api_forbid_local_requests", False),
        ("api_useragent", "evil"),
    ):
        r = client.post("/sdapi/v1/options", json={key: value})
        assert r.status_code == 403, (key, r.status_code)
        assert set(r.json()) >= {"error", "detail", "body", "errors"}
    assert services.options.as_dict() == before
    assert client.post("/sdapi/v1/options", json=before).status_code == 200  # the full round trip still works


def test_C7_hide_ui_dir_config_locks_every_folder_setting(
    make_client: Callable[..., tuple[TestClient, Services]],
) -> None:
    client, services = make_client("--hide-ui-dir-config")
    assert "hide_ui_dir_config" not in NOT_ACTED_ON_FLAGS
    for key, value in (("save_images_add_number", False), ("directories_filename_pattern", "[seed]")):
        r = client.post("/sdapi/v1/options", json={key: value})
        assert r.status_code == 403 and "--hide-ui-dir-config" in r.json()["detail"], key
    assert client.post("/sdapi/v1/options", json=services.options.as_dict()).status_code == 200
    assert client.post("/sdapi/v1/options", json={"jpeg_quality": 55}).status_code == 200  # others still change
    plain, _ = make_client()
    assert plain.post("/sdapi/v1/options", json={"save_images_add_number": False}).status_code == 200


def test_C7_frozen_keys_are_refused_by_the_api(make_client: Callable[..., tuple[TestClient, Services]]) -> None:
    client, services = make_client(
        "--freeze-settings-in-sections", "saving-images", "--freeze-specific-settings", "eta_ddim"
    )
    for key, value in (("jpeg_quality", 12), ("eta_ddim", 0.5)):
        r = client.post("/sdapi/v1/options", json={key: value})
        assert r.status_code == 403 and "frozen" in r.json()["detail"], key
    assert services.options.get("jpeg_quality") != 12
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200


def test_C7_override_settings_cannot_change_frozen_locked_or_restricted_settings(
    make_client: Callable[..., tuple[TestClient, Services]],
) -> None:
    """What POST /options may not change, a request's `override_settings` may not either (it would
    otherwise raise the request limits, or write outputs where the owner forbade): 403, before
    any work; the same value as now is fine."""
    client, services = make_client("--freeze-specific-settings", "eta_ddim", "--hide-ui-dir-config")
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    for overrides, says in (
        ({"eta_ddim": 0.5}, "frozen (--freeze-specific-settings)"),
        ({"save_images_add_number": False}, "frozen (--hide-ui-dir-config)"),
        ({"max_image_side": 100_000}, "cannot be changed by a request"),
        ({"outdir_txt2img_samples": "/etc"}, "cannot be changed by a request"),
    ):
        r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": overrides})
        assert r.status_code == 403 and says in r.json()["detail"], (overrides, r.text)
    same = {"eta_ddim": services.options.get("eta_ddim"), "max_image_side": services.options.get("max_image_side")}
    r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": same})
    assert r.status_code not in (403, 422), r.text  # refused later only for want of a checkpoint
    plain, _ = make_client()
    r = plain.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"save_images_add_number": False}})
    assert r.status_code not in (403, 422), r.text


def test_C7_settings_tab_hides_folder_settings_and_locks_frozen_ones(tmp_path: Path) -> None:
    from modules.core.option_defaults import default_option_infos
    from modules.core.options import Options
    from modules.ui.settings import apply_settings, build_settings_tab, quicksettings_keys
    from tests.ui.gradio_loop import in_a_loop

    options = Options(default_option_infos(), tmp_path / "config.json")
    options.freeze(keys=["jpeg_quality"])
    options.set("quicksettings_list", ["sd_model_checkpoint", "outdir_samples"])

    def build(hide: bool) -> Any:
        services = SimpleNamespace(
            options=options, settings=parse_settings(["--hide-ui-dir-config"] if hide else [], {})
        )

        def make() -> Any:
            with gr.Blocks():
                return build_settings_tab(cast(Services, services))

        return services, in_a_loop(make)

    services, tab = build(hide=True)
    shown_dirs = DIR_CONFIG_KEYS & set(options.infos())
    assert shown_dirs and not shown_dirs & set(tab.fields)  # not offered at all
    assert tab.fields["jpeg_quality"].interactive is False  # frozen: shown, read-only
    assert "outdir_samples" not in quicksettings_keys(cast(Services, services))
    info = options.info("outdir_samples")
    with pytest.raises(gr.Error, match="hide-ui-dir-config"):
        apply_settings(cast(Services, services), [info], ["/elsewhere"])

    _, plain_tab = build(hide=False)
    assert (
        "outdir_txt2img_samples" in plain_tab.fields
        and plain_tab.fields["outdir_txt2img_samples"].interactive is not False
    )


@pytest.mark.usefixtures("restore_record_factory")
def test_C7_hide_ui_dir_config_says_what_it_does_not_cover(caplog: pytest.LogCaptureFixture) -> None:
    assert startup_security(parse_settings(["--hide-ui-dir-config"], {})) is None
    assert "batch-from-directory tabs are not disabled" in caplog.text


# --- C9: the broken-stream variant (nullifAI: the payload runs before the stream breaks) -----------


def _broken_pickle(marker: Path) -> bytes:
    from tests.fixtures.pickles import _ExecCall, _touch_code

    whole = pickle.dumps({"state_dict": {}, "hook": _ExecCall(_touch_code(marker))}, protocol=2)
    assert whole.endswith(b".")
    return whole[:-1] + b"\x00\xffbroken stream"  # no STOP: a loader that runs opcodes as it reads has run exec


@pytest.mark.parametrize("kind", ["zip", "bare", "7z"])
def test_C9_broken_stream_pickles_are_refused_and_run_nothing(tmp_path: Path, kind: str) -> None:
    from modules.core.errors import ModelFileError
    from modules.models.checkpoint_io import read_state_dict

    marker = tmp_path / "pwned"
    broken = _broken_pickle(marker)
    path = tmp_path / f"evil_{kind}.ckpt"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", broken)
            zf.writestr("archive/version", "3\n")
    elif kind == "bare":
        path.write_bytes(broken)
    else:  # a 7z container around the pickle, as nullifAI shipped (not a zip: torch's zip reader refuses it)
        path.write_bytes(b"7z\xbc\xaf\x27\x1c\x00\x04" + broken)
    with pytest.raises(ModelFileError):
        read_state_dict(path)
    assert not marker.exists(), "the payload ran before the stream broke"
    # control: the fixture is live - a plain unpickler runs the payload, then fails on the stream
    with pytest.raises(Exception):  # noqa: B017 - which error a broken stream gives does not matter
        pickle.loads(broken)
    assert marker.exists()
