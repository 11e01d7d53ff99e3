"""A1111's `modules.errors` for extension code (a facade: internal packages never import it):
reporting errors to the log (the app's log, on stderr), with the last few kept for inspection."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger("modules.errors")

exception_records: list[dict[str, Any]] = []
already_displayed: dict[str, int] = {}
_KEEP = 5


def format_traceback(tb: TracebackType | None) -> list[list[Any]]:
    return [[f"{x.filename}, line {x.lineno}, {x.name}", x.line] for x in traceback.extract_tb(tb)]


def format_exception(e: BaseException, tb: TracebackType | None) -> dict[str, Any]:
    return {"exception": str(e), "traceback": format_traceback(tb)}


def get_exceptions() -> list[dict[str, Any]]:
    return list(reversed(exception_records))


def record_exception() -> None:
    """Keep the exception being handled (the last five are kept)."""
    _, e, tb = sys.exc_info()
    if e is None:
        return
    record = format_exception(e, tb)
    if exception_records and exception_records[-1] == record:
        return
    exception_records.append(record)
    del exception_records[:-_KEEP]


def report(message: str, *, exc_info: bool = False) -> None:
    """Log `message` as an error (with the traceback of the exception being handled)."""
    record_exception()
    text = "\n".join(f"*** {line}" for line in message.splitlines())
    if exc_info:
        text += "\n" + "".join("    " + line for line in traceback.format_exc().splitlines(keepends=True))
    log.error("%s", text)


def print_error_explanation(message: str) -> None:
    record_exception()
    lines = message.strip().split("\n")
    rule = "=" * max((len(x) for x in lines), default=0)
    log.error("%s", "\n".join([rule, *lines, rule]))


def display(e: BaseException, task: Any, *, full_traceback: bool = False) -> None:
    """Log `e` with its traceback as an error of `task`."""
    record_exception()
    te = traceback.TracebackException.from_exception(e)
    if full_traceback:
        te.stack = traceback.StackSummary(traceback.extract_stack()[:-2] + te.stack)
    log.error("%s: %s\n%s", task or "error", type(e).__name__, "".join(te.format()))


def display_once(e: BaseException, task: str) -> None:
    record_exception()
    if task in already_displayed:
        return
    display(e, task)
    already_displayed[task] = 1


def run(code: Callable[[], Any], task: str) -> None:
    """Call `code()`; an exception is logged as an error of `task`, not raised."""
    try:
        code()
    except Exception as e:
        display(e, task)
