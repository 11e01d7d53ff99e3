"""Training captions: where an image's caption comes from, and the per-step random edits.

Source (`load_caption`), first that applies:

1. the caption file beside the image, ``<stem><extension>`` (kohya's `caption_extension`:
   ``.txt`` by default here, ``.caption`` is the other common one), read as UTF-8 (a BOM is
   dropped; undecodable bytes are replaced and the caption is flagged);
2. for an image in a kohya ``<repeats>_<class tokens>/`` folder, the class tokens (what kohya uses
   for an image without a caption file), unless `fallback` is ``"filename"``;
3. the file name (A1111's ``[filewords]``): the stem without a leading counter such as
   ``00012-`` or ``3-1-`` (A1111 strips ``^[-\\d]+\\s*``), then, when the
   `dataset_filename_word_regex` option is set, the regex's matches joined with
   `dataset_filename_join_string`.

Per-step edits (every random choice comes from the `random.Random` passed in, so a run is
reproducible and a resumed run repeats it):

* kohya (`kohya_caption`): `caption_dropout_rate` (the whole caption becomes ""), then, for
  `shuffle_caption` / `caption_tag_dropout_rate`, the first line is split at commas, the first
  `keep_tokens` stay in front, the rest are shuffled and/or dropped, joined with ", ".
* A1111 (`a1111_tags`): `tag_drop_out` drops each comma-separated tag with that probability,
  `shuffle_tags` shuffles them, joined with "," (A1111's own join; the text template that puts the
  result in place of ``[filewords]`` is the embedding trainer's).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from modules.core.errors import UserError

RE_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")  # A1111's counter prefix ("00012-0-", "3 ")
CAPTION_FALLBACKS = ("auto", "filename", "class")


@dataclass(frozen=True)
class Caption:
    text: str
    origin: str  # "file" | "class" | "filename"
    note: str = ""  # e.g. "caption file is not UTF-8" (the dataset reports it)


def caption_file(image: Path, extension: str = ".txt") -> Path:
    """Where `image`'s caption file is (``<stem><extension>`` beside it); it may not exist."""
    extension = normalize_extension(extension)
    return image.with_name(image.stem + extension)


def normalize_extension(extension: str) -> str:
    """``"txt"`` -> ``".txt"``; the empty string is refused (it would name the image itself)."""
    extension = extension.strip()
    if not extension:
        raise UserError("the caption extension is empty")
    return extension if extension.startswith(".") else "." + extension


