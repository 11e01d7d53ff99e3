"""The extension index: A1111's JSON from a local file, installed entries marked, tag filters
(hide/show, or/and), search, the eight sort orders; only https to global addresses, local files
only on a local server, a size cap. No network: remote fetches stop at the address check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.core.errors import ForbiddenError, ValidationError
from modules.extensions.index import (
    DEFAULT_INDEX_URL,
    SORT_ORDERS,
    checked_address,
    default_index_url,
    fetch_https,
    load_index,
    parse_index,
)
from tests.extensions.conftest import ManagerFactory

INDEX = {
    "tags": {"script": "a script", "tab": "a tab", "ads": "ads", "localization": "translations"},
    "extensions": [
        {
            "name": "Beta tab",
            "url": "https://github.com/u/beta-tab.git",
            "description": "Adds a tab",
            "tags": ["tab"],
            "added": "2023-02-01",
            "created_at": "2022-12-01T00:00:00Z",
            "commit_time": "2024-03-01T00:00:00Z",
            "stars": 50,
        },
        {
            "name": "alpha script",
            "url": "https://github.com/u/alpha",
            "description": "A wildcard script",
            "tags": ["script", "tab"],
            "added": "2023-01-01",
            "created_at": "2022-11-01T00:00:00Z",
            "commit_time": "2024-05-01T00:00:00Z",
            "stars": 500,
        },
        {
            "name": "Gamma",
            "url": "https://github.com/u/gamma.git",
            "description": "Translations",
            "tags": ["localization"],
            "added": "2023-03-01",
            "created_at": "2023-01-01T00:00:00Z",
            "commit_time": "2024-01-01T00:00:00Z",
            "stars": 5,
        },
        {"name": "no url", "description": "skipped", "tags": []},
        {"name": "insecure", "url": "http://example.com/x.git", "description": "skipped", "tags": []},
    ],
}


@pytest.fixture()
def index_file(tmp_path: Path) -> Path:
    path = tmp_path / "index.json"
    path.write_text(json.dumps(INDEX), encoding="utf-8")
    return path


def names(view: object) -> list[str]:
    return [row.entry.name for row in view.rows]  # type: ignore[attr-defined]


def test_parse_keeps_entries_with_a_name_and_an_https_url(index_file: Path) -> None:
    index = load_index(str(index_file), allow_local=True)
    assert [e.name for e in index.entries] == ["Beta tab", "alpha script", "Gamma"]
    alpha = index.entries[1]
    assert alpha.tags == ("script", "tab") and alpha.stars == 500 and alpha.added == "2023-01-01"
    assert index.tags["script"] == "a script"
    assert index.tag_names() == ("script", "tab", "ads", "localization", "installed")
    assert load_index("file://" + str(index_file), allow_local=True).entries == index.entries


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("newest first", ["Gamma", "Beta tab", "alpha script"]),
        ("oldest first", ["alpha script", "Beta tab", "Gamma"]),
        ("a-z", ["Beta tab", "Gamma", "alpha script"]),  # A1111 compares names as they are
        ("z-a", ["alpha script", "Gamma", "Beta tab"]),
        ("internal order", ["Beta tab", "alpha script", "Gamma"]),
        ("update time", ["alpha script", "Beta tab", "Gamma"]),
        ("create time", ["Gamma", "Beta tab", "alpha script"]),
        ("stars", ["alpha script", "Beta tab", "Gamma"]),
        (7, ["alpha script", "Beta tab", "Gamma"]),  # A1111's radio gives the index
    ],
)
def test_sort_orders(index_file: Path, order: str | int, expected: list[str]) -> None:
    index = load_index(str(index_file), allow_local=True)
    assert names(index.view(selected_tags=[], order=order)) == expected
    assert len(SORT_ORDERS) == 8


def test_tag_filters_and_search(index_file: Path) -> None:
    index = load_index(str(index_file), allow_local=True)

    def view(**kw: object) -> list[str]:
        return sorted(names(index.view(order="a-z", **kw)))  # type: ignore[arg-type]

    # default: ads, localization and installed hidden
    assert view() == ["Beta tab", "alpha script"]
    assert index.view().hidden == 1
    assert view(selected_tags=["script"]) == ["Beta tab", "Gamma"]  # hide any with script
    assert view(selected_tags=["script", "tab"], filtering_type="and") == ["Beta tab", "Gamma"]  # hide having both
    assert view(selected_tags=["script", "tab"], filtering_type="or") == ["Gamma"]
    assert view(selected_tags=["tab"], showing_type="show") == ["Beta tab", "alpha script"]
    assert view(selected_tags=["script", "tab"], showing_type="show", filtering_type="and") == ["alpha script"]
    assert view(selected_tags=[], search="WILDCARD") == ["alpha script"]  # description, any case
    assert view(selected_tags=[], search="gam") == ["Gamma"]  # name


def test_installed_entries_are_marked_by_url_or_folder_name(index_file: Path) -> None:
    index = load_index(str(index_file), allow_local=True)
    view = index.view(selected_tags=[], installed_names=["beta-tab"], installed_urls=["https://github.com/u/alpha.git"])
    installed = {row.entry.name: row.installed for row in view.rows}
    assert installed == {"Beta tab": True, "alpha script": True, "Gamma": False}
    assert "installed" in next(r for r in view.rows if r.entry.name == "Beta tab").tags
    assert names(index.view(installed_names=["beta-tab"], order="a-z")) == ["alpha script"]


def test_the_manager_marks_what_is_installed(make_manager: ManagerFactory, index_file: Path) -> None:
    manager = make_manager()
    (manager.paths.extensions_dir / "gamma").mkdir(parents=True)
    view = manager.available(manager.load_index(str(index_file)), selected_tags=[])
    assert {r.entry.name for r in view.rows if r.installed} == {"Gamma"}


def test_local_files_only_on_a_local_server(make_manager: ManagerFactory, index_file: Path) -> None:
    with pytest.raises(ForbiddenError):
        load_index(str(index_file), allow_local=False)
    with pytest.raises(ForbiddenError):
        make_manager("--listen", "--enable-insecure-extension-access").load_index(str(index_file))
    assert make_manager().load_index(str(index_file)).entries


@pytest.mark.parametrize("source", ["http://example.com/index.json", "ftp://example.com/i.json", ""])
def test_only_https_urls(source: str) -> None:
    with pytest.raises(ValidationError):
        load_index(source, allow_local=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.8", "192.168.1.2", "169.254.169.254", "::1", "fd00::1"])
def test_https_to_a_local_address_is_refused_before_connecting(address: str) -> None:
    with pytest.raises(ValidationError, match="local address"):
        fetch_https("https://index.example/index.json", resolver=lambda host, port: [address])
    with pytest.raises(ValidationError, match="local address"):
        checked_address(address, 443, lambda host, port: [])
    assert checked_address("index.example", 443, lambda host, port: ["8.8.8.8"]) == "8.8.8.8"


def test_size_cap_and_bad_json(tmp_path: Path, index_file: Path) -> None:
    with pytest.raises(ValidationError, match="larger than"):
        load_index(str(index_file), allow_local=True, max_bytes=100)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_index(str(bad), allow_local=True)
    with pytest.raises(ValidationError, match='"extensions" list'):
        parse_index(b'{"tags": {}}', "x")
    with pytest.raises(ValidationError, match="cannot read"):
        load_index(str(tmp_path / "missing.json"), allow_local=True)


def test_default_url() -> None:
    assert default_index_url({}) == DEFAULT_INDEX_URL
    assert default_index_url({"WEBUI_EXTENSIONS_INDEX": " https://mirror.example/i.json "}) == (
        "https://mirror.example/i.json"
    )
