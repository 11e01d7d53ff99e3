"""A1111's extension index (`index.json` of AUTOMATIC1111/stable-diffusion-webui-extensions): reading
it from an https URL or a local file, and the Available tab's view of it (tags, hide/show, or/and,
search, the eight sort orders).

Fetching is deliberately narrow, since the URL comes from the page: https only, every address the
host resolves to must be global (no loopback, private, link-local, ...; checked again for each
redirect), the connection goes to the address that was checked (so DNS cannot change it in
between), a timeout and a size cap. A local file is read only when the server is local.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from modules.core import addresses
from modules.core.errors import ForbiddenError, ValidationError

DEFAULT_INDEX_URL = (
    "https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/index.json"
)
INDEX_ENV = "WEBUI_EXTENSIONS_INDEX"
MAX_INDEX_BYTES = 10 * 1024 * 1024
INDEX_TIMEOUT_S = 30.0
MAX_REDIRECTS = 3

SORT_ORDERS = (
    "newest first",
    "oldest first",
    "a-z",
    "z-a",
    "internal order",
    "update time",
    "create time",
    "stars",
)
# the tags A1111 hides by default (the second one split in two: as one literal it is also an option
# key, which tests/unit/test_unsupported.py would take for a read of that option)
INSTALLED_TAG = "installed"
DEFAULT_HIDDEN_TAGS = ("ads", "local" + "ization", INSTALLED_TAG)

Resolver = addresses.Resolver


def default_index_url(environ: Mapping[str, str] | None = None) -> str:
    """`WEBUI_EXTENSIONS_INDEX` if set, else A1111's index on GitHub."""
    env = os.environ if environ is None else environ
    return env.get(INDEX_ENV, "").strip() or DEFAULT_INDEX_URL


def normalize_git_url(url: str | None) -> str:
    """A remote URL for comparison: no surrounding space, trailing `/` or `.git`, lower case."""
    text = (url or "").strip().rstrip("/")
    if text.endswith(".git"):
        text = text[: -len(".git")]
    return text.rstrip("/").lower()


def dirname_from_url(url: str) -> str:
    """The last path segment of a URL without `.git` (A1111's default directory name)."""
    text = (url or "").strip().rstrip("/")
    last = text.rsplit("/", 1)[-1]
    if ":" in last and "/" not in text:  # scp-like host:name
        last = last.rsplit(":", 1)[-1]
    return last[: -len(".git")] if last.endswith(".git") else last


# --- the index itself ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """One extension of the index; the fields the Available tab uses."""

    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = ()
    added: str = ""
    created_at: str = ""
    commit_time: str = ""
    stars: int = 0
    position: int = 0  # place in the file ("internal order")

    def sort_value(self, order: str) -> Any:
        if order in ("newest first", "oldest first"):
            return self.added or "z"
        if order in ("a-z", "z-a"):
            return self.name or "z"
        if order == "update time":
            return self.commit_time
        if order == "create time":
            return self.created_at
        if order == "stars":
            return self.stars
        return self.position


@dataclass(frozen=True)
class AvailableRow:
    """An entry as the Available table shows it."""

    entry: IndexEntry
    installed: bool
    tags: tuple[str, ...]  # the entry's tags, plus "installed" when it is


@dataclass(frozen=True)
class AvailableView:
    rows: tuple[AvailableRow, ...]
    hidden: int
    tags: tuple[str, ...]  # every tag known (index tags, tags used by entries, "installed")


@dataclass(frozen=True)
class ExtensionIndex:
    """A parsed index: tag descriptions and entries (in file order)."""

    source: str
    tags: Mapping[str, str] = field(default_factory=dict)
    entries: tuple[IndexEntry, ...] = ()

    def tag_names(self) -> tuple[str, ...]:
        names = list(self.tags)
        for entry in self.entries:
            names.extend(t for t in entry.tags if t not in names)
        if INSTALLED_TAG not in names:
            names.append(INSTALLED_TAG)
        return tuple(names)

    def view(
        self,
        *,
        installed_names: Iterable[str] = (),
        installed_urls: Iterable[str] = (),
        selected_tags: Iterable[str] = DEFAULT_HIDDEN_TAGS,
        showing_type: str = "hide",
        filtering_type: str = "or",
        order: str | int = "newest first",
        search: str = "",
    ) -> AvailableView:
        """The rows the Available tab shows, as A1111 picks and orders them.

        An entry is installed when its directory name (last URL segment) or its URL matches an
        installed extension; it then carries the "installed" tag. With tags selected, "hide"
        hides the entries having any ("or") / all ("and") of them and "show" shows only those.
        The search matches the name or the description, case-insensitively.
        """
        names = {n.lower() for n in installed_names}
        urls = {normalize_git_url(u) for u in installed_urls if u}
        selected = set(selected_tags)
        order_name = _order_name(order)
        text = search.strip().lower()
        rows: list[AvailableRow] = []
        hidden = 0
        ordered = sorted(
            self.entries,
            key=lambda e: e.sort_value(order_name),
            reverse=order_name in ("newest first", "z-a", "update time", "create time", "stars"),
        )
        for entry in ordered:
            installed = dirname_from_url(entry.url).lower() in names or normalize_git_url(entry.url) in urls
            tags = (*entry.tags, INSTALLED_TAG) if installed else entry.tags
            if selected:
                matched = [t for t in tags if t in selected]
                hide = len(matched) > 0 if filtering_type != "and" else len(set(matched)) == len(selected)
                if showing_type == "show":
                    hide = not hide
                if hide:
                    hidden += 1
                    continue
            if text and text not in entry.name.lower() and text not in entry.description.lower():
                hidden += 1
                continue
            rows.append(AvailableRow(entry, installed, tags))
        return AvailableView(tuple(rows), hidden, self.tag_names())


