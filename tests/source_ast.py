"""`parse_source`: `ast.parse` for the tests that read our source files.

CPython 3.11 (seen on 3.11.7) keeps the AST converter's recursion-depth bookkeeping per
interpreter, not per call. When a finaliser runs during the conversion (the garbage collector can
run one at any allocation) and that finaliser itself leads to a parse (e.g. pytest's assertion
rewriter importing a module), the outer `ast.parse` fails with "SystemError: AST constructor
recursion depth mismatch". The conversion is C code that only gives up the GIL when Python code
runs, so with the collector paused no finaliser, and no other thread, can run inside it.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse_source(source: str | Path) -> ast.Module:
    """The AST of `source` (a path or the text itself), parsed with the garbage collector paused."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(text)
    finally:
        if enabled:
            gc.enable()
