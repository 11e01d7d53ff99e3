"""The Extensions tab: A1111's four sub-tabs (Installed, Available, Install from URL,
Backup/Restore) with its elem_ids, over the app's ExtensionManager (`services.extensions`).

The handlers are plain functions of the manager and the values (tested without a browser); they
run git, so they are sync functions (Gradio's threadpool, not the event loop). A refused or failed
action is a `gr.Error` with the manager's message. When the server is non-local without
`--enable-insecure-extension-access`, the write controls are shown disabled under a note that says
why, and the handlers refuse anyway.

The Installed table is HTML (as A1111's): "Apply" / "Check for updates" read its checkboxes in the
browser (`js=`) into the hidden `#extensions_disabled_list` / `#extensions_update_list` values.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gradio as gr
from gradio.context import Context

from modules.core.errors import UserError
from modules.extensions.index import DEFAULT_HIDDEN_TAGS, SORT_ORDERS
from modules.extensions.manager import DISABLE_ALL_CHOICES, ExtensionManager
from modules.services import Services

RESTORE_TYPES = ["extensions", "webui", "both"]
CURRENT = "Current"
PRIMARY = ' style="color: var(--primary-400)"'

CSS = """
#extensions_installed_html table, #available_extensions_html table, .sdw-ext-state table { border-collapse: collapse; }
#extensions_installed_html th, #extensions_installed_html td,
#available_extensions_html th, #available_extensions_html td,
.sdw-ext-state th, .sdw-ext-state td { border: 1px solid var(--border-color-primary); padding: 0.25em 0.5em; }
.sdw-ext-error { color: #e03131; white-space: pre-wrap; font-size: 0.9em; }
.sdw-ext-note { font-size: 0.85em; opacity: 0.8; }
.sdw-ext-access { color: var(--error-text-color, #e03131); font-weight: 600; }
.sdw-ext-tag { display: inline-block; margin-right: 0.3em; font-size: 0.8em; opacity: 0.8; }
"""

# Apply / Check for updates: the table's checkboxes -> the hidden lists (unchanged while it is loading)
_COLLECT_JS = """
(disabled, update, disableAll) => {
  const root = document.getElementById("extensions_installed_html");
  const toggles = root ? root.querySelectorAll("input.extension_toggle") : [];
  if (!toggles.length) return [disabled, "[]", disableAll];
  const off = [], upd = [];
  toggles.forEach((c) => { if (!c.checked) off.push(c.dataset.ext); });
  root.querySelectorAll("input.extension_update").forEach((c) => { if (c.checked) upd.push(c.dataset.ext); });
  return [JSON.stringify(off), JSON.stringify(upd), disableAll];
}
"""
# after "Apply and restart UI": wait for the server to go and come back, then reload the page
_RELOAD_WHEN_BACK_JS = """
(message) => {
  if (!message || message.indexOf("Restarting") < 0) return;
  const started = Date.now();
  const poll = () => fetch("./internal/ping", {cache: "no-store"})
    .then((r) => { if (r.ok && Date.now() - started > 4000) location.reload(); else setTimeout(poll, 1000); })
    .catch(() => setTimeout(poll, 1000));
  setTimeout(poll, 3000);
}
"""
# the Available table's Install buttons -> a click event carrying the URL
_AVAILABLE_JS = """
element.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("button.sdw-ext-install") : null;
  if (!button || button.disabled) return;
  trigger("click", {url: button.dataset.url || ""});
});
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _user_error(exc: UserError) -> gr.Error:
    return gr.Error(exc.message)


def _require(manager: ExtensionManager | None) -> ExtensionManager:
    if manager is None:
        raise gr.Error("extension management is not available on this server")
    return manager


def _names(value: str | None, what: str) -> list[str]:
    text = (value or "").strip()
    if not text:
        return []
    try:
        names = json.loads(text)
    except ValueError:
        raise gr.Error(f"wrong {what} data: {text[:200]}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise gr.Error(f"wrong {what} data: expected a list of names")
    return names


# --- Installed ----------------------------------------------------------------------------------


def _commit_link(commit: str, remote: str | None, text: str) -> str:
    if remote and remote.startswith("https://github.com/"):
        base = remote[: -len(".git")] if remote.endswith(".git") else remote
        return f'<a href="{_e(base)}/commit/{_e(commit)}" target="_blank" rel="noreferrer">{_e(text)}</a>'
    return _e(text)


def _date(stamp: int | float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


def notice_html(manager: ExtensionManager | None) -> str:
    """The notes above the Installed table: access refused (and the flag), everything disabled."""
    if manager is None:
        return "<p class='sdw-ext-access'>Extension management is not available on this server.</p>"
    parts = []
    if manager.access_note:
        parts.append(f"<p class='sdw-ext-access' id='extensions_access_note'>{_e(manager.access_note)}</p>")
    reason = manager.disabled_reason()
    if reason:
        parts.append(f"<p{PRIMARY}>{_e(reason)}</p>")
    return "".join(parts)


def installed_table(manager: ExtensionManager | None) -> str:
    """A1111's Installed table: enable checkbox and name, URL (or "built-in"), branch, version,
    date, update status (a checkbox when an update is available); an extension that failed to
    load shows its error in red; install.py / requirements.txt are noted."""
    if manager is None:
        return ""
    try:
        extensions = manager.installed()
    except UserError as exc:
        raise _user_error(exc) from exc
    locked = " disabled" if manager.access_disabled else ""
    all_on = " checked" if all(e.enabled for e in extensions) else ""
    held_back = manager.effective_disable_mode()
    rows = []
    for ext in extensions:
        style = PRIMARY if held_back == "all" or (held_back == "extra" and not ext.is_builtin) else ""
        checked = " checked" if ext.enabled else ""
        notes = []
        if ext.has_install_py:
            notes.append("install.py runs on install and update")
        if ext.has_requirements:
            notes.append("has requirements.txt (not installed automatically: its install.py must do it)")
        note_html = f"<div class='sdw-ext-note'>{_e('; '.join(notes))}</div>" if notes else ""
        error_html = f"<div class='sdw-ext-error'>{_e(ext.error)}</div>" if ext.error else ""
        if ext.is_builtin:
            url = "<b>built-in</b>"
        elif ext.remote:
            url = f'<a href="{_e(ext.remote)}" target="_blank" rel="noreferrer">{_e(ext.remote)}</a>'
        else:
            url = ""
        version = _commit_link(ext.commit_hash, ext.remote, ext.version) if ext.commit_hash else _e(ext.version)
        if ext.can_update:
            status = (
                f'<label><input class="gr-check-radio gr-checkbox extension_update" type="checkbox" '
                f'name="update_{_e(ext.name)}" data-ext="{_e(ext.name)}" checked{locked}>{_e(ext.status)}</label>'
            )
        else:
            status = _e(ext.status)
        status_class = ' class="extension_status"' if ext.remote is not None else ""
        rows.append(
            "<tr>"
            f'<td><label{style}><input class="gr-check-radio gr-checkbox extension_toggle" type="checkbox" '
            f'name="enable_{_e(ext.name)}" data-ext="{_e(ext.name)}"{checked}{locked}>{_e(ext.name)}</label>'
            f"{note_html}{error_html}</td>"
            f"<td>{url}</td><td>{_e(ext.branch or '')}</td><td>{version}</td><td>{_e(_date(ext.commit_date))}</td>"
            f"<td{status_class}>{status}</td>"
            "</tr>"
        )
    toggle_all = (
        "this.closest('table').querySelectorAll('input.extension_toggle')"
        ".forEach((c) => { if (!c.disabled) c.checked = this.checked; })"
    )
    body = "".join(rows) or "<tr><td colspan='6'>No extensions installed.</td></tr>"
    return (
        '<table id="extensions"><thead><tr>'
        f'<th><input class="gr-check-radio gr-checkbox all_extensions_toggle" type="checkbox"{all_on}{locked} '
        f'onchange="{_e(toggle_all)}"> '
        '<abbr title="Use checkbox to enable the extension; it will be enabled or disabled when you click apply '
        'button">Extension</abbr></th>'
        "<th>URL</th><th>Branch</th><th>Version</th><th>Date</th>"
        '<th><abbr title="Use checkbox to mark the extension for update; it will be updated when you click apply '
        'button">Update</abbr></th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def apply_changes(manager: ExtensionManager | None, disabled_json: str, update_json: str, disable_all: str) -> str:
    """ "Apply and restart UI": save the enabled set, update the extensions checked for update
    (after a config-state backup), then restart the server when it can, else say to restart it."""
    manager = _require(manager)
    disabled = _names(disabled_json, "disable list")
    update = _names(update_json, "update list")
    try:
        manager.check_access("apply")
        lines = []
        if update:
            for outcome in manager.update(update):
                mark = "" if outcome.ok else "failed: "
                lines.append(f"{outcome.name}: {mark}{outcome.message}")
        manager.set_enabled(disabled, disable_all)
    except UserError as exc:
        raise _user_error(exc) from exc
    details = "".join(f"<li>{_e(line)}</li>" for line in lines)
    details = f"<ul>{details}</ul>" if details else ""
    if manager.request_restart():
        return f"<p>Saved. Restarting the server…</p>{details}"
    return (
        "<p>Saved. This server cannot restart itself (it was not started by webui.sh or systemd): "
        f"restart the server to apply the changes.</p>{details}"
    )


def check_updates(manager: ExtensionManager | None, disabled_json: str) -> tuple[str, str]:
    """ "Check for updates": fetch each enabled extension with a remote; (table, note)."""
    manager = _require(manager)
    skip = _names(disabled_json, "disable list")
    try:
        extensions = manager.check_for_updates(skip=skip)
    except UserError as exc:
        raise _user_error(exc) from exc
    failed = [e.name for e in extensions if e.status.startswith("unknown (remote error)")]
    note = f"<p>Could not check: {_e(', '.join(failed))} (see the server log).</p>" if failed else ""
    return installed_table(manager), note


# --- Install from URL ---------------------------------------------------------------------------


def _installer_html(result_output: str | None, ok: bool | None) -> str:
    if result_output is None:
        return ""
    label = "install.py output" if ok else "install.py failed; its output"
    return f"<details{' open' if not ok else ''}><summary>{label}</summary><pre>{_e(result_output)}</pre></details>"


def install_from_url(manager: ExtensionManager | None, url: str, branch: str, dirname: str) -> tuple[str, str, str]:
    """Install: (the URL box cleared, the Installed table, the result HTML)."""
    manager = _require(manager)
    try:
        result = manager.install_from_url(url or "", branch or "", dirname or "")
    except UserError as exc:
        raise _user_error(exc) from exc
    run = result.installer
    output = _installer_html(run.output if run else None, run.ok if run else None)
    message = f"<p>{_e(result.message)}</p>{output}"
    return "", installed_table(manager), message


# --- Available ----------------------------------------------------------------------------------


def available_table(
    manager: ExtensionManager | None,
    index: Any,
    selected_tags: list[str] | None,
    showing_type: str,
    filtering_type: str,
    order: str,
    search: str,
) -> tuple[str, list[str]]:
    """The Available table for a loaded index (None: nothing loaded yet) and every tag it knows."""
    if manager is None or index is None:
        return "", list(DEFAULT_HIDDEN_TAGS)
    view = manager.available(
        index,
        selected_tags=selected_tags or [],
        showing_type=showing_type or "hide",
        filtering_type=filtering_type or "or",
        order=order or SORT_ORDERS[0],
        search=search or "",
    )
    locked = manager.access_disabled
    descriptions = index.tags
    rows = []
    for row in view.rows:
        entry = row.entry
        tags = "".join(
            f"<span class='sdw-ext-tag' title='{_e(descriptions.get(t, t))}'>{_e(t)}</span>" for t in row.tags
        )
        disabled = " disabled" if row.installed or locked else ""
        label = "Installed" if row.installed else "Install"
        added = entry.added or "unknown"
        dates = f"Update: {_short(entry.commit_time)}  Added: {added}  Created: {_short(entry.created_at)}"
        rows.append(
            "<tr>"
            f'<td><a href="{_e(entry.url)}" target="_blank" rel="noreferrer">{_e(entry.name)}</a><br>{tags}</td>'
            f"<td>{_e(entry.description)}<p class='info sdw-ext-note'><span class='date_added'>{_e(dates)}</span> "
            f"<span class='star_count'>stars: <b>{entry.stars}</b></span></p></td>"
            f'<td><button type="button" class="lg secondary gradio-button custom-button sdw-ext-install" '
            f'data-url="{_e(entry.url)}"{disabled}>{label}</button></td>'
            "</tr>"
        )
    table = (
        '<table id="available_extensions"><thead><tr><th>Extension</th><th>Description</th><th>Action</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if view.hidden:
        table += f"<p>Extension hidden: {view.hidden}</p>"
    return table, list(view.tags)


def _short(value: str) -> str:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y-%m-%d")
    except (TypeError, ValueError):
        return ""


def load_available(
    manager: ExtensionManager | None,
    url: str,
    selected_tags: list[str] | None,
    showing_type: str,
    filtering_type: str,
    order: str,
) -> tuple[Any, str, Any, str, str]:
    """ "Load from:": (the index for the page's state, the table, the tag choices, search cleared,
    the install note cleared)."""
    manager = _require(manager)
    try:
        index = manager.load_index(url or None)
    except UserError as exc:
        raise _user_error(exc) from exc
    table, tags = available_table(manager, index, selected_tags, showing_type, filtering_type, order, "")
    choices = list(dict.fromkeys([*tags, *(selected_tags or [])]))  # the selected ones stay valid choices
    return index, table, gr.update(choices=choices), "", ""


def install_from_index(
    manager: ExtensionManager | None,
    url: str,
    index: Any,
    selected_tags: list[str] | None,
    showing_type: str,
    filtering_type: str,
    order: str,
    search: str,
) -> tuple[str, str, str]:
    """An Install button of the Available table: (Available table, Installed table, result)."""
    manager = _require(manager)
    try:
        result = manager.install_from_url(url or "")
    except UserError as exc:
        raise _user_error(exc) from exc
    run = result.installer
    message = f"<p>{_e(result.message)}</p>" + _installer_html(run.output if run else None, run.ok if run else None)
    table, _ = available_table(manager, index, selected_tags, showing_type, filtering_type, order, search)
    return table, installed_table(manager), message


# --- Backup/Restore -----------------------------------------------------------------------------


def state_choices(manager: ExtensionManager | None) -> list[str]:
    if manager is None:
        return [CURRENT]
    return [CURRENT, *(s.label for s in manager.list_config_states())]


def state_table(manager: ExtensionManager | None, label: str) -> str:
    """A saved state (or the current one) as A1111's Backup/Restore tables show it."""
    if manager is None:
        return ""
    try:
        if not label or label == CURRENT:
            data: Any = manager.config_state()
            name, where = "Current", ""
        else:
            saved = manager.find_config_state(label)
            data, name, where = saved.data, saved.name, str(saved.path)
    except UserError as exc:
        raise _user_error(exc) from exc
    current = {e.name: e for e in manager.installed()}
    rows = []
    extensions = data.get("extensions") if isinstance(data, dict) else None
    for ext_name, conf in (extensions or {}).items():
        if not isinstance(conf, dict):
            continue
        now = current.get(ext_name)
        commit = str(conf.get("commit_hash") or "")
        differs = now is not None and commit and now.commit_hash != commit
        style = PRIMARY if differs else ""
        enabled = " checked" if conf.get("enabled") else ""
        stamp = conf.get("commit_date")
        rows.append(
            f'<tr><td><label><input type="checkbox" disabled{enabled}>{_e(ext_name)}</label></td>'
            f"<td>{_e(conf.get('remote') or '')}</td><td>{_e(conf.get('branch') or '<unknown>')}</td>"
            f"<td><label{style}>{_e(commit[:8] or '<unknown>')}</label></td>"
            f"<td>{_e(_date(stamp) if isinstance(stamp, (int, float)) else '<unknown>')}</td></tr>"
        )
    created = data.get("created_at") if isinstance(data, dict) else None
    head = f"<h2>Config Backup: {_e(name)}</h2>"
    if where:
        head += f"<div><b>Filepath:</b> {_e(where)}</div>"
    if isinstance(created, (int, float)):
        head += f"<div><b>Created at:</b> {_e(_date(created))}</div>"
    return (
        f"<div class='sdw-ext-state'>{head}<h2>Extension State</h2>"
        "<table id='config_state_extensions'><thead><tr><th>Extension</th><th>URL</th><th>Branch</th>"
        f"<th>Commit</th><th>Date</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def save_state(manager: ExtensionManager | None, name: str) -> tuple[Any, str]:
    manager = _require(manager)
    try:
        path = manager.save_config_state(name or "")
    except UserError as exc:
        raise _user_error(exc) from exc
    choices = state_choices(manager)
    value = choices[1] if len(choices) > 1 else CURRENT
    return gr.update(choices=choices, value=value), f"<span>Saved current extension state to {_e(path.name)}</span>"


def restore_state(manager: ExtensionManager | None, label: str, restore_type: str) -> str:
    """Restore the extensions of a saved state (commits and enabled flags); the web UI's own
    version is not restored (this is not an A1111 checkout)."""
    manager = _require(manager)
    if not label or label == CURRENT:
        return "<span>Select a config to restore from.</span>"
    if restore_type == "webui":
        try:
            manager.check_access("restore a config state")
        except UserError as exc:
            raise _user_error(exc) from exc
        return "<span>Nothing restored: restoring the web UI's own version is not supported here.</span>"
    try:
        report = manager.restore_config_state(label)
    except UserError as exc:
        raise _user_error(exc) from exc
    items = [*report.restored, *(f"failed: {f}" for f in report.failed)]
    not_restored = list(report.not_restored)
    listing = "".join(f"<li>{_e(i)}</li>" for i in items) or "<li>no extension needed a change</li>"
    missing = "".join(f"<li>{_e(n)}</li>" for n in not_restored)
    return (
        f"<p>Restored the extensions of “{_e(label)}” (a backup of the state before was saved first):</p>"
        f"<ul>{listing}</ul><p>Not restored:</p><ul>{missing}</ul><p>Restart the server to load them.</p>"
    )


# --- the tab ------------------------------------------------------------------------------------


@dataclass
class ExtensionsTab:
    installed_html: gr.HTML
    notice: gr.HTML
    apply: gr.Button
    check: gr.Button
    disable_all: gr.Radio
    install_url: gr.Textbox
    install_button: gr.Button
    install_result: gr.HTML
    available_html: gr.HTML
    restore_button: gr.Button


def build_extensions_tab(services: Services) -> ExtensionsTab:
    """Build the tab inside the current `gr.Blocks`; the Installed table is filled on page load."""
    manager = services.extensions
    root = Context.root_block
    assert root is not None, "build_extensions_tab must run inside gr.Blocks"
    locked = manager is None or manager.access_disabled
    writable = not locked
    gr.HTML(f"<style>{CSS}</style>", padding=False, min_height=0)
    with gr.Tabs(elem_id="tabs_extensions"):
        with gr.Tab("Installed", id="installed"):
            with gr.Row(elem_id="extensions_installed_top"):
                apply = gr.Button(
                    "Apply and restart UI", variant="primary", elem_id="extensions_apply", interactive=writable
                )
                check = gr.Button("Check for updates", elem_id="extensions_check", interactive=writable)
                disable_all = gr.Radio(
                    label="Disable all extensions",
                    choices=list(DISABLE_ALL_CHOICES),
                    value=manager.disable_all_option() if manager else "none",
                    elem_id="extensions_disable_all",
                    interactive=writable,
                )
                disabled_list = gr.Textbox(
                    json.dumps(manager.disabled_names() if manager else []),
                    elem_id="extensions_disabled_list",
                    visible="hidden",
                    container=False,
                )
                update_list = gr.Textbox("[]", elem_id="extensions_update_list", visible="hidden", container=False)
                refresh = gr.Button("Refresh", size="sm", elem_id="extensions_refresh")
            notice = gr.HTML(notice_html(manager), min_height=0, elem_id="extensions_notice")
            info = gr.HTML("", min_height=0, elem_id="extensions_info")
            installed_html = gr.HTML("Loading...", elem_id="extensions_installed_html")

        with gr.Tab("Available", id="available"):
            with gr.Row():
                load = gr.Button("Load from:", variant="primary", elem_id="extensions_load_available")
                index_url = gr.Textbox(
                    manager.default_index_url if manager else "",
                    label="Extension index URL",
                    container=False,
                    elem_id="extensions_index_url",
                )
                extension_to_install = gr.Textbox("", elem_id="extension_to_install", visible="hidden")
                install_extension_button = gr.Button(
                    "Run", elem_id="install_extension_button", visible="hidden", interactive=writable
                )
            with gr.Row():
                selected_tags = gr.CheckboxGroup(
                    value=list(DEFAULT_HIDDEN_TAGS),
                    label="Extension tags",
                    choices=["script", *DEFAULT_HIDDEN_TAGS],
                    elem_id="extensions_tags",
                )
                order = gr.Radio(
                    value=SORT_ORDERS[0], label="Order", choices=list(SORT_ORDERS), elem_id="extensions_order"
                )
            with gr.Row():
                showing_type = gr.Radio(
                    value="hide", label="Showing type", choices=["hide", "show"], elem_id="extensions_showing_type"
                )
                filtering_type = gr.Radio(
                    value="or", label="Filtering type", choices=["or", "and"], elem_id="extensions_filtering_type"
                )
            search = gr.Textbox(label="Search", container=False, elem_id="extensions_search", placeholder="Search")
            available_result = gr.HTML("", min_height=0, elem_id="extensions_available_result")
            available_html = gr.HTML("", elem_id="available_extensions_html", js_on_load=_AVAILABLE_JS)
            index_state = gr.State(None)

        with gr.Tab("Install from URL", id="install_from_url"):
            install_url = gr.Textbox(label="URL for extension's git repository", elem_id="extension_install_url")
            install_branch = gr.Textbox(
                label="Specific branch name",
                placeholder="Leave empty for default main branch (a commit hash checks out that commit)",
                elem_id="extension_install_branch",
            )
            install_dirname = gr.Textbox(
                label="Local directory name", placeholder="Leave empty for auto", elem_id="extension_install_dirname"
            )
            install_button = gr.Button(
                "Install", variant="primary", elem_id="extension_install_button", interactive=writable
            )
            install_result = gr.HTML("", elem_id="extension_install_result")

        with gr.Tab("Backup/Restore", id="backup_restore"):
            with gr.Row(elem_id="extensions_backup_top_row"):
                states = gr.Dropdown(
                    label="Saved Configs",
                    elem_id="extension_backup_saved_configs",
                    value=CURRENT,
                    choices=[CURRENT],
                )
                refresh_states = gr.Button("🔄", elem_id="refresh_config_states", size="sm", scale=0, min_width=40)
                restore_type = gr.Radio(
                    label="State to restore",
                    choices=RESTORE_TYPES,
                    value="extensions",
                    elem_id="extension_backup_restore_type",
                    info="Only the extensions are restored here (commits and enabled flags).",
                )
                restore_button = gr.Button(
                    "Restore Selected Config",
                    variant="primary",
                    elem_id="extension_backup_restore",
                    interactive=writable,
                )
            with gr.Row(elem_id="extensions_backup_top_row2"):
                save_name = gr.Textbox("", placeholder="Config Name", show_label=False, elem_id="extension_backup_name")
                save_button = gr.Button("Save Current Config", elem_id="extension_backup_save", interactive=writable)
            states_info = gr.HTML("", min_height=0, elem_id="extension_backup_info")
            states_table = gr.HTML("", elem_id="extension_backup_table")

    if manager is not None and manager.access_note:
        gr.HTML(
            f"<p class='sdw-ext-access'>{_e(manager.access_note)}</p>", min_height=0, elem_id="extensions_access_footer"
        )

    # --- events ---
    def table() -> str:
        return installed_table(manager)

    root.load(table, None, installed_html, queue=False, show_progress="hidden")
    refresh.click(table, None, installed_html, show_progress="hidden")
    refresh.click(lambda: notice_html(manager), None, notice, queue=False, show_progress="hidden")

    apply.click(
        lambda d, u, a: apply_changes(manager, d, u, a),
        [disabled_list, update_list, disable_all],
        info,
        js=_COLLECT_JS,
    ).then(None, info, None, js=_RELOAD_WHEN_BACK_JS)
    check.click(
        lambda d, u, a: check_updates(manager, d),
        [disabled_list, update_list, disable_all],
        [installed_html, info],
        js=_COLLECT_JS,
    )

    filters = [selected_tags, showing_type, filtering_type, order]
    load.click(
        lambda url, tags, show, filt, o: load_available(manager, url, tags, show, filt, o),
        [index_url, *filters],
        [index_state, available_html, selected_tags, search, available_result],
    )

    def refilter(index: Any, tags: list[str], show: str, filt: str, o: str, text: str) -> str:
        return available_table(manager, index, tags, show, filt, o, text)[0]

    for control in (selected_tags, showing_type, filtering_type, order, search):
        control.change(refilter, [index_state, *filters, search], available_html, queue=False, show_progress="hidden")

    def install_clicked(
        index: Any, tags: list[str], show: str, filt: str, o: str, text: str, evt: gr.EventData
    ) -> tuple[str, str, str]:
        data = getattr(evt, "_data", None)
        url = str(data.get("url") or "") if isinstance(data, dict) else ""
        return install_from_index(manager, url, index, tags, show, filt, o, text)

    available_html.click(
        install_clicked, [index_state, *filters, search], [available_html, installed_html, available_result]
    )
    install_extension_button.click(
        lambda url, index, tags, show, filt, o, text: install_from_index(
            manager, url, index, tags, show, filt, o, text
        ),
        [extension_to_install, index_state, *filters, search],
        [available_html, installed_html, available_result],
    )

    install_button.click(
        lambda url, branch, name: install_from_url(manager, url, branch, name),
        [install_url, install_branch, install_dirname],
        [install_url, installed_html, install_result],
    )

    def refresh_choices() -> Any:
        return gr.update(choices=state_choices(manager))

    root.load(refresh_choices, None, states, queue=False, show_progress="hidden")
    refresh_states.click(refresh_choices, None, states, queue=False, show_progress="hidden")
    states.change(lambda label: state_table(manager, label), states, states_table, show_progress="hidden")
    save_button.click(lambda name: save_state(manager, name), save_name, [states, states_info])
    restore_button.click(lambda label, kind: restore_state(manager, label, kind), [states, restore_type], states_info)

    return ExtensionsTab(
        installed_html=installed_html,
        notice=notice,
        apply=apply,
        check=check,
        disable_all=disable_all,
        install_url=install_url,
        install_button=install_button,
        install_result=install_result,
        available_html=available_html,
        restore_button=restore_button,
    )
