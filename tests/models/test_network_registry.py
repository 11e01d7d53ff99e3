"""The LoRA / hypernetwork registry: names, aliases, A1111 hashes, SD versions and sidecar files
from headers only, on real kohya-named fixture files in a temp tree."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from modules.core.errors import NotFoundError
from modules.core.hashes import HashCache, addnet_hash_safetensors, sha256_file
from modules.models import network_registry
from modules.models.network_registry import NetworkInfo, NetworkRegistry
from tests.fixtures.embedding_files import hypernetwork_sequential, write_a1111_hypernetwork

TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
SDXL_TE2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
EMBEDDED_HASH = "0123456789abcdef" * 4


def _lora(context: int = 768, text: int = 768, rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{UNET_K}.lora_down.weight": torch.randn(rank, context, generator=g),
        f"{UNET_K}.lora_up.weight": torch.randn(320, rank, generator=g),
        f"{UNET_K}.alpha": torch.tensor(1.0),
        f"{TE_Q}.lora_down.weight": torch.randn(rank, text, generator=g),
        f"{TE_Q}.lora_up.weight": torch.randn(text, rank, generator=g),
        f"{TE_Q}.alpha": torch.tensor(1.0),
    }


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _kohya_metadata(**extra: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "2",
        "ss_tag_frequency": json.dumps({"img": {"cat": 3}}),
        "ss_resolution": "(512, 512)",
        "ss_sd_model_name": "v1-5-pruned.safetensors",
        **extra,
    }


def _registry(root: Path, *, hashing: bool = True) -> NetworkRegistry:
    return NetworkRegistry(
        [root / "Lora", root / "LyCORIS"], [root / "hypernetworks"], HashCache(root / "cache.json"), hashing=hashing
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    lora = tmp_path / "Lora"
    _write(
        lora / "kohya.safetensors",
        _lora(),
        _kohya_metadata(ss_output_name="kohya_alias", sshs_model_hash=EMBEDDED_HASH, ss_base_model_version="sd_v1"),
    )
    _write(lora / "plain.safetensors", _lora(seed=1))
    _write(lora / "sd2.safetensors", _lora(context=1024, text=1024), _kohya_metadata(ss_v2="True"))
    _write(lora / "xl.safetensors", _lora(context=2048), _kohya_metadata(ss_base_model_version="sdxl_base_v1-0"))
    xl_keys = {
        **_lora(context=2048),
        f"{SDXL_TE2}.lora_down.weight": torch.ones(2, 1280),
        f"{SDXL_TE2}.lora_up.weight": torch.ones(1280, 2),
    }
    _write(lora / "xl_keys.safetensors", xl_keys, {"format": "pt"})  # diffusers' only metadata
    torch.save(_lora(seed=2), lora / "legacy.pt")
    (lora / "garbage.safetensors").write_bytes(b"\x07not a safetensors file at all")
    _write(lora / "checkpoint.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(4, 4)})
    (lora / "notes.pt").write_text("not a torch file", encoding="utf-8")
    _write(lora / "sub" / "deep" / "inner.safetensors", _lora(seed=3), _kohya_metadata())
    # sidecars
    (lora / "kohya.png").write_bytes(b"png")
    (lora / "kohya.preview.png").write_bytes(b"png")
    (lora / "kohya.txt").write_text("from txt", encoding="utf-8")
    (lora / "kohya.json").write_text(json.dumps({"description": "from json", "notes": "n"}), encoding="utf-8")
    (lora / "plain.preview.jpg").write_bytes(b"jpg")
    (lora / "plain.description.txt").write_text("plain words", encoding="utf-8")
    (lora / "sd2.json").write_text("{not json", encoding="utf-8")
    return tmp_path


def _by_name(infos: list[NetworkInfo]) -> dict[str, NetworkInfo]:
    return {info.name: info for info in infos}


def test_names_aliases_metadata_and_versions(tree: Path) -> None:
    loras = _by_name(_registry(tree).loras())
    assert set(loras) == {
        "kohya",
        "plain",
        "sd2",
        "xl",
        "xl_keys",
        "legacy",
        "garbage",
        "checkpoint",
        "notes",
        "inner",
    }
    kohya = loras["kohya"]
    assert kohya.kind == "lora"
    assert (kohya.alias, kohya.file_alias) == ("kohya_alias", "kohya_alias")
    assert kohya.filename == tree / "Lora" / "kohya.safetensors"
    assert kohya.relative == "kohya.safetensors"
    assert kohya.metadata["ss_tag_frequency"] == {"img": {"cat": 3}}  # JSON values decoded
    assert list(kohya.metadata)[:3] == ["ss_sd_model_name", "ss_resolution", "ss_tag_frequency"]  # A1111's order
    assert kohya.error is None
    assert kohya.size == (tree / "Lora" / "kohya.safetensors").stat().st_size
    assert kohya.mtime == (tree / "Lora" / "kohya.safetensors").stat().st_mtime
    assert loras["plain"].alias == "plain" and loras["plain"].metadata == {}
    assert {name: info.sd_version for name, info in loras.items() if info.error is None} == {
        "kohya": "SD1",
        "plain": "SD1",  # no metadata: cross-attention to_k input width 768
        "sd2": "SD2",
        "xl": "SDXL",
        "xl_keys": "SDXL",  # second text encoder; A1111 would say SD1 from the bare {"format": "pt"}
        "legacy": "Unknown",  # pickles: no header to read
        "inner": "SD1",
    }
    assert loras["inner"].relative == "sub/deep/inner.safetensors"


def test_corrupt_and_foreign_files_are_listed_with_their_error(tree: Path) -> None:
    loras = _by_name(_registry(tree).loras())
    assert loras["garbage"].error and "garbage.safetensors" in loras["garbage"].error
    assert loras["checkpoint"].error and "not a LoRA/LyCORIS network" in loras["checkpoint"].error
    assert loras["notes"].error and "not a PyTorch file" in loras["notes"].error
    assert loras["legacy"].error is None


def test_sidecar_preview_description_and_user_metadata(tree: Path) -> None:
    loras = _by_name(_registry(tree).loras())
    lora = tree / "Lora"
    kohya = loras["kohya"]
    assert kohya.preview == lora / "kohya.png"  # X.png before X.preview.png
    assert kohya.user_metadata == {"description": "from json", "notes": "n"}
    assert kohya.description == "from json"  # user metadata wins over X.txt
    assert loras["plain"].preview == lora / "plain.preview.jpg"
    assert loras["plain"].description == "plain words"
    assert loras["plain"].user_metadata == {}
    assert loras["sd2"].user_metadata == {}  # broken X.json: ignored, still listed
    assert loras["sd2"].preview is None and loras["sd2"].description == ""
    (lora / "kohya.png").unlink()
    (lora / "kohya.json").unlink()
    registry = _registry(tree)
    kohya = registry.find_lora("kohya")
    assert kohya.preview == lora / "kohya.preview.png"
    assert kohya.description == "from txt"


def test_hashes_embedded_first_then_addnet_then_whole_file(tree: Path) -> None:
    registry = _registry(tree)
    kohya, plain, legacy = (registry.find_lora(n) for n in ("kohya", "plain", "legacy"))
    assert kohya.shorthash == EMBEDDED_HASH[:12]  # sshs_model_hash, no file read
    assert plain.shorthash is None and legacy.shorthash is None  # scanning computes nothing
    expected = addnet_hash_safetensors(plain.filename)
    assert registry.ensure_hash(plain) == expected[:12]
    assert plain.addnet_hash == expected
    assert registry.ensure_hash(legacy) == sha256_file(legacy.filename)[:12]
    cache = json.loads((tree / "cache.json").read_text(encoding="utf-8"))
    assert cache["hashes-addnet"]["lora/plain"]["sha256"] == expected
    assert cache["hashes"]["lora/legacy"]["sha256"] == sha256_file(legacy.filename)
    # a new scan reads the cached hashes back, and paste can map a hash to the local file
    again = _registry(tree)
    assert again.find_lora("plain").shorthash == expected[:12]
    assert again.lora_by_shorthash(expected[:12]) is not None
    assert again.lora_by_shorthash(expected[:12].upper()).name == "plain"  # type: ignore[union-attr]
    assert again.lora_by_shorthash(EMBEDDED_HASH[:12]).name == "kohya"  # type: ignore[union-attr]
    assert again.lora_by_shorthash("ffffffffffff") is None


def test_no_hashing_computes_nothing(tree: Path) -> None:
    registry = _registry(tree, hashing=False)
    plain = registry.find_lora("plain")
    assert registry.ensure_hash(plain) is None
    assert registry.ensure_hash(registry.find_lora("kohya")) == EMBEDDED_HASH[:12]
    assert not (tree / "cache.json").exists()


def test_lookup_by_name_or_alias_and_forbidden_aliases(tmp_path: Path) -> None:
    lora = tmp_path / "Lora"
    _write(lora / "a.safetensors", _lora(), _kohya_metadata(ss_output_name="shared"))
    _write(lora / "b.safetensors", _lora(), _kohya_metadata(ss_output_name="shared"))
    _write(lora / "c.safetensors", _lora(), _kohya_metadata(ss_output_name="None"))
    _write(lora / "d.safetensors", _lora(), _kohya_metadata(ss_output_name="Dee"))
    registry = _registry(tmp_path)
    loras = _by_name(registry.loras())
    # an alias two files claim, or "none", is forbidden: the name stands in for it
    assert [loras[n].alias for n in "abcd"] == ["a", "b", "c", "Dee"]
    assert loras["a"].file_alias == "shared"
    with pytest.raises(NotFoundError):
        registry.find_lora("shared")
    assert registry.find_lora("Dee").filename == lora / "d.safetensors"
    assert registry.find_lora("d").filename == lora / "d.safetensors"
    with pytest.raises(NotFoundError):
        registry.find_lora("dee")  # case-sensitive, as A1111


def test_name_clash_between_folders_keeps_both_and_the_later_answers(tmp_path: Path) -> None:
    _write(tmp_path / "Lora" / "dup.safetensors", _lora(seed=1))
    _write(tmp_path / "LyCORIS" / "dup.safetensors", _lora(seed=2))
    registry = _registry(tmp_path)
    assert [i.filename.parent.name for i in registry.loras()] == ["Lora", "LyCORIS"]
    assert registry.find_lora("dup").filename == tmp_path / "LyCORIS" / "dup.safetensors"


def test_symlink_loops_are_walked_once(tree: Path) -> None:
    (tree / "Lora" / "sub" / "deep" / "loop").symlink_to(tree / "Lora", target_is_directory=True)
    (tree / "LyCORIS").symlink_to(tree / "Lora", target_is_directory=True)  # the same folder twice
    names = [info.name for info in _registry(tree).loras()]
    assert sorted(names) == sorted(set(names))
    assert names.count("inner") == 1


def test_refresh_picks_up_new_files_and_a_miss_rescans(tree: Path) -> None:
    registry = _registry(tree)
    before = len(registry.loras())
    _write(tree / "Lora" / "new.safetensors", _lora(), _kohya_metadata(ss_output_name="fresh"))
    assert len(registry.loras()) == before  # listed from the last scan
    registry.refresh("lora")
    assert "new" in _by_name(registry.loras())
    _write(tree / "LyCORIS" / "late.safetensors", _lora())
    assert registry.find_lora("late").name == "late"  # not listed yet: found by a rescan, as A1111
    with pytest.raises(NotFoundError):
        registry.find_lora("missing")
    with pytest.raises(ValueError):
        registry.refresh("checkpoint")


def test_a_rescan_rereads_only_changed_headers(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry(tree)
    assert registry.find_lora("kohya").alias == "kohya_alias"
    read: list[str] = []
    real = network_registry._read_header

    def counting(path: Path) -> Any:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(network_registry, "_read_header", counting)
    _write(tree / "Lora" / "kohya.safetensors", _lora(), _kohya_metadata(ss_output_name="renamed_by_trainer"))
    registry.refresh()
    assert read == ["kohya.safetensors"]
    assert registry.find_lora("kohya").alias == "renamed_by_trainer"


def test_truncated_tensor_data_is_listed_from_its_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "Lora" / "cut.safetensors", _lora(), _kohya_metadata(ss_output_name="cut_alias"))
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + header_size + 5])
    info = _registry(tmp_path).find_lora("cut_alias")
    assert info.name == "cut" and info.sd_version == "SD1"
    assert info.metadata["ss_network_dim"] == "2"
    assert info.error and "truncated" in info.error


def test_scanning_reads_headers_not_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {f"{UNET_K}.lora_down.weight": torch.zeros(64, 768), f"{UNET_K}.lora_up.weight": torch.zeros(320, 64)}
    path = _write(tmp_path / "Lora" / "big.safetensors", big, _kohya_metadata())
    pt = tmp_path / "Lora" / "big.pt"
    torch.save(big, pt)
    (header_size,) = struct.unpack("<Q", path.read_bytes()[:8])
    read: dict[str, int] = {}
    real_open = builtins.open

    class Counting:
        def __init__(self, handle: Any, name: str) -> None:
            self.handle, self.name = handle, name

        def read(self, n: int = -1) -> bytes:
            data: bytes = self.handle.read(n)
            read[self.name] = read.get(self.name, 0) + len(data)
            return data

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.handle, attr)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        return Counting(handle, name) if name.startswith("big.") else handle

    monkeypatch.setattr(builtins, "open", counting_open)
    registry = _registry(tmp_path)
    infos = _by_name(registry.loras())
    monkeypatch.setattr(builtins, "open", real_open)
    assert infos["big"].error is None and infos["big"].sd_version == "SD1"
    assert 0 < read["big.safetensors"] <= 8 + header_size  # the header, nothing after it
    assert read["big.pt"] <= 16
    assert path.stat().st_size > 8 + header_size + 100_000


def test_save_user_metadata_writes_json_and_refreshes_the_entry(tree: Path) -> None:
    registry = _registry(tree)
    plain = registry.find_lora("plain")
    registry.save_user_metadata(plain, {"description": "new words", "sd version": "SDXL", "alias": "my_plain"})
    written = json.loads((tree / "Lora" / "plain.json").read_text(encoding="utf-8"))
    assert written == {"description": "new words", "sd version": "SDXL", "alias": "my_plain"}
    fresh = registry.find_lora("my_plain")  # a user alias, for files without ss_output_name
    assert fresh.filename == plain.filename
    assert (fresh.description, fresh.sd_version, fresh.alias) == ("new words", "SDXL", "my_plain")
    assert plain.description == "new words"  # the caller's entry is updated too
    assert [i.name for i in registry.loras()].count("plain") == 1
    with pytest.raises(TypeError):
        registry.save_user_metadata(plain, {"bad": object()})
    assert json.loads((tree / "Lora" / "plain.json").read_text(encoding="utf-8")) == written


def test_hypernetworks_listed_by_stem_with_a1111_hash(tmp_path: Path) -> None:
    seq = hypernetwork_sequential(768, (1, 2, 1), "relu")
    hn = write_a1111_hypernetwork(tmp_path / "hypernetworks" / "anime.pt", {768: (seq, seq)})
    write_a1111_hypernetwork(tmp_path / "hypernetworks" / "sub" / "None.pt", {768: (seq, seq)})
    (tmp_path / "hypernetworks" / "anime.png").write_bytes(b"png")
    (tmp_path / "hypernetworks" / "broken.pt").write_bytes(b"")
    (tmp_path / "hypernetworks" / "readme.txt").write_text("x", encoding="utf-8")
    registry = _registry(tmp_path)
    infos = _by_name(registry.hypernetworks())
    assert set(infos) == {"anime", "broken"}  # "None" is never listed
    anime = registry.find_hypernetwork("anime")
    assert (anime.kind, anime.error, anime.preview) == ("hypernet", None, tmp_path / "hypernetworks" / "anime.png")
    assert infos["broken"].error and "empty" in infos["broken"].error
    assert anime.shorthash is None
    digest = hashlib.sha256(hn.read_bytes()).hexdigest()
    assert registry.ensure_hash(anime) == digest[:10]  # A1111's `Hypernet hash`
    cache = json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))
    assert cache["hashes"]["hypernet/anime"]["sha256"] == digest
    with pytest.raises(NotFoundError):
        registry.find_hypernetwork("None")
    assert registry.loras() == []  # no LoRA folders: empty, no error
