"""Textual-inversion embeddings in the conditioning of real (tiny) models: the vectors replace the
name's token embeddings in each text encoder, inside emphasis, prompt editing and the negative
prompt; A1111's chunking (never split) and the token counter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from modules.core.hashes import HashCache
from modules.engine.conditioning import ConditioningSettings, Encoder, PromptPlan, encode_plan
from modules.engine.token_count import count_tokens
from modules.models import families as fam
from modules.models.embeddings import EmbeddingDatabase, EmbeddingSet
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from tests.fixtures import embedding_files as ef

pytestmark = pytest.mark.usefixtures("no_network")

NAME = "mytoken"  # several BPE tokens ("my", "token")


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


@pytest.fixture(scope="module")
def xl(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sdxl"], Placement())


def _embeddings_module(model: StableDiffusionModel, index: int) -> torch.nn.Module:
    """The encoder's `CLIPTextEmbeddings` (transformers 5 has no `text_model` level)."""
    encoder = model.text_encoders[index]
    module: torch.nn.Module = getattr(encoder, "text_model", encoder).embeddings
    return module


def _width(model: StableDiffusionModel, index: int = 0) -> int:
    return int(model.text_encoders[index].get_input_embeddings().weight.shape[1])


def _database(tmp_path: Path, files: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> EmbeddingDatabase:
    root = tmp_path / "embeddings"
    for name, vec in files.items():
        if isinstance(vec, tuple):
            ef.write_sdxl_safetensors(root / f"{name}.safetensors", *vec)
        else:
            ef.write_a1111_pt(root / f"{name}.pt", vec)
    db = EmbeddingDatabase([root], HashCache(tmp_path / "cache.json"))
    db.refresh()
    return db


@contextmanager
def embedding_outputs(model: StableDiffusionModel, index: int = 0) -> Iterator[list[torch.Tensor]]:
    """What each call of encoder `index`'s `text_model.embeddings` returns (token + position
    embeddings: the sum the transformer layers see)."""
    seen: list[torch.Tensor] = []
    module = _embeddings_module(model, index)
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def _expected_rows(model: StableDiffusionModel, index: int, vec: torch.Tensor, start: int) -> torch.Tensor:
    """The vectors plus the position embeddings of token positions start.. (as CLIP adds them)."""
    emb = _embeddings_module(model, index)
    positions = emb.position_embedding.weight[start : start + vec.shape[0]]
    return vec.to(positions.dtype) + positions


def _ids(model: StableDiffusionModel, text: str) -> list[int]:
    ids: list[int] = model.tokenizers[0]([text], add_special_tokens=False).input_ids[0]
    return ids


def test_vectors_replace_the_names_token_embeddings(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    vec = ef.vectors(3, _width(sd1), seed=1)
    embeddings = _database(tmp_path, {NAME: vec}).for_model(sd1)
    assert list(embeddings.loaded) == [NAME]
    encoder = Encoder(sd1, ConditioningSettings(), embeddings=embeddings)
    with embedding_outputs(sd1) as seen:
        cond = encoder.encode(f"a {NAME} cat").hidden
    (out,) = seen
    start = 1 + len(_ids(sd1, "a"))  # after BOS and "a"
    assert torch.equal(out[0, start : start + 3], _expected_rows(sd1, 0, vec, start))
    # the rest is the plain prompt "a <3 vectors> cat": "cat" sits right after the vectors
    cat_id = _ids(sd1, "cat")[0]
    token_embedding = sd1.text_encoders[0].get_input_embeddings()
    position = _embeddings_module(sd1, 0).position_embedding.weight
    assert torch.equal(out[0, start + 3], token_embedding.weight[cat_id] + position[start + 3])
    assert encoder.used_embeddings == {NAME: embeddings.loaded[NAME]}
    assert not token_embedding._forward_hooks  # the hook lives for one encoder call only

    plain = Encoder(sd1, ConditioningSettings()).encode(f"a {NAME} cat").hidden
    assert cond.shape == plain.shape == (1, 77, _width(sd1))
    assert not torch.equal(cond, plain)
    assert torch.equal(cond[0, :start], plain[0, :start])  # causal: positions before the name agree


def test_inside_emphasis_editing_and_the_negative_prompt(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    vec = ef.vectors(2, _width(sd1), seed=2)
    embeddings = _database(tmp_path, {NAME: vec}).for_model(sd1)
    settings = ConditioningSettings(emphasis="No norm")
    start = 1 + len(_ids(sd1, "a"))

    plain = Encoder(sd1, settings, embeddings=embeddings).encode(f"a {NAME}").hidden
    encoder = Encoder(sd1, settings, embeddings=embeddings)
    with embedding_outputs(sd1) as seen:
        weighted = encoder.encode(f"a ({NAME}:1.2)").hidden
    assert torch.equal(seen[0][0, start : start + 2], _expected_rows(sd1, 0, vec, start))
    scaled = plain[0, start : start + 2] * torch.tensor(1.2)
    assert torch.equal(weighted[0, start : start + 2], scaled)
    assert torch.equal(weighted[0, :start], plain[0, :start])

    encoder = Encoder(sd1, settings, embeddings=embeddings)
    plan = PromptPlan.build(["a [dog:mytoken:0.5]"], [f"ugly, {NAME}"], steps=10)
    with embedding_outputs(sd1) as seen:
        encode_plan(encoder, plan)
    assert len(seen) == 3  # "a dog", "a mytoken", the negative prompt
    assert encoder.used_embeddings.keys() == {NAME}
    assert torch.equal(seen[1][0, start : start + 2], _expected_rows(sd1, 0, vec, start))
    neg_start = 1 + len(_ids(sd1, "ugly,"))
    assert torch.equal(seen[2][0, neg_start : neg_start + 2], _expected_rows(sd1, 0, vec, neg_start))


def test_sdxl_puts_clip_l_and_clip_g_into_their_encoders(xl: StableDiffusionModel, tmp_path: Path) -> None:
    clip_l, clip_g = ef.vectors(2, _width(xl, 0), seed=3), ef.vectors(2, _width(xl, 1), seed=4)
    embeddings = _database(tmp_path, {NAME: (clip_l, clip_g)}).for_model(xl)
    assert list(embeddings.loaded) == [NAME]
    encoder = Encoder(xl, ConditioningSettings(), embeddings=embeddings)
    with embedding_outputs(xl, 0) as seen_l, embedding_outputs(xl, 1) as seen_g:
        cond = encoder.encode(f"a {NAME}")
    start = 1 + len(_ids(xl, "a"))
    assert torch.equal(seen_l[0][0, start : start + 2], _expected_rows(xl, 0, clip_l, start))
    assert torch.equal(seen_g[0][0, start : start + 2], _expected_rows(xl, 1, clip_g, start))
    plain = Encoder(xl, ConditioningSettings()).encode(f"a {NAME}")
    assert not torch.equal(cond.hidden, plain.hidden)
    assert cond.pooled is not None and plain.pooled is not None and not torch.equal(cond.pooled, plain.pooled)


def test_an_sd1_embedding_on_sdxl_is_skipped_with_the_reason(
    sd1: StableDiffusionModel, xl: StableDiffusionModel, tmp_path: Path
) -> None:
    db = _database(tmp_path, {"sd1only": ef.vectors(2, _width(sd1))})
    on_xl = db.for_model(xl)
    assert on_xl.loaded == {}
    embedding, reason = on_xl.skipped["sd1only"]
    assert embedding is not None and embedding.shape == _width(sd1)
    assert str(_width(xl, 0) + _width(xl, 1)) in reason and "SDXL" in reason
    encoder = Encoder(xl, ConditioningSettings(), embeddings=on_xl)
    assert torch.equal(
        encoder.encode("a sd1only").hidden, Encoder(xl, ConditioningSettings()).encode("a sd1only").hidden
    )
    assert encoder.used_embeddings == {}


def test_an_embedding_that_does_not_fit_starts_the_next_chunk(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    vec = ef.vectors(10, _width(sd1), seed=5)
    embeddings = _database(tmp_path, {"big": vec}).for_model(sd1)
    assert len(_ids(sd1, "cat " * 70)) == 70
    prompt = "cat " * 70 + "big dog"
    encoder = Encoder(sd1, ConditioningSettings(), embeddings=embeddings)
    with embedding_outputs(sd1) as seen:
        cond = encoder.encode(prompt).hidden
    assert cond.shape[1] == 2 * 77 and len(seen) == 2
    eos = sd1.tokenizers[0].eos_token_id
    padding = sd1.text_encoders[0].get_input_embeddings().weight[eos]
    position = _embeddings_module(sd1, 0).position_embedding.weight
    assert torch.equal(seen[0][0, 71], padding + position[71])  # chunk 1 ends after the 70 cats
    assert torch.equal(seen[1][0, 1:11], _expected_rows(sd1, 0, vec, 1))  # chunk 2 starts with it

    without = Encoder(sd1, ConditioningSettings()).encode(prompt).hidden
    assert without.shape[1] == 77  # the plain words fit the first chunk


def _embeddings_for_counter(tmp_path: Path) -> EmbeddingSet:
    db = _database(tmp_path, {"big": ef.vectors(10, 768), NAME: ef.vectors(3, 768)})
    return db.for_model(fam.SD1)


def test_token_counter_counts_vectors(tmp_path: Path) -> None:
    embeddings = _embeddings_for_counter(tmp_path)
    assert count_tokens(f"a {NAME}", 20) == (1 + 2, 75)  # "my" "token" as words
    assert count_tokens(f"a {NAME}", 20, embeddings=embeddings) == (1 + 3, 75)
    # after step 5 the text is "a (mytoken:1.3), mytoken": a, 3 vectors, the comma, 3 vectors
    assert count_tokens(f"a ({NAME}:1.3), [x:{NAME}:5]", 20, embeddings=embeddings) == (1 + 3 + 1 + 3, 75)
    assert count_tokens(f"ugly, {NAME}", 20, is_positive=False, embeddings=embeddings) == (2 + 3, 75)
    # 70 tokens, then 10 vectors that do not fit: the first chunk counts as 75
    assert count_tokens("cat " * 70 + "big", 20, embeddings=embeddings) == (75 + 10, 150)
    assert count_tokens("cat " * 70 + "big", 20) == (71, 75)
