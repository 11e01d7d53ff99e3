"""The LoRA (and LyCORIS) and hypernetwork files on disk, with A1111's names, aliases, hashes, SD
versions and the sidecar files next to each (previews, user metadata, descriptions).

Scanning reads headers only, never tensor data: a `.safetensors` file's JSON header (kohya `ss_*`
metadata, tensor names and shapes), the first bytes of a pickle (`.pt` / `.ckpt`), and the small
sidecar files; a rescan re-reads the header of a file only when its mtime or size changed. A
corrupt, truncated or foreign file (a checkpoint in the LoRA folder) is listed with its `error`
(a truncated one keeps its metadata); nothing in a scan raises.

A1111 rules followed (its Lora extension, `network.py` / `networks.py`, and `hypernetwork.py`):

* LoRA folders: `--lora-dir` (models/Lora) then `--lyco-dir-backcompat` (models/LyCORIS), files
  `.safetensors`, `.pt`, `.ckpt` in any subfolder, in natural-sort order. A LoRA's `name` is its
  file stem; its alias `ss_output_name` (else the name). Lookup (`find_lora`) goes by name or alias;
  an alias that another file already uses as a name or an alias becomes forbidden (as do "none"),
  and a forbidden alias finds only a file with that name. When two folders hold the same name both
  are listed and the later one answers to the name, as A1111's dict keeps the later file.
  A name not found triggers one rescan first (A1111 rescans too), so a file just copied in works.
* Hypernetworks: `.pt` files in `--hypernetwork-dir` (any subfolder), named by file stem ("None"
  is never listed).
* Hashes: LoRA `shorthash` = the header's `sshs_model_hash` first, else the addnet hash (sha256 of
  the tensor data, for `.safetensors`) or the whole-file sha256 (other files), first 12 hex, cached
  in `cache.json` under `hashes-addnet` / `hashes`, key `lora/<name>`. Hypernetwork `shorthash` =
  whole-file sha256, first 10 hex (A1111's `Hypernetwork.shorthash()`, cache key
  `hypernet/<name>`). Scanning only reads cached hashes; `ensure_hash` computes.
* SD version: the user metadata's `sd version` when set; `ss_base_model_version` `sdxl_*` -> SDXL,
  `ss_v2 == "True"` -> SD2; then (beyond A1111, for files without kohya metadata)
  `modelspec.architecture` and the tensor names/shapes (a second text encoder or SDXL-only
  layers -> SDXL; cross-attention `to_k` input width 768/1024/2048); then any metadata -> SD1 (as
  A1111); else Unknown.
* Sidecars: preview `X.<ext>` then `X.preview.<ext>` for png, jpg, jpeg, webp, gif; user metadata
  `X.json`; description = user metadata `description`, else `X.txt` / `X.description.txt`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modules.core.atomic import atomic_write_json
from modules.core.errors import ModelFileError, NotFoundError
from modules.core.hashes import SECTION_ADDNET, SECTION_HASHES, HashCache
from modules.core.safetensors_header import (
    DEFAULT_MAX_HEADER_BYTES,
    METADATA_KEY,
    parse_metadata_json_values,
)
from modules.models.families import describe_contents
from modules.models.lora_formats import _MODIFIERS, BUNDLE_PREFIX, split_key
from modules.models.lora_keys import is_sdxl_network
from modules.models.registry import _walk

log = logging.getLogger(__name__)

Kind = Literal["lora", "hypernet"]
SdVersion = Literal["SD1", "SD2", "SDXL", "Unknown"]

LORA: Kind = "lora"
HYPERNET: Kind = "hypernet"
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
HYPERNETWORK_SUFFIXES = (".pt",)
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
SD_VERSIONS: tuple[SdVersion, ...] = ("SD1", "SD2", "SDXL", "Unknown")
FORBIDDEN_ALIASES = ("none", "Addams")
"""A1111's initial forbidden aliases (compared with the lowercased alias, so "Addams" never hits)."""

LORA_HASH_LENGTH = 12
HYPERNET_HASH_LENGTH = 10
MAX_SIDECAR_BYTES = 4 * 1024 * 1024

