"""Model registry: scanning A1111 folders, names, titles, aliases, lazy hashes cached in cache.json."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from modules.core.errors import NotFoundError
from modules.core.hashes import HashCache
from modules.models.registry import ModelRegistry


def _write(path: Path, size: int = 0x110000, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * seed) % 251 for i in range(size)))
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    sd = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    files = {
        "a": _write(sd / "a.safetensors", seed=1),
        "b": _write(sd / "sub" / "b.ckpt", seed=2),
        "a_vae": _write(sd / "a.vae.safetensors", seed=3),
        "other": _write(sd / "notes.txt", 10),
        "vae": _write(vae / "vae-ft-mse.safetensors", seed=4),
    }
    folder = sd / "diffusers-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    _write(folder / "unet" / "diffusion_pytorch_model.safetensors", 100)
    files["folder"] = folder
    files["sd"] = sd
    files["vae_dir"] = vae
    files["cache"] = tmp_path / "cache.json"
    return files


def _registry(tree: dict[str, Path], **kw: object) -> ModelRegistry:
    return ModelRegistry([tree["sd"]], [tree["vae_dir"]], HashCache(tree["cache"]), **kw)  # type: ignore[arg-type]


def test_scan_finds_checkpoints_folders_and_vaes_with_a1111_names(tree: dict[str, Path]) -> None:
    reg = _registry(tree)
    names = [c.name for c in reg.checkpoints()]
    assert names == ["a.safetensors", "diffusers-model", "sub/b.ckpt"]  # .vae. files and .txt excluded
    b = reg.find_checkpoint("sub/b.ckpt")
    assert b.model_name == "sub_b"
    assert b.title == "sub/b.ckpt"  # no hash computed yet: scanning never reads whole files
    assert [v.name for v in reg.vaes()] == ["vae-ft-mse.safetensors"]
    assert reg.find_checkpoint("diffusers-model").is_folder


def test_old_hash_and_lazy_autov2_hash_and_title(tree: dict[str, Path]) -> None:
    reg = _registry(tree)
    info = reg.find_checkpoint("a.safetensors")
    data = tree["a"].read_bytes()
    assert info.old_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert info.sha256 is None
    full = hashlib.sha256(data).hexdigest()
    assert reg.ensure_hash(info) == full
    assert info.title == f"a.safetensors [{full[:10]}]"
    cache = json.loads(tree["cache"].read_text())
    assert cache["hashes"]["checkpoint/a.safetensors"]["sha256"] == full
    # A new registry reads the hash from cache.json instead of rehashing.
    again = _registry(tree).find_checkpoint("a.safetensors")
    assert again.sha256 == full


def test_cached_hash_is_stale_when_file_changes(tree: dict[str, Path]) -> None:
    reg = _registry(tree)
    reg.ensure_hash(reg.find_checkpoint("a.safetensors"))
    _write(tree["a"], seed=7)
    st = tree["a"].stat()
    os.utime(tree["a"], (st.st_atime, st.st_mtime + 10))
    fresh = _registry(tree).find_checkpoint("a.safetensors")
    assert fresh.sha256 is None


def test_lookup_by_every_a1111_alias(tree: dict[str, Path]) -> None:
    reg = _registry(tree)
    info = reg.find_checkpoint("a.safetensors")
    full = reg.ensure_hash(info)
    assert full
    for alias in (
        "a.safetensors",
        "a",
        f"a.safetensors [{full[:10]}]",
        f"a [{full[:10]}]",
        full,
        full[:10],
        info.old_hash,
        f"a.safetensors [{info.old_hash}]",
        "a.safetensors [0123456789]",  # a stale hash in a title still names the file
    ):
        assert reg.find_checkpoint(alias) is info, alias
    with pytest.raises(NotFoundError, match="nope"):
        reg.find_checkpoint("nope")


def test_vae_near_checkpoint_and_refresh(tree: dict[str, Path]) -> None:
    reg = _registry(tree)
    assert reg.vae_near_checkpoint(reg.find_checkpoint("a")) == tree["a_vae"]
    assert reg.vae_near_checkpoint(reg.find_checkpoint("sub/b.ckpt")) is None
    _write(tree["sd"] / "c.safetensors")
    assert "c.safetensors" not in [c.name for c in reg.checkpoints()]
    reg.refresh()
    assert "c.safetensors" in [c.name for c in reg.checkpoints()]


def test_no_hashing_flag(tree: dict[str, Path]) -> None:
    reg = _registry(tree, hashing=False)
    info = reg.find_checkpoint("a")
    assert reg.ensure_hash(info) is None
    assert not tree["cache"].exists()


def test_symlink_loop_and_extra_ckpt(tree: dict[str, Path], tmp_path: Path) -> None:
    (tree["sd"] / "loop").symlink_to(tree["sd"], target_is_directory=True)
    extra = _write(tmp_path / "elsewhere" / "x.safetensors")
    reg = ModelRegistry([tree["sd"]], [], HashCache(tree["cache"]), extra_checkpoints=[extra])
    names = [c.name for c in reg.checkpoints()]
    assert names.count("a.safetensors") == 1
    assert "x.safetensors" in names
