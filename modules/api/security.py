"""The app's security layer: HTTP Basic auth on every route, CSRF refusal, opt-in CORS, `--api-log`.

`install_security(app, services)` adds pure-ASGI middleware to the whole app (UI, `/internal`,
`/sdapi`, docs, routes added later by extensions with `app.add_api_route`, websockets), so
nothing depends on a route remembering to declare an auth dependency (A1111's hole: its
`--api-auth` only covers routes added through `Api.add_api_route`). Order, outermost first:

    host guard -> api log -> CORS (only with --cors-allow-origins[-regex]) -> auth -> CSRF
    -> CORS header strip -> the app

* Host guard (`modules.api.host_guard`): a server bound to loopback answers only Host values
  localhost / 127.0.0.1 / [::1] (+ `--allowed-hosts`): 400 otherwise (DNS rebinding).

* Auth: with `--api-auth` and/or `--gradio-auth[-path]`, every request needs HTTP Basic
  credentials, except the exact paths in `PUBLIC_PATHS`. `/sdapi/*` and the API docs accept the
  `--api-auth` logins (the `--gradio-auth` ones when no `--api-auth` is given: A1111 leaves the API
  open then, we don't); every other path accepts the `--gradio-auth` logins (the `--api-auth` ones
  when no `--gradio-auth` is given). Every configured login is compared, user and password each
  with `hmac.compare_digest`, with no early exit. Failure: 401, `WWW-Authenticate: Basic`, A1111's
  error object; websockets are closed with 1008 before they are accepted. Failed logins are rate
  limited per client address (`modules.api.login_limit`): after 5 in a minute, 429 with
  `Retry-After` for that address, whatever it sends, until the window frees up.
* CSRF: a POST/PUT/PATCH/DELETE (and websocket handshake) from a foreign page is refused with 403
  when its Content-Type is one a browser may send cross-site without a preflight (form, multipart,
  text/plain) or is missing (ecosystem-security.md 1.2). "Foreign": an `Origin` that is neither
  this server nor a CORS-allowed origin (`Origin: null` is always foreign); when `Origin` is
  missing (older browsers, some form posts), a `Referer` whose origin is foreign, or
  `Sec-Fetch-Site: cross-site` / `same-site`. Clients that send none of these (curl, requests,
  webuiapi, aiohttp) are unaffected; a foreign JSON post never gets past the browser's CORS
  preflight.
* CORS: no CORS headers at all unless `--cors-allow-origins` / `--cors-allow-origins-regex` are
  given; then exactly those origins are echoed (credentials allowed, so `*` and `null` are dropped).
  Gradio's own CORS middleware echoes any `Origin` with credentials when the Host is not
  localhost (a `--listen` server reached by its LAN address) and approves preflights, which would
  let a foreign page read the UI's answers and send it JSON; so every `Access-Control-*` header
  the app itself produces is removed, and only ours (outside) are sent.
* `--api-log`: one line per `/sdapi` request: status, method, path (no query), client, duration.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modules.api.errors import error_response
from modules.api.host_guard import HostGuard, HostGuardMiddleware, is_loopback_host, parse_allowed_hosts
from modules.api.login_limit import LoginLimiter
from modules.core.settings import Credentials, Settings

if TYPE_CHECKING:  # the early start-up app (modules.api.startup) uses this module before torch is imported
    from modules.services import Services

log = logging.getLogger(__name__)
api_log = logging.getLogger("sd_webui.api")

PUBLIC_PATHS: frozenset[str] = frozenset({"/internal/ping"})
"""Paths answered without credentials (exact match on the ASGI path, root_path removed).

Only `/internal/ping` (an empty `{}`: a liveness probe for load balancers and systemd, tells
nothing). `/health` is NOT public: it names the loaded checkpoint, the device and the last model
error (which can hold file paths); probes that need it can send credentials. `/` (the UI), `/docs`
and `/openapi.json` are protected too. A login page and static assets get added here, by exact
path, when the UI lands."""

API_PATH_PREFIXES: tuple[str, ...] = ("/sdapi/", "/controlnet/")
API_EXACT_PATHS: frozenset[str] = frozenset({"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
"""Paths of the API realm (`--api-auth` logins); everything else is the UI realm."""

UNSAFE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_CONTENT_TYPES: frozenset[str] = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
"""Content types a browser sends cross-origin without a CORS preflight (fetch spec, safelisted)."""

REALM = "sd-webui"
WS_POLICY_VIOLATION = 1008
_INSTALLED = "security_installed"


# --- pure functions --------------------------------------------------------------------------


def scope_path(scope: Scope) -> str:
    """The request path the router matches: the ASGI path without the root_path (`--subpath`)."""
    path: str = scope.get("path", "") or ""
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES) or path in API_EXACT_PATHS


def parse_basic_authorization(value: str | None) -> tuple[bytes, bytes] | None:
    """`Basic base64(user:password)` -> (user, password) as bytes; None when absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return _as_utf8(user), _as_utf8(password)


