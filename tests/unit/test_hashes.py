from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import pytest

from modules.core import hashes
from modules.core.errors import ModelFileError
from modules.core.hashes import (
    SECTION_ADDNET,
    SECTION_HASHES,
    HashCache,
    addnet_hash_safetensors,
    old_model_hash,
    sha256_file,
)


def make_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = bytes((i * 31 + seed) % 251 for i in range(size))
    path.write_bytes(data)
    return data


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = make_file(tmp_path / "m.ckpt", 3 * 1024 * 1024 + 17)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "m.ckpt") == expected
    assert sha256_file(tmp_path / "m.ckpt", block=4096) == expected
    assert sha256_file(str(tmp_path / "m.ckpt"))[:10] == expected[:10]  # AutoV2 short hash


def test_old_model_hash(tmp_path: Path) -> None:
    data = make_file(tmp_path / "big.ckpt", 0x100000 + 0x10000 + 500)
    assert old_model_hash(tmp_path / "big.ckpt") == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    # partial window
    data2 = make_file(tmp_path / "mid.ckpt", 0x100000 + 100)
    assert old_model_hash(tmp_path / "mid.ckpt") == hashlib.sha256(data2[0x100000:]).hexdigest()[:8]
    # shorter than the offset: hash of nothing
    make_file(tmp_path / "small.ckpt", 1000)
    assert old_model_hash(tmp_path / "small.ckpt") == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"
    assert old_model_hash(tmp_path / "missing.ckpt") == "NOFILE"


