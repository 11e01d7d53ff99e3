from __future__ import annotations

import json
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from modules.core.errors import ModelFileError
from modules.core.safetensors_header import (
    TensorInfo,
    parse_metadata_json_values,
    read_safetensors_header,
)


def write_safetensors(
    path: Path,
    tensors: dict[str, tuple[str, list[int], bytes]],
    metadata: dict[str, str] | None = None,
    *,
    pad_to: int = 8,
) -> Path:
    """Write a real safetensors file by hand (struct + json, no torch)."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % pad_to)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def raw_header(path: Path, header: bytes | str, data: bytes = b"", *, length: int | None = None) -> Path:
    blob = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def test_reads_tensors_and_metadata(tmp_path: Path) -> None:
    f = write_safetensors(
        tmp_path / "m.safetensors",
        {
            "model.diffusion_model.input_blocks.0.0.weight": ("F16", [4, 3, 3, 3], b"\0" * 4 * 3 * 3 * 3 * 2),
            "cond_stage_model.x": ("F32", [2], b"\0" * 8),
            "scalar": ("BF16", [], b"\0\0"),
        },
        {"ss_network_dim": "16", "modelspec.title": "test"},
    )
    h = read_safetensors_header(f)
    assert set(h.tensors) == {"model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.x", "scalar"}
    t = h.tensors["model.diffusion_model.input_blocks.0.0.weight"]
    assert t == TensorInfo(dtype="F16", shape=(4, 3, 3, 3), data_offsets=(0, 216))
    assert t.numel == 108 and t.nbytes == 216
    assert h.tensors["scalar"].shape == ()
    assert h.metadata == {"ss_network_dim": "16", "modelspec.title": "test"}
    assert h.data_start == 8 + h.header_size
    assert h.file_size == f.stat().st_size


def test_no_metadata_section(tmp_path: Path) -> None:
    h = read_safetensors_header(write_safetensors(tmp_path / "m.safetensors", {"w": ("I8", [3], b"abc")}))
    assert h.metadata == {}


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_8_bytes(tmp_path: Path, size: int) -> None:
    f = tmp_path / "short.safetensors"
    f.write_bytes(b"\1" * size)
    with pytest.raises(ModelFileError, match="shorter than 8 bytes"):
        read_safetensors_header(f)


def test_huge_header_length_fails_fast_with_bounded_memory(tmp_path: Path) -> None:
    f = raw_header(tmp_path / "evil.safetensors", "{}", length=2**40)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelFileError, match="exceeds the limit"):
            read_safetensors_header(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1024 * 1024


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    f = raw_header(tmp_path / "trunc.safetensors", "{}", length=5000)  # under the cap, over the file size
    with pytest.raises(ModelFileError, match="larger than the file"):
        read_safetensors_header(f)
    with pytest.raises(ModelFileError, match="exceeds the limit"):
        read_safetensors_header(f, max_header_bytes=100)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("not json at all", "not valid JSON"),
        ('{"a": ', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2, 3]", "not a JSON object"),
        ("[" * 50000 + "]" * 50000, "not valid JSON"),
        ('{"__metadata__": {"k": 1}}', "not a string"),
        ('{"__metadata__": ["x"]}', "__metadata__"),
        ('{"t": 5}', "not a JSON object"),
        ('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}', "data_offsets"),
        ('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', "data_offsets"),
        ('{"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "shape"),
        ('{"t": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "shape"),
        ('{"t": {"shape": [1], "data_offsets": [0, 4]}}', "dtype"),
        ('{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}', "needs 12 bytes"),
    ],
)
def test_malformed_headers(tmp_path: Path, header: str | bytes, message: str) -> None:
    f = raw_header(tmp_path / "bad.safetensors", header, data=b"\0" * 4)
    with pytest.raises(ModelFileError, match=message):
        read_safetensors_header(f)


def test_offsets_past_end_of_file(tmp_path: Path) -> None:
    header = '{"t": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}'
    f = raw_header(tmp_path / "cut.safetensors", header, data=b"\0" * 100)
    with pytest.raises(ModelFileError, match="past the end of the file"):
        read_safetensors_header(f)


def test_unknown_dtype_is_accepted_unchecked(tmp_path: Path) -> None:
    header = '{"t": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}'
    h = read_safetensors_header(raw_header(tmp_path / "f4.safetensors", header, data=b"\0\0"))
    assert h.tensors["t"].dtype == "F4"


def test_missing_file_is_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        read_safetensors_header(tmp_path / "nope.safetensors")


def test_parse_metadata_json_values() -> None:
    meta = {
        "ss_tag_frequency": '{"set": {"cat": 3}}',
        "ss_network_args": '{"conv_dim": "4"',  # invalid JSON stays a string
        "ss_dataset_dirs": "[1, 2]",
        "ss_network_dim": "16",  # numbers are not decoded
        "ss_output_name": "my lora",
        "ssmd_cover_images": "[oops",
    }
    out = parse_metadata_json_values(meta)
    assert out["ss_tag_frequency"] == {"set": {"cat": 3}}
    assert out["ss_network_args"] == '{"conv_dim": "4"'
    assert out["ss_dataset_dirs"] == [1, 2]
    assert out["ss_network_dim"] == "16"
    assert out["ss_output_name"] == "my lora"
    assert out["ssmd_cover_images"] == "[oops"