def _as_utf8(raw: bytes) -> bytes:
    """Browsers send Basic credentials as UTF-8, `requests` (webuiapi) as Latin-1: bytes that are
    not valid UTF-8 are read as Latin-1, so a non-ASCII password works from both."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")
    return raw


def check_credentials(given: tuple[bytes, bytes] | None, allowed: Sequence[tuple[bytes, bytes]]) -> int | None:
    """Index of the matching login, or None. Every login is compared, user and password each in
    constant time, whatever matched or failed before (no early exit, no short-circuit)."""
    user, password = given if given is not None else (b"", b"")
    match: int | None = None
    for index, (good_user, good_password) in enumerate(allowed):
        user_ok = hmac.compare_digest(user, good_user)
        password_ok = hmac.compare_digest(password, good_password)
        if user_ok & password_ok & (given is not None) and match is None:
            match = index
    return match


def media_type(content_type: str | None) -> str | None:
    """`Text/Plain; charset=utf-8` -> `text/plain`; None when absent or blank."""
    if content_type is None:
        return None
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence or None


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_key(origin: str) -> tuple[str, int, int] | None:
    """`https://Example.com` -> ("example.com", 443, 443): host, port, the scheme's default port;
    None for `null` and anything not http(s)/ws(s)."""
    try:
        parts = urlsplit(origin.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    default = _DEFAULT_PORTS[scheme]
    return host.lower(), port if port is not None else default, default


def _host_key(host_header: str, default_port: int) -> tuple[str, int] | None:
    """A Host header (`localhost:7860`, `[::1]:7860`, `example.com`) -> (host, port)."""
    try:
        parts = urlsplit("//" + host_header.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else default_port


@dataclass(frozen=True)
class OriginPolicy:
    """Which `Origin` values count as "us": this server (its Host / X-Forwarded-Host) or a CORS-allowed one."""

    allowed: frozenset[str] = frozenset()
    allowed_regex: re.Pattern[str] | None = None

    def is_trusted(self, origin: str, headers: Headers) -> bool:
        if origin.strip().lower() == "null":
            return False
        if origin in self.allowed or (self.allowed_regex is not None and self.allowed_regex.fullmatch(origin)):
            return True
        key = _origin_key(origin)
        if key is None:
            return False
        hosts = [headers.get("host", "")]
        # A proxy's X-Forwarded-Host: a cross-site page cannot set it without a preflight.
        hosts += [h for h in headers.get("x-forwarded-host", "").split(",") if h.strip()]
        host, port, default_port = key
        return any(_host_key(h, default_port) == (host, port) for h in hosts if h)

    def is_foreign(self, headers: Headers) -> bool:
        """The request says it comes from a page of another origin: its `Origin`; without one,
        its `Referer` or `Sec-Fetch-Site` (see module doc). No such header: not a browser page."""
        origins = headers.getlist("origin")
        if origins:
            return not all(self.is_trusted(o, headers) for o in origins)
        if headers.get("sec-fetch-site", "").strip().lower() in ("cross-site", "same-site"):
            return True
        referers = [r for r in headers.getlist("referer") if r.strip()]
        return any(not self.is_trusted(referer_origin(r), headers) for r in referers)

    def is_csrf(self, method: str, headers: Headers) -> bool:
        """A state-changing request a foreign page could have made without asking (see module doc)."""
        if method.upper() not in UNSAFE_METHODS or not self.is_foreign(headers):
            return False
        kind = media_type(headers.get("content-type"))
        return kind is None or kind in SIMPLE_CONTENT_TYPES


def referer_origin(referer: str) -> str:
    """`https://a.example:8443/page?q=1` -> `https://a.example:8443`; `null` when it has no origin."""
    try:
        parts = urlsplit(referer.strip())
    except ValueError:
        return "null"
    if not parts.scheme or not parts.netloc:
        return "null"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# --- middleware ------------------------------------------------------------------------------


def _encode(creds: Credentials) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((user.encode("utf-8"), password.encode("utf-8")) for user, password in creds)


class AuthMiddleware:
    """HTTP Basic on every http/websocket request except `public_paths` (see module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_credentials: Credentials,
        ui_credentials: Credentials,
        public_paths: Iterable[str] = PUBLIC_PATHS,
        limiter: LoginLimiter | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter if limiter is not None else LoginLimiter()
        self.api_logins = _encode(api_credentials or ui_credentials)
        self.ui_logins = _encode(ui_credentials or api_credentials)
        self.api_users = [u for u, _ in (api_credentials or ui_credentials)]
        self.ui_users = [u for u, _ in (ui_credentials or api_credentials)]
        self.public_paths = frozenset(public_paths)

    @property
    def enabled(self) -> bool:
        return bool(self.api_logins or self.ui_logins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.enabled:
            await self.app(scope, receive, send)
            return
        path = scope_path(scope)
        if path in self.public_paths:
            await self.app(scope, receive, send)
            return
        api = is_api_path(path)
        logins, users = (self.api_logins, self.api_users) if api else (self.ui_logins, self.ui_users)
        client = scope.get("client")
        address = str(client[0]) if client else "-"
        retry_after = self.limiter.retry_after(address)
        if retry_after is not None:
            await _refuse(scope, receive, send, 429, "Too many failed logins; try again later", retry_after)
            return
        header = Headers(scope=scope).get("authorization")
        given = parse_basic_authorization(header)
        index = check_credentials(given, logins)
        if index is None:
            if header is not None:  # no header at all is a browser's first try, not a failed login
                self.limiter.failed(address)
            await _refuse(scope, receive, send, 401, "Incorrect username or password")
            return
        scope.setdefault("state", {})["user"] = users[index]
        await self.app(scope, receive, send)


class CsrfMiddleware:
    """403 for cross-site state-changing requests and websocket handshakes (see module doc)."""

    def __init__(self, app: ASGIApp, *, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.policy.is_csrf(scope["method"], Headers(scope=scope)):
                await _refuse(scope, receive, send, 403, "Cross-site request refused")
                return
        elif scope["type"] == "websocket":
            headers = Headers(scope=scope)
            # Websockets are not subject to CORS: any foreign page may open one (and the browser
            # attaches cached Basic credentials), so a foreign Origin is refused outright.
            if any(not self.policy.is_trusted(o, headers) for o in headers.getlist("origin")):
                await _refuse(scope, receive, send, 403, "Cross-site websocket refused")
                return
        await self.app(scope, receive, send)


class StripCorsHeadersMiddleware:
    """Removes the `Access-Control-*` response headers of everything inside it (Gradio's CORS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def strip(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, strip)


class ApiLogMiddleware:
    """`--api-log`: status, method, path, client and duration of every `/sdapi` request.
    Never the query string, the body or any header (credentials stay out of logs)."""

    def __init__(self, app: ASGIApp, *, logger: logging.Logger = api_log) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope_path(scope).startswith("/sdapi"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            where = f"{client[0]}:{client[1]}" if client else "-"
            self.logger.info(
                "API %d %s %s %s %.4fs",
                status,
                scope.get("method", "-"),
                scope_path(scope),
                where,
                time.perf_counter() - start,
            )


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, retry_after: int | None = None
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": detail})
        return
    response = error_response(status, "HTTPException", detail)
    if status == 401:
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    await response(scope, receive, send)


# --- installation ----------------------------------------------------------------------------


def cors_config(settings: Settings) -> tuple[list[str], str | None]:
    """The CORS origins to echo: exactly the flags' values, without `*` and `null` (credentials are
    allowed, so a wildcard would hand any site the user's session)."""
    origins = []
    for origin in settings.cors_origins:
        if origin in ("*", "null"):
            log.warning("--cors-allow-origins: %r ignored (never allowed together with credentials)", origin)
            continue
        origins.append(origin)
    regex = settings.cors_allow_origins_regex or None
    return origins, regex


def install_security(app: FastAPI, services: Services, *, public_paths: Iterable[str] = PUBLIC_PATHS) -> None:
    """Add host guard, auth (with its failed-login limiter, kept on `app.state.login_limiter`),
    CSRF, CORS and API-log middleware to the whole app. Idempotent; call it before the app serves
    its first request (starlette refuses middleware after that)."""
    if getattr(app.state, _INSTALLED, False):
        return
    settings = services.settings
    origins, regex = cors_config(settings)
    policy = OriginPolicy(frozenset(origins), re.compile(regex) if regex else None)
    # add_middleware: the last added is the outermost.
    app.add_middleware(StripCorsHeadersMiddleware)
    app.add_middleware(CsrfMiddleware, policy=policy)
    limiter = LoginLimiter()
    app.state.login_limiter = limiter
    app.add_middleware(
        AuthMiddleware,
        api_credentials=settings.api_credentials(),
        ui_credentials=settings.gradio_credentials(),
        public_paths=public_paths,
        limiter=limiter,
    )
    if origins or regex:
        # Outside auth: a preflight never carries credentials and must still be answered.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_origin_regex=regex,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=True,
        )
    if settings.api_log:
        app.add_middleware(ApiLogMiddleware)
    if is_loopback_host(settings.bind_host):
        app.add_middleware(HostGuardMiddleware, guard=HostGuard(parse_allowed_hosts(settings.allowed_hosts)))
    setattr(app.state, _INSTALLED, True)
