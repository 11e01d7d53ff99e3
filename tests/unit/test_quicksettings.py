"""The quicksettings row's logic without a browser: which keys it shows, applying a field (saved,
refused values as gr.Error with the old value kept), the checkpoint switch's status lines, the
light/dark mode from the flag and the option."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules.core.errors import ModelLoadError
from modules.core.option_defaults import default_option_infos
from modules.core.options import Options
from modules.ui.quicksettings import apply_option, switch_checkpoint
from modules.ui.settings import quicksettings_keys, shown_options
from modules.ui.theme import color_mode


@dataclass
class FakeCheckpoint:
    name: str

    @property
    def title(self) -> str:
        return f"{self.name} [0123456789]"


@dataclass
class FakeModels:
    active: FakeCheckpoint | None = None
    fail: bool = False
    loads: list[str] = field(default_factory=list)

    def model_status(self) -> Any:
        active = self.active
        return SimpleNamespace(
            checkpoint=active.title if active else None, checkpoint_name=active.name if active else None
        )

    def load(self, title: str) -> None:
        self.loads.append(title)
        if self.fail:
            raise ModelLoadError(f"cannot load {title}: broken file")
        self.active = FakeCheckpoint(title.split(" [")[0])


class FakeRegistry:
    def find_checkpoint(self, title: str) -> FakeCheckpoint:
        return FakeCheckpoint(title.split(" [")[0])


def make_services(tmp_path: Path, theme: str | None = None) -> Any:
    options = Options(default_option_infos(), tmp_path / "config.json")
    models = FakeModels(FakeCheckpoint("sd1.safetensors"))
    options.on_change("sd_model_checkpoint", lambda _key, value: models.load(str(value)))
    return SimpleNamespace(
        options=options,
        engine=models,
        models=models,
        registry=FakeRegistry(),
        settings=SimpleNamespace(theme=theme, hide_ui_dir_config=False),
    )


def test_keys_are_known_once_each_in_order(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    assert quicksettings_keys(services) == ["sd_model_checkpoint"]
    services.options.set(
        "quicksettings_list", ["sd_vae", "no_such_option", "CLIP_stop_at_last_layers", "sd_vae", "disabled_extensions"]
    )
    assert quicksettings_keys(services) == ["sd_vae", "CLIP_stop_at_last_layers"]  # hidden and unknown skipped
    shown = [i.key for i in shown_options(list(services.options.infos().values()), quicksettings_keys(services))]
    assert "sd_vae" not in shown and "CLIP_stop_at_last_layers" not in shown and "sd_model_checkpoint" not in shown
    assert "jpeg_quality" in shown


def test_apply_option_sets_and_saves_and_refuses_bad_values(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    info = services.options.info("CLIP_stop_at_last_layers")
    apply_option(services, "CLIP_stop_at_last_layers", info, 2.0)  # a slider sends floats
    assert services.options.get("CLIP_stop_at_last_layers") == 2
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))["CLIP_stop_at_last_layers"] == 2
    with pytest.raises(gr.Error, match="above the maximum"):
        apply_option(services, "CLIP_stop_at_last_layers", info, 40)
    assert services.options.get("CLIP_stop_at_last_layers") == 2
    mode = services.options.info("ui_color_mode")
    with pytest.raises(gr.Error, match="not one of"):
        apply_option(services, "ui_color_mode", mode, "Purple")


def test_checkpoint_switch_yields_loading_then_loaded(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    steps = list(switch_checkpoint(services, "sd2.safetensors [0123456789]"))
    assert len(steps) == 2
    assert steps[0][0]["interactive"] is False and "Loading sd2.safetensors…" in steps[0][1]
    assert steps[1][0]["interactive"] is True and steps[1][0]["value"] == "sd2.safetensors [0123456789]"
    assert "Loaded sd2.safetensors in " in steps[1][1] and "sdw-done" in steps[1][1]
    # the current checkpoint again: nothing loads
    assert len(list(switch_checkpoint(services, "sd2.safetensors [0123456789]"))) == 1
    assert services.models.loads == ["sd2.safetensors [0123456789]"]


def test_checkpoint_switch_failure_shows_the_error_and_restores_the_dropdown(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    services.models.fail = True
    steps = switch_checkpoint(services, "bad.safetensors")
    assert "Loading bad.safetensors…" in next(steps)[1]
    dropdown, status = next(steps)
    assert dropdown["interactive"] is True and dropdown["value"] == "sd1.safetensors [0123456789]"
    assert "Could not load bad.safetensors" in status and "broken file" in status and "sdw-error" in status
    with pytest.raises(gr.Error, match="broken file"):
        next(steps)
    assert services.options.get("sd_model_checkpoint") != "bad.safetensors"


@pytest.mark.parametrize(
    ("flag", "option", "mode"),
    [
        (None, "Auto (browser)", "auto"),
        (None, "Dark", "dark"),
        (None, "Light", "light"),
        ("dark", "Light", "dark"),
        ("light", "Dark", "light"),
    ],
)
def test_color_mode_flag_wins_over_the_option(tmp_path: Path, flag: str | None, option: str, mode: str) -> None:
    services = make_services(tmp_path, theme=flag)
    services.options.set("ui_color_mode", option)
    assert color_mode(services) == mode