# A1111 shows these metadata keys first (network.py `metadata_tags_order`), the rest after.
_METADATA_ORDER = {
    "ss_sd_model_name": 1,
    "ss_resolution": 2,
    "ss_clip_skip": 3,
    "ss_num_train_images": 10,
    "ss_tag_frequency": 20,
}
_CONTEXT_WIDTHS: dict[int, SdVersion] = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_TEXT_ENCODER_HEADS = ("lora_te_", "lora_te1_", "text_encoder.")
_TEXT_WIDTHS: dict[int, SdVersion] = {768: "SD1", 1024: "SD2"}
_MODELSPEC_ARCHITECTURES: tuple[tuple[str, SdVersion], ...] = (
    ("stable-diffusion-xl", "SDXL"),
    ("stable-diffusion-v2", "SD2"),
    ("stable-diffusion-v1", "SD1"),
)
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")  # torch zip archive, legacy torch.save pickle


@dataclass
class NetworkInfo:
    """One LoRA / LyCORIS or hypernetwork file as listed (header data only)."""

    kind: Kind
    name: str
    alias: str
    filename: Path
    relative: str
    metadata: dict[str, object] = field(default_factory=dict)
    sd_version: SdVersion = "Unknown"
    user_metadata: dict[str, object] = field(default_factory=dict)
    preview: Path | None = None
    description: str = ""
    mtime: float = 0.0
    size: int = 0
    error: str | None = None
    sha256: str | None = None
    addnet_hash: str | None = None
    file_alias: str = ""
    """The alias as read from the file (`ss_output_name`, else user metadata `alias`, else the
    name) before the forbidden-alias rule: what A1111's `/sdapi/v1/loras` reports as `alias`."""

    @property
    def is_safetensors(self) -> bool:
        return self.filename.suffix.lower() == ".safetensors"

    @property
    def cache_key(self) -> str:
        """The key of this file's hashes in `cache.json` (A1111's)."""
        return f"{'lora' if self.kind == LORA else 'hypernet'}/{self.name}"

    @property
    def embedded_hash(self) -> str | None:
        """The header's `sshs_model_hash` (kohya writes it; it may differ from the file's own)."""
        value = self.metadata.get("sshs_model_hash")
        return value if isinstance(value, str) and value else None

    @property
    def shorthash(self) -> str | None:
        """What A1111 writes in infotext: `Lora hashes` (12 hex) or `Hypernet hash` (10 hex)."""
        if self.kind == HYPERNET:
            return self.sha256[:HYPERNET_HASH_LENGTH] if self.sha256 else None
        value = self.embedded_hash or self.addnet_hash
        return value[:LORA_HASH_LENGTH] if value else None


@dataclass
class _LoraIndex:
    by_name: dict[str, NetworkInfo] = field(default_factory=dict)
    by_alias: dict[str, NetworkInfo] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=lambda: set(FORBIDDEN_ALIASES))


