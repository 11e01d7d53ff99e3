"""Output file names: A1111's `[token]` patterns and the 5-digit sequence numbers (a1111.md 8).

`apply_pattern("[seed]-[prompt_spaces]", ctx)` fills the tokens from a `FilenameContext`. Every
token value is sanitised for the filesystem (path separators and Windows-reserved characters
become `_`; trailing dots/spaces dropped; capped in length), so prompt text can never add a
path component. Literal pattern text is kept as written: the saver decides what a `/` in a
directories pattern means. Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

__all__ = [
    "DEFAULT_DATETIME_FORMAT",
    "DEFAULT_MAX_LENGTH",
    "SAMPLER_DEFAULT_SCHEDULERS",
    "TOKENS",
    "FilenameContext",
    "apply_pattern",
    "next_sequence_number",
    "parse_sequence_number",
    "safe_path_component",
    "sanitize_filename_part",
    "sequence_prefix",
    "truncate_utf8",
]

DEFAULT_MAX_LENGTH = 128
"""`--filenames-max-length` default: the longest one token value may get."""
DEFAULT_DATETIME_FORMAT = "%Y%m%d%H%M%S"

# Characters replaced by "_" in token values. A1111's default set (Windows-safe, plus '#'), and
# with --unix-filenames-sanitization only '/'. NUL is never allowed.
_WINDOWS_INVALID = '#<>:"/\\|?*\n\r\t\0'
_UNIX_INVALID = "/\0"
_WINDOWS_TABLE = {ord(c): "_" for c in _WINDOWS_INVALID} | {c: "_" for c in range(32)} | {0x7F: "_"}
_UNIX_TABLE = {ord(c): "_" for c in _UNIX_INVALID}
_WINDOWS_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
_RE_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")

# The scheduler a sampler uses when "Automatic" is chosen (a1111.md 5, `options.scheduler`);
# used by [scheduler] / [sampler_scheduler] as A1111 does.
SAMPLER_DEFAULT_SCHEDULERS: dict[str, str] = {
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential",
    "DPM2": "karras",
    "DPM2 a": "karras",
    "Restart": "karras",
}


def sanitize_filename_part(
    text: str,
    *,
    replace_spaces: bool = True,
    max_length: int = DEFAULT_MAX_LENGTH,
    unix_sanitization: bool = False,
) -> str:
    """One token value made safe inside a file name.

    Spaces become `_` if `replace_spaces`; path separators, Windows-reserved and control
    characters become `_` (only `/` and NUL with `unix_sanitization`); leading spaces are dropped,
    the text is cut to `max_length` characters, then trailing spaces and dots are dropped (so a
    value can never be `.` or `..`).
    """
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(_UNIX_TABLE if unix_sanitization else _WINDOWS_TABLE)
    return text.lstrip(" ")[: max(0, max_length)].rstrip(" .")


def safe_path_component(text: str, *, unix_sanitization: bool = False) -> str:
    """A single path component that cannot escape its folder: separators replaced, `.`/`..`
    and empty names turned into `_`, Windows device names (CON, NUL, ...) prefixed with `_`."""
    table = _UNIX_TABLE if unix_sanitization else _WINDOWS_TABLE
    text = text.translate(table)
    text = text.rstrip(" ") if unix_sanitization else text.rstrip(" .")
    if text in ("", ".", ".."):
        return "_"
    if not unix_sanitization and text.split(".")[0].upper() in _WINDOWS_RESERVED_NAMES:
        return "_" + text
    return text


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut so that its UTF-8 encoding is at most `max_bytes` bytes (never mid-character)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(0, max_bytes)].decode("utf-8", errors="ignore")


@dataclass(frozen=True, kw_only=True)
class FilenameContext:
    """What the tokens of a file-name pattern can refer to, for one image.

    A field left at `None` leaves its token in the name unchanged (A1111 does the same when the
    information is not available, e.g. `[steps]` in the Extras tab), except where noted.
    """

    seed: int | None = None
    seed_first: int | None = None
    """First seed of the batch; `None` means `seed`."""
    seed_last: int | None = None
    """Last seed of the batch; `[seed_last]` and the text before it vanish if batch_size is 1."""
    steps: int | None = None
    cfg: float | int | None = None
    width: int | None = None
    height: int | None = None
    styles: Sequence[str] = ()
    sampler: str | None = None
    scheduler: str | None = None
    """The scheduler label or name ("Karras", "karras", "Automatic")."""
    model_hash: str | None = None
    model_name: str | None = None
    prompt: str | None = None
    prompt_no_styles: str | None = None
    """The prompt with style texts removed; `None` means `prompt`."""
    negative_prompt: str = ""
    batch_number: int | None = None
    """1-based index in the batch; `[batch_number]` and the text before it vanish if batch_size is 1."""
    batch_size: int = 1
    generation_number: int | None = None
    """1-based index in the whole job; vanishes with the text before it for a 1x1 job."""
    n_iter: int = 1
    clip_skip: int | None = None
    denoising: float | None = None
    """`[denoising]` and the text before it vanish when this is None or 0."""
    user: str | None = None
    vae_filename: str | None = None
    """Path or file name of the loaded VAE; `None` writes "NoneType" (A1111's wording)."""
    job_timestamp: str | None = None
    """The job's start as "%Y%m%d%H%M%S"; `None` means `now`."""
    image_hash: Callable[[], str] | None = None
    """Returns the SHA-256 hex digest of the image's pixels; called only if `[image_hash]` is used."""
    now: datetime | None = None
    """The time for `[date]` / `[datetime]`; `None` means the time of `apply_pattern`."""
    max_prompt_words: int = 8
    """Setting `directories_max_prompt_words`, for `[prompt_words]`."""


class _Skip:
    """Marker: drop the token and the literal text before it."""


_SKIP = _Skip()
_Value = str | _Skip | None
_Handler = Callable[["_Filler", list[str]], _Value]


class _Filler:
    def __init__(self, ctx: FilenameContext, max_length: int, unix_sanitization: bool) -> None:
        self.ctx = ctx
        self.max_length = max_length
        self.unix = unix_sanitization
        self._now = ctx.now

    def now(self) -> datetime:
        if self._now is None:
            self._now = datetime.now()
        return self._now

    def clean(self, value: object, *, replace_spaces: bool = False) -> str:
        return sanitize_filename_part(
            str(value), replace_spaces=replace_spaces, max_length=self.max_length, unix_sanitization=self.unix
        )

    def opt(self, value: object) -> str | None:
        return None if value is None else self.clean(value)

    def scheduler_str(self) -> str | None:
        sampler, scheduler = self.ctx.sampler, self.ctx.scheduler
        if scheduler is None:
            return None
        if scheduler.lower() == "automatic" and sampler is not None:
            scheduler = SAMPLER_DEFAULT_SCHEDULERS.get(sampler, scheduler)
        return scheduler.capitalize()


def _string_hash(text: str, args: list[str]) -> str:
    length = int(args[0]) if args and args[0].strip().isdigit() else 8
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _prompt_words(f: _Filler, _: list[str]) -> _Value:
    if f.ctx.prompt is None:
        return None
    words = [w for w in _RE_NON_LETTERS.split(f.ctx.prompt) if w] or ["empty"]
    return f.clean(" ".join(words[: max(1, f.ctx.max_prompt_words)])) or "empty"


def _hasprompt(f: _Filler, args: list[str]) -> _Value:
    if f.ctx.prompt is None:
        return None
    lower = f.ctx.prompt.lower()
    out = ""
    for arg in args:
        if not arg:
            continue
        expected, _, default = arg.partition("|")
        expected = expected.lower()
        out += expected if expected in lower else default
    return f.clean(out, replace_spaces=True)


def _datetime(f: _Filler, args: list[str]) -> _Value:
    fmt = args[0] if args and args[0] else DEFAULT_DATETIME_FORMAT
    zone: tzinfo | None = None
    if len(args) > 1 and args[1]:
        try:
            from zoneinfo import ZoneInfo  # stdlib; imported lazily (tz database read on use)

            zone = ZoneInfo(args[1])
        except Exception:  # unknown or malformed zone name: local time, like A1111
            zone = None
    moment = f.now().astimezone(zone)
    try:
        text = moment.strftime(fmt)
    except (ValueError, TypeError):
        text = moment.strftime(DEFAULT_DATETIME_FORMAT)
    return f.clean(text)


def _vae_filename(f: _Filler, _: list[str]) -> _Value:
    if f.ctx.vae_filename is None:
        return "NoneType"
    parts = os.path.basename(f.ctx.vae_filename.replace("\\", "/")).split(".")
    name = parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]
    return f.clean(name)


