"""A1111's `modules.scripts` for extension code (a facade: internal packages never import it)."""

from __future__ import annotations

from modules.extensions.script_base import (
    AlwaysVisible,
    PostprocessBatchListArgs,
    PostprocessImageArgs,
    Script,
)

__all__ = ["AlwaysVisible", "PostprocessBatchListArgs", "PostprocessImageArgs", "Script"]
