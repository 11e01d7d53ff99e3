"""The Settings tab without a browser: built inside gr.Blocks over real Options, it offers the options
something acts on and leaves out the ones nothing reads yet (the API still lists and stores those);
frozen options are shown read-only and applying a change to one is refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules.core.option_defaults import default_option_infos, unimplemented_options
from modules.core.option_info import OptionInfo
from modules.core.options import Options
from modules.ui.settings import SettingsTab, apply_settings, build_settings_tab, quicksettings_keys
from tests.ui.gradio_loop import in_a_loop


def build(services: Any) -> tuple[gr.Blocks, SettingsTab]:
    def make() -> tuple[gr.Blocks, SettingsTab]:
        with gr.Blocks() as blocks:
            tab = build_settings_tab(services)
        return blocks, tab

    return in_a_loop(make)


def elem_ids(blocks: gr.Blocks) -> set[str]:
    return {str(c.elem_id) for c in blocks.blocks.values() if getattr(c, "elem_id", None)}


@pytest.fixture()
def services(tmp_path: Path) -> Any:
    options = Options(default_option_infos(), tmp_path / "config.json")
    return SimpleNamespace(options=options)


def test_unread_options_are_not_offered_and_read_ones_are(services: Any) -> None:
    blocks, tab = build(services)
    ids = elem_ids(blocks)
    for key in ("tiling", "samples_save", "pad_cond_uncond"):  # nothing reads these
        assert key in unimplemented_options()
        assert f"setting_{key}" not in ids and key not in tab.fields
    for key in (
        "jpeg_quality",
        "CLIP_stop_at_last_layers",
        "emphasis",
        "eta_ddim",
        "s_churn",
        "font",  # grid labels (X/Y/Z plot, prompt matrix)
    ):  # the engine reads these
        assert f"setting_{key}" in ids and key in tab.fields
    assert not set(tab.fields) & set(unimplemented_options())
    # the API side is unchanged: listed and stored
    assert "tiling" in services.options.as_dict()
    assert services.options.apply_update({"tiling": True}).changed == ["tiling"]


def test_a_section_of_unread_options_only_has_no_entry(services: Any) -> None:
    blocks, _ = build(services)
    ids = elem_ids(blocks)
    assert "settings_section_upscaling" not in ids and "settings_section_system" not in ids
    assert "settings_section_saving-images" in ids
    assert "settings_section_interrogate" in ids and "settings_section_training" in ids  # read now


def test_an_unread_option_in_quicksettings_list_is_skipped(services: Any, caplog: pytest.LogCaptureFixture) -> None:
    services.options.set("quicksettings_list", ["sd_model_checkpoint", "tiling", "CLIP_stop_at_last_layers"])
    assert quicksettings_keys(services) == ["sd_model_checkpoint", "CLIP_stop_at_last_layers"]
    assert "'tiling' is not acted on yet" in caplog.text


def test_frozen_options_are_read_only_and_changes_are_refused(services: Any) -> None:
    services.options.freeze(keys=["jpeg_quality"])
    _, tab = build(services)
    assert tab.fields["jpeg_quality"].interactive is False
    assert tab.fields["samples_format"].interactive is not False
    info = services.options.info("jpeg_quality")
    with pytest.raises(gr.Error, match="frozen"):
        apply_settings(services, [info], [70])
    assert services.options.get("jpeg_quality") == 80


def _page_load(blocks: gr.Blocks) -> Any:
    loads = [f for f in blocks.fns.values() if any(event == "load" for _id, event in f.targets)]
    assert len(loads) == 1
    return loads[0]


def _sent(tab: SettingsTab, load: Any) -> dict[str, Any]:
    """What the page load would apply, by option key (skipped fields left out)."""
    keys = [next(k for k, c in tab.fields.items() if c is out) for out in load.outputs]
    return {k: u for k, u in zip(keys, load.fn(), strict=True) if u != {"__type__": "update"}}


def test_the_page_load_sends_only_the_fields_changed_since_the_page_was_built(tmp_path: Path) -> None:
    """Every field the page load updates costs the browser a walk of Gradio's whole component tree:
    an unchanged field is skipped (gr.skip()); a changed value or changed dynamic choices are sent."""
    vaes = ["Automatic", "None"]
    dynamic = OptionInfo(
        key="test_dynamic_vae",
        default="Automatic",
        label="A dynamic list",
        section="sd",
        type=str,
        choices=lambda: list(vaes),
    )
    services = SimpleNamespace(options=Options([*default_option_infos(), dynamic], tmp_path / "config.json"))
    blocks, tab = build(services)
    load = _page_load(blocks)
    assert _sent(tab, load) == {}
    services.options.set("jpeg_quality", 55)
    services.options.set("extra_networks_default_multiplier", 0.5)
    services.options.set("quicksettings_list", ["sd_model_checkpoint", "CLIP_stop_at_last_layers"])
    assert _sent(tab, load) == {
        "jpeg_quality": 55,
        "extra_networks_default_multiplier": 0.5,
        "quicksettings_list": "sd_model_checkpoint, CLIP_stop_at_last_layers",  # a free list: as its textbox shows it
    }
    services.options.set("jpeg_quality", 80)  # back to the value the page was built with
    assert "jpeg_quality" not in _sent(tab, load)
    vaes.append("vae-ft-mse.safetensors")  # a file appeared: the dropdown gets the new list, value unchanged
    assert _sent(tab, load)["test_dynamic_vae"] == {
        "__type__": "update",
        "choices": vaes,
        "value": "Automatic",
    }


def test_the_page_load_shows_its_progress_on_one_component(services: Any) -> None:
    """Gradio's front end re-applies the loading status of every progress target it ever tracked on
    each status change of any event, walking its component tree for each: the load's ~160 outputs
    made every later click in the page slower."""
    blocks, tab = build(services)
    load = _page_load(blocks)
    assert len(load.outputs) > 50
    assert load.show_progress_on == [tab.result]
