"""Textual-inversion files: every format parses, the folder scan, per-family fit, hashes, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from modules.core.errors import ModelFileError, UnsafeModelFileError
from modules.core.hashes import HashCache
from modules.models import families as fam
from modules.models.checkpoint_io import read_structured
from modules.models.clip_tokenizer import build_clip_tokenizer
from modules.models.embeddings import EmbeddingDatabase, embedding_from_data, read_embedding_file
from tests.fixtures import embedding_files as ef
from tests.fixtures import pickles


def _db(root: Path, *, hashing: bool = True) -> EmbeddingDatabase:
    db = EmbeddingDatabase([root], HashCache(root.parent / "cache.json"), hashing=hashing)
    db.refresh()
    return db


# -- formats -------------------------------------------------------------------------------------


def test_a1111_pt_with_metadata(tmp_path: Path) -> None:
    vec = ef.vectors(3, 768)
    path = ef.write_a1111_pt(tmp_path / "EasyNegative.pt", vec, step=1500, sd_checkpoint="cc6cb27103")
    name, emb, reason = read_embedding_file(path)
    assert (name, reason) == ("EasyNegative", None)
    assert emb is not None
    assert torch.equal(emb.vectors["clip"], vec)
    assert (emb.vector_count, emb.shape, emb.step) == (3, 768, 1500)
    assert (emb.sd_checkpoint, emb.sd_checkpoint_name) == ("cc6cb27103", "v1-5-pruned-emaonly")
    assert emb.filename == path
    assert not emb.vectors["clip"].requires_grad


def test_torch_1_11_parameterdict_layout(tmp_path: Path) -> None:
    vec = ef.vectors(2, 1024, seed=3)
    path = ef.write_parameterdict_pt(tmp_path / "old.pt", vec)
    _, emb, _ = read_embedding_file(path)
    assert emb is not None and torch.equal(emb.vectors["clip"], vec)
    assert (emb.vector_count, emb.shape, emb.step) == (2, 1024, 42)


def test_diffusers_concept_bin_one_vector_is_unsqueezed(tmp_path: Path) -> None:
    vec = ef.vectors(1, 768, seed=4)
    path = ef.write_diffusers_bin(tmp_path / "cat-toy.bin", "<cat-toy>", vec)
    assert read_structured(path)["<cat-toy>"].dim() == 1  # written as diffusers writes it
    name, emb, _ = read_embedding_file(path)
    assert name == "cat-toy" and emb is not None
    assert emb.vectors["clip"].shape == (1, 768) and torch.equal(emb.vectors["clip"], vec)
    assert emb.step is None


def test_kohya_emb_params_safetensors(tmp_path: Path) -> None:
    vec = ef.vectors(4, 768, seed=5)
    _, emb, _ = read_embedding_file(ef.write_kohya_safetensors(tmp_path / "k.safetensors", vec))
    assert emb is not None and torch.equal(emb.vectors["clip"], vec) and emb.vector_count == 4


def test_sdxl_clip_l_clip_g(tmp_path: Path) -> None:
    cl, cg = ef.vectors(2, 768, seed=6), ef.vectors(2, 1280, seed=7)
    _, emb, _ = read_embedding_file(ef.write_sdxl_safetensors(tmp_path / "xl.safetensors", cl, cg))
    assert emb is not None
    assert set(emb.vectors) == {"clip_l", "clip_g"}
    assert torch.equal(emb.vectors["clip_l"], cl) and torch.equal(emb.vectors["clip_g"], cg)
    assert (emb.vector_count, emb.shape) == (2, 2048)


def test_png_text_chunk_embedding(tmp_path: Path) -> None:
    vec = ef.vectors(2, 768, seed=8)
    path = ef.write_png_embedding(tmp_path / "picture.png", vec, name="inside-name")
    name, emb, _ = read_embedding_file(path)
    assert name == "inside-name"  # A1111 takes the name stored in the image
    assert emb is not None and torch.allclose(emb.vectors["clip"], vec) and emb.step == 100


def test_image_without_chunk_is_skipped_with_a_reason(tmp_path: Path) -> None:
    name, emb, reason = read_embedding_file(ef.write_plain_png(tmp_path / "stego.png"))
    assert (name, emb) == ("stego", None)
    assert reason is not None and "pixels" in reason


def test_bare_tensor_and_multi_term_files(tmp_path: Path) -> None:
    emb = embedding_from_data(torch.ones(768), "one")
    assert emb.vectors["clip"].shape == (1, 768)
    with pytest.raises(ModelFileError, match="exactly one term"):
        embedding_from_data({"string_to_param": {"a": torch.ones(1, 8), "b": torch.ones(1, 8)}}, "two")
    with pytest.raises(ModelFileError, match="not a textual-inversion embedding"):
        embedding_from_data({"a": torch.ones(1, 8), "b": torch.ones(1, 8)}, "two")
    with pytest.raises(ModelFileError, match="clip_l has 1 vectors, clip_g 2"):
        embedding_from_data({"clip_l": torch.ones(1, 8), "clip_g": torch.ones(2, 8)}, "xl")


def test_forbidden_global_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    path, marker = pickles.write_zip_system_ckpt(tmp_path, name="evil.pt")
    with pytest.raises(UnsafeModelFileError, match=r"forbidden: .*system"):
        read_embedding_file(path)
    assert not marker.exists()


# -- the database --------------------------------------------------------------------------------


def _folder(root: Path) -> dict[str, Path]:
    return {
        "sd1": ef.write_a1111_pt(root / "EasyNegative.pt", ef.vectors(2, 768)),
        "sd1-sub": ef.write_kohya_safetensors(root / "sub" / "deep.safetensors", ef.vectors(1, 768, seed=1)),
        "sd2": ef.write_a1111_pt(root / "sd2style.pt", ef.vectors(1, 1024, seed=2)),
        "xl": ef.write_sdxl_safetensors(root / "xlneg.safetensors", ef.vectors(2, 768), ef.vectors(2, 1280)),
        "preview": ef.write_plain_png(root / "EasyNegative.preview.png"),
        "stego": ef.write_plain_png(root / "hidden.webp"),
        "notes": (root / "EasyNegative.txt"),
    }


def test_folder_scan_sorts_by_family_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    files = _folder(root)
    files["notes"].write_text("trigger: EasyNegative")
    (root / "empty.pt").write_bytes(b"")
    (root / "broken.pt").write_bytes(b"not a pickle at all")
    pickles.write_zip_system_ckpt(root, name="evil.pt")
    db = _db(root)

    sd1 = db.for_model(fam.SD1)
    assert list(sd1.loaded) == ["deep", "EasyNegative"]  # subfolders scanned, sorted like A1111
    assert set(sd1.skipped) == {"sd2style", "xlneg", "hidden"}
    emb, reason = sd1.skipped["xlneg"]
    assert emb is not None and "SDXL" in reason and "2048" in reason and "768" in reason
    assert sd1.skipped["hidden"][0] is None

    xl = db.for_model(fam.SDXL)
    assert list(xl.loaded) == ["xlneg"]
    emb, reason = xl.skipped["EasyNegative"]
    assert emb is not None and "SD 1.x" in reason and "768" in reason

    assert list(db.for_model(fam.SD2).loaded) == ["sd2style"]
    assert set(db.errors) == {str(root / "broken.pt"), str(root / "evil.pt")}
    assert "forbidden" in db.errors[str(root / "evil.pt")]
    api = sd1.api_json()
    assert api["loaded"]["EasyNegative"] == {
        "step": 1500,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        "shape": 768,
        "vectors": 2,
    }
    assert api["skipped"]["xlneg"]["shape"] == 2048


def test_refresh_reads_new_files_and_drops_removed(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    path = ef.write_a1111_pt(root / "first.pt", ef.vectors(1, 768))
    db = _db(root)
    assert list(db.for_model(fam.SD1).loaded) == ["first"]
    path.unlink()
    ef.write_a1111_pt(root / "second.pt", ef.vectors(1, 768))
    assert db.refresh_if_changed()
    assert list(db.for_model(fam.SD1).loaded) == ["second"]
    assert not db.refresh_if_changed()


def test_shorthash_is_the_files_sha256_cached_under_a1111s_key(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    path = ef.write_a1111_pt(root / "EasyNegative.pt", ef.vectors(2, 768))
    db = _db(root)
    emb = db.for_model(fam.SD1).loaded["EasyNegative"]
    full = hashlib.sha256(path.read_bytes()).hexdigest()
    assert emb.shorthash() == full[:12]
    cache = HashCache(tmp_path / "cache.json")
    assert cache.get("hashes", "textual_inversion/EasyNegative", path) == full

    lazy = _db(root, hashing=False).for_model(fam.SD1).loaded["EasyNegative"]
    assert lazy.shorthash() == full[:12]  # cached value is used without hashing
    (tmp_path / "cache.json").unlink()
    assert _db(root, hashing=False).for_model(fam.SD1).loaded["EasyNegative"].shorthash() is None


def test_bundled_embeddings_from_a_lora(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    ef.write_a1111_pt(root / "taken.pt", ef.vectors(1, 768))
    db = _db(root)
    vec = ef.vectors(2, 768, seed=9)
    added = db.add_bundled(
        "my_lora",
        {
            "charname": {"string_to_param.*": vec},
            "taken": {"string_to_param.*": ef.vectors(1, 768, seed=10)},
            "xlchar": {"clip_l": ef.vectors(1, 768), "clip_g": ef.vectors(1, 1280)},
            "bad": {"a": torch.ones(1, 768), "b": torch.ones(1, 768)},
        },
    )
    assert added == ["charname", "taken", "xlchar"]
    assert "my_lora/bad" in db.errors
    sd1 = db.for_model(fam.SD1)
    assert torch.equal(sd1.loaded["charname"].vectors["clip"], vec)
    assert sd1.loaded["charname"].filename is None and sd1.loaded["charname"].shorthash() is None
    assert sd1.loaded["taken"].filename is not None  # the folder's embedding wins (A1111)
    assert "xlchar" in sd1.skipped
    db.remove_bundled("my_lora")
    assert "charname" not in db.for_model(fam.SD1).loaded


# -- matching ------------------------------------------------------------------------------------


def test_finder_matches_token_ids_longest_first(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    ef.write_a1111_pt(root / "bad.pt", ef.vectors(1, 768))
    ef.write_a1111_pt(root / "bad_hands.pt", ef.vectors(3, 768))
    tok = build_clip_tokenizer()
    find = _db(root).for_model(fam.SD1).finder_for_tokenizer(tok)
    ids = tok(["a photo, bad_hands, bad"], add_special_tokens=False).input_ids[0]
    matches = [(i, find(ids, i)) for i in range(len(ids))]
    found = [(i, m.name, m.vectors, m.token_length) for i, m in matches if m is not None]
    long_len = len(tok(["bad_hands"], add_special_tokens=False).input_ids[0])
    assert long_len > 1
    start = ids.index(tok.convert_tokens_to_ids("bad</w>"))
    assert found[0] == (start, "bad_hands", 3, long_len)
    assert found[-1][1:] == ("bad", 1, 1)
