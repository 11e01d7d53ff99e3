"""Extra-network cards as data and HTML (the pure part of the panel): what a card inserts into a
prompt and how a second click takes it out (A1111's `cardClicked`), which LoRA cards a model shows,
the card grid and its controls, and the user-metadata fields of the 🛠 editor, checked."""

from __future__ import annotations

import datetime
import html
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    pass

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
SORT_FIELDS = {"Path": "path", "Name": "name", "Date Created": "date_created", "Date Modified": "date_modified"}
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
    weight = as_number(user_metadata.get("preferred weight")) or float(default_multiplier)
    prompt = f"<lora:{tag_name}:{format_weight(weight)}>"
    activation = str(user_metadata.get("activation text") or "").strip()
    if activation:
        prompt += " " + activation
    negative = str(user_metadata.get("negative text") or "").strip()
    return prompt, f"({negative}:1)" if negative else ""


def hypernetwork_text(name: str, default_multiplier: float) -> str:
    return f"<hypernet:{name}:{format_weight(float(default_multiplier))}>"


def as_number(value: Any) -> float:
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


def html_text(value: object) -> str:
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
    attributes = " ".join(f'data-{k}="{html_text(v)}"' for k, v in data.items())
    classes = "card sdw-en-card"
    if search_only:
        classes += " search_only"
    if card.error:
        classes += " sdw-en-error"
    if preview_url:
        face = f'<img class="preview" src="{html_text(preview_url)}" loading="lazy" alt="">'
    else:
        face = '<div class="preview sdw-en-no-preview"><span>No preview</span></div>'
    title = card.relative or card.name
    if card.error:
        title += f"\n{card.error}"
    description = card.description if look.show_description else ""
    lines = [f'<span class="name">{html_text(card.name)}</span>']
    if card.error:
        lines.append(f'<span class="sdw-en-card-error">{html_text(card.error)}</span>')
    if description:
        lines.append(f'<span class="description">{html_text(description)}</span>')
    return (
        f'<div class="{classes}" {attributes} style="{html_text(style)}" title="{html_text(title)}">'
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
        f'<button class="sdw-en-dir" type="button" data-path="{html_text(d)}">{html_text(d)}</button>' for d in dirs
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
        folders = "".join(f"<li>{html_text(d)}</li>" for d in empty_dirs)
        where = f"<p>Add some to:</p><ul>{folders}</ul>" if folders else ""
        body = f'<div class="sdw-en-empty"><h3>Nothing here.</h3>{where}</div>'
    action = "select" if page == CHECKPOINTS else "click"  # what a card click asks the server to do
    return (
        f'<div class="sdw-en-pane" id="{full}_pane" data-tab="{html_text(prefix)}" data-click="{action}">{dirs_html}'
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
    started = as_number(card.metadata.get("ss_training_started_at"))
    if started:
        trained = datetime.datetime.fromtimestamp(started, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")
        rows.append(("Date trained:", trained))
    return rows


def metadata_table_html(card: Card) -> str:
    rows = "".join(f"<tr><th>{html_text(k)}</th><td>{html_text(v)}</td></tr>" for k, v in metadata_table(card))
    return f'<table class="sdw-en-file-metadata">{rows}</table>'


def _pretty_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"  # pragma: no cover