def _image_hash(f: _Filler, args: list[str]) -> _Value:
    if f.ctx.image_hash is None:
        return None
    digest = f.ctx.image_hash()
    if args and args[0].strip().isdigit():
        digest = digest[: int(args[0])]
    return f.clean(digest)


def _seed_last(f: _Filler, _: list[str]) -> _Value:
    if f.ctx.batch_size == 1 or f.ctx.seed_last is None:
        return _SKIP
    return f.clean(f.ctx.seed_last)


def _batch_number(f: _Filler, _: list[str]) -> _Value:
    if f.ctx.batch_size == 1 or f.ctx.batch_number is None:
        return _SKIP
    return f.clean(f.ctx.batch_number)


def _generation_number(f: _Filler, _: list[str]) -> _Value:
    if f.ctx.generation_number is None or (f.ctx.n_iter == 1 and f.ctx.batch_size == 1):
        return _SKIP
    return f.clean(f.ctx.generation_number)


def _sampler_scheduler(f: _Filler, _: list[str]) -> _Value:
    scheduler = f.scheduler_str()
    if f.ctx.sampler is None or scheduler is None:
        return _SKIP
    return f.clean(f"{f.ctx.sampler} {scheduler}")


def _scheduler(f: _Filler, _: list[str]) -> _Value:
    scheduler = f.scheduler_str()
    return _SKIP if scheduler is None else f.clean(scheduler)


