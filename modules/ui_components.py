"""A1111's `modules.ui_components` for extension code: its small Gradio components, as Gradio 6
components built on the 3.41-compatible classes of `modules.extensions.gradio_compat` (so they take
3.41's arguments, `.style()` and `_js=` too).

- `ToolButton`: a small button (class `tool`), for one emoji;
- `FormRow`, `FormColumn`, `FormGroup`, `FormHTML`, `FormColorPicker`: the plain Row, Column, Group,
  HTML and ColorPicker (A1111 needed them to sit inside Gradio 3 forms);
- `ResizeHandleRow`: a Row with class `resize-handle-row`;
- `DropdownMulti` (always multiselect), `DropdownEditable` (custom values allowed);
- `InputAccordion`: a checkbox whose value is "enabled", shown as an accordion: `with
  InputAccordion(False, label="My feature") as enabled:` builds the accordion's contents; opening
  the accordion ticks it and closing it unticks it (A1111's linked behaviour), the "Enable" box
  inside changes it on its own, and a value set from code (paste, send-to) opens or closes it.
  `.accordion` is the accordion, `.extra()` a column for controls next to the box.
"""

from __future__ import annotations

from typing import Any

from modules.extensions.gradio_compat import compat_gradio as gr

_Button: Any = gr.Button
_Row: Any = gr.Row
_Column: Any = gr.Column
_Group: Any = gr.Group
_HTML: Any = gr.HTML
_ColorPicker: Any = gr.ColorPicker
_Dropdown: Any = gr.Dropdown
_Checkbox: Any = gr.Checkbox


def _classes(kwargs: dict[str, Any], *extra: str) -> list[str]:
    given = kwargs.pop("elem_classes", None) or []
    return [*extra, *([given] if isinstance(given, str) else given)]


class FormComponent:
    """A1111's marker base of the Form* classes (nothing to do in Gradio 6)."""


class ToolButton(FormComponent, _Button):
    """A small button with one emoji as its text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["elem_classes"] = _classes(kwargs, "tool")
        kwargs.setdefault("size", "sm")
        kwargs.setdefault("min_width", 40)
        kwargs.setdefault("scale", 0)
        super().__init__(*args, **kwargs)


class ResizeHandleRow(_Row):
    """A Row with A1111's `resize-handle-row` class."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["elem_classes"] = _classes(kwargs, "resize-handle-row")
        super().__init__(**kwargs)


class FormRow(FormComponent, _Row):
    """A Row."""


class FormColumn(FormComponent, _Column):
    """A Column."""


class FormGroup(FormComponent, _Group):
    """A Group."""


class FormHTML(FormComponent, _HTML):
    """An HTML block."""


class FormColorPicker(FormComponent, _ColorPicker):
    """A ColorPicker."""


class DropdownMulti(FormComponent, _Dropdown):
    """A Dropdown that is always multiselect."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["multiselect"] = True
        super().__init__(**kwargs)


class DropdownEditable(FormComponent, _Dropdown):
    """A Dropdown that takes values not in its choices."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["allow_custom_value"] = True
        super().__init__(**kwargs)


class InputAccordion(_Checkbox):
    """A checkbox (the value: enabled) shown as an accordion; see the module docstring."""

    global_index = 0

    def __init__(self, value: bool = False, **kwargs: Any) -> None:
        accordion_id = kwargs.get("elem_id")
        if accordion_id is None:
            accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        self.accordion_id = str(accordion_id)
        label = kwargs.get("label") or "Accordion"
        self.accordion = gr.Accordion(
            label=label,
            open=bool(value),
            visible=kwargs.get("visible", True),
            elem_id=self.accordion_id,
            elem_classes=["input-accordion"],
        )
        checkbox = {
            **kwargs,
            "label": label,
            "elem_id": f"{self.accordion_id}-checkbox",
            "elem_classes": _classes(kwargs, "input-accordion-checkbox"),
        }
        checkbox.pop("visible", None)
        with self.accordion:
            super().__init__(bool(value), **checkbox)
        self.accordion.expand(lambda: True, None, self, queue=False, show_progress="hidden")
        self.accordion.collapse(lambda: False, None, self, queue=False, show_progress="hidden")
        self.change(
            lambda checked: gr.update(open=bool(checked)),
            self,
            self.accordion,
            queue=False,
            show_progress="hidden",
        )

    def extra(self) -> Any:
        """A column for controls beside the box (`with accordion.extra(): ...`)."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self) -> InputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)

    def get_block_name(self) -> str:
        return "checkbox"
