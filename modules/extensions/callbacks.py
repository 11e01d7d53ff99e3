"""A1111's `script_callbacks` registry (skeleton; see the helper brief)."""

from __future__ import annotations

from typing import Any

from modules.engine.hooks import Hooks


class CallbackRegistry:
    """Every registered callback by kind, and the engine hooks that call them."""

    def hooks_for(self, p: Any) -> Hooks:
        return Hooks()
