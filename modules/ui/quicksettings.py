"""The quicksettings row above the tabs (a1111.md 10): every key of the `quicksettings_list` option
as its Settings field (elem_id `setting_<key>`), applied and saved as soon as it changes.

`sd_model_checkpoint` is the checkpoint switcher: a dropdown with a refresh button and a status
line ("Loading …", then "Loaded … in 1.2 s" or the error), disabled while a checkpoint loads.
`sd_vae` is a dropdown of Automatic / None / the VAE files, with a refresh button. The row also
holds the hidden light/dark mode the page-load event hands to `js/theme.js`.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.core.jobs import VAE_AUTOMATIC, VAE_NONE
from modules.core.option_info import OptionInfo
from modules.services import Services
from modules.ui.settings import from_ui, make_component, quicksettings_keys, to_ui
from modules.ui.theme import APPLY_MODE_JS, color_mode
from modules.ui.user_events import user_change

log = logging.getLogger(__name__)

CHECKPOINT = "sd_model_checkpoint"
VAE = "sd_vae"
COLOR_MODE = "ui_color_mode"


def checkpoint_titles(services: Services) -> list[str]:
    return [c.title for c in services.registry.checkpoints()]


def current_checkpoint(services: Services) -> str | None:
    return services.engine.model_status().checkpoint


def vae_choices(services: Services) -> list[str]:
    """A1111's `sd_vae` choices: Automatic, None, then the VAE files by name."""
    return [VAE_AUTOMATIC, VAE_NONE, *(v.name for v in services.registry.vaes())]


def checkpoint_name(services: Services, title: str) -> str:
    """The file name a status line shows for a dropdown title ("sd2.safetensors")."""
    try:
        return services.registry.find_checkpoint(title).name
    except SdWebuiError:
        return title


def status_html(text: str, kind: str) -> str:
    """The status line under the checkpoint dropdown; `kind` is loading, done or error."""
    return f'<span class="sdw-checkpoint-status sdw-{kind}">{html.escape(text)}</span>'


def error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SdWebuiError) else f"{type(exc).__name__}: {exc}"


def apply_option(services: Services, key: str, info: OptionInfo, raw: Any) -> None:
    """Set one option from its field and save config.json; a refused value is a gr.Error (the
    option keeps its old value)."""
    value = from_ui(info, raw)
    if value is None:
        raise gr.Error(f"{html.escape(info.label)}: please enter a value")
    if value == services.options.get(key):
        return
    try:
        services.options.set(key, value)
    except SdWebuiError as exc:
        raise gr.Error(html.escape(str(exc))) from exc
    except Exception as exc:  # an on_change callback (e.g. a VAE file that fails to load)
        raise gr.Error(html.escape(error_text(exc))) from exc
    save_options(services)


def save_options(services: Services) -> None:
    if services.options.path is None:
        return
    try:
        services.options.save()
    except OSError as exc:
        log.warning("could not save %s: %s", services.options.path, exc)


def switch_checkpoint(services: Services, title: str | None) -> Iterator[tuple[Any, Any]]:
    """The checkpoint dropdown's handler: (dropdown update, status line) while loading, then the
    result; a failed load shows the error, puts the dropdown back and raises gr.Error."""
    before = current_checkpoint(services)
    if not title or title == before:
        yield gr.update(value=before, interactive=True), gr.update()
        return
    name = checkpoint_name(services, title)
    yield gr.update(interactive=False), status_html(f"Loading {name}…", "loading")
    start = time.perf_counter()
    try:
        services.options.set(CHECKPOINT, title)
    except Exception as exc:
        message = error_text(exc)
        yield (
            gr.update(value=current_checkpoint(services), interactive=True),
            status_html(f"Could not load {name}: {message}", "error"),
        )
        raise gr.Error(html.escape(message)) from exc
    elapsed = time.perf_counter() - start
    loaded = services.engine.model_status().checkpoint_name
    shown = loaded if loaded is not None else name
    yield (
        gr.update(value=current_checkpoint(services), interactive=True),
        status_html(f"Loaded {shown} in {elapsed:.1f} s", "done"),
    )


@dataclass
class Quicksettings:
    keys: list[str]
    fields: dict[str, gr.components.Component]
    status: gr.HTML | None
    color_mode: gr.HTML


def _refresh_button(key: str) -> gr.Button:
    return gr.Button("↻", elem_id=f"refresh_{key}", size="sm", scale=0, min_width=40, elem_classes="sdw-refresh-button")


