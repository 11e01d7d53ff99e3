"""The style editor's handlers (modules/ui/styles.py) on a real StyleDatabase over a tmp styles.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from modules.core.option_defaults import default_option_infos
from modules.core.options import Options
from modules.core.styles import PromptStyle, StyleDatabase
from modules.ui import styles as ui_styles


@pytest.fixture()
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text(
        '\ufeffname,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\nSharp,"sharp focus",\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture()
def db(csv_path: Path) -> StyleDatabase:
    return StyleDatabase([csv_path])


def _choices(update: dict[str, Any]) -> list[str]:
    return [c[0] if isinstance(c, tuple) else c for c in update["choices"]]


def test_save_creates_a_style_in_the_csv_and_offers_it(db: StyleDatabase, csv_path: Path) -> None:
    main, selection, delete = ui_styles.save_style(db, "  Masterpiece ", "{prompt}, masterpiece", "lowres", [])
    assert "Masterpiece" in _choices(main) and "value" not in main
    assert selection["value"] == "Masterpiece" and "Masterpiece" in _choices(selection)
    assert delete["visible"] is True
    again = StyleDatabase([csv_path]).get("Masterpiece")
    assert (again.prompt, again.negative_prompt) == ("{prompt}, masterpiece", "lowres")
    # the existing styles survive the rewrite
    assert [s.name for s in StyleDatabase([csv_path]).styles()] == ["Cinematic", "Sharp", "Masterpiece"]


def test_save_updates_an_existing_style(db: StyleDatabase, csv_path: Path) -> None:
    ui_styles.save_style(db, "Sharp", "very sharp", "soft", ["Sharp"])
    assert StyleDatabase([csv_path]).get("Sharp") == PromptStyle("Sharp", "very sharp", "soft", csv_path)


@pytest.mark.parametrize("name", ["", "   ", None])
def test_save_with_an_empty_name_is_a_user_error(db: StyleDatabase, csv_path: Path, name: str | None) -> None:
    before = csv_path.read_bytes()
    with pytest.raises(gr.Error, match="empty"):
        ui_styles.save_style(db, name, "x", "y", [])
    assert csv_path.read_bytes() == before


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "#comment"])
def test_names_that_do_not_survive_the_csv_are_refused(db: StyleDatabase, csv_path: Path, name: str) -> None:
    before = csv_path.read_bytes()
    with pytest.raises(gr.Error):
        ui_styles.save_style(db, name, "x", "", [])
    assert csv_path.read_bytes() == before


@pytest.mark.parametrize("name", ['Comma, "quoted" style', "semi;colon|pipe", "ünïcødé 🎨", "a,b\tc"])
def test_names_with_csv_special_characters_round_trip(db: StyleDatabase, csv_path: Path, name: str) -> None:
    ui_styles.save_style(db, name, 'prompt with "quotes",\nand a second line', "neg, x", [])
    reread = StyleDatabase([csv_path]).get(name)
    assert (reread.name, reread.prompt, reread.negative_prompt) == (
        name,
        'prompt with "quotes",\nand a second line',
        "neg, x",
    )
    ui_styles.delete_style(db, name, [name])
    assert name not in [s.name for s in StyleDatabase([csv_path]).styles()]


def test_delete_removes_the_style_and_drops_it_from_the_selection(db: StyleDatabase, csv_path: Path) -> None:
    main, selection, prompt, negative, delete = ui_styles.delete_style(db, "Cinematic", ["Cinematic", "Sharp"])
    assert _choices(main) == ["Sharp"] and main["value"] == ["Sharp"]
    assert selection["value"] == "" and _choices(selection) == ["Sharp"]
    assert (prompt, negative, delete["visible"]) == ("", "", False)
    assert [s.name for s in StyleDatabase([csv_path]).styles()] == ["Sharp"]


def test_delete_cancelled_or_unknown(db: StyleDatabase, csv_path: Path) -> None:
    before = csv_path.read_bytes()
    # the confirm was cancelled: nothing changes
    outputs = ui_styles.delete_style(db, None, ["Sharp"])
    assert len(outputs) == 5 and all(out == gr.skip() for out in outputs)
    with pytest.raises(gr.Error, match="Choose a style"):
        ui_styles.delete_style(db, "", [])
    with pytest.raises(gr.Error, match="not found"):
        ui_styles.delete_style(db, "Nope", [])
    assert csv_path.read_bytes() == before


def test_select_fills_the_boxes_and_offers_delete_only_for_existing(db: StyleDatabase) -> None:
    prompt, negative, delete, save = ui_styles.select_style(db, "Cinematic")
    assert (prompt, negative) == ("{prompt}, film grain", "blurry")
    assert delete["visible"] is True and save["visible"] is True
    prompt, negative, delete, save = ui_styles.select_style(db, "Brand new")
    assert prompt == gr.skip() and negative == gr.skip()  # what is typed in the boxes stays
    assert delete["visible"] is False and save["visible"] is True
    _, _, delete, save = ui_styles.select_style(db, "")
    assert delete["visible"] is False and save["visible"] is False


def test_apply_merges_like_a1111_and_clears_the_selection(db: StyleDatabase) -> None:
    prompt, negative, selection = ui_styles.apply_styles(db, "a cat", "ugly", ["Cinematic", "Sharp"])
    assert prompt == "a cat, film grain, sharp focus"
    assert negative == "ugly, blurry"
    assert selection["value"] == []
    assert ui_styles.apply_styles(db, "a cat", "", [])[:2] == ("a cat", "")
    with pytest.raises(gr.Error, match="style not found"):
        ui_styles.apply_styles(db, "a cat", "", ["Missing"])


def test_copy_puts_the_main_prompts_into_the_style_boxes() -> None:
    assert ui_styles.copy_prompts("a cat", "ugly") == ("a cat", "ugly")
    assert ui_styles.copy_prompts(None, None) == ("", "")


def test_refresh_reloads_from_disk(db: StyleDatabase, csv_path: Path) -> None:
    csv_path.write_text("name,prompt,negative_prompt\nSharp,sharp,\nFromDisk,x,y\n", encoding="utf-8")
    main, selection, delete, save = ui_styles.refresh_styles(db, ["Cinematic", "Sharp"], "FromDisk")
    assert _choices(main) == ["Sharp", "FromDisk"] and main["value"] == ["Sharp"]
    assert _choices(selection) == ["Sharp", "FromDisk"] and "value" not in selection
    assert delete["visible"] is True and save["visible"] is True
    # the focus refresh of the other tab's dropdown leaves a still-valid selection alone
    assert "value" not in ui_styles.dropdown_update(db, ["Sharp"])


def test_token_counter_text_includes_styles_when_the_option_is_on(db: StyleDatabase) -> None:
    options = Options(default_option_infos(), None)
    assert options.get("include_styles_into_token_counters") is True
    count = ui_styles.text_for_token_counter
    assert count(db, options, "a cat", ["Cinematic", "Missing"]) == "a cat, film grain"
    assert count(db, options, "ugly", ["Cinematic"], is_positive=False) == "ugly, blurry"
    assert count(db, options, "a cat", []) == "a cat"
    options.set("include_styles_into_token_counters", False)
    assert count(db, options, "a cat", ["Cinematic"]) == "a cat"
