"""Textual-inversion embeddings: the files in the embeddings folders, parsed (features.md 2).

Formats, checked in A1111's order on the file's content:

1. `string_to_param` (A1111 `.pt`): exactly one entry, `[n, width]`; torch 1.11 files pickle it as
   a `ParameterDict` (read through `checkpoint_io.read_structured`'s stand-in). Also `step`,
   `sd_checkpoint`, `sd_checkpoint_name`.
2. both `clip_l` and `clip_g` (SDXL, kohya's `sdxl_train_textual_inversion.py`): width 768 + 1280.
3. a single tensor under any key: diffusers concepts (`{"<token>": [768]}`), kohya `emb_params`;
   a 1-D tensor is one vector. A file holding a bare tensor is read the same way.

`.pt`/`.bin` are pickles and go only through the safe reader; `.safetensors` through the checked
header. A1111 PNG embeddings carry the data as base64 JSON in an `sd-ti-embedding` text chunk (the
name inside wins over the file stem there, as in A1111); images without it (embeddings hidden in
the pixels, or WebP/JXL/AVIF) are listed as skipped with the reason. `*.preview.*` files are not
embeddings. The token is the file stem; subfolders are scanned.

An embedding fits a model when its width equals the sum of the model's text-encoder widths (A1111's
`expected_shape`: 768 SD1, 1024 SD2, 2048 SDXL, 1280 the SDXL refiner) and each encoder finds its
vectors (SDXL needs `clip_l` and `clip_g`); the others are skipped with the reason.
Prompts find embeddings by the tokenizer ids of their names, longest first (A1111's
`find_embedding_at_position`), so `EasyNegative` matches inside `(EasyNegative:1.2)` too.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.core.errors import ModelFileError
from modules.core.hashes import HashCache
from modules.core.prompt_syntax import EmbeddingMatch, FindEmbedding
from modules.models.checkpoint_io import read_structured
from modules.models.families import ModelFamily

log = logging.getLogger(__name__)

TENSOR_SUFFIXES = (".pt", ".bin", ".safetensors")
IMAGE_SUFFIXES = (".png", ".webp", ".jxl", ".avif")
EMBEDDING_SUFFIXES = TENSOR_SUFFIXES + IMAGE_SUFFIXES
PNG_TEXT_KEY = "sd-ti-embedding"
HASH_SECTION = "hashes"

Tokenize = Callable[[list[str]], list[list[int]]]

# What a width usually means, for skip reasons.
_WIDTH_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "the SDXL refiner"}


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a model: which vectors of an embedding it takes, and its width."""

    key: str  # "clip" (SD1/SD2), "clip_l" / "clip_g" (SDXL); the refiner's only encoder is "clip_g"
    width: int


@dataclass(eq=False)
class Embedding:
    """One textual-inversion embedding (A1111's `Embedding`)."""

    name: str
    vectors: dict[str, torch.Tensor]
    """SD1/SD2: {"clip": [n, 768|1024]}; SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]} (float32, CPU)."""
    vector_count: int
    shape: int
    """The vector width A1111 reports: 768 / 1024, 2048 for SDXL (clip_l + clip_g)."""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    filename: Path | None = None
    """None for embeddings bundled in a LoRA."""
    source: str | None = None
    """The LoRA a bundled embedding came from."""
    _hash_cache: HashCache | None = field(default=None, repr=False)
    _hashing: bool = field(default=True, repr=False)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def hash_key(self) -> str:
        """A1111's `cache.json` key for the hash."""
        return f"textual_inversion/{self.name}"

    def sha256(self) -> str | None:
        """The file's full sha256 (computed once and cached in `cache.json`; without hashing only a
        cached value); None for bundled embeddings or an unreadable file."""
        if self._sha256 is not None or self.filename is None or self._hash_cache is None:
            return self._sha256
        try:
            if self._hashing:
                self._sha256 = self._hash_cache.sha256(HASH_SECTION, self.hash_key, self.filename)
            else:
                self._sha256 = self._hash_cache.get(HASH_SECTION, self.hash_key, self.filename)
        except OSError as exc:
            log.warning("cannot hash embedding %s: %s", self.filename, exc)
        return self._sha256

    def shorthash(self) -> str | None:
        """First 12 hex of the file's sha256: what A1111 writes in `TI hashes`."""
        digest = self.sha256()
        return digest[:12] if digest else None

    def vectors_for(self, key: str) -> torch.Tensor | None:
        """The vectors one text encoder takes (a single tensor serves whatever encoder there is)."""
        found = self.vectors.get(key)
        if found is None and len(self.vectors) == 1:
            found = self.vectors.get("clip")
        return found

    def misfit(self, slots: Sequence[EncoderSlot], label: str) -> str | None:
        """Why this embedding cannot be used with a model of these encoders, or None if it can."""
        expected = sum(s.width for s in slots)
        made_for = _WIDTH_FAMILY.get(self.shape, "another model")
        if self.shape != expected:
            return f"made for {made_for} (vectors {self.shape} wide); {label} takes {expected}"
        for slot in slots:
            vec = self.vectors_for(slot.key)
            if vec is None or vec.shape[-1] != slot.width:
                have = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.vectors.items())
                return f"no {slot.key} vectors {slot.width} wide for {label} (has {have})"
        return None

    def info(self) -> dict[str, Any]:
        """What A1111's `/embeddings` lists for one embedding."""
        return {
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "shape": self.shape,
            "vectors": self.vector_count,
        }


