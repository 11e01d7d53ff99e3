"""Mount the Gradio UI at `/` on the app that already serves the API.

Gradio answers only what no other route matches (see `_FallbackMount`), so the API, `/health`,
`/internal/*` and routes extensions add after `create_app` keep working. Middleware (auth, CORS)
wraps it like every other route.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Match, Mount, Route
from starlette.types import Receive, Scope, Send

from modules.extensions.loading import PageAssets
from modules.services import Services
from modules.ui.blocks import build_blocks
from modules.ui.theme import ui_theme

log = logging.getLogger(__name__)
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
    assets = services.scripts.assets if services.scripts is not None else None
    if services.scripts is not None:  # A1111's `shared.demo` / on_app_started's `demo`
        services.scripts.environment.extra["demo"] = blocks
    blocks.queue(default_concurrency_limit=1)
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        css=page_css(assets),
        head=page_head(assets),
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


def page_css(assets: PageAssets | None = None) -> str:
    """Every stylesheet in `modules/ui/css/`, in name order, then the extensions' `style.css`."""
    ours = [p.read_text(encoding="utf-8") for p in sorted(CSS_DIR.glob("*.css"))]
    theirs = [_inline(text, "style") for text in _read_assets(assets.styles if assets else [])]
    return "\n".join([*ours, *theirs])


def page_head(assets: PageAssets | None = None) -> str:
    """Scripts for the page's <head>: every file in `modules/ui/js/`, in name order (A1111's page
    helpers among them), then the extensions' `javascript/*.js` and, as modules, `*.mjs`, inline."""
    ours = [p.read_text(encoding="utf-8") for p in sorted(JS_DIR.glob("*.js"))]
    scripts = [*ours, *_read_assets(assets.scripts if assets else [])]
    modules = _read_assets(assets.module_scripts if assets else [])
    head = "".join(f"<script>\n{_inline(text, 'script')}\n</script>" for text in scripts)
    return head + "".join(f'<script type="module">\n{_inline(text, "script")}\n</script>' for text in modules)


def _read_assets(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for path in paths:
        try:
            out.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            log.error("extension file %s left out of the page: %s", path, exc)
    return out


def _inline(text: str, tag: str) -> str:
    """`text` safe inside <tag>...</tag>: a closing tag in it would end the element early."""
    return re.sub(rf"</(?={tag})", r"<\\/", text, flags=re.IGNORECASE)


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