class NetworkRegistry:
    """Scans the LoRA and hypernetwork folders; thread-safe; `refresh()` rescans.

    The first query scans; later ones use the last scan until `refresh`.
    """

    def __init__(
        self,
        lora_dirs: Sequence[Path],
        hypernetwork_dirs: Sequence[Path],
        hash_cache: HashCache,
        *,
        hashing: bool = True,
    ) -> None:
        self.lora_dirs = tuple(lora_dirs)
        self.hypernetwork_dirs = tuple(hypernetwork_dirs)
        self.hash_cache = hash_cache
        self.hashing = hashing
        self._lock = threading.RLock()
        self._loras: list[NetworkInfo] = []
        self._lora_index = _LoraIndex()
        self._hypernetworks: list[NetworkInfo] = []
        self._hypernetwork_names: dict[str, NetworkInfo] = {}
        self._scanned: set[Kind] = set()
        self._facts: dict[tuple[Kind, Path], tuple[tuple[int, int], _HeaderFacts]] = {}

    # -- scanning --------------------------------------------------------------------------

    def refresh(self, kind: str | None = None) -> None:
        """Rescan LoRAs (`"lora"`), hypernetworks (`"hypernet"` / `"hypernetwork"`) or both (None).
        Reads headers and sidecar files only."""
        for which in _kinds(kind):
            if which == LORA:
                loras = self._scan(LORA, self.lora_dirs, LORA_SUFFIXES)
                self._forget_facts(LORA, loras)
                index = _index_loras(loras)
                with self._lock:
                    self._loras, self._lora_index = loras, index
                    self._scanned.add(LORA)
                log.info("found %d LoRA files", len(loras))
            else:
                found = self._scan(HYPERNET, self.hypernetwork_dirs, HYPERNETWORK_SUFFIXES)
                self._forget_facts(HYPERNET, found)
                found = [info for info in found if info.name != "None"]
                found.sort(key=lambda info: str(info.filename).lower())
                with self._lock:
                    self._hypernetworks = found
                    self._hypernetwork_names = {info.name: info for info in found}
                    self._scanned.add(HYPERNET)
                log.info("found %d hypernetworks", len(found))

    def _ensure_scanned(self, kind: Kind) -> None:
        with self._lock:
            scanned = kind in self._scanned
        if not scanned:
            self.refresh(kind)

    def _scan(self, kind: Kind, roots: Sequence[Path], suffixes: tuple[str, ...]) -> list[NetworkInfo]:
        found: list[NetworkInfo] = []
        seen_roots: set[str] = set()
        seen_dirs: set[str] = set()
        for root in roots:
            real_root = os.path.realpath(root)
            if real_root in seen_roots:
                continue
            seen_roots.add(real_root)
            in_root: list[tuple[list[object], NetworkInfo]] = []
            for dirpath, _dirnames, filenames in _walk(root):
                real_dir = os.path.realpath(dirpath)
                if real_dir in seen_dirs:  # a folder reached from two roots is listed once
                    continue
                seen_dirs.add(real_dir)
                present = set(filenames)
                relative_dir = dirpath.relative_to(root).as_posix()
                for filename in filenames:
                    if not filename.lower().endswith(suffixes):
                        continue
                    path = dirpath / filename
                    relative = filename if relative_dir == "." else f"{relative_dir}/{filename}"
                    info = self._read_entry(kind, path, relative, present)
                    in_root.append(([*_natural_key(relative_dir), *_natural_key(filename)], info))
            in_root.sort(key=lambda pair: _sortable(pair[0]))
            found.extend(info for _key, info in in_root)
        return found

    def _read_entry(self, kind: Kind, path: Path, relative: str, present: set[str] | None = None) -> NetworkInfo:
        """One file's entry; never raises (problems go into `error`)."""
        if present is None:
            try:
                present = set(os.listdir(path.parent))
            except OSError:
                present = set()
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        info = NetworkInfo(kind=kind, name=stem, alias=stem, filename=path, relative=relative, file_alias=stem)
        try:
            stat = path.stat()
        except OSError as exc:
            facts = _HeaderFacts(error=f"{path.name}: cannot read file: {exc.strerror or exc}")
        else:
            info.mtime, info.size = stat.st_mtime, stat.st_size
            facts = self._header_facts(kind, path, (stat.st_mtime_ns, stat.st_size))
        info.error = facts.error
        info.metadata = dict(facts.metadata)
        info.user_metadata = _read_user_metadata(path, present)
        info.preview = _find_preview(path, stem, present)
        info.description = _description(path, stem, present, info.user_metadata)
        info.sd_version = _sd_version(info.metadata, facts.key_version, info.user_metadata)
        if kind == LORA:
            info.file_alias = _file_alias(stem, info.metadata, info.user_metadata)
            info.alias = info.file_alias
        self._cached_hashes(info)
        return info

    def _header_facts(self, kind: Kind, path: Path, stamp: tuple[int, int]) -> _HeaderFacts:
        """What the header says, re-read only when the file changed since the last scan."""
        with self._lock:
            held = self._facts.get((kind, path))
        if held is not None and held[0] == stamp:
            return held[1]
        if path.suffix.lower() == ".safetensors":
            facts = _safetensors_facts(path, check_network=kind == LORA)
        else:
            facts = _HeaderFacts(error=_check_pickle(path))
        with self._lock:
            self._facts[(kind, path)] = (stamp, facts)
        return facts

    def _forget_facts(self, kind: Kind, keep: Sequence[NetworkInfo]) -> None:
        paths = {info.filename for info in keep}
        with self._lock:
            for key in [k for k in self._facts if k[0] == kind and k[1] not in paths]:
                del self._facts[key]

    def _cached_hashes(self, info: NetworkInfo) -> None:
        """Fill the hashes `cache.json` already holds for this file (never computes)."""
        if info.error is not None and info.size == 0:
            return
        if info.kind == LORA and info.is_safetensors:
            info.addnet_hash = self.hash_cache.get(SECTION_ADDNET, info.cache_key, info.filename)
            info.sha256 = self.hash_cache.get(SECTION_HASHES, info.cache_key, info.filename)
        else:
            info.sha256 = self.hash_cache.get(SECTION_HASHES, info.cache_key, info.filename)
            if info.kind == LORA:
                info.addnet_hash = info.sha256  # a pickle's "tensor data" hash is the whole file's

    # -- queries ---------------------------------------------------------------------------

    def loras(self) -> list[NetworkInfo]:
        self._ensure_scanned(LORA)
        with self._lock:
            return list(self._loras)

    def hypernetworks(self) -> list[NetworkInfo]:
        self._ensure_scanned(HYPERNET)
        with self._lock:
            return list(self._hypernetworks)

    def find_lora(self, name: str) -> NetworkInfo:
        """The LoRA a prompt's `<lora:NAME:...>` names, by name or alias (A1111's rules); rescans
        once when not found. `NotFoundError` if still not found."""
        self._ensure_scanned(LORA)
        found = self._lookup_lora(name)
        if found is None:
            self.refresh(LORA)
            found = self._lookup_lora(name)
        if found is None:
            raise NotFoundError(f"LoRA not found: {name!r}")
        return found

    def _lookup_lora(self, name: str) -> NetworkInfo | None:
        with self._lock:
            index = self._lora_index
        if name.lower() in index.forbidden:
            return index.by_name.get(name)
        return index.by_alias.get(name)

    def find_hypernetwork(self, name: str) -> NetworkInfo:
        """By name (the file stem), as A1111. `NotFoundError` if not listed."""
        self._ensure_scanned(HYPERNET)
        with self._lock:
            found = self._hypernetwork_names.get(name)
        if found is None:
            raise NotFoundError(f"hypernetwork not found: {name!r}")
        return found

    def lora_by_shorthash(self, shorthash: str) -> NetworkInfo | None:
        """The LoRA whose known 12-hex hash this is (A1111 maps `Lora hashes` on paste back to
        local files this way); only hashes already known (header or cache) are matched, and
        the later file wins on a tie, as in A1111's lookup dict."""
        wanted = shorthash.strip().lower()
        if not wanted:
            return None
        found: NetworkInfo | None = None
        for info in self.loras():
            if info.shorthash is None and info.error is None:
                self._cached_hashes(info)  # computed since the scan (by another holder of the cache)
            if info.shorthash is not None and info.shorthash.lower() == wanted:
                found = info
        return found

    # -- hashes ----------------------------------------------------------------------------

    def ensure_hash(self, info: NetworkInfo) -> str | None:
        """The shorthash A1111 writes in infotext, computing and caching the file hash if needed
        (reads the whole file once; `cache.json` keeps it). None with `--no-hashing` or when the
        file cannot be read."""
        if info.shorthash is not None or not self.hashing:
            return info.shorthash
        try:
            if info.kind == LORA and info.is_safetensors:
                info.addnet_hash = self.hash_cache.sha256(SECTION_ADDNET, info.cache_key, info.filename)
            else:
                info.sha256 = self.hash_cache.sha256(SECTION_HASHES, info.cache_key, info.filename)
                if info.kind == LORA:
                    info.addnet_hash = info.sha256
        except (OSError, ModelFileError) as exc:
            log.warning("cannot hash %s: %s", info.filename, exc)
            return None
        return info.shorthash

    # -- user metadata ---------------------------------------------------------------------

    def save_user_metadata(self, info: NetworkInfo, data: Mapping[str, object]) -> None:
        """Write `data` as the whole `X.json` next to the file (atomically; a value that is not
        JSON leaves the old file as it was) and re-read the entry (alias, description, SD version
        may change). `info` itself is updated too."""
        target = info.filename.with_suffix(".json")
        atomic_write_json(target, dict(data))
        fresh = self._read_entry(info.kind, info.filename, info.relative)
        if fresh.shorthash is None:
            fresh.sha256, fresh.addnet_hash = info.sha256, info.addnet_hash
        with self._lock:
            if info.kind == LORA:
                self._loras = [fresh if _same_file(e, info) else e for e in self._loras]
                self._lora_index = _index_loras(self._loras)
            else:
                self._hypernetworks = [fresh if _same_file(e, info) else e for e in self._hypernetworks]
                self._hypernetwork_names = {e.name: e for e in self._hypernetworks}
        for name in ("user_metadata", "description", "sd_version", "file_alias", "alias", "preview"):
            setattr(info, name, getattr(fresh, name))


