"""Prompt styles in the generation tabs (a1111.md 10.1, `styles.csv` through `StyleDatabase`):
📋 applies the selected styles to the prompt boxes; 🖌️ opens the style editor, a dialog with a
style picker (a new name may be typed), 🔄 reload from disk, 📋 apply, 📝 copy the main prompts
into the style, the style's prompt boxes and Save / Delete / Close.

The styles dropdowns of every tab reload their choices from the database when they get focus, so
a style saved or deleted in one tab's editor (or edited in styles.csv and refreshed) is offered
in the other tab too; the tab that saved is updated at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.core.options import Options
from modules.core.styles import PromptStyle, StyleDatabase
from modules.services import Services

if TYPE_CHECKING:
    from modules.ui.common import PromptRow

# Line breaks and NUL do not survive a CSV round trip through `StyleDatabase.reload` as a name
# (names are stripped, one per row); a leading `#` marks a comment row in styles.csv.
_BAD_NAME_CHARS = ("\n", "\r", "\x00")

# Asks before deleting, like A1111; a cancelled confirm sends None, which the handler ignores.
_CONFIRM_DELETE_JS = '(name, selected) => [(name && confirm(`Delete style "${name}"?`)) ? name : null, selected]'


@dataclass
class StylesDialog:
    """One tab's style editor (A1111's elem_ids with the tab's prefix)."""

    prefix: str
    dialog: Any
    selection: Any
    refresh: Any
    apply: Any
    copy: Any
    prompt: Any
    negative: Any
    save: Any
    delete: Any
    close: Any


def style_names(db: StyleDatabase) -> list[str]:
    return [style.name for style in db.styles()]


def dropdown_update(db: StyleDatabase, selected: Sequence[str] | None = None) -> Any:
    """The main styles dropdown with the current names; selected styles that no longer exist are
    dropped (the value is left alone otherwise, so a pick made meanwhile is not undone)."""
    names = style_names(db)
    chosen = list(selected or [])
    kept = [name for name in chosen if name in names]
    if kept != chosen:
        return gr.update(choices=names, value=kept)
    return gr.update(choices=names)


def selection_update(db: StyleDatabase, value: str | None = None) -> Any:
    """The editor's style picker with the current names (and `value` when given)."""
    if value is None:
        return gr.update(choices=style_names(db))
    return gr.update(choices=style_names(db), value=value)


def apply_styles(db: StyleDatabase, prompt: str, negative: str, names: list[str] | None) -> tuple[str, str, Any]:
    """The selected styles written into the prompts (A1111's 📋); the selection is cleared so the
    styles are not applied a second time at generation."""
    try:
        new_prompt, new_negative = db.apply(prompt or "", negative or "", names or ())
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return new_prompt, new_negative, gr.update(value=[])


def validate_name(name: str | None) -> str:
    """The style name to save under (surrounding spaces removed, as styles.csv reads it back), or
    a gr.Error saying why it cannot be one."""
    cleaned = (name or "").strip()
    if not cleaned:
        raise gr.Error("Style name is empty: type a name for the style.")
    if any(char in cleaned for char in _BAD_NAME_CHARS):
        raise gr.Error("Style name must be one line (no line breaks).")
    if cleaned.startswith("#"):
        raise gr.Error("Style name must not start with '#' (styles.csv treats such rows as comments).")
    return cleaned


def select_style(db: StyleDatabase, name: str | None) -> tuple[Any, Any, Any, Any]:
    """Picking a style in the editor: its prompts go into the boxes (a new name keeps what is
    typed there); Delete is offered only for an existing style, Save only for a non-empty name.
    -> (prompt, negative prompt, delete button, save button)"""
    cleaned = (name or "").strip()
    try:
        style: PromptStyle | None = db.get(cleaned) if cleaned else None
    except SdWebuiError:
        style = None
    if style is None:
        return gr.skip(), gr.skip(), gr.update(visible=False), gr.update(visible=bool(cleaned))
    return style.prompt, style.negative_prompt, gr.update(visible=True), gr.update(visible=True)


def save_style(
    db: StyleDatabase, name: str | None, prompt: str | None, negative: str | None, selected: list[str] | None
) -> tuple[Any, Any, Any]:
    """Create or update the style in styles.csv.
    -> (main styles dropdown, editor picker, delete button)"""
    cleaned = validate_name(name)
    try:
        db.save(PromptStyle(cleaned, prompt or "", negative or ""))
    except (SdWebuiError, OSError) as exc:
        raise gr.Error(f"Could not save style {cleaned!r}: {exc}") from exc
    gr.Info(f"Style {cleaned!r} saved.")
    return dropdown_update(db, selected), selection_update(db, cleaned), gr.update(visible=True)


def delete_style(db: StyleDatabase, name: str | None, selected: list[str] | None) -> tuple[Any, ...]:
    """Remove the style from styles.csv. `None` (the confirm was cancelled) changes nothing.
    -> (main styles dropdown, editor picker, prompt, negative prompt, delete button)"""
    if name is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    cleaned = (name or "").strip()
    if not cleaned:
        raise gr.Error("Choose a style to delete.")
    try:
        db.delete(cleaned)
    except (SdWebuiError, OSError) as exc:
        raise gr.Error(f"Could not delete style {cleaned!r}: {exc}") from exc
    gr.Info(f"Style {cleaned!r} deleted.")
    return dropdown_update(db, selected), selection_update(db, ""), "", "", gr.update(visible=False)