def _styles(f: _Filler, _: list[str]) -> _Value:
    return f.clean(", ".join(s for s in f.ctx.styles if s != "None") or "None")


def _prompt_no_styles(f: _Filler, _: list[str]) -> _Value:
    text = f.ctx.prompt_no_styles if f.ctx.prompt_no_styles is not None else f.ctx.prompt
    return f.opt(text)


TOKENS: dict[str, _Handler] = {
    "seed": lambda f, a: f.opt(f.ctx.seed),
    "seed_first": lambda f, a: f.opt(f.ctx.seed_first if f.ctx.seed_first is not None else f.ctx.seed),
    "seed_last": _seed_last,
    "steps": lambda f, a: f.opt(f.ctx.steps),
    "cfg": lambda f, a: f.opt(f.ctx.cfg),
    "width": lambda f, a: f.opt(f.ctx.width),
    "height": lambda f, a: f.opt(f.ctx.height),
    "styles": _styles,
    "sampler": lambda f, a: f.opt(f.ctx.sampler),
    "sampler_scheduler": _sampler_scheduler,
    "scheduler": _scheduler,
    "model_hash": lambda f, a: f.opt(f.ctx.model_hash),
    "model_name": lambda f, a: f.opt(f.ctx.model_name),
    "date": lambda f, a: f.now().strftime("%Y-%m-%d"),
    "datetime": _datetime,
    "job_timestamp": lambda f, a: f.clean(f.ctx.job_timestamp or f.now().strftime(DEFAULT_DATETIME_FORMAT)),
    "prompt_hash": lambda f, a: None if f.ctx.prompt is None else _string_hash(f.ctx.prompt, a),
    "negative_prompt_hash": lambda f, a: _string_hash(f.ctx.negative_prompt, a),
    "full_prompt_hash": lambda f, a: _string_hash(f"{f.ctx.prompt or ''} {f.ctx.negative_prompt}", a),
    "prompt": lambda f, a: None if f.ctx.prompt is None else f.clean(f.ctx.prompt, replace_spaces=True),
    "prompt_no_styles": _prompt_no_styles,
    "prompt_spaces": lambda f, a: f.opt(f.ctx.prompt),
    "prompt_words": _prompt_words,
    "batch_number": _batch_number,
    "batch_size": lambda f, a: f.clean(f.ctx.batch_size),
    "generation_number": _generation_number,
    "hasprompt": _hasprompt,
    "clip_skip": lambda f, a: f.opt(f.ctx.clip_skip),
    "denoising": lambda f, a: f.clean(f.ctx.denoising) if f.ctx.denoising else _SKIP,
    "user": lambda f, a: f.opt(f.ctx.user),
    "vae_filename": _vae_filename,
    "none": lambda f, a: "",
    "image_hash": _image_hash,
}
"""Token name (lower case) -> handler. Unknown tokens are left in the name unchanged."""