def _safetensors(path: Path, metadata: dict[str, str], data: bytes) -> None:
    header = {"__metadata__": metadata, "w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_addnet_hash_ignores_metadata(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    _safetensors(tmp_path / "a.safetensors", {"ss_output_name": "a"}, data)
    _safetensors(tmp_path / "b.safetensors", {"ss_output_name": "something else entirely"}, data)
    expected = hashlib.sha256(data).hexdigest()
    assert addnet_hash_safetensors(tmp_path / "a.safetensors") == expected
    assert addnet_hash_safetensors(tmp_path / "b.safetensors") == expected
    # the full-file hash does change with metadata
    assert sha256_file(tmp_path / "a.safetensors") != sha256_file(tmp_path / "b.safetensors")


def test_addnet_hash_rejects_broken_files(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ModelFileError):
        addnet_hash_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "lie.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ModelFileError):
        addnet_hash_safetensors(tmp_path / "lie.safetensors")


def test_cache_computes_once_and_persists_a1111_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.safetensors"
    data = make_file(model, 5000)
    cache_file = tmp_path / "cache.json"
    cache = HashCache(cache_file)
    key = "checkpoint/model.safetensors"
    assert cache.get(SECTION_HASHES, key, model) is None  # never computes
    assert not cache_file.exists()

    calls: list[Path] = []
    real = hashes.sha256_file

    def counting(path: Path, block: int = hashes.BLOCK_SIZE) -> str:
        calls.append(path)
        return real(path, block)

    monkeypatch.setattr(hashes, "sha256_file", counting)
    digest = cache.sha256(SECTION_HASHES, key, model)
    assert digest == hashlib.sha256(data).hexdigest()
    assert cache.sha256(SECTION_HASHES, key, model) == digest
    assert len(calls) == 1
    assert cache.get(SECTION_HASHES, key, model) == digest

    stored = json.loads(cache_file.read_text())
    entry = stored["hashes"][key]
    assert entry == {"mtime": os.path.getmtime(model), "sha256": digest, "size": 5000}

    # a fresh instance (next start) reads it without hashing
    assert HashCache(cache_file).get(SECTION_HASHES, key, model) == digest


def test_cache_is_stale_when_mtime_or_size_changes(tmp_path: Path) -> None:
    model = tmp_path / "m.ckpt"
    make_file(model, 100)
    cache = HashCache(tmp_path / "cache.json")
    first = cache.sha256(SECTION_HASHES, "checkpoint/m", model)
    st = model.stat()
    os.utime(model, (st.st_atime, st.st_mtime + 10))
    assert cache.get(SECTION_HASHES, "checkpoint/m", model) is None
    data = make_file(model, 101, seed=3)
    os.utime(model, (st.st_atime, st.st_mtime))  # same mtime, different size
    assert cache.get(SECTION_HASHES, "checkpoint/m", model) is None
    second = cache.sha256(SECTION_HASHES, "checkpoint/m", model)
    assert second == hashlib.sha256(data).hexdigest() != first


def test_cache_reads_a1111_entries_without_size(tmp_path: Path) -> None:
    model = tmp_path / "m.ckpt"
    make_file(model, 10)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text(
        json.dumps({"hashes": {"checkpoint/m": {"mtime": os.path.getmtime(model), "sha256": "ab" * 32}}})
    )
    assert HashCache(cache_file).get(SECTION_HASHES, "checkpoint/m", model) == "ab" * 32


def test_addnet_section_uses_addnet_hash(tmp_path: Path) -> None:
    lora = tmp_path / "l.safetensors"
    _safetensors(lora, {"a": "b"}, b"tensor-bytes")
    cache = HashCache(tmp_path / "cache.json")
    assert cache.sha256(SECTION_ADDNET, "lora/l", lora) == hashlib.sha256(b"tensor-bytes").hexdigest()
    assert cache.sha256(SECTION_HASHES, "lora/l", lora) == hashlib.sha256(lora.read_bytes()).hexdigest()


def test_corrupt_cache_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "m.ckpt"
    data = make_file(model, 10)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{broken")
    cache = HashCache(cache_file)
    assert cache.get(SECTION_HASHES, "checkpoint/m", model) is None
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert cache.sha256(SECTION_HASHES, "checkpoint/m", model) == hashlib.sha256(data).hexdigest()
    assert "checkpoint/m" in json.loads(cache_file.read_text())["hashes"]


def test_two_instances_do_not_clobber_each_other(tmp_path: Path) -> None:
    """Like two processes: each writes its entry; the file ends up with both."""
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    make_file(a, 10, 1)
    make_file(b, 10, 2)
    cache_file = tmp_path / "cache.json"
    c1, c2 = HashCache(cache_file), HashCache(cache_file)
    c1.get(SECTION_HASHES, "x", a)  # both loaded the (empty) file first
    c2.get(SECTION_HASHES, "x", a)
    c1.sha256(SECTION_HASHES, "checkpoint/a", a)
    c2.sha256(SECTION_HASHES, "checkpoint/b", b)
    stored = json.loads(cache_file.read_text())["hashes"]
    assert set(stored) == {"checkpoint/a", "checkpoint/b"}


def test_concurrent_use_from_threads(tmp_path: Path) -> None:
    files = []
    for i in range(8):
        f = tmp_path / f"m{i}.ckpt"
        make_file(f, 2000 + i, seed=i)
        files.append(f)
    cache = HashCache(tmp_path / "cache.json")
    results: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i, f in enumerate(files):
                results[(t, i)] = cache.sha256(SECTION_HASHES, f"checkpoint/{f.name}", f)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for (_, i), digest in results.items():
        assert digest == hashlib.sha256(files[i].read_bytes()).hexdigest()
    stored = json.loads((tmp_path / "cache.json").read_text())["hashes"]
    assert set(stored) == {f"checkpoint/{f.name}" for f in files}


def test_generic_values(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    make_file(model, 10)
    cache = HashCache(tmp_path / "cache.json")
    cache.set_value("safetensors-metadata", "lora/m", model, {"ss_output_name": "m"})
    assert HashCache(tmp_path / "cache.json").get_value("safetensors-metadata", "lora/m", model) == {
        "ss_output_name": "m"
    }


def test_missing_file(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "cache.json")
    assert cache.get(SECTION_HASHES, "checkpoint/x", tmp_path / "x.ckpt") is None
    with pytest.raises(FileNotFoundError):
        cache.sha256(SECTION_HASHES, "checkpoint/x", tmp_path / "x.ckpt")