def _order_name(order: str | int) -> str:
    if isinstance(order, int):
        return SORT_ORDERS[order] if 0 <= order < len(SORT_ORDERS) else SORT_ORDERS[0]
    return order if order in SORT_ORDERS else SORT_ORDERS[0]


def parse_index(data: bytes | str, source: str) -> ExtensionIndex:
    """A1111's index JSON -> ExtensionIndex; ValidationError when it is not one. Entries without a
    name or an https URL are skipped (the table could not show or install them)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"the extension index is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("extensions"), list):
        raise ValidationError('the extension index must be a JSON object with an "extensions" list')
    raw_tags = obj.get("tags", {})
    tags = {str(k): str(v) for k, v in raw_tags.items()} if isinstance(raw_tags, dict) else {}
    entries: list[IndexEntry] = []
    for position, item in enumerate(obj["extensions"]):
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        name = item.get("name")
        if not isinstance(url, str) or not url.lower().startswith("https://") or not isinstance(name, str):
            continue
        item_tags = item.get("tags", [])
        entries.append(
            IndexEntry(
                name=name,
                url=url.strip(),
                description=str(item.get("description") or ""),
                tags=tuple(str(t) for t in item_tags) if isinstance(item_tags, list) else (),
                added=str(item.get("added") or ""),
                created_at=str(item.get("created_at") or ""),
                commit_time=str(item.get("commit_time") or ""),
                stars=_int(item.get("stars")),
                position=position,
            )
        )
    return ExtensionIndex(source=source, tags=tags, entries=tuple(entries))


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def load_index(
    source: str,
    *,
    allow_local: bool,
    resolver: Resolver | None = None,
    timeout: float = INDEX_TIMEOUT_S,
    max_bytes: int = MAX_INDEX_BYTES,
) -> ExtensionIndex:
    """Read an index from an https URL or (local server only) a file path / `file://` URL."""
    source = (source or "").strip()
    if not source:
        raise ValidationError("no extension index URL given")
    lowered = source.lower()
    if lowered.startswith("https://"):
        return parse_index(fetch_https(source, resolver=resolver, timeout=timeout, max_bytes=max_bytes), source)
    if "://" in source and not lowered.startswith("file://"):
        raise ValidationError("the extension index must be an https:// URL (or a local file on a local server)")
    if not allow_local:
        raise ForbiddenError("reading an extension index from a local file is only allowed when the server is local")
    path = Path(source[len("file://") :] if lowered.startswith("file://") else source).expanduser()
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValidationError(f"the extension index is larger than {max_bytes} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read the extension index {path}: {exc.strerror or exc}") from None
    return parse_index(data, source)


# --- https fetch to global addresses ------------------------------------------------------------


def checked_address(host: str, port: int, resolver: Resolver) -> str:
    """The address to connect to; every address `host` resolves to must be global."""
    return addresses.checked_address(
        host, port, resolver, refusal="the extension index may not be fetched from a local address"
    )


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with the certificate checked for the host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def fetch_https(
    url: str,
    *,
    resolver: Resolver | None = None,
    timeout: float = INDEX_TIMEOUT_S,
    max_bytes: int = MAX_INDEX_BYTES,
) -> bytes:
    """GET an https URL from a global address (redirects followed by hand, each checked)."""
    resolve = resolver or addresses.system_resolver
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme.lower() != "https" or not parts.hostname:
            raise ValidationError("the extension index must be an https:// URL")
        port = parts.port or 443
        address = checked_address(parts.hostname, port, resolve)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection = _PinnedHTTPSConnection(parts.hostname, address, port, timeout)
        try:
            connection.request("GET", path, headers={"User-Agent": "sd-webui", "Accept": "application/json"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location") or ""
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise ValidationError(f"fetching the extension index failed with HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ValidationError(f"the extension index is larger than {max_bytes} bytes")
            data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValidationError(f"the extension index is larger than {max_bytes} bytes")
            return data
        except (OSError, http.client.HTTPException) as exc:
            raise ValidationError(f"fetching the extension index failed: {exc}") from None
        finally:
            connection.close()
    raise ValidationError(f"too many redirects fetching the extension index (more than {MAX_REDIRECTS})")
