"""Host-header allow-list against DNS rebinding, for a server bound to a loopback address.

A web page on `evil.example` whose DNS name is re-pointed at 127.0.0.1 can make the browser talk to
a server that listens on loopback only, as "same origin": the Origin/CORS checks see nothing
foreign. What gives it away is the `Host` header, which still says `evil.example`. So a server
bound to 127.0.0.1 / localhost / ::1 answers only requests whose Host is `localhost`, `127.0.0.1`
or `[::1]` (any port; any 127.x.y.z literal too: an IP literal involves no DNS), plus the names
given with `--allowed-hosts` (a reverse proxy that passes its own name; `*` turns the check off).
Anything else gets 400 with A1111's error object; a websocket handshake is closed with 1008.

The check applies to requests that arrived on a loopback socket (the ASGI `server` address is a
loopback IP). In-process ASGI calls (test clients, which have no socket) are not subject to DNS
rebinding and are not checked. A server bound to a non-loopback address is not checked at all:
with --listen, logins are required (`modules.api.exposure`), and a LAN name cannot be listed in
advance.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from modules.api.errors import error_response
from modules.api.exposure import is_loopback_host

WS_POLICY_VIOLATION = 1008
INVALID_HOST = "Invalid host header"


def host_name(host_header: str) -> str | None:
    """`LocalHost:7860` -> `localhost`, `[::1]:7860` -> `::1`; None when it is not a valid Host."""
    value = host_header.strip()
    if not value or any(c in value for c in "/?#@\\ "):
        return None
    try:
        parts = urlsplit("//" + value)
        name = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def parse_allowed_hosts(text: str | None) -> frozenset[str]:
    """`--allowed-hosts "a.lan, B.lan:8080"` -> {"a.lan", "b.lan"} (ports are not compared)."""
    out: set[str] = set()
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry == "*":
            out.add("*")
            continue
        name = host_name(entry)
        if name:
            out.add(name)
    return frozenset(out)


class HostGuard:
    """Decides whether a Host header may be served (see module doc)."""

    def __init__(self, extra_hosts: Iterable[str] = ()) -> None:
        self.extra = frozenset(h.lower() for h in extra_hosts)

    @property
    def disabled(self) -> bool:
        return "*" in self.extra

    def allows(self, host_header: str | None) -> bool:
        if self.disabled:
            return True
        if host_header is None:
            return False
        name = host_name(host_header)
        if name is None:
            return False
        return is_loopback_host(name) or name in self.extra


def _socket_is_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return False
    try:
        return ipaddress.ip_address(str(server[0])).is_loopback
    except ValueError:  # no socket address (an in-process client)
        return False


class HostGuardMiddleware:
    """400 (websocket: close 1008) for a request on a loopback socket whose Host is not allowed."""

    def __init__(self, app: ASGIApp, *, guard: HostGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _socket_is_loopback(scope):
            hosts = Headers(scope=scope).getlist("host")
            if len(hosts) != 1 or not self.guard.allows(hosts[0]):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": INVALID_HOST})
                    return
                detail = f"{INVALID_HOST}: this server answers localhost only (--allowed-hosts adds names)"
                await error_response(400, "HTTPException", detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)
