"""styles.csv and extra-network tags (A1111 semantics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.core.errors import NotFoundError
from modules.core.styles import PromptStyle, StyleDatabase, merge_style


def test_merge_style_placeholder_or_append() -> None:
    assert merge_style("masterpiece, {prompt}, 8k", "a cat") == "masterpiece, a cat, 8k"
    assert merge_style("8k", "a cat") == "a cat, 8k"
    assert merge_style("8k", "") == "8k"
    assert merge_style("", "a cat") == "a cat"


def test_csv_with_bom_old_text_column_comments_and_globs(tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text(
        '\ufeffname,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\n#hidden,x,y\n', encoding="utf-8"
    )
    (tmp_path / "more-old.csv").write_text("name,text\nOld,oil painting\n", encoding="utf-8")
    db = StyleDatabase([tmp_path / "styles.csv", tmp_path / "more-*.csv"])
    assert [s.name for s in db.styles()] == ["Cinematic", "Old"]
    assert db.apply("a cat", "", ["Cinematic", "Old"]) == ("a cat, film grain, oil painting", "blurry")
    with pytest.raises(NotFoundError):
        db.get("#hidden")


def test_save_and_delete_write_the_first_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    db = StyleDatabase([path])
    db.save(PromptStyle("Quoted", 'a "b", c', "d"))
    again = StyleDatabase([path])
    assert again.get("Quoted").prompt == 'a "b", c'
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    again.delete("Quoted")
    assert StyleDatabase([path]).styles() == []


def test_a_style_from_another_file_is_saved_and_deleted_in_that_file(tmp_path: Path) -> None:
    first, second = tmp_path / "styles.csv", tmp_path / "more.csv"
    first.write_text("name,prompt,negative_prompt\nMine,a,\n", encoding="utf-8")
    second.write_text("name,prompt,negative_prompt\nShared,b,\nOther,c,\n", encoding="utf-8")
    db = StyleDatabase([first, second])
    db.save(PromptStyle("Shared", "b2", "n"))
    assert "Shared" not in first.read_text(encoding="utf-8-sig")
    assert StyleDatabase([second]).get("Shared").prompt == "b2"
    db.delete("Shared")
    db.save(PromptStyle("New", "d"))
    assert [s.name for s in StyleDatabase([first, second]).styles()] == ["Mine", "New", "Other"]
    assert "Shared" not in second.read_text(encoding="utf-8-sig")
