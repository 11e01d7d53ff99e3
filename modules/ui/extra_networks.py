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

import contextlib
import html
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.context import Context

from modules.ui.extra_network_cards import (
    CHECKPOINTS,
    HYPERNETWORKS,
    LORA,
    MAX_WEIGHT,
    PAGE_TITLES,
    SD_VERSIONS,
    TEXTUAL_INVERSION,
    Card,
    as_number,
    card_click,
    cards_html,
    controls_html,
    html_text,
    metadata_table_html,
    order_pages,
)
from modules.ui.extra_network_pages import (
    card_look,
    lora_cards,
    options_of,
    page_cards,
    page_dirs,
    refresh_page,
    save_card_metadata,
    thumbnail_url,
)

if TYPE_CHECKING:
    from modules.services import Services

log = logging.getLogger(__name__)

CHECKPOINT_OPTION = "sd_model_checkpoint"

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
        f'<div class="sdw-en-editor-preview"><img src="{html_text(preview_url)}" alt=""></div>'
        if preview_url
        else '<div class="sdw-en-editor-preview sdw-en-no-preview"><span>No preview</span></div>'
    )
    values: list[Any] = [
        card.key,
        f"<h3>{html_text(card.name)}</h3>",
        str(user.get("description") or card.description or ""),
        metadata_table_html(card),
        preview,
        str(user.get("notes") or ""),
    ]
    if card.page == LORA:
        values += [
            card.sd_version if card.sd_version in SD_VERSIONS else "Unknown",
            str(user.get("activation text") or ""),
            min(max(as_number(user.get("preferred weight")), 0.0), MAX_WEIGHT),
            str(user.get("negative text") or ""),
        ]
    return values


def build_page(
    prefix: str, page: str, services: Services, prompt: Any, negative: Any, store: PageCards = _STORE
) -> tuple[Any, Any, Any, MetadataEditor]:
    """One network tab (inside the tabs): controls, cards, editor, and their events."""
    full = f"{prefix}_{page}"
    options = options_of(services)
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
            separator=str(options_of(services).get("extra_networks_add_text_separator")),
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
        str(options_of(services).get("ui_extra_networks_tab_reorder")),
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
