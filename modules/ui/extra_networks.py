"""The extra-networks panel of txt2img and img2img (a1111-ui/NOTES.md "Extra-networks tabs"):
tabs Textual Inversion / Hypernetworks / Checkpoints / Lora next to "Generation", each a grid of
cards (preview, name, description) with search, sort, a directory filter and refresh, and a 🛠
editor for the file's user metadata (`<file>.json` next to it, as A1111 writes it).

Clicking a card toggles its text in the prompt (A1111's `cardClicked`): a LoRA adds
`<lora:NAME:MULT>` (the alias when `lora_preferred_name` says so; its preferred weight, else
`extra_networks_default_multiplier`) followed by its activation text, and its negative text as
`(text:1)` in the negative prompt; a hypernetwork `<hypernet:NAME:MULT>`; an embedding its name,
in the prompt box that last had the focus. Clicking again removes it. A checkpoint card switches
the checkpoint through the quicksettings path (`sd_model_checkpoint`).

Previews are only ever files the registries list (or a LoRA's embedded cover image): each is
shrunk to a thumbnail written into Gradio's upload folder, which Gradio's file route serves; the
browser never names a path on the server. Search, sort and the directory filter run in the browser
(`js/extra_networks.js`); the cards are (re)built when their tab is selected and by 🔄.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import gradio as gr
from gradio.context import Context
from PIL import Image, ImageOps

from modules.core.atomic import atomic_write_json
from modules.core.errors import SdWebuiError

if TYPE_CHECKING:
    from modules.services import Services

log = logging.getLogger(__name__)

TEXTUAL_INVERSION = "textual_inversion"
HYPERNETWORKS = "hypernetworks"
CHECKPOINTS = "checkpoints"
LORA = "lora"
PAGE_TITLES = {
    TEXTUAL_INVERSION: "Textual Inversion",
    HYPERNETWORKS: "Hypernetworks",
    CHECKPOINTS: "Checkpoints",
    LORA: "Lora",
}
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
SORT_FIELDS = {"Path": "path", "Name": "name", "Date Created": "date_created", "Date Modified": "date_modified"}
THUMBNAIL_BOX = (512, 768)  # cards are 2:3; twice their size on screen
THUMBNAIL_DIR = "sdw-extra-networks"
FILE_ROUTE = "gradio_api/file="  # relative to the page, so a root path in front still works
CHECKPOINT_OPTION = "sd_model_checkpoint"
MAX_WEIGHT = 2.0  # the editor's preferred-weight slider, as A1111's

# a network tag and what follows it: `<lora:name:0.8>`, `<hypernet:name:1:...>`
_TAG = re.compile(r"<(\w+):([^:>]+)((?::[^:>]*)*)>")
# a weighted text in the negative prompt: `(text:1)`
_WEIGHTED = re.compile(r"\(([^():]+):(-?[\d.]+)\)")


# -- pure functions: texts, cards, HTML ----------------------------------------------------------


def format_weight(value: float) -> str:
    """A weight as A1111's JavaScript writes a number into the prompt: 1.0 -> "1", 0.8 -> "0.8"."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite weight: {value}")
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def preferred_lora_name(name: str, alias: str, preference: str) -> str:
    """The name a LoRA card writes into its tag: its alias unless `lora_preferred_name` is
    "Filename" or it has none. (The registry's `alias` already falls back to the name when the
    alias is forbidden, i.e. used by more than one network: A1111's rule.)"""
    return name if preference == "Filename" or not alias else alias


def lora_texts(tag_name: str, user_metadata: Mapping[str, Any], default_multiplier: float) -> tuple[str, str]:
    """(prompt text, negative prompt text) of a LoRA card: `<lora:NAME:MULT>` with the preferred
    weight when set (non-zero), else the default multiplier; then the activation text; the
    negative text as `(text:1)`."""
    weight = _number(user_metadata.get("preferred weight")) or float(default_multiplier)
    prompt = f"<lora:{tag_name}:{format_weight(weight)}>"
    activation = str(user_metadata.get("activation text") or "").strip()
    if activation:
        prompt += " " + activation
    negative = str(user_metadata.get("negative text") or "").strip()
    return prompt, f"({negative}:1)" if negative else ""


def hypernetwork_text(name: str, default_multiplier: float) -> str:
    return f"<hypernet:{name}:{format_weight(float(default_multiplier))}>"


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _remove_span(text: str, start: int, end: int, separator: str) -> str:
    """`text` without [start, end) and the separator right before it (or, at the start of the
    text, the one right after it)."""
    if separator and text[:start].endswith(separator):
        start -= len(separator)
    elif separator and start == 0 and text[end:].startswith(separator):
        end += len(separator)
    return text[:start] + text[end:]