def read_caption_file(path: Path) -> tuple[str, str]:
    """The file's text, stripped, and a note ("" when it read cleanly)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        note = ""
    except UnicodeDecodeError:
        text = raw.decode("utf-8-sig", errors="replace")
        note = f"{path.name} is not UTF-8 text: undecodable bytes replaced"
    return text.strip(), note


def filename_caption(image: Path | str, *, word_regex: str = "", join_string: str = " ") -> str:
    """A1111's filewords: the stem less a leading counter, then the regex's matches joined (when
    `word_regex` is set). A bad regex is a UserError naming the option."""
    text = RE_NUMBERS_AT_START.sub("", Path(image).stem)
    if word_regex:
        try:
            pattern = re.compile(word_regex)
        except re.error as exc:
            raise UserError(f"dataset_filename_word_regex {word_regex!r} is not a valid regex: {exc}") from None
        text = (join_string or "").join(_matches(pattern, text))
    return text


def _matches(pattern: re.Pattern[str], text: str) -> list[str]:
    out = []
    for found in pattern.findall(text):  # findall gives tuples for several groups: join them
        out.append("".join(found) if isinstance(found, tuple) else found)
    return out


def load_caption(
    image: Path,
    *,
    extension: str = ".txt",
    class_tokens: str | None = None,
    fallback: str = "auto",
    word_regex: str = "",
    join_string: str = " ",
) -> Caption:
    """`image`'s caption (see the module text). `fallback`: ``"auto"`` (class tokens when there
    are some, else the file name), ``"filename"`` or ``"class"`` (class tokens, else the file
    name)."""
    if fallback not in CAPTION_FALLBACKS:
        raise UserError(f"unknown caption fallback {fallback!r}; expected one of {', '.join(CAPTION_FALLBACKS)}")
    path = caption_file(image, extension)
    if path.is_file():
        try:
            text, note = read_caption_file(path)
        except OSError as exc:
            text, note = "", f"{path.name} could not be read ({exc.strerror or exc}); using the fallback"
        else:
            return Caption(text, "file", note)
    else:
        note = ""
    if class_tokens and fallback in ("auto", "class"):
        return Caption(class_tokens, "class", note)
    return Caption(filename_caption(image, word_regex=word_regex, join_string=join_string), "filename", note)


def kohya_caption(
    caption: str,
    rng: random.Random,
    *,
    shuffle_caption: bool = False,
    keep_tokens: int = 0,
    caption_dropout_rate: float = 0.0,
    caption_tag_dropout_rate: float = 0.0,
    separator: str = ",",
) -> str:
    """kohya's `process_caption` for one step. Draws: one number for the dropout (only when
    the rate is above 0), then the shuffle, then one number per tag for tag dropout. A caption
    left alone (no shuffle, no tag dropout) keeps its first line as written."""
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    caption = caption.split("\n")[0]
    if not (shuffle_caption or caption_tag_dropout_rate > 0):
        return caption
    tokens = [token.strip() for token in caption.strip().split(separator)]
    fixed = tokens[:keep_tokens] if keep_tokens > 0 else []
    flex = tokens[keep_tokens:] if keep_tokens > 0 else tokens[:]
    if shuffle_caption:
        rng.shuffle(flex)
    if caption_tag_dropout_rate > 0:
        flex = [token for token in flex if rng.random() >= caption_tag_dropout_rate]
    return ", ".join(fixed + flex)


def a1111_tags(text: str, rng: random.Random, *, shuffle_tags: bool = False, tag_drop_out: float = 0.0) -> str:
    """A1111's `[filewords]` edit for one step: each comma-separated tag kept when a draw is
    above `tag_drop_out` (one draw per tag, only when the rate is not 0), then shuffled; joined
    with ","."""
    if not shuffle_tags and tag_drop_out == 0:
        return text
    tags = text.split(",")
    if tag_drop_out != 0:
        tags = [tag for tag in tags if rng.random() > tag_drop_out]
    if shuffle_tags:
        rng.shuffle(tags)
    return ",".join(tags)


@dataclass(frozen=True, kw_only=True)
class CaptionOptions:
    """The per-step caption edits of one run (kohya's and A1111's; both may be set)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    first_line: bool = True  # kohya trains on a caption file's first line; A1111 on all of it

    def __post_init__(self) -> None:
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate", "tag_drop_out"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must be between 0 and 1 (got {value})")
        if self.keep_tokens < 0:
            raise UserError(f"keep_tokens must not be negative (got {self.keep_tokens})")

    @property
    def varies(self) -> bool:
        """Whether a caption can differ between steps (text-encoder outputs can't be cached)."""
        return (
            self.shuffle_caption
            or self.caption_dropout_rate > 0
            or self.caption_tag_dropout_rate > 0
            or self.shuffle_tags
            or self.tag_drop_out > 0
        )

    def apply(self, caption: str, rng: random.Random) -> str:
        """kohya's edit (skipped when there is none and `first_line` is off), then A1111's."""
        kohya = self.shuffle_caption or self.caption_dropout_rate > 0 or self.caption_tag_dropout_rate > 0
        if not (kohya or self.first_line):
            return a1111_tags(caption, rng, shuffle_tags=self.shuffle_tags, tag_drop_out=self.tag_drop_out)
        text = kohya_caption(
            caption,
            rng,
            shuffle_caption=self.shuffle_caption,
            keep_tokens=self.keep_tokens,
            caption_dropout_rate=self.caption_dropout_rate,
            caption_tag_dropout_rate=self.caption_tag_dropout_rate,
        )
        return a1111_tags(text, rng, shuffle_tags=self.shuffle_tags, tag_drop_out=self.tag_drop_out)