# -- helpers ------------------------------------------------------------------------------------


def _kinds(kind: str | None) -> tuple[Kind, ...]:
    if kind is None:
        return (LORA, HYPERNET)
    if kind in ("lora", "lycoris", "loras"):
        return (LORA,)
    if kind in ("hypernet", "hypernetwork", "hypernetworks"):
        return (HYPERNET,)
    raise ValueError(f"unknown network kind {kind!r} (lora, hypernet)")


def _same_file(a: NetworkInfo, b: NetworkInfo) -> bool:
    return a.filename == b.filename


def _index_loras(loras: Sequence[NetworkInfo]) -> _LoraIndex:
    """A1111's `available_networks` / `available_network_aliases` / `forbidden_network_aliases`,
    filled in scan order; then each entry's prompt alias (`get_alias`)."""
    index = _LoraIndex()
    for info in loras:
        index.by_name[info.name] = info
        if info.file_alias in index.by_alias:
            index.forbidden.add(info.file_alias.lower())
        index.by_alias[info.name] = info
        index.by_alias[info.file_alias] = info
    for info in loras:
        info.alias = info.name if info.file_alias.lower() in index.forbidden else info.file_alias
    return index


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _sortable(key: list[object]) -> tuple[tuple[int, int, str], ...]:
    """A natural-sort key that never compares an int with a str."""
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in key)


