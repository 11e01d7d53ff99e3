"""Pure-Python, size-capped reader of a `.safetensors` header (tensor names, dtypes, shapes,
metadata) that never trusts the file: lengths and offsets are checked against the file size
before anything is allocated.

Format: 8-byte little-endian header length N, N bytes of JSON (`{"name": {"dtype", "shape",
"data_offsets"}, ..., "__metadata__": {str: str}}`), then the tensor data.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modules.core.errors import ModelFileError

DEFAULT_MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"

# Bits per element of the dtypes we can size-check; unknown dtypes are accepted unchecked.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of the header. `data_offsets` are relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: tensors by name, `__metadata__` (str -> str), and sizes."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int
    file_size: int

    @property
    def data_start(self) -> int:
        """File offset of the tensor data section."""
        return 8 + self.header_size


def read_safetensors_header(
    path: str | os.PathLike[str], *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Read and validate the header of `path`; ModelFileError with a clear message if bad."""
    p = Path(path)
    try:
        with open(p, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFileError(f"{p.name}: not a safetensors file (shorter than 8 bytes)")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > max_header_bytes:
                raise ModelFileError(
                    f"{p.name}: safetensors header length {header_size} exceeds the limit of "
                    f"{max_header_bytes} bytes (corrupt or malicious file)"
                )
            if 8 + header_size > file_size:
                raise ModelFileError(
                    f"{p.name}: safetensors header length {header_size} is larger than the file "
                    f"({file_size} bytes): truncated or not a safetensors file"
                )
            raw = handle.read(header_size)
    except OSError as exc:
        raise ModelFileError(f"{p.name}: cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != header_size:
        raise ModelFileError(f"{p.name}: file changed while reading the safetensors header")
    return _parse_header(p.name, raw, header_size, file_size)


def _parse_header(name: str, raw: bytes, header_size: int, file_size: int) -> SafetensorsHeader:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFileError(f"{name}: safetensors header is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{name}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{name}: safetensors header is not a JSON object")

    metadata: dict[str, str] = {}
    raw_meta = obj.pop(METADATA_KEY, None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict):
            raise ModelFileError(f"{name}: safetensors __metadata__ is not a JSON object")
        for key, value in raw_meta.items():
            if not isinstance(value, str):
                raise ModelFileError(f"{name}: safetensors metadata value of {key!r} is not a string")
            metadata[key] = value

    data_size = file_size - 8 - header_size
    tensors: dict[str, TensorInfo] = {}
    for key, entry in obj.items():
        tensors[key] = _parse_tensor(name, key, entry, data_size)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=header_size, file_size=file_size)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_tensor(name: str, key: str, entry: object, data_size: int) -> TensorInfo:
    where = f"{name}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: entry is not a JSON object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ModelFileError(f"{where}: missing or invalid dtype")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ModelFileError(f"{where}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFileError(f"{where}: data_offsets must be two integers 0 <= begin <= end")
    begin, end = offsets
    if end > data_size:
        raise ModelFileError(
            f"{where}: data_offsets end {end} is past the end of the file (data section has "
            f"{data_size} bytes): truncated file"
        )
    info = TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))
    bits = DTYPE_BITS.get(dtype)
    if bits is not None and info.numel * bits // 8 != info.nbytes:
        raise ModelFileError(
            f"{where}: {dtype} {list(shape)} needs {info.numel * bits // 8} bytes but data_offsets span {info.nbytes}"
        )
    return info


def parse_metadata_json_values(metadata: Mapping[str, str]) -> dict[str, object]:
    """Metadata with JSON-looking values (starting with `{` or `[`) decoded; invalid JSON and
    every other value stay strings (kohya's `ss_tag_frequency`, `ss_network_args`, ...)."""
    out: dict[str, object] = {}
    for key, value in metadata.items():
        out[key] = value
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                out[key] = json.loads(value)
    return out
