"""Building Gradio Blocks in unit tests: inside a running event loop that is closed afterwards
(Gradio leaks one loop per Blocks otherwise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_a_loop(fn: Callable[[], T]) -> T:
    async def call() -> T:
        return fn()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(call())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