@dataclass(frozen=True)
class _HeaderFacts:
    """What a scan keeps of a file's header."""

    metadata: dict[str, object] = field(default_factory=dict)  # decoded, in A1111's order
    key_version: SdVersion | None = None  # what the tensor names/shapes say
    error: str | None = None


def _safetensors_facts(path: Path, *, check_network: bool) -> _HeaderFacts:
    raw_metadata, entries, error = _read_header(path)
    metadata = _ordered(parse_metadata_json_values(raw_metadata))
    modules: dict[str, set[str]] = {}
    bundled = False
    downs: list[tuple[str, object]] = []
    for key, entry in entries.items():
        if key.startswith(BUNDLE_PREFIX):
            bundled = True
            continue
        split = split_key(key)
        if split is None:
            continue
        modules.setdefault(split[0], set()).add(split[1])
        if split[1] == "lora_down.weight":
            downs.append((split[0], entry.get("shape") if isinstance(entry, dict) else None))
    if error is None and check_network and not bundled and all(s <= _MODIFIERS for s in modules.values()):
        error = f"{path.name}: not a LoRA/LyCORIS network ({describe_contents(dict.fromkeys(entries, ()))})"
    return _HeaderFacts(metadata, _version_from_keys(modules, downs), error)


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, object], str | None]:
    """(string metadata, tensor entries by name, error) of a safetensors file, checked only as far
    as listing needs: the header parses and the tensor data it describes is all in the file.
    (`core.safetensors_header` checks every tensor entry; loading the file does that.) A broken
    header still gives what it can, so a truncated file keeps its name and alias."""
    name = path.name
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                return {}, {}, f"{name}: not a safetensors file (shorter than 8 bytes)"
            (length,) = struct.unpack("<Q", prefix)
            if length > DEFAULT_MAX_HEADER_BYTES:
                return {}, {}, f"{name}: safetensors header length {length} exceeds the limit (corrupt file?)"
            if 8 + length > size:
                return (
                    {},
                    {},
                    (
                        f"{name}: safetensors header length {length} is larger than the file ({size} bytes): "
                        "truncated or not a safetensors file"
                    ),
                )
            raw = handle.read(length)
    except OSError as exc:
        return {}, {}, f"{name}: cannot read file: {exc.strerror or exc}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return {}, {}, f"{name}: safetensors header is not UTF-8 text"
    except (ValueError, RecursionError) as exc:
        return {}, {}, f"{name}: safetensors header is not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return {}, {}, f"{name}: safetensors header is not a JSON object"
    raw_metadata = obj.pop(METADATA_KEY, None)
    metadata = {k: v for k, v in raw_metadata.items() if isinstance(v, str)} if isinstance(raw_metadata, dict) else {}
    data_size = size - 8 - length
    end = 0
    for key, entry in obj.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not isinstance(offsets, list) or len(offsets) != 2 or not isinstance(offsets[1], int):
            return metadata, obj, f"{name}: tensor {key!r} has no valid data_offsets"
        end = max(end, offsets[1])
    if end > data_size:
        return (
            metadata,
            obj,
            (f"{name}: tensor data ends at byte {end} but the file has {data_size} bytes of it: truncated file"),
        )
    return metadata, obj, None