def toggle_in_prompt(prompt: str, text: str, separator: str = " ", *, negative: bool = False) -> str:
    """A card click on a prompt box: `text` removed when it is there, else appended.

    A text that starts with a network tag (`<lora:x:0.8> trigger words`) is there when a tag of
    the same kind and name is, whatever its weights; the tag goes, and the rest of `text` with it
    when it follows the tag. A negative `(text:1)` is found at any weight. Any other text (an
    embedding's name) is removed wherever it stands as written. The separator
    (`extra_networks_add_text_separator`) goes before an appended text; none before the first."""
    pattern = _WEIGHTED if negative else _TAG
    head = pattern.match(text)
    if head is not None:
        rest = text[head.end() :]
        wanted = head.group(1, 2) if not negative else head.group(1)
        for found in pattern.finditer(prompt):
            if (found.group(1, 2) if not negative else found.group(1)) != wanted:
                continue
            end = found.end()
            if rest and prompt[end:].startswith(rest):
                end += len(rest)
            return _remove_span(prompt, found.start(), end, separator)
    elif text:
        escaped = re.escape(text)
        before = r"(?<!\w)" if re.match(r"\w", text) else ""
        after = r"(?!\w)" if re.search(r"\w$", text) else ""
        tags = [m.span() for m in _TAG.finditer(prompt)]  # a network's name is not the text
        for found_word in re.finditer(before + escaped + after, prompt):
            if not any(start <= found_word.start() < end for start, end in tags):
                return _remove_span(prompt, found_word.start(), found_word.end(), separator)
    if not text:
        return prompt
    return f"{prompt}{separator}{text}" if prompt else text


@dataclass(frozen=True)
class Card:
    """One card of a page: what it shows, how it is found and sorted, what a click does."""

    page: str
    key: str  # unique within its page; what the browser sends back on a click
    name: str
    filename: str = ""
    relative: str = ""  # the path shown and searched, relative to the network's folder
    description: str = ""
    preview: Path | None = None  # a preview file next to the network (listed by its registry)
    cover_image: bytes | None = field(default=None, repr=False)  # an embedded preview (kohya `ssmd_cover_images`)
    prompt: str = ""  # toggled in the prompt by a click
    negative_prompt: str = ""  # toggled in the negative prompt by the same click
    to_active_box: bool = False  # embeddings: into whichever prompt box last had the focus
    checkpoint: str | None = None  # checkpoints: the title a click switches to
    search_terms: tuple[str, ...] = ()
    sd_version: str = ""
    shorthash: str | None = None
    size: int | None = None
    created: float = 0.0
    modified: float = 0.0
    error: str = ""
    user_metadata: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)
    source: Any = field(default=None, compare=False, repr=False)  # the registry's item

    @property
    def hidden_dir(self) -> bool:
        """In a folder whose name starts with a dot: shown only when searched for (A1111)."""
        return any(part.startswith(".") for part in Path(self.relative).parts[:-1])

    def sort_keys(self, index: int) -> dict[str, str]:
        return {
            "default": str(index),
            "path": (self.relative or self.name).lower(),
            "name": self.name.lower(),
            "date_created": str(int(self.created)),
            "date_modified": str(int(self.modified)),
        }


def card_click(
    card: Card, prompt: str, negative: str, *, separator: str = " ", negative_box: bool = False
) -> tuple[str, str]:
    """(prompt, negative prompt) after clicking `card`; `negative_box`: the negative prompt box
    had the focus last (used by cards that go into the box in use: embeddings)."""
    prompt, negative = prompt or "", negative or ""
    if card.negative_prompt:
        return (
            toggle_in_prompt(prompt, card.prompt, separator),
            toggle_in_prompt(negative, card.negative_prompt, separator, negative=True),
        )
    if card.to_active_box and negative_box:
        return prompt, toggle_in_prompt(negative, card.prompt, separator)
    return toggle_in_prompt(prompt, card.prompt, separator), negative


def model_sd_version(family_label: str | None) -> str | None:
    """ "SD1" / "SD2" / "SDXL" for the loaded model's family label, None when none is loaded."""
    if not family_label:
        return None
    if family_label.startswith("SDXL"):
        return "SDXL"
    if family_label.startswith("SD 2"):
        return "SD2"
    if family_label.startswith("SD 1"):
        return "SD1"
    return None


def lora_card_shown(
    sd_version: str, model_version: str | None, *, show_all: bool, hide_unknown_for: Sequence[str]
) -> bool:
    """A1111's Lora page filter: only LoRAs for the loaded model's version, unless `lora_show_all`
    or no model is loaded; one of unknown version is hidden only for the versions listed in
    `lora_hide_unknown_for_versions`."""
    if show_all or model_version is None:
        return True
    if sd_version not in ("SD1", "SD2", "SDXL"):
        return model_version not in hide_unknown_for
    return sd_version == model_version


def order_pages(pages: Sequence[str], preference: str) -> list[str]:
    """The pages in `ui_extra_networks_tab_reorder`'s order (comma-separated parts of titles);
    the rest after them, as they were."""
    wanted = [part.strip().lower() for part in preference.split(",") if part.strip()]

    def score(item: tuple[int, str]) -> tuple[int, int]:
        index, page = item
        title = PAGE_TITLES.get(page, page).lower()
        rank = next((i for i, part in enumerate(wanted) if part in title), len(wanted))
        return rank, index

    return [page for _, page in sorted(enumerate(pages), key=score)]