# A token is "[...]" without nested brackets; inside, a name then optional "<arg>" groups.
_RE_TOKEN = re.compile(r"\[([^\[\]]+)\]")
_RE_TOKEN_BODY = re.compile(r"^([^<>]*)((?:<[^<>]*>)*)$")
_RE_TOKEN_ARG = re.compile(r"<([^<>]*)>")


def apply_pattern(
    pattern: str,
    ctx: FilenameContext,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    unix_sanitization: bool = False,
) -> str:
    """Replace the `[token]`s of `pattern` with values from `ctx` (token names are case-blind).

    Token values are sanitised (`sanitize_filename_part`) and each is capped at `max_length`
    characters (`--filenames-max-length`); literal text is kept. Unknown tokens, and tokens whose
    information is missing, stay as written. Tokens that "vanish" (`[seed_last]`,
    `[batch_number]`, `[generation_number]`, `[denoising]`, `[scheduler]` when not applicable)
    take the literal text before them along, so `[seed]-[batch_number]` gives `123` for a batch
    of one.
    """
    filler = _Filler(ctx, max_length, unix_sanitization)
    out: list[str] = []
    pos = 0
    for match in _RE_TOKEN.finditer(pattern):
        literal = pattern[pos : match.start()]
        pos = match.end()
        value = _token_value(filler, match.group(1))
        if value is _SKIP:
            continue
        out.append(literal)
        out.append(match.group(0) if value is None else str(value))
    out.append(pattern[pos:])
    return "".join(out)


def _token_value(filler: _Filler, body: str) -> _Value:
    parsed = _RE_TOKEN_BODY.match(body)
    if parsed is None:
        return None
    handler = TOKENS.get(parsed.group(1).lower())
    if handler is None:
        return None
    args = _RE_TOKEN_ARG.findall(parsed.group(2))
    try:
        return handler(filler, args)
    except (ValueError, TypeError, OSError):
        return None


# --- sequence numbers ---------------------------------------------------------------------------


def sequence_prefix(number: int, basename: str = "") -> str:
    """The numbered start of a file name: `00012` for images, `grid-0003` with basename `grid`."""
    return f"{number:05}" if not basename else f"{basename}-{number:04}"


def parse_sequence_number(filename: str, basename: str = "") -> int | None:
    """The sequence number a file name starts with (`00012-123.png` -> 12), or None."""
    prefix = f"{basename}-" if basename else ""
    if not filename.startswith(prefix):
        return None
    stem = os.path.splitext(filename[len(prefix) :])[0]
    first = stem.split("-", 1)[0]
    if not first.isascii() or not first.isdigit():
        return None
    return int(first)


def next_sequence_number(directory: str | os.PathLike[str] | Iterable[str], basename: str = "") -> int:
    """One more than the highest sequence number in `directory` (a folder, or its file names);
    0 for an empty or missing folder (A1111 numbers from 00000)."""
    if isinstance(directory, (str, os.PathLike)):
        try:
            names: Iterable[str] = os.listdir(Path(directory))
        except FileNotFoundError:
            return 0
    else:
        names = directory
    highest = -1
    for name in names:
        number = parse_sequence_number(name, basename)
        if number is not None and number > highest:
            highest = number
    return highest + 1