@dataclass
class EmbeddingSet:
    """The embeddings one model can use (`loaded`) and the others with the reason (`skipped`)."""

    loaded: dict[str, Embedding]
    skipped: dict[str, tuple[Embedding | None, str]]
    slots: tuple[EncoderSlot, ...] = ()
    _finders: dict[int, tuple[object, FindEmbedding]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def finder(self, tokenize: Tokenize, key: object | None = None) -> FindEmbedding:
        """The chunker's hook for prompts tokenized by `tokenize`: the embedding whose name's ids
        start at a position, the longest name first. `key` (the tokenizer object) caches it."""
        if key is not None:
            with self._lock:
                cached = self._finders.get(id(key))
            if cached is not None and cached[0] is key:
                return cached[1]
        find = _build_finder(self.loaded, tokenize)
        if key is not None:
            with self._lock:
                self._finders[id(key)] = (key, find)  # keeps `key` alive, so its id stays its own
        return find

    def finder_for_tokenizer(self, tokenizer: Any) -> FindEmbedding:
        """`finder` for a transformers CLIP tokenizer (ids without BOS/EOS, no truncation)."""

        def tokenize(texts: list[str]) -> list[list[int]]:
            ids: list[list[int]] = tokenizer(texts, add_special_tokens=False, truncation=False).input_ids
            return ids

        return self.finder(tokenize, tokenizer)

    def api_json(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's `/sdapi/v1/embeddings` body: `skipped` holds the embeddings made for another
        model family; files that are not embeddings at all are left out, as A1111 does."""
        skipped = {name: e.info() for name, (e, _reason) in self.skipped.items() if e is not None}
        return {"loaded": {name: e.info() for name, e in self.loaded.items()}, "skipped": skipped}


def _build_finder(loaded: Mapping[str, Embedding], tokenize: Tokenize) -> FindEmbedding:
    names = list(loaded)
    by_first: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
    for name, ids in zip(names, tokenize(names) if names else [], strict=True):
        if ids:
            by_first.setdefault(ids[0], []).append((tuple(ids), loaded[name]))
    for candidates in by_first.values():
        candidates.sort(key=lambda entry: len(entry[0]), reverse=True)  # stable: ties keep name order

    def find(tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        candidates = by_first.get(tokens[position])
        if candidates is None:
            return None
        for ids, embedding in candidates:
            if tuple(tokens[position : position + len(ids)]) == ids:
                return EmbeddingMatch(embedding.name, embedding.vector_count, len(ids))
        return None

    return find


# --------------------------------------------------------------------------- models


_FAMILY_SLOTS: dict[str, tuple[EncoderSlot, ...]] = {
    "sd1": (EncoderSlot("clip", 768),),
    "sd2": (EncoderSlot("clip", 1024),),
    "sdxl": (EncoderSlot("clip_l", 768), EncoderSlot("clip_g", 1280)),
    "sdxl-refiner": (EncoderSlot("clip_g", 1280),),
}


def encoder_slots(model_or_family: Any) -> tuple[EncoderSlot, ...]:
    """The text encoders of a loaded model (widths read from their token embeddings) or, for a
    bare `ModelFamily`, of the real models of that family."""
    family: ModelFamily = model_or_family if isinstance(model_or_family, ModelFamily) else model_or_family.family
    encoders = getattr(model_or_family, "text_encoders", None)
    if encoders is None:
        return _FAMILY_SLOTS[family.base]
    keys = [slot.key for slot in _FAMILY_SLOTS[family.base]]
    if len(keys) != len(encoders):
        keys = ["clip"] if len(encoders) == 1 else [f"encoder{i}" for i in range(len(encoders))]
    return tuple(
        EncoderSlot(key, int(encoder.get_input_embeddings().weight.shape[-1]))
        for key, encoder in zip(keys, encoders, strict=True)
    )


def _label(model_or_family: Any) -> str:
    family = model_or_family if isinstance(model_or_family, ModelFamily) else model_or_family.family
    return f"this {family.label} model"


# --------------------------------------------------------------------------- parsing


def _vector_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ModelFileError(f"{what} is a {type(value).__name__}, not a tensor")
    vec = value.detach()
    if vec.dim() == 1:
        vec = vec.unsqueeze(0)
    if vec.dim() != 2 or vec.shape[0] < 1 or vec.shape[1] < 1:
        raise ModelFileError(f"{what} has shape {tuple(value.shape)}; expected [vectors, width]")
    if not vec.is_floating_point():
        raise ModelFileError(f"{what} holds {vec.dtype} values, not floats")
    return vec.to(device="cpu", dtype=torch.float32, copy=True).contiguous()


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def embedding_from_data(data: Any, name: str, *, filename: Path | None = None, source: str | None = None) -> Embedding:
    """An `Embedding` from a file's content (A1111's `create_embedding_from_data`); raises
    `ModelFileError` saying what the content is when it is none of the known formats."""
    what = str(filename) if filename is not None else f"{source}/{name}" if source else name
    if isinstance(data, torch.Tensor):
        data = {"emb_params": data}
    if not isinstance(data, Mapping):
        raise ModelFileError(f"{what}: not an embedding (the file holds a {type(data).__name__})")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if isinstance(params, torch.Tensor):
            params = {"*": params}
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else type(params).__name__
            raise ModelFileError(f"{what}: string_to_param must hold exactly one term (has {count})")
        vec = _vector_tensor(next(iter(params.values())), f"{what}: string_to_param")
        vectors = {"clip": vec}
        shape, count = vec.shape[1], vec.shape[0]
    elif "clip_l" in data and "clip_g" in data:
        clip_l = _vector_tensor(data["clip_l"], f"{what}: clip_l")
        clip_g = _vector_tensor(data["clip_g"], f"{what}: clip_g")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise ModelFileError(f"{what}: clip_l has {clip_l.shape[0]} vectors, clip_g {clip_g.shape[0]}")
        vectors = {"clip_l": clip_l, "clip_g": clip_g}
        shape, count = clip_l.shape[1] + clip_g.shape[1], clip_g.shape[0]
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1 or len(data) != 1:
            keys = ", ".join(map(str, list(data)[:6])) or "nothing"
            raise ModelFileError(
                f"{what}: not a textual-inversion embedding (neither string_to_param, clip_l/clip_g nor a "
                f"single tensor; found {keys})"
            )
        key, value = next(iter(tensors.items()))
        vec = _vector_tensor(value, f"{what}: {key}")
        vectors = {"clip": vec}
        shape, count = vec.shape[1], vec.shape[0]
    return Embedding(
        name=name,
        vectors=vectors,
        vector_count=int(count),
        shape=int(shape),
        step=_optional_int(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
        filename=filename,
        source=source,
    )


def _decode_tensors(obj: dict[str, Any]) -> Any:
    if "TORCHTENSOR" in obj:
        return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float32)
    return obj


def _png_embedding(path: Path) -> tuple[str, Any] | str:
    """(name, data) from an A1111 PNG embedding's text chunk, or why there is none."""
    from PIL import Image

    with Image.open(path) as image:
        text = dict(getattr(image, "text", {}) or {})
    encoded = text.get(PNG_TEXT_KEY)
    if encoded is None:
        return "no sd-ti-embedding text chunk (embeddings hidden in the image pixels are not read)"
    try:
        data = json.loads(base64.b64decode(encoded, validate=False), object_hook=_decode_tensors)
    except (binascii.Error, ValueError, RecursionError, TypeError) as exc:
        raise ModelFileError(f"{path}: unreadable sd-ti-embedding text chunk: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: the sd-ti-embedding text chunk is not an object")
    name = data.get("name")
    return (name if isinstance(name, str) and name else path.stem), data


def is_preview(path: Path) -> bool:
    """`name.preview.png` and the like: a card's picture, not an embedding."""
    return Path(path.stem).suffix.lower() == ".preview"


def read_embedding_file(path: Path) -> tuple[str, Embedding | None, str | None]:
    """(name, embedding, None) for a readable embedding file, (name, None, reason) for an image
    that carries none. Raises `ModelFileError` (or `UnsafeModelFileError`) for a bad file."""
    suffix = path.suffix.lower()
    if suffix in TENSOR_SUFFIXES:
        return path.stem, embedding_from_data(read_structured(path), path.stem, filename=path), None
    if suffix == ".png":
        found = _png_embedding(path)
        if isinstance(found, str):
            return path.stem, None, found
        name, data = found
        return name, embedding_from_data(data, name, filename=path), None
    if suffix in IMAGE_SUFFIXES:
        return path.stem, None, f"{suffix} embedding images are not read (only PNG text chunks)"
    raise ModelFileError(f"{path}: not an embedding file type ({path.suffix!r})")


def _bundled_data(parts: Mapping[str, Any]) -> dict[str, Any]:
    """A LoRA's `bundle_emb.<name>.*` tensors (keys after the name) as embedding file content."""
    data: dict[str, Any] = {}
    for key, value in parts.items():
        head, _, rest = key.partition(".")
        if head == "string_to_param":
            params = data.setdefault("string_to_param", {})
            if isinstance(value, Mapping):
                params.update(value)
            else:
                params[rest or "*"] = value
        else:
            data[key] = value
    return data


# --------------------------------------------------------------------------- database


def _walk(root: Path) -> Iterator[Path]:
    """Every file under `root`, sorted, following links (A1111 walks with followlinks=True)."""
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort(key=str.lower)
        for name in sorted(files, key=str.lower):
            yield Path(folder) / name


def _tree_mtimes(dirs: Sequence[Path]) -> tuple[float, ...]:
    stamps: list[float] = []
    for root in dirs:
        if not root.is_dir():
            stamps.append(-1.0)
            continue
        for folder, _subdirs, _files in os.walk(root, followlinks=True):
            try:
                stamps.append(os.stat(folder).st_mtime)
            except OSError:
                stamps.append(-1.0)
    return tuple(stamps)


class EmbeddingDatabase:
    """The embeddings in the embeddings folders (and those bundled in loaded LoRAs).

    `refresh` reads every file (they are small); a file that cannot be read is listed in `errors`
    with the reason and never stops the others. `for_model` splits them into what a model can use
    and what it cannot. Thread-safe: a refresh swaps in complete new tables.
    """

    def __init__(self, dirs: Sequence[Path], hash_cache: HashCache, *, hashing: bool = True) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.hash_cache = hash_cache
        self.hashing = hashing
        self.errors: dict[str, str] = {}
        self._files: dict[str, Embedding] = {}
        self._unreadable: dict[str, str] = {}  # images without embedding data: name -> reason
        self._bundled: dict[str, dict[str, Embedding]] = {}  # source LoRA -> name -> embedding
        self._overrides: dict[str, Embedding] = {}  # embeddings being trained: they win over files
        self._sets: dict[tuple[Any, ...], EmbeddingSet] = {}
        self._generation = 0
        self._mtimes: tuple[float, ...] | None = None
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read every embedding file again (A1111's `/refresh-embeddings`)."""
        files: dict[str, Embedding] = {}
        unreadable: dict[str, str] = {}
        errors: dict[str, str] = {}
        where: dict[str, Path] = {}
        mtimes = _tree_mtimes(self.dirs)
        for root in self.dirs:
            if not root.is_dir():
                continue
            for path in _walk(root):
                if path.suffix.lower() not in EMBEDDING_SUFFIXES or is_preview(path):
                    continue
                try:
                    if path.stat().st_size == 0:
                        continue
                    name, embedding, reason = read_embedding_file(path)
                except Exception as exc:  # any bad file is listed, never fatal
                    errors[str(path)] = str(exc)
                    log.warning("embedding %s could not be read: %s", path, exc)
                    continue
                if name in where:
                    errors[str(path)] = f"another embedding named {name!r} was read first: {where[name]}"
                    continue
                if embedding is None:
                    unreadable[name] = reason or "no embedding data"
                    continue
                embedding._hash_cache = self.hash_cache
                embedding._hashing = self.hashing
                files[name] = embedding
                where[name] = path
        with self._lock:
            self._files = dict(sorted(files.items(), key=lambda item: item[0].lower()))
            self._unreadable = {n: r for n, r in unreadable.items() if n not in files}
            self.errors = errors
            self._mtimes = mtimes
            self._changed()
        log.info("textual-inversion embeddings: %d read, %d unreadable", len(files), len(errors))

    def refresh_if_changed(self) -> bool:
        """Refresh when a folder was added to or changed since the last read (A1111 checks its
        folders' mtimes before every generation); True when it read again."""
        if self._mtimes is not None and _tree_mtimes(self.dirs) == self._mtimes:
            return False
        self.refresh()
        return True

    def add_bundled(self, source: str, embeddings: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
        """Embeddings bundled in a LoRA file (`bundle_emb.<name>.string_to_param.*`, `.clip_l`,
        `.clip_g`, or a single tensor), keyed by their name; replaces that LoRA's earlier ones. An
        embedding of the same name in the embeddings folder wins over a bundled one (A1111). Returns
        the names read; the others are in `errors` under `<source>/<name>`."""
        parsed: dict[str, Embedding] = {}
        with self._lock:
            for key in [k for k in self.errors if k.startswith(f"{source}/")]:
                del self.errors[key]
        for name, parts in embeddings.items():
            try:
                parsed[name] = embedding_from_data(_bundled_data(parts), name, source=source)
            except ModelFileError as exc:
                with self._lock:
                    self.errors[f"{source}/{name}"] = str(exc)
        with self._lock:
            self._bundled[source] = parsed
            self._changed()
        return list(parsed)

    def remove_bundled(self, source: str) -> None:
        with self._lock:
            if self._bundled.pop(source, None) is not None:
                self._changed()

    def _changed(self) -> None:
        self._generation += 1
        self._sets.clear()

    @contextmanager
    def override(self, embedding: Embedding) -> Iterator[Embedding]:
        """While inside, `embedding` stands for its name in every view, over a file or a bundled
        embedding of the same name (the embedding being trained: its samples use the current
        vectors, which the trainer updates in place, not the last file saved). Refreshes keep it;
        on exit the views are as before."""
        with self._lock:
            previous = self._overrides.get(embedding.name)
            self._overrides[embedding.name] = embedding
            self._changed()
        try:
            yield embedding
        finally:
            with self._lock:
                if previous is None:
                    self._overrides.pop(embedding.name, None)
                else:
                    self._overrides[embedding.name] = previous
                self._changed()

    # -- views -----------------------------------------------------------------------------------

    def all(self) -> dict[str, Embedding]:
        """Every readable embedding: the folders' and, under names not taken, the bundled ones."""
        with self._lock:
            merged = dict(self._files)
            for bundle in self._bundled.values():
                for name, embedding in bundle.items():
                    merged.setdefault(name, embedding)
            merged.update(self._overrides)
            return merged

    def for_model(self, model_or_family: Any) -> EmbeddingSet:
        """The embeddings a model (a loaded `StableDiffusionModel` or a `ModelFamily`) can use and
        the skipped ones with why. Reads the folders on first use."""
        if self._mtimes is None:
            self.refresh()
        slots = encoder_slots(model_or_family)
        label = _label(model_or_family)
        with self._lock:
            key = (self._generation, slots, label)
            cached = self._sets.get(key)
            if cached is not None:
                return cached
            files = {**self._files, **self._overrides}
            bundled = [e for bundle in self._bundled.values() for e in bundle.values() if e.name not in self._overrides]
            unreadable = {n: r for n, r in self._unreadable.items() if n not in self._overrides}
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, tuple[Embedding | None, str]] = {}
        for name, embedding in files.items():
            reason = embedding.misfit(slots, label)
            if reason is None:
                loaded[name] = embedding
            else:
                skipped[name] = (embedding, reason)
        for embedding in bundled:
            if embedding.name in loaded:
                continue  # A1111: "already loaded from embeddings folder"
            reason = embedding.misfit(slots, label)
            if reason is None:
                loaded[embedding.name] = embedding
                skipped.pop(embedding.name, None)
            elif embedding.name not in skipped:
                skipped[embedding.name] = (embedding, reason)
        for name, reason in unreadable.items():
            if name not in loaded and name not in skipped:
                skipped[name] = (None, reason)
        result = EmbeddingSet(dict(sorted(loaded.items(), key=lambda item: item[0].lower())), skipped, slots)
        with self._lock:
            if self._generation == key[0]:
                self._sets[key] = result
        return result