def _check_pickle(path: Path) -> str | None:
    """A `.pt` / `.ckpt` must at least start like a torch file (zip archive or pickle)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"{path.name}: cannot read file: {exc.strerror or exc}"
    if not head:
        return f"{path.name}: empty file"
    if not head.startswith(_PICKLE_MAGICS):
        return f"{path.name}: not a PyTorch file (neither a zip archive nor a pickle)"
    return None


def _ordered(metadata: dict[str, object]) -> dict[str, object]:
    return dict(sorted(metadata.items(), key=lambda kv: _METADATA_ORDER.get(kv[0], 999)))


def _read_small_text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(MAX_SIDECAR_BYTES)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _read_user_metadata(path: Path, present: set[str]) -> dict[str, object]:
    """`X.json` next to the file, {} when absent or unreadable (logged)."""
    target = path.with_suffix(".json")
    if target.name not in present:
        return {}
    text = _read_small_text(target)
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        log.warning("user metadata %s is not valid JSON: %s", target, exc)
        return {}
    if not isinstance(obj, dict):
        log.warning("user metadata %s is not a JSON object", target)
        return {}
    return obj


def _find_preview(path: Path, stem: str, present: set[str]) -> Path | None:
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (f"{stem}.{ext}", f"{stem}.preview.{ext}"):
            if candidate in present and (path.parent / candidate).is_file():
                return path.parent / candidate
    return None


def _description(path: Path, stem: str, present: set[str], user_metadata: Mapping[str, object]) -> str:
    described = user_metadata.get("description")
    if described is not None:
        return str(described)
    for candidate in (f"{stem}.txt", f"{stem}.description.txt"):
        if candidate in present:
            text = _read_small_text(path.parent / candidate)
            if text is not None:
                return text
    return ""


def _file_alias(name: str, metadata: Mapping[str, object], user_metadata: Mapping[str, object]) -> str:
    for value in (metadata.get("ss_output_name"), user_metadata.get("alias")):
        if isinstance(value, str) and value.strip():
            return value
    return name


def _sd_version(
    metadata: Mapping[str, object], key_version: SdVersion | None, user_metadata: Mapping[str, object]
) -> SdVersion:
    chosen = user_metadata.get("sd version")
    for version in SD_VERSIONS:
        if chosen == version:
            return version
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    architecture = str(metadata.get("modelspec.architecture", ""))
    for prefix, version in _MODELSPEC_ARCHITECTURES:
        if architecture.startswith(prefix):
            return version
    if key_version is not None:
        return key_version
    return "SD1" if metadata else "Unknown"


def _version_from_keys(modules: Mapping[str, object], downs: Sequence[tuple[str, object]]) -> SdVersion | None:
    """The family a network's module names and `lora_down` shapes point to, when they do: SDXL-only
    layers, else the input width of a cross-attention `to_k`/`to_v`, else of a text encoder's q_proj."""
    if is_sdxl_network(modules):
        return "SDXL"
    text_width: SdVersion | None = None
    for module, shape in downs:
        if not isinstance(shape, list) or len(shape) != 2 or not isinstance(shape[1], int):
            continue
        if "attn2" in module and ("to_k" in module or "to_v" in module):
            found = _CONTEXT_WIDTHS.get(shape[1])
            if found is not None:
                return found
        elif text_width is None and module.startswith(_TEXT_ENCODER_HEADS) and "q_proj" in module:
            text_width = _TEXT_WIDTHS.get(shape[1])
    return text_width