@dataclass(frozen=True)
class CardLook:
    """Options that change how cards look."""

    width: int = 0
    height: int = 0
    text_scale: float = 1.0
    show_description: bool = True
    hidden_models: str = "When searched"  # Always / When searched / Never
    dirs_shown: bool = True


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def card_html(card: Card, index: int, preview_url: str | None, look: CardLook) -> str:
    """One card: preview (or a "no preview" face), the 🛠 button, name and description; data
    attributes for the browser's search and sort."""
    search_only = card.hidden_dir and look.hidden_models != "Always"
    if search_only and look.hidden_models == "Never":
        return ""
    style = f"font-size: {look.text_scale * 100:g}%;"
    if look.width:
        style += f" width: {look.width}px;"
    if look.height:
        style += f" height: {look.height}px;"
    terms = " ".join(t for t in (card.name, *card.search_terms, card.description) if t).lower()
    data = {
        "key": card.key,
        "search": terms,
        **{f"sort-{k}": v for k, v in card.sort_keys(index).items()},
    }
    attributes = " ".join(f'data-{k}="{_esc(v)}"' for k, v in data.items())
    classes = "card sdw-en-card"
    if search_only:
        classes += " search_only"
    if card.error:
        classes += " sdw-en-error"
    if preview_url:
        face = f'<img class="preview" src="{_esc(preview_url)}" loading="lazy" alt="">'
    else:
        face = '<div class="preview sdw-en-no-preview"><span>No preview</span></div>'
    title = card.relative or card.name
    if card.error:
        title += f"\n{card.error}"
    description = card.description if look.show_description else ""
    lines = [f'<span class="name">{_esc(card.name)}</span>']
    if card.error:
        lines.append(f'<span class="sdw-en-card-error">{_esc(card.error)}</span>')
    if description:
        lines.append(f'<span class="description">{_esc(description)}</span>')
    return (
        f'<div class="{classes}" {attributes} style="{_esc(style)}" title="{_esc(title)}">'
        f"{face}"
        '<div class="button-row"><button class="sdw-en-edit card-button" type="button" '
        'title="Edit metadata">🛠</button></div>'
        f'<div class="actions">{"".join(lines)}</div>'
        "</div>"
    )


def directories(cards: Sequence[Card]) -> list[str]:
    """Every folder a card sits in (and the folders above it), relative, sorted."""
    found: set[str] = set()
    for card in cards:
        parent = Path(card.relative).parent
        while str(parent) not in ("", "."):
            found.add(parent.as_posix())
            parent = parent.parent
    return sorted(found, key=str.lower)


def cards_html(
    prefix: str,
    page: str,
    cards: Sequence[Card],
    preview_url: Callable[[Card], str | None],
    look: CardLook,
    *,
    empty_dirs: Sequence[Path] = (),
) -> str:
    """A page's pane: the directory buttons, then the cards (or where to put files, when none)."""
    full = f"{prefix}_{page}"
    dirs = directories(cards)
    dir_buttons = "".join(
        f'<button class="sdw-en-dir" type="button" data-path="{_esc(d)}">{_esc(d)}</button>' for d in dirs
    )
    dirs_class = "sdw-en-dirs" + ("" if look.dirs_shown else " sdw-en-dirs-hidden")
    dirs_html = (
        f'<div class="{dirs_class}" id="{full}_dirs">'
        f'<button class="sdw-en-dir sdw-en-dir-all" type="button" data-path="">all</button>{dir_buttons}</div>'
        if dirs
        else ""
    )
    body = "".join(card_html(card, index, preview_url(card), look) for index, card in enumerate(cards))
    if not body:
        folders = "".join(f"<li>{_esc(d)}</li>" for d in empty_dirs)
        where = f"<p>Add some to:</p><ul>{folders}</ul>" if folders else ""
        body = f'<div class="sdw-en-empty"><h3>Nothing here.</h3>{where}</div>'
    action = "select" if page == CHECKPOINTS else "click"  # what a card click asks the server to do
    return (
        f'<div class="sdw-en-pane" id="{full}_pane" data-tab="{_esc(prefix)}" data-click="{action}">{dirs_html}'
        f'<div class="sdw-en-cards extra-network-cards" id="{full}_cards">{body}</div></div>'
    )


def controls_html(prefix: str, page: str, *, sort_field: str, descending: bool, dirs_shown: bool) -> str:
    """Search box, sort buttons (path, name, date created, date modified, direction), the
    directory-view toggle and refresh, with A1111's ids."""
    full = f"{prefix}_{page}"
    active = SORT_FIELDS.get(sort_field, "path")
    sorts = (
        ("path", "Path", "Sort by path"),
        ("name", "Name", "Sort by name"),
        ("date_created", "Created", "Sort by date created"),
        ("date_modified", "Modified", "Sort by date modified"),
    )
    buttons = "".join(
        f'<button type="button" id="{full}_extra_sort_{key}" data-sortkey="{key}" title="{title}" '
        f'class="sdw-en-control sdw-en-sort{" sdw-en-enabled" if key == active else ""}">{label}</button>'
        for key, label, title in sorts
    )
    direction = "Descending" if descending else "Ascending"
    arrow = "↓" if descending else "↑"
    return (
        f'<div class="sdw-en-controls" id="{full}_controls" data-tab="{prefix}" data-page="{page}">'
        f'<input type="search" id="{full}_extra_search" class="sdw-en-search" placeholder="Search" '
        'autocomplete="off" aria-label="Search">'
        f'<span class="sdw-en-sort-label">Sort:</span>{buttons}'
        f'<button type="button" id="{full}_extra_sort_dir" class="sdw-en-control sdw-en-sort-dir" '
        f'data-sortdir="{direction}" title="Sort {direction.lower()}">{arrow}</button>'
        f'<button type="button" id="{full}_extra_tree_view" title="Show directories" '
        f'class="sdw-en-control sdw-en-tree{" sdw-en-enabled" if dirs_shown else ""}">Dirs</button>'
        f'<button type="button" id="{full}_extra_refresh" class="sdw-en-control sdw-en-refresh" '
        'title="Refresh page">🔄</button>'
        "</div>"
    )


