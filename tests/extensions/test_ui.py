"""The Extensions tab without a browser: its handlers called as Python functions over a real
manager and a local bare repository, and the tab built inside gr.Blocks (A1111's elem_ids; write
controls disabled under --listen)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules.ui import extensions as tab
from tests.extensions.conftest import ExtensionRepo, ManagerFactory, install_runs
from tests.extensions.test_index import INDEX


def build(manager: Any) -> tuple[gr.Blocks, tab.ExtensionsTab]:
    async def make() -> tuple[gr.Blocks, tab.ExtensionsTab]:
        with gr.Blocks() as blocks:
            built = tab.build_extensions_tab(SimpleNamespace(extensions=manager))  # type: ignore[arg-type]
        return blocks, built

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def elem_ids(blocks: gr.Blocks) -> set[str]:
    return {str(c.elem_id) for c in blocks.blocks.values() if getattr(c, "elem_id", None)}


A1111_IDS = {
    "tabs_extensions",
    "extensions_installed_html",
    "extensions_disable_all",
    "extensions_disabled_list",
    "extensions_update_list",
    "extension_to_install",
    "install_extension_button",
    "extension_install_result",
    "extension_backup_saved_configs",
    "refresh_config_states",
    "extension_backup_restore_type",
    "extension_backup_restore",
}


def test_the_tab_has_a1111_ids_and_locks_writes_when_non_local(make_manager: ManagerFactory) -> None:
    blocks, built = build(make_manager())
    assert elem_ids(blocks) >= A1111_IDS
    assert built.install_button.interactive is not False and built.apply.interactive is not False

    blocks, built = build(make_manager("--listen"))
    assert elem_ids(blocks) >= A1111_IDS
    for control in (built.apply, built.check, built.install_button, built.restore_button, built.disable_all):
        assert control.interactive is False
    assert "--enable-insecure-extension-access" in str(built.notice.value)


def test_handlers_refuse_under_listen_and_nothing_is_cloned(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    local = make_manager()
    (local.paths.extensions_dir / "present").mkdir(parents=True)
    manager = make_manager("--listen")
    calls = [
        lambda: tab.install_from_url(manager, ext_repo.url, "", ""),
        lambda: tab.install_from_url(manager, "https://github.com/x/y.git", "", ""),
        lambda: tab.install_from_index(manager, "https://github.com/x/y.git", None, [], "hide", "or", "a-z", ""),
        lambda: tab.apply_changes(manager, "[]", '["present"]', "none"),
        lambda: tab.check_updates(manager, "[]"),
        lambda: tab.save_state(manager, "x"),
        lambda: tab.restore_state(manager, "x", "extensions"),
    ]
    for call in calls:
        with pytest.raises(gr.Error, match="--enable-insecure-extension-access"):
            call()
    assert sorted(p.name for p in manager.paths.extensions_dir.iterdir()) == ["present"]
    assert not manager.paths.tmp_dir.exists() or not any(manager.paths.tmp_dir.iterdir())
    assert not manager.paths.config_file.exists()
    table = tab.installed_table(manager)
    assert 'data-ext="present" checked disabled' in table  # shown, not changeable


def test_install_from_url_and_the_installed_table(make_manager: ManagerFactory, ext_repo: ExtensionRepo) -> None:
    manager = make_manager()
    url_box, table, result = tab.install_from_url(manager, ext_repo.url, "", "my-ext")
    assert url_box == "" and "Installed into" in result and "install.py ran in" in result
    assert 'data-ext="my-ext" checked' in table and ext_repo.first_commit[:8] in table and "2024-01-" in table
    assert "install.py runs on install and update" in table
    manager.mark_error("my-ext", "ImportError: <boom>")
    table = tab.installed_table(manager)
    assert "class='sdw-ext-error'>ImportError: &lt;boom&gt;" in table  # escaped, in red
    with pytest.raises(gr.Error, match="directory name"):
        tab.install_from_url(manager, ext_repo.url, "", "../x")


def test_check_then_apply_updates_disables_and_says_to_restart(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    manager = make_manager()
    tab.install_from_url(manager, ext_repo.url, "", "")
    second = ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    table, note = tab.check_updates(manager, "[]")
    assert 'class="gr-check-radio gr-checkbox extension_update"' in table and "new commits" in table and note == ""

    message = tab.apply_changes(manager, '["sd-hello"]', '["sd-hello"]', "extra")
    assert "restart the server" in message and "updated" in message
    (ext,) = manager.installed()
    assert ext.commit_hash == second and not ext.enabled
    assert len(install_runs(ext.path)) == 2
    stored = json.loads(manager.paths.config_file.read_text(encoding="utf-8"))
    assert stored["disabled_extensions"] == ["sd-hello"] and stored["disable_all_extensions"] == "extra"

    restarted = threading.Event()
    manager.restart_server = restarted.set
    manager.restart_delay_s = 0.0
    assert "Restarting" in tab.apply_changes(manager, "[]", "[]", "none")
    assert restarted.wait(10)
    with pytest.raises(gr.Error, match="wrong disable list"):
        tab.apply_changes(manager, "not json", "[]", "none")


def test_available_table_from_a_local_index(make_manager: ManagerFactory, tmp_path: Path) -> None:
    index_file = tmp_path / "index.json"
    index_file.write_text(json.dumps(INDEX), encoding="utf-8")
    manager = make_manager()
    (manager.paths.extensions_dir / "beta-tab").mkdir(parents=True)
    index, table, tags, search, note = tab.load_available(
        manager, str(index_file), ["ads", "other"], "hide", "or", "a-z"
    )
    assert search == "" and note == "" and {"installed", "script", "tab", "ads", "other"} <= set(tags["choices"])
    assert 'data-url="https://github.com/u/alpha"' in table
    assert 'data-url="https://github.com/u/beta-tab.git" disabled>Installed' in table
    filtered, _ = tab.available_table(manager, index, ["tab"], "show", "or", "stars", "wildcard")
    assert "alpha script" in filtered and "Beta tab" not in filtered and "Extension hidden: 2" in filtered

    locked = make_manager("--listen")
    locked_table, _ = tab.available_table(locked, index, [], "hide", "or", "a-z", "")
    assert 'data-url="https://github.com/u/alpha" disabled>Install' in locked_table


def test_backup_restore_handlers(make_manager: ManagerFactory, ext_repo: ExtensionRepo) -> None:
    manager = make_manager()
    tab.install_from_url(manager, ext_repo.url, "", "")
    update, info = tab.save_state(manager, "mine")
    label = update["value"]
    assert label.startswith("mine: ") and label in tab.state_choices(manager) and "Saved current" in info
    assert "sd-hello" in tab.state_table(manager, label) and "sd-hello" in tab.state_table(manager, tab.CURRENT)
    ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    manager.update(["sd-hello"])
    assert "Nothing restored" in tab.restore_state(manager, label, "webui")
    message = tab.restore_state(manager, label, "extensions")
    assert "Not restored" in message and manager.installed()[0].commit_hash == ext_repo.first_commit
    assert tab.restore_state(manager, tab.CURRENT, "extensions") == "<span>Select a config to restore from.</span>"