def refresh_styles(db: StyleDatabase, selected: list[str] | None, name: str | None) -> tuple[Any, Any, Any, Any]:
    """🔄: reload styles.csv from disk.
    -> (main styles dropdown, editor picker, delete button, save button)"""
    db.reload()
    cleaned = (name or "").strip()
    exists = cleaned in style_names(db)
    return (
        dropdown_update(db, selected),
        selection_update(db),
        gr.update(visible=exists),
        gr.update(visible=bool(cleaned)),
    )


def copy_prompts(prompt: str | None, negative: str | None) -> tuple[str, str]:
    """📝: the main prompts into the style's boxes."""
    return prompt or "", negative or ""


def text_for_token_counter(
    db: StyleDatabase, options: Options, text: str | None, names: Sequence[str] | None, *, is_positive: bool = True
) -> str:
    """The text a token counter should count: with option `include_styles_into_token_counters`
    on (A1111's default), the prompt with the selected styles applied; unknown names are skipped
    (the counter is no place for an error). Call as
    `text_for_token_counter(services.styles, services.options, text, row.styles value, ...)`."""
    text = text or ""
    if not names or not options.get("include_styles_into_token_counters"):
        return text
    known = set(style_names(db))
    usable = [name for name in names if name in known]
    if is_positive:
        return db.apply(text, "", usable)[0]
    return db.apply("", text, usable)[1]


def build_styles_dialog(prefix: str, services: Services, row: PromptRow) -> StylesDialog:
    """Wire 📋 (apply) and build the 🖌️ style editor for one tab's prompt row."""
    with gr.Column(
        visible=False, elem_id=f"{prefix}_styles_dialog", elem_classes="sdw-styles-dialog", min_width=0
    ) as dialog:
        gr.Markdown("### Styles editor", elem_classes="sdw-styles-title")
        with gr.Row(elem_id=f"{prefix}_styles_edit_row", equal_height=True):
            selection = gr.Dropdown(
                label="Styles",
                choices=style_names(services.styles),
                value="",
                allow_custom_value=True,
                elem_id=f"{prefix}_styles_edit_select",
                info="Choose a style to edit, or type a new name.",
                scale=6,
            )
            refresh = gr.Button("🔄", elem_id=f"refresh_{prefix}_styles", size="sm", min_width=40, scale=0)
            apply = gr.Button("📋", elem_id=f"{prefix}_style_apply_dialog", size="sm", min_width=40, scale=0)
            copy = gr.Button("📝", elem_id=f"{prefix}_style_copy", size="sm", min_width=40, scale=0)
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_edit_style_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=3, elem_id=f"{prefix}_edit_style_neg_prompt")
        with gr.Row(elem_id=f"{prefix}_edit_style_buttons"):
            save = gr.Button("Save", variant="primary", elem_id=f"{prefix}_edit_style_save", visible=False)
            delete = gr.Button("Delete", variant="stop", elem_id=f"{prefix}_edit_style_delete", visible=False)
            close = gr.Button("Close", elem_id=f"{prefix}_edit_style_close")
    editor = StylesDialog(prefix, dialog, selection, refresh, apply, copy, prompt, negative, save, delete, close)
    _wire(services.styles, row, editor)
    return editor


def _wire(db: StyleDatabase, row: PromptRow, editor: StylesDialog) -> None:
    for button in (row.style_apply, editor.apply):
        button.click(
            lambda p, n, names: apply_styles(db, p, n, names),
            [row.prompt, row.negative, row.styles],
            [row.prompt, row.negative, row.styles],
            queue=False,
        )
    row.styles_edit.click(
        lambda: (gr.update(visible=True), selection_update(db)), None, [editor.dialog, editor.selection]
    )
    editor.close.click(lambda: gr.update(visible=False), None, editor.dialog, queue=False)
    # another tab's editor (or 🔄 after editing styles.csv) may have changed the list
    row.styles.focus(
        lambda selected: dropdown_update(db, selected),
        row.styles,
        row.styles,
        queue=False,
        show_progress="hidden",
    )
    editor.selection.focus(lambda: selection_update(db), None, editor.selection, show_progress="hidden")
    editor.selection.change(
        lambda name: select_style(db, name),
        editor.selection,
        [editor.prompt, editor.negative, editor.delete, editor.save],
        queue=False,
        show_progress="hidden",
    )
    editor.refresh.click(
        lambda selected, name: refresh_styles(db, selected, name),
        [row.styles, editor.selection],
        [row.styles, editor.selection, editor.delete, editor.save],
        queue=False,
    )
    editor.copy.click(copy_prompts, [row.prompt, row.negative], [editor.prompt, editor.negative], queue=False)
    editor.save.click(
        lambda name, p, n, selected: save_style(db, name, p, n, selected),
        [editor.selection, editor.prompt, editor.negative, row.styles],
        [row.styles, editor.selection, editor.delete],
        queue=False,
    )
    editor.delete.click(
        lambda name, selected: delete_style(db, name, selected),
        [editor.selection, row.styles],
        [row.styles, editor.selection, editor.prompt, editor.negative, editor.delete],
        js=_CONFIRM_DELETE_JS,
        queue=False,
    )