# -- user metadata -----------------------------------------------------------------------------


def validate_user_metadata(page: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The editor's fields as the user-metadata keys A1111 writes; a gr.Error for bad input."""
    out: dict[str, Any] = {
        "description": _text(values.get("description"), "Description"),
        "notes": _text(values.get("notes"), "Notes"),
    }
    if page != LORA:
        return out
    sd_version = values.get("sd version") or "Unknown"
    if sd_version not in SD_VERSIONS:
        raise gr.Error(f"Stable Diffusion version must be one of {', '.join(SD_VERSIONS)}, not {sd_version!r}.")
    raw_weight = values.get("preferred weight")
    try:
        weight = float(raw_weight if raw_weight not in (None, "") else 0.0)
    except (TypeError, ValueError):
        raise gr.Error(f"Preferred weight must be a number, not {raw_weight!r}.") from None
    if not math.isfinite(weight) or not 0.0 <= weight <= MAX_WEIGHT:
        raise gr.Error(f"Preferred weight must be between 0 and {MAX_WEIGHT:g} (0 = the default), not {raw_weight}.")
    out["sd version"] = sd_version
    out["activation text"] = _text(values.get("activation text"), "Activation text", one_line=True)
    out["preferred weight"] = weight
    out["negative text"] = _text(values.get("negative text"), "Negative prompt", one_line=True)
    return out


def _text(value: Any, label: str, *, one_line: bool = False) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise gr.Error(f"{label} must be text.")
    if "\x00" in value:
        raise gr.Error(f"{label} must not contain NUL characters.")
    if one_line and ("\n" in value or "\r" in value):
        raise gr.Error(f"{label} must be one line: it is added to the prompt.")
    return value.strip() if one_line else value


def metadata_table(card: Card) -> list[tuple[str, str]]:
    """The file facts the editor shows (label, text)."""
    rows: list[tuple[str, str]] = [("Filename:", card.relative or Path(card.filename).name)]
    if card.size is not None:
        rows.append(("File size:", _pretty_bytes(card.size)))
    if card.shorthash:
        rows.append(("Hash:", card.shorthash))
    if card.modified:
        rows.append(("Modified:", datetime.datetime.fromtimestamp(card.modified).strftime("%Y-%m-%d %H:%M")))
    if card.error:
        rows.append(("Error:", card.error))
    for key, label in (
        ("ss_output_name", "Output name:"),
        ("ss_sd_model_name", "Model:"),
        ("ss_clip_skip", "Clip skip:"),
        ("ss_network_module", "Kohya module:"),
    ):
        value = card.metadata.get(key)
        if value is not None and str(value) != "None":
            rows.append((label, str(value)))
    started = _number(card.metadata.get("ss_training_started_at"))
    if started:
        trained = datetime.datetime.fromtimestamp(started, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")
        rows.append(("Date trained:", trained))
    return rows


def metadata_table_html(card: Card) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in metadata_table(card))
    return f'<table class="sdw-en-file-metadata">{rows}</table>'


def _pretty_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"  # pragma: no cover


# -- files next to a network ----------------------------------------------------------------------


def find_preview(path: Path) -> Path | None:
    """`<stem>.<ext>` or `<stem>.preview.<ext>` for the preview image types (A1111's order)."""
    base = path.with_suffix("") if not path.is_dir() else path
    for suffix in PREVIEW_SUFFIXES:
        for candidate in (Path(f"{base}{suffix}"), Path(f"{base}.preview{suffix}")):
            if candidate != path and candidate.is_file():
                return candidate
    return None


def find_description(path: Path) -> str:
    base = path.with_suffix("") if not path.is_dir() else path
    for candidate in (Path(f"{base}.txt"), Path(f"{base}.description.txt")):
        with contextlib.suppress(OSError):
            return candidate.read_text(encoding="utf-8", errors="replace")
    return ""


def user_metadata_path(path: Path) -> Path:
    base = path.with_suffix("") if not path.is_dir() else path
    return Path(f"{base}.json")


def read_user_metadata(path: Path) -> dict[str, Any]:
    """`<stem>.json` next to the file, {} when absent or unreadable."""
    try:
        data = json.loads(user_metadata_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _times(path: Path) -> tuple[float, float, int | None]:
    """(created, modified, size) of a file; zeros when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return 0.0, 0.0, None
    created = float(getattr(st, "st_birthtime", st.st_ctime))
    return created, float(st.st_mtime), st.st_size


def _cover_image(metadata: Mapping[str, Any]) -> bytes | None:
    raw = metadata.get("ssmd_cover_images")
    if not raw:
        return None
    try:
        images = json.loads(raw) if isinstance(raw, str) else raw
        first = next((i for i in images if i), None) if isinstance(images, list) else None
        return base64.b64decode(first, validate=False) if isinstance(first, str) else None
    except (ValueError, TypeError, binascii.Error):
        return None


# -- previews: thumbnails in Gradio's upload folder -----------------------------------------------

_thumb_lock = threading.Lock()


def thumbnail_dir() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve() / THUMBNAIL_DIR


def _write_thumbnail(source: Path | bytes, target: Path) -> bool:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.seek(0)
            picture = ImageOps.exif_transpose(image) or image
            picture.thumbnail(THUMBNAIL_BOX)
            has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
            picture = picture.convert("RGBA" if has_alpha else "RGB")
            buffer = io.BytesIO()
            picture.save(buffer, format="WEBP", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        log.warning("preview %s could not be read: %s", source if isinstance(source, Path) else "(embedded)", exc)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    return True


def thumbnail_url(card: Card, folder: Path | None = None) -> str | None:
    """The URL of `card`'s preview as a thumbnail Gradio serves (made once per file version), or
    None when it has none or it cannot be read."""
    folder = folder or thumbnail_dir()
    source: Path | bytes
    if card.preview is not None:
        if card.preview.suffix.lower() not in PREVIEW_SUFFIXES:
            return None
        try:
            st = card.preview.stat()
        except OSError:
            return None
        stamp = f"{card.preview.resolve()}\0{st.st_mtime_ns}\0{st.st_size}".encode()
        source = card.preview
    elif card.cover_image:
        stamp = card.cover_image
        source = card.cover_image
    else:
        return None
    target = folder / f"{hashlib.sha256(stamp).hexdigest()[:40]}.webp"
    if not target.is_file():
        with _thumb_lock:
            if not target.is_file() and not _write_thumbnail(source, target):
                return None
    return FILE_ROUTE + quote(str(target))


# -- the pages: cards from the registries -------------------------------------------------------


def _options(services: Services) -> Any:
    return services.options


def _networks(services: Services) -> Any:
    """`services.networks` (the LoRA / hypernetwork registry), None if this build has none."""
    return getattr(services, "networks", None)


def _network_common(page: str, info: Any) -> dict[str, Any]:
    filename = Path(str(info.filename))
    created, modified, size = _times(filename)
    user_metadata = dict(getattr(info, "user_metadata", None) or {})
    metadata = dict(getattr(info, "metadata", None) or {})
    description = str(user_metadata.get("description") or getattr(info, "description", "") or "")
    relative = str(getattr(info, "relative", "") or filename.name)
    shorthash = getattr(info, "shorthash", None)
    alias = str(getattr(info, "alias", "") or "")
    terms = tuple(t for t in (relative, alias if alias != info.name else "", shorthash or "") if t)
    mtime = getattr(info, "mtime", None)
    return {
        "page": page,
        "key": str(info.name),
        "name": str(info.name),
        "filename": str(filename),
        "relative": relative,
        "description": description,
        "preview": getattr(info, "preview", None),
        "search_terms": terms,
        "shorthash": shorthash,
        "size": getattr(info, "size", None) or size,
        "created": created,
        "modified": float(mtime) if mtime else modified,
        "error": str(getattr(info, "error", "") or ""),
        "user_metadata": user_metadata,
        "metadata": metadata,
        "source": info,
    }


def lora_cards(services: Services, *, filtered: bool = True) -> list[Card]:
    registry = _networks(services)
    if registry is None:
        return []
    infos = list(registry.loras())
    options = _options(services)
    preference = str(options.get("lora_preferred_name"))
    multiplier = float(options.get("extra_networks_default_multiplier"))
    show_all = bool(options.get("lora_show_all")) or not filtered
    hide_unknown: Sequence[str] = options.get("lora_hide_unknown_for_versions") or ()
    model_version = model_sd_version(services.engine.model_status().family)
    cards = []
    for info in infos:
        common = _network_common(LORA, info)
        user = common["user_metadata"]
        sd_version = str(user.get("sd version") or "")
        if sd_version not in SD_VERSIONS:
            sd_version = str(getattr(info, "sd_version", "") or "Unknown")
        if not lora_card_shown(sd_version, model_version, show_all=show_all, hide_unknown_for=hide_unknown):
            continue
        tag_name = preferred_lora_name(str(info.name), str(getattr(info, "alias", "") or ""), preference)
        prompt, negative = lora_texts(tag_name, user, multiplier)
        cover = _cover_image(common["metadata"]) if common["preview"] is None else None
        cards.append(Card(**common, prompt=prompt, negative_prompt=negative, sd_version=sd_version, cover_image=cover))
    return cards


def hypernetwork_cards(services: Services) -> list[Card]:
    registry = _networks(services)
    if registry is None:
        return []
    multiplier = float(_options(services).get("extra_networks_default_multiplier"))
    return [
        Card(**_network_common(HYPERNETWORKS, info), prompt=hypernetwork_text(str(info.name), multiplier))
        for info in registry.hypernetworks()
    ]


def embedding_cards(services: Services) -> list[Card]:
    """The embeddings the loaded model can use (A1111 lists its loaded ones; none before a model
    is loaded). Embeddings bundled in LoRAs have no file and no card."""
    found = services.engine.embeddings()
    if found is None:
        return []
    roots = [Path(services.paths.embeddings_dir)]
    cards = []
    for name, embedding in found.loaded.items():
        filename = getattr(embedding, "filename", None)
        if filename is None:
            continue
        path = Path(filename)
        created, modified, size = _times(path)
        user = read_user_metadata(path)
        relative = _relative(path, roots)
        shorthash = embedding.shorthash() if callable(getattr(embedding, "shorthash", None)) else None
        vectors = getattr(embedding, "vector_count", None)
        cards.append(
            Card(
                page=TEXTUAL_INVERSION,
                key=str(name),
                name=str(name),
                filename=str(path),
                relative=relative,
                description=str(user.get("description") or find_description(path)),
                preview=find_preview(path) if path.suffix.lower() not in PREVIEW_SUFFIXES else path,
                prompt=str(name),
                to_active_box=True,
                search_terms=tuple(t for t in (relative, shorthash or "") if t),
                shorthash=shorthash,
                size=size,
                created=created,
                modified=modified,
                user_metadata=user,
                metadata={"Vectors": vectors} if vectors else {},
                source=embedding,
            )
        )
    return cards


def _relative(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        with contextlib.suppress(ValueError):
            return path.relative_to(root).as_posix()
    return path.name


def checkpoint_cards(services: Services) -> list[Card]:
    roots = list(services.paths.checkpoint_dirs)
    cards = []
    for info in services.registry.checkpoints():
        path = Path(info.filename)
        created, modified, size = _times(path)
        user = read_user_metadata(path)
        cards.append(
            Card(
                page=CHECKPOINTS,
                key=info.title,
                name=info.name if info.is_folder else info.name.rsplit(".", 1)[0],
                filename=str(path),
                relative=_relative(path, roots),
                description=str(user.get("description") or find_description(path)),
                preview=find_preview(path),
                checkpoint=info.title,
                search_terms=tuple(t for t in (info.name, info.sha256 or "") if t),
                shorthash=info.shorthash,
                size=None if info.is_folder else size,
                created=created,
                modified=modified,
                user_metadata=user,
                source=info,
            )
        )
    return cards


def page_cards(services: Services, page: str) -> list[Card]:
    if page == LORA:
        return lora_cards(services)
    if page == HYPERNETWORKS:
        return hypernetwork_cards(services)
    if page == TEXTUAL_INVERSION:
        return embedding_cards(services)
    return checkpoint_cards(services)


def page_dirs(services: Services, page: str) -> list[Path]:
    """The folders a page's files come from (shown when it has none)."""
    paths = services.paths
    if page == CHECKPOINTS:
        return list(paths.checkpoint_dirs)
    if page == TEXTUAL_INVERSION:
        return [paths.embeddings_dir]
    if page == LORA:
        return [paths.lora_dir, paths.lycoris_dir]
    return [paths.hypernetwork_dir]


def refresh_page(services: Services, page: str) -> None:
    """🔄: rescan the page's registry."""
    if page == CHECKPOINTS:
        services.registry.refresh()
    elif page == TEXTUAL_INVERSION:
        services.engine.refresh_embeddings()
    else:
        registry = _networks(services)
        if registry is not None:
            registry.refresh("lora" if page == LORA else "hypernetwork")


def card_look(services: Services) -> CardLook:
    options = _options(services)
    return CardLook(
        width=int(options.get("extra_networks_card_width") or 0),
        height=int(options.get("extra_networks_card_height") or 0),
        text_scale=float(options.get("extra_networks_card_text_scale") or 1.0),
        show_description=bool(options.get("extra_networks_card_show_desc")),
        hidden_models=str(options.get("extra_networks_hidden_models")),
        dirs_shown=bool(options.get("extra_networks_tree_view_default_enabled")),
    )


def save_card_metadata(services: Services, card: Card, values: Mapping[str, Any]) -> dict[str, Any]:
    """Write the editor's values into the card's user metadata (`<stem>.json`): through the
    network registry for LoRAs and hypernetworks, next to the file for the others. -> the data."""
    data = {**card.user_metadata, **validate_user_metadata(card.page, values)}
    try:
        if card.page in (LORA, HYPERNETWORKS):
            registry = _networks(services)
            if registry is None:
                raise gr.Error("There is no network registry to save to.")
            registry.save_user_metadata(card.source, data)
        else:
            if not card.filename:
                raise gr.Error(f"{card.name} has no file to keep metadata next to.")
            atomic_write_json(user_metadata_path(Path(card.filename)), data)
    except (OSError, SdWebuiError) as exc:
        raise gr.Error(f"Could not save the metadata of {html.escape(card.name)}: {html.escape(str(exc))}") from exc
    return data


# -- the Gradio panel ------------------------------------------------------------------------------


class PageCards:
    """The cards a page last showed, by key: what a click or the editor acts on."""

    def __init__(self) -> None:
        self._cards: dict[tuple[str, str], dict[str, Card]] = {}
        self._lock = threading.Lock()

    def store(self, prefix: str, page: str, cards: Sequence[Card]) -> None:
        with self._lock:
            self._cards[(prefix, page)] = {card.key: card for card in cards}

    def find(self, services: Services, prefix: str, page: str, key: str) -> Card:
        with self._lock:
            card = self._cards.get((prefix, page), {}).get(key)
        if card is None:  # shown before a restart or a refresh elsewhere: look again
            fresh = page_cards(services, page) if page != LORA else lora_cards(services, filtered=False)
            card = next((c for c in fresh if c.key == key), None)
        if card is None:
            raise gr.Error(f"{html.escape(key)} is no longer there: refresh the page.")
        return card


@dataclass
class MetadataEditor:
    box: Any
    editing: Any  # gr.State: the key of the card being edited
    name: Any
    description: Any
    table: Any
    preview: Any
    notes: Any
    save: Any
    cancel: Any
    lora_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExtraNetworksPanel:
    tabs: dict[str, Any]
    cards: dict[str, Any]
    controls: dict[str, Any]
    editors: dict[str, MetadataEditor]


_CARDS_JS = "window.sdwExtraNetworks && window.sdwExtraNetworks.bindCards(element, trigger, watch);"
_CONTROLS_JS = "window.sdwExtraNetworks && window.sdwExtraNetworks.bindControls(element, trigger);"
_STORE = PageCards()


def render_page(services: Services, prefix: str, page: str, store: PageCards = _STORE) -> str:
    cards = page_cards(services, page)
    store.store(prefix, page, cards)
    return cards_html(
        prefix,
        page,
        cards,
        thumbnail_url,
        card_look(services),
        empty_dirs=page_dirs(services, page),
    )


def _find_component(elem_id: str) -> Any:
    """A component already built on this page (the quicksettings), by elem_id."""
    root = Context.root_block
    if root is None:
        return None
    return next((b for b in root.blocks.values() if getattr(b, "elem_id", None) == elem_id), None)


def _event_value(evt: gr.EventData, name: str) -> Any:
    data = getattr(evt, "_data", None)
    return data.get(name) if isinstance(data, dict) else None


def _build_editor(prefix: str, page: str) -> MetadataEditor:
    full = f"{prefix}_{page}"
    with gr.Column(
        visible=False, elem_id=f"{full}_edit_user_metadata", elem_classes="sdw-en-editor", min_width=0
    ) as box:
        editing = gr.State("")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=240):
                name = gr.HTML("", elem_classes="sdw-en-editor-name", padding=False)
                description = gr.Textbox(label="Description", lines=3, elem_id=f"{full}_edit_description")
                table = gr.HTML("", padding=False)
                lora_fields: dict[str, Any] = {}
                if page == LORA:
                    lora_fields["sd version"] = gr.Dropdown(
                        list(SD_VERSIONS),
                        value="Unknown",
                        label="Stable Diffusion version",
                        elem_id=f"{full}_edit_sd_version",
                    )
            with gr.Column(scale=1, min_width=160):
                preview = gr.HTML("", padding=False)
        if page == LORA:
            lora_fields["activation text"] = gr.Textbox(
                label="Activation text",
                info="Will be added to prompt along with Lora",
                elem_id=f"{full}_edit_activation",
            )
            lora_fields["preferred weight"] = gr.Slider(
                0.0,
                MAX_WEIGHT,
                value=0.0,
                step=0.01,
                label="Preferred weight",
                info="Set to 0 to disable",
                elem_id=f"{full}_edit_weight",
            )
            lora_fields["negative text"] = gr.Textbox(
                label="Negative prompt", info="Will be added to negative prompts", elem_id=f"{full}_edit_negative"
            )
        notes = gr.Textbox(label="Notes", lines=4, elem_id=f"{full}_edit_notes")
        with gr.Row(elem_classes="sdw-en-editor-buttons"):
            cancel = gr.Button("Cancel", elem_id=f"{full}_edit_cancel")
            save = gr.Button("Save", variant="primary", elem_id=f"{full}_edit_save")
    return MetadataEditor(box, editing, name, description, table, preview, notes, save, cancel, lora_fields)


def _editor_values(card: Card, preview_url: str | None) -> list[Any]:
    user = card.user_metadata
    preview = (
        f'<div class="sdw-en-editor-preview"><img src="{_esc(preview_url)}" alt=""></div>'
        if preview_url
        else '<div class="sdw-en-editor-preview sdw-en-no-preview"><span>No preview</span></div>'
    )
    values: list[Any] = [
        card.key,
        f"<h3>{_esc(card.name)}</h3>",
        str(user.get("description") or card.description or ""),
        metadata_table_html(card),
        preview,
        str(user.get("notes") or ""),
    ]
    if card.page == LORA:
        values += [
            card.sd_version if card.sd_version in SD_VERSIONS else "Unknown",
            str(user.get("activation text") or ""),
            min(max(_number(user.get("preferred weight")), 0.0), MAX_WEIGHT),
            str(user.get("negative text") or ""),
        ]
    return values


def build_page(
    prefix: str, page: str, services: Services, prompt: Any, negative: Any, store: PageCards = _STORE
) -> tuple[Any, Any, Any, MetadataEditor]:
    """One network tab (inside the tabs): controls, cards, editor, and their events."""
    full = f"{prefix}_{page}"
    options = _options(services)
    with gr.Tab(PAGE_TITLES[page], id=full, elem_id=full, elem_classes="extra-page") as tab:
        controls = gr.HTML(
            controls_html(
                prefix,
                page,
                sort_field=str(options.get("extra_networks_card_order_field")),
                descending=options.get("extra_networks_card_order") == "Descending",
                dirs_shown=bool(options.get("extra_networks_tree_view_default_enabled")),
            ),
            js_on_load=_CONTROLS_JS,
            elem_id=f"{full}_controls_html",
            elem_classes="sdw-en-controls-html",
            padding=False,
        )
        cards = gr.HTML(
            '<div class="sdw-en-empty">Loading…</div>',
            js_on_load=_CARDS_JS,
            elem_id=f"{full}_cards_html",
            elem_classes="sdw-en-cards-html",
            padding=False,
        )
        editor = _build_editor(prefix, page)

    def render() -> str:
        return render_page(services, prefix, page, store)

    tab.select(render, None, cards, queue=False, show_progress="hidden")

    def refresh() -> str:
        refresh_page(services, page)
        return render()

    controls.click(refresh, None, cards, show_progress="hidden")

    def clicked(prompt_text: str, negative_text: str, evt: gr.EventData) -> tuple[str, str]:
        card = store.find(services, prefix, page, str(_event_value(evt, "key") or ""))
        if card.checkpoint is not None:
            return gr.skip(), gr.skip()
        return card_click(
            card,
            prompt_text,
            negative_text,
            separator=str(_options(services).get("extra_networks_add_text_separator")),
            negative_box=bool(_event_value(evt, "negative")),
        )

    cards.click(clicked, [prompt, negative], [prompt, negative], queue=False, show_progress="hidden")

    if page == CHECKPOINTS:
        _wire_checkpoint_select(services, prefix, page, cards, store)

    lora_outputs = list(editor.lora_fields.values())
    shown = [editor.editing, editor.name, editor.description, editor.table, editor.preview, editor.notes]

    def open_editor(evt: gr.EventData) -> list[Any]:
        card = store.find(services, prefix, page, str(_event_value(evt, "key") or ""))
        return [*_editor_values(card, thumbnail_url(card)), gr.update(visible=True)]

    cards.edit(open_editor, None, [*shown, *lora_outputs, editor.box], queue=False, show_progress="hidden")
    editor.cancel.click(lambda: gr.update(visible=False), None, editor.box, queue=False)

    def save(key: str, description: str, notes: str, *lora_values: Any) -> tuple[Any, str]:
        card = store.find(services, prefix, page, key)
        values = {"description": description, "notes": notes, **dict(zip(editor.lora_fields, lora_values, strict=True))}
        save_card_metadata(services, card, values)
        gr.Info(f"Saved the metadata of {card.name}.")
        return gr.update(visible=False), render()

    editor.save.click(
        save,
        [editor.editing, editor.description, editor.notes, *lora_outputs],
        [editor.box, cards],
        queue=False,
        show_progress="hidden",
    )
    return tab, controls, cards, editor


def _wire_checkpoint_select(services: Services, prefix: str, page: str, cards: Any, store: PageCards) -> None:
    """A checkpoint card switches the checkpoint as the quicksettings dropdown does (same handler,
    same concurrency group), updating that dropdown and its status line when they are on the page."""
    from modules.ui.quicksettings import switch_checkpoint

    dropdown = _find_component(f"setting_{CHECKPOINT_OPTION}")
    status = _find_component("sd_checkpoint_status")
    outputs = [c for c in (dropdown, status) if c is not None]

    def select(evt: gr.EventData) -> Iterator[Any]:
        card = store.find(services, prefix, page, str(_event_value(evt, "key") or ""))
        for dropdown_update, status_update in switch_checkpoint(services, card.checkpoint):
            if len(outputs) == 2:
                yield dropdown_update, status_update
            elif outputs:
                yield dropdown_update if dropdown is not None else status_update

    cards.select(select, None, outputs or None, concurrency_id="model_switch", show_progress="hidden")


def build_extra_networks(prefix: str, services: Services, prompt: Any, negative: Any) -> ExtraNetworksPanel:
    """The network tabs, inside the `gr.Tabs` that holds the "Generation" tab."""
    order = order_pages(
        (TEXTUAL_INVERSION, HYPERNETWORKS, CHECKPOINTS, LORA),
        str(_options(services).get("ui_extra_networks_tab_reorder")),
    )
    panel = ExtraNetworksPanel({}, {}, {}, {})
    for page in order:
        tab, controls, cards, editor = build_page(prefix, page, services, prompt, negative)
        panel.tabs[page], panel.controls[page], panel.cards[page], panel.editors[page] = tab, controls, cards, editor
    return panel


@contextlib.contextmanager
def extra_networks_tabs(prefix: str, services: Services, prompt: Any, negative: Any) -> Iterator[None]:
    """`with extra_networks_tabs(...):` around a generation tab's settings: they go into the
    "Generation" tab of `#<prefix>_extra_tabs`, the network tabs next to it (A1111's layout)."""
    with gr.Tabs(elem_id=f"{prefix}_extra_tabs", elem_classes="sdw-extra-tabs"):
        with gr.Tab("Generation", id=f"{prefix}_generation", elem_id=f"{prefix}_generation_tab"):
            yield
        build_extra_networks(prefix, services, prompt, negative)
