"""Mount the Gradio UI at `/` on the app that already serves the API.

Gradio answers only what no other route matches (see `_FallbackMount`), so the API, `/health`,
`/internal/*` and routes extensions add after `create_app` keep working. Middleware (auth, CORS)
wraps it like every other route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Match, Mount, Route
from starlette.types import Receive, Scope, Send

from modules.services import Services
from modules.ui.blocks import build_blocks
from modules.ui.theme import ui_theme

T = TypeVar("T")
CSS_DIR = Path(__file__).parent / "css"
JS_DIR = Path(__file__).parent / "js"


def _inside_a_loop(fn: Callable[[], T]) -> T:
    """Run `fn` with a running event loop. Gradio creates its asyncio locks at build time and, with
    no running loop, makes (and leaks) a new event loop for each; here they share one that is
    closed afterwards (the locks bind to the server's loop when first used)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return fn()

    async def call() -> T:
        return fn()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(call())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def mount_ui(app: FastAPI, services: Services) -> None:
    _inside_a_loop(lambda: _mount(app, services))


def _mount(app: FastAPI, services: Services) -> None:
    blocks = build_blocks(services)
    blocks.queue(default_concurrency_limit=1)
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        css=page_css(),
        head=page_head(),
        theme=ui_theme(services),
        footer_links=["api", "gradio"] if services.settings.api_enabled else ["gradio"],
        show_error=True,
        ssr_mode=False,
    )
    mount = app.router.routes.pop()
    if not isinstance(mount, Mount):  # pragma: no cover - gradio changed how it mounts
        app.router.routes.append(mount)
        return
    fallback = _FallbackMount("", app=mount.app, name=mount.name)
    app.router.routes.append(Route("/", endpoint=_Forward(fallback), methods=["GET", "HEAD"], name="ui_index"))
    app.router.routes.append(fallback)
    app.state.ui_blocks = blocks


def page_css() -> str:
    """Every stylesheet in `modules/ui/css/`, in name order."""
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(CSS_DIR.glob("*.css")))


def page_head() -> str:
    """Scripts for the page's <head>: every file in `modules/ui/js/`, in name order."""
    scripts = (p.read_text(encoding="utf-8") for p in sorted(JS_DIR.glob("*.js")))
    return "".join(f"<script>\n{text}\n</script>" for text in scripts)


class _FallbackMount(Mount):
    """Gradio at `/`, answering only what no other route matches, even routes added later (a plain
    `Mount("/")` would shadow those): its match is reported as partial, and the router takes a
    partial match only when no route matched fully."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        return (Match.PARTIAL if match == Match.FULL else match), child_scope


class _Forward:
    """The UI page itself as an ordinary `/` route (listed with the others), served by Gradio."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _match, child_scope = Mount.matches(self.mount, scope)
        scope.update(child_scope)
        await self.mount.handle(scope, receive, send)