def build_quicksettings(services: Services, blocks: gr.Blocks) -> Quicksettings:
    """Build the row inside the current `gr.Blocks`; its page-load event fills in the current values."""
    keys = quicksettings_keys(services)
    infos = services.options.infos()
    fields: dict[str, gr.components.Component] = {}
    status: gr.HTML | None = None
    refreshers: dict[str, gr.Button] = {}
    with gr.Row(elem_id="quicksettings", equal_height=False):
        for key in keys:
            info = infos[key]
            if key == CHECKPOINT:
                fields[key] = gr.Dropdown(
                    label=info.label if info.label else "Stable Diffusion checkpoint",
                    choices=checkpoint_titles(services),
                    value=current_checkpoint(services),
                    allow_custom_value=True,
                    elem_id="setting_sd_model_checkpoint",
                    scale=0,
                    min_width=320,
                )
                refreshers[key] = _refresh_button(key)
                status = gr.HTML("", padding=False, min_height=0, scale=0, min_width=0, elem_id="sd_checkpoint_status")
            elif key == VAE:
                fields[key] = gr.Dropdown(
                    label=info.label,
                    choices=vae_choices(services),
                    value=str(services.options.get(key)),
                    allow_custom_value=False,
                    elem_id="setting_sd_vae",
                    scale=0,
                    min_width=200,
                )
                refreshers[key] = _refresh_button(key)
            else:
                value = to_ui(info, services.options.get(key))
                layout: dict[str, Any] = {"scale": 0, "min_width": 200 if info.type is not bool else 160}
                if key == COLOR_MODE and services.settings.theme:
                    layout["interactive"] = False  # the --theme flag decides
                fields[key] = make_component(info, value, **layout)
        # not a form field (Gradio would join it to the fields before it); theme.js reads its value
        mode = gr.HTML(color_mode(services), visible="hidden", padding=False, min_height=0, elem_id="sdw_color_mode")

    for key, field in fields.items():
        _wire_field(services, key, field, status, mode)
    if CHECKPOINT in refreshers:
        refreshers[CHECKPOINT].click(lambda: _checkpoint_update(services), None, fields[CHECKPOINT], queue=False)
    if VAE in refreshers:
        refreshers[VAE].click(lambda: _vae_update(services), None, fields[VAE], queue=False)

    ordered = list(fields.values())

    def current() -> Any:
        updates = [_current_update(services, key) for key in fields]
        return updates[0] if len(updates) == 1 else updates  # Gradio takes one output's value as is

    def mode_now() -> str:
        return color_mode(services)

    if ordered:
        blocks.load(current, None, ordered, queue=False).then(mode_now, None, mode, queue=False).then(
            None, mode, None, js=APPLY_MODE_JS, queue=False
        )
    else:
        blocks.load(mode_now, None, mode, queue=False).then(None, mode, None, js=APPLY_MODE_JS, queue=False)
    return Quicksettings(keys, fields, status, mode)


def _checkpoint_update(services: Services, *, refresh: bool = True) -> Any:
    if refresh:
        services.registry.refresh()
    return gr.update(choices=checkpoint_titles(services), value=current_checkpoint(services))


def _vae_update(services: Services, *, refresh: bool = True) -> Any:
    if refresh:
        services.registry.refresh()
    return gr.update(choices=vae_choices(services), value=str(services.options.get(VAE)))


def _current_update(services: Services, key: str) -> Any:
    """What the page load puts into a quicksettings field (the checkpoint may have loaded, and been
    hashed, after the page was built)."""
    if key == CHECKPOINT:
        return _checkpoint_update(services)
    if key == VAE:
        return _vae_update(services, refresh=False)
    info = services.options.info(key)
    value = to_ui(info, services.options.get(key))
    if callable(info.choices):
        return gr.update(choices=info.choice_list() or [], value=value)
    return value


def _wire_field(
    services: Services,
    key: str,
    field: gr.components.Component,
    status: gr.HTML | None,
    mode: gr.HTML,
) -> None:
    if key == CHECKPOINT:
        assert status is not None

        def switch(title: str | None) -> Iterator[tuple[Any, Any]]:
            yield from switch_checkpoint(services, title)

        user_change(field)(
            switch,
            field,
            [field, status],
            concurrency_id="model_switch",
            show_progress="hidden",
        )
        return
    info = services.options.info(key)
    revert: Callable[[], Any] = lambda: _current_update(services, key)  # noqa: E731
    event = user_change(field)(
        lambda raw: apply_option(services, key, info, raw),
        field,
        None,
        concurrency_id="model_switch" if key == VAE else None,
        show_progress="hidden",
    )
    event.failure(revert, None, field, queue=False)
    if key == COLOR_MODE:
        event.success(lambda: color_mode(services), None, mode, queue=False).then(
            None, mode, None, js=APPLY_MODE_JS, queue=False
        )
