"""Creating embeddings (A1111's Create embedding): the file layout A1111 writes, vectors from the
init text's token embeddings, read back by our loader; name / count / overwrite checks. Prompt
templates and the learn-rate schedule string."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modules.core.errors import UserError
from modules.core.hashes import HashCache
from modules.core.training import CreateEmbeddingRequest
from modules.engine.training import templates
from modules.engine.training.creation import create_embedding
from modules.engine.training.embedding_trainer import parse_learn_rate
from modules.models.embeddings import EmbeddingDatabase, read_embedding_file
from modules.models.loader import Placement, StableDiffusionModel, load_single_file

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


@pytest.fixture(scope="module")
def xl(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sdxl"], Placement())


def _token_rows(model: StableDiffusionModel, index: int, text: str) -> torch.Tensor:
    ids = model.tokenizers[index]([text], add_special_tokens=False).input_ids[0]
    return model.text_encoders[index].get_input_embeddings().weight[ids].detach().float()


def test_sd1_file_has_a1111_layout_and_init_vectors(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    result = create_embedding(
        CreateEmbeddingRequest(name="my-style", num_vectors_per_token=4, init_text="red apple"), tmp_path, sd1
    )
    path = Path(result.filename)
    assert (result.kind, result.name, path) == ("embedding", "my-style", tmp_path / "my-style.pt")
    data = torch.load(path, weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert (data["name"], data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == (
        "my-style",
        0,
        None,
        None,
    )
    vec = data["string_to_param"]["*"]
    rows = _token_rows(sd1, 0, "red apple")  # 2 tokens spread over 4 vectors: 0, 0, 1, 1
    assert vec.shape == (4, rows.shape[1])
    assert torch.equal(vec, torch.stack([rows[0], rows[0], rows[1], rows[1]]))
    name, embedding, reason = read_embedding_file(path)
    assert (name, reason) == ("my-style", None)
    assert embedding is not None and embedding.step == 0 and embedding.vector_count == 4
    assert torch.equal(embedding.vectors["clip"], vec)


def test_empty_init_text_gives_zeros(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    result = create_embedding(
        CreateEmbeddingRequest(name="blank", num_vectors_per_token=2, init_text=""), tmp_path, sd1
    )
    vec = torch.load(result.filename, weights_only=True)["string_to_param"]["*"]
    assert vec.shape[0] == 2 and not vec.any()


def test_sdxl_writes_clip_l_and_clip_g(xl: StableDiffusionModel, tmp_path: Path) -> None:
    result = create_embedding(
        CreateEmbeddingRequest(name="xlthing", num_vectors_per_token=3, init_text="cat"), tmp_path, xl
    )
    path = Path(result.filename)
    assert path == tmp_path / "xlthing.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["clip_g", "clip_l"]  # only these: A1111 reads the SDXL layout so
        assert f.metadata()["step"] == "0"
        clip_l, clip_g = f.get_tensor("clip_l"), f.get_tensor("clip_g")
    assert torch.equal(clip_l, _token_rows(xl, 0, "cat")[[0, 0, 0]])
    assert torch.equal(clip_g, _token_rows(xl, 1, "cat")[[0, 0, 0]])
    db = EmbeddingDatabase([tmp_path], HashCache(tmp_path / "cache.json"), hashing=False)
    assert list(db.for_model(xl).loaded) == ["xlthing"]


def test_refusals(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    create_embedding(CreateEmbeddingRequest(name="taken"), tmp_path, sd1)
    before = (tmp_path / "taken.pt").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        create_embedding(CreateEmbeddingRequest(name="taken", init_text="dog"), tmp_path, sd1)
    assert (tmp_path / "taken.pt").read_bytes() == before
    create_embedding(CreateEmbeddingRequest(name="taken", init_text="dog", overwrite_old=True), tmp_path, sd1)
    assert (tmp_path / "taken.pt").read_bytes() != before
    for bad in ("../escape", "a/b", "", "  ", ".hidden", "x:y"):
        with pytest.raises(UserError):
            create_embedding(CreateEmbeddingRequest(name=bad), tmp_path, sd1)
    for count in (0, 76):
        with pytest.raises(UserError, match="between 1 and 75"):
            create_embedding(CreateEmbeddingRequest(name="n", num_vectors_per_token=count), tmp_path, sd1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.pt"]
    (tmp_path / "twin.safetensors").write_bytes(b"x")  # another file of that name: two "twin"s would clash
    with pytest.raises(UserError, match="another embedding named 'twin'"):
        create_embedding(CreateEmbeddingRequest(name="twin", overwrite_old=True), tmp_path, sd1)
    assert not (tmp_path / "twin.pt").exists()


def test_templates_bundled_and_user(tmp_path: Path) -> None:
    names = set(templates.list_templates())
    expected = {
        "none.txt",
        "style.txt",
        "style_filewords.txt",
        "subject.txt",
        "subject_filewords.txt",
        "hypernetwork.txt",
    }
    assert expected <= names
    for name in expected:
        lines = templates.read_template(name)
        assert lines and all(line.strip() for line in lines)
        if "filewords" in name or name == "hypernetwork.txt":
            assert all("[filewords]" in line for line in lines)
        if name.startswith(("style", "subject")):
            assert all("[name]" in line for line in lines)
    own = tmp_path / "mine"
    own.mkdir()
    (own / "style.txt").write_text("my [name] line\n\n")
    dirs = templates.template_dirs([own])
    assert templates.read_template("style.txt", dirs) == ["my [name] line"]
    assert templates.fill("a [name] of [filewords]", "tok", "red, round") == "a tok of red, round"
    with pytest.raises(UserError, match="not found"):
        templates.read_template("nope.txt", dirs)


def test_learn_rate_schedule_as_a1111() -> None:
    assert parse_learn_rate("0.005", 1000) == [(0.005, 1000)]
    assert parse_learn_rate("0.005:100, 1e-3:1000, 1e-5", 10000) == [(0.005, 100), (1e-3, 1000), (1e-5, 10000)]
    # past max steps: cut at max steps and stop
    assert parse_learn_rate("0.005:100, 1e-3:1000, 1e-5", 500) == [(0.005, 100), (1e-3, 500)]
    # resumed at step 150: segments that ended already are left out
    assert parse_learn_rate("0.005:100, 1e-3:1000, 1e-5", 10000, 150) == [(1e-3, 1000), (1e-5, 10000)]
    assert parse_learn_rate("0.01:-1, 0.5", 300) == [(0.01, 300)]  # -1: until the end
    assert parse_learn_rate("0.001:100, 0.00001:1000, 1e-5:10000", 20000) == [
        (0.001, 100),
        (0.00001, 1000),
        (1e-5, 10000),
    ]
    for bad in ("", "abc", "0.1:x", "1:2:3", ", ,"):
        with pytest.raises(UserError, match="learning rate schedule"):
            parse_learn_rate(bad, 100)


def test_override_wins_over_the_file_while_inside(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    path = Path(create_embedding(CreateEmbeddingRequest(name="tok", num_vectors_per_token=2), tmp_path, sd1).filename)
    db = EmbeddingDatabase([tmp_path], HashCache(tmp_path / "cache.json"), hashing=False)
    on_file = db.for_model(sd1).loaded["tok"]
    _name, trained, _reason = read_embedding_file(path)
    assert trained is not None
    live = torch.ones_like(trained.vectors["clip"])
    trained.vectors = {"clip": live}
    with db.override(trained):
        db.refresh()  # a save during training re-reads the folder: the override still wins
        assert db.for_model(sd1).loaded["tok"] is trained
        assert db.all()["tok"] is trained
        live.mul_(3)  # updated in place by the optimizer: what the views hand out is current
        assert float(db.for_model(sd1).loaded["tok"].vectors["clip"][0, 0]) == 3.0
    assert db.for_model(sd1).loaded["tok"] is not trained
    assert torch.equal(db.for_model(sd1).loaded["tok"].vectors["clip"], on_file.vectors["clip"])
