"""Extra networks through the API: `<lora:x:0.8>` changes the image, gives the image of a checkpoint
with the same deltas merged in by hand, is written in the infotext as A1111 writes it; a hires
prompt naming another LoRA runs its pass with that one; an embedding's name and a hypernetwork tag
act, and are listed; a missing or foreign network is a warning, not an error."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file

from modules.core.hashes import addnet_hash_safetensors, sha256_file
from modules.models.loader import Placement, load_single_file
from tests.fixtures.embedding_files import hypernetwork_sequential, vectors, write_a1111_hypernetwork, write_a1111_pt
from tests.fixtures.module_tmp import ModuleTempDirs

pytestmark = pytest.mark.usefixtures("no_network")

API_CHECKPOINTS = {"sd1": "sd1.safetensors", "sdxl": "sdxl.safetensors"}
MULTIPLIER = 0.8
RANK = 2
ALPHA = 1.0


def _kohya_targets(model: object) -> list[tuple[str, str, torch.nn.Module]]:
    """(kohya key, owner prefix, module) for the attention projections of the UNet and the text
    encoder's q/k/v/out projections: the layers a kohya SD1 LoRA trains."""
    found: list[tuple[str, str, torch.nn.Module]] = []
    for name, module in model.unet.named_modules():  # type: ignore[attr-defined]
        if (
            isinstance(module, torch.nn.Linear)
            and ".attn" in name
            and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
        ):
            found.append(("lora_unet_" + name.replace(".", "_"), "unet", module))
    for name, module in model.text_encoders[0].named_modules():  # type: ignore[attr-defined]
        if isinstance(module, torch.nn.Linear) and ".self_attn." in name:
            found.append(("lora_te_" + name.replace(".", "_"), "te", module))
    return found


def _write_lora_and_merged(sd1: Path, lora: Path, merged: Path, seed: int = 7) -> None:
    """A kohya LoRA for the tiny SD1 checkpoint, and the checkpoint with W + up@down*alpha/rank*0.8
    merged into the LDM tensors by hand (each diffusers weight found in the file by its values)."""
    model = load_single_file(sd1, Placement())
    state = load_file(str(sd1))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    merged_state = dict(state)
    for key, _owner, module in _kohya_targets(model):
        weight = module.weight.detach()
        down = torch.randn(RANK, weight.shape[1], generator=gen) * 0.5
        up = torch.randn(weight.shape[0], RANK, generator=gen) * 0.5
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
        ldm = [k for k, v in state.items() if v.shape == weight.shape and torch.equal(v.float(), weight.float())]
        assert len(ldm) == 1, f"{key}: {ldm}"
        original = state[ldm[0]]
        merged_state[ldm[0]] = (original.float() + (up @ down) * (ALPHA / RANK * MULTIPLIER)).to(original.dtype)
    save_file(tensors, str(lora), metadata={"ss_output_name": "x", "ss_network_dim": str(RANK)})
    save_file(merged_state, str(merged))


@pytest.fixture(scope="module")
def api_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("api-lora")
    sd = root / "models" / "Stable-diffusion"
    lora_dir = root / "models" / "Lora"
    sd.mkdir(parents=True)
    lora_dir.mkdir(parents=True)
    for family, name in API_CHECKPOINTS.items():
        shutil.copy(tiny_models[family], sd / name)
    _write_lora_and_merged(tiny_models["sd1"], lora_dir / "x.safetensors", sd / "merged.safetensors")
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _write_lora_and_merged(tiny_models["sd1"], lora_dir / "y.safetensors", root / "unused.safetensors", seed=8)
    width = load_single_file(tiny_models["sd1"], Placement()).text_encoders[0].config.hidden_size
    bundle = dict(load_file(str(lora_dir / "y.safetensors")))
    bundle["bundle_emb.zemb.string_to_param.*"] = vectors(2, width, seed=9) * 4
    save_file(bundle, str(lora_dir / "z.safetensors"))
    write_a1111_pt(root / "embeddings" / "shiny.pt", vectors(2, width, seed=3) * 4)
    write_a1111_pt(root / "embeddings" / "xlonly.pt", vectors(1, 2048, seed=4))
    sizes = {m.to_k.in_features for m in _attentions(tiny_models["sd1"])}
    modules = {
        size: (
            hypernetwork_sequential(size, (1, 2, 1), "relu", seed=size),
            hypernetwork_sequential(size, (1, 2, 1), "relu", seed=size + 1),
        )
        for size in sizes
    }
    write_a1111_hypernetwork(root / "models" / "hypernetworks" / "h.pt", modules)
    other = 48  # a width no attention of the tiny SD1 takes: made for another family
    assert other not in sizes
    foreign = {other: (hypernetwork_sequential(other, (1, 2, 1), "relu", seed=1),) * 2}
    write_a1111_hypernetwork(root / "models" / "hypernetworks" / "wide.pt", foreign)
    return root


def _attentions(checkpoint: Path) -> list[torch.nn.Module]:
    model = load_single_file(checkpoint, Placement())
    return [m for m in model.unet.modules() if hasattr(m, "to_k") and hasattr(m, "to_v")]


def _txt2img(client: TestClient, prompt: str, **extra: object) -> dict[str, object]:
    body = {"prompt": prompt, "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
    body.update(extra)
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _pixels(answer: dict[str, object]) -> np.ndarray:
    data = base64.b64decode(answer["images"][0])  # type: ignore[index]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_a_lora_tag_changes_the_image_like_the_merged_checkpoint(client: TestClient, api_data_dir: Path) -> None:
    plain = _pixels(_txt2img(client, "a cat"))
    answer = _txt2img(client, f"a cat <lora:x:{MULTIPLIER}>")
    with_lora = _pixels(answer)
    assert np.abs(with_lora - plain).max() > 0, "the LoRA changed nothing"
    merged = _pixels(_txt2img(client, "a cat", override_settings={"sd_model_checkpoint": "merged.safetensors"}))
    diff = np.abs(with_lora - merged)
    # the same float32 sum, rounded in another order at most: one level in a few pixels
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    info = json.loads(answer["info"])  # type: ignore[arg-type]
    shorthash = addnet_hash_safetensors(api_data_dir / "models" / "Lora" / "x.safetensors")[:12]
    assert f'Lora hashes: "x: {shorthash}"' in info["infotexts"][0]
    assert f"<lora:x:{MULTIPLIER}>" in info["infotexts"][0]  # the prompt keeps its tag, as A1111's


def test_an_unchanged_lora_set_reads_and_patches_nothing_again(client: TestClient, api_services: object) -> None:
    networks = api_services.extra_networks  # type: ignore[attr-defined]
    _txt2img(client, "a dog <lora:x:0.5>")
    loads = networks.loads
    patcher = api_services.models.patcher  # type: ignore[attr-defined]
    applied = patcher.stats.applied
    _txt2img(client, "a dog <lora:x:0.5>", seed=12)
    assert networks.loads == loads and patcher.stats.applied == applied
    _txt2img(client, "a dog")  # the set changes: pristine weights again
    assert patcher.is_pristine


def test_missing_broken_and_foreign_networks_are_warnings(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, "a cat"))
    answer = _txt2img(client, "a cat <lora:nope:1> <lora:broken:1> <hypernet:nothing:1> <hypernet:wide:1>")
    warnings = json.loads(answer["info"])["warnings"]  # type: ignore[arg-type]
    assert any("nope" in w and "not found" in w for w in warnings), warnings
    assert any("broken" in w for w in warnings), warnings
    assert any("nothing" in w for w in warnings), warnings
    assert any("hypernetwork 'wide'" in w and "[48]" in w and "changes nothing" in w for w in warnings), warnings
    assert np.array_equal(_pixels(answer), plain)
    sdxl = _txt2img(client, "a cat <lora:x:1>", override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
    warnings = json.loads(sdxl["info"])["warnings"]  # type: ignore[arg-type]
    assert any("matches no layer" in w for w in warnings), warnings
    assert "Lora hashes" not in json.loads(sdxl["info"])["infotexts"][0]  # type: ignore[arg-type]


def test_disable_extra_networks_leaves_the_tag_inactive(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, "a cat"))
    answer = _txt2img(client, "a cat <lora:x:0.8>", disable_extra_networks=True)
    assert np.array_equal(_pixels(answer), plain)
    assert "Lora hashes" not in json.loads(answer["info"])["infotexts"][0]  # type: ignore[arg-type]


def test_lora_list_and_infotext_paste_name_it(client: TestClient) -> None:
    listed = client.get("/sdapi/v1/loras").json()
    assert any(item["name"] == "x" for item in listed)


def test_a_hires_prompt_naming_another_lora_runs_the_hires_pass_with_it(
    client: TestClient, api_services: object
) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    same = _pixels(_txt2img(client, "a cat <lora:x:1>", **hires))
    other = _txt2img(client, "a cat <lora:x:1>", hr_prompt="a cat <lora:y:1>", **hires)
    assert np.abs(_pixels(other) - same).max() > 0
    info = json.loads(other["info"])  # type: ignore[arg-type]
    assert '"x: ' in info["infotexts"][0] and ", y: " in info["infotexts"][0]  # both sets' hashes, as A1111
    # after the job the first pass's set is the one in force (the next job with it does no work)
    patcher = api_services.models.patcher  # type: ignore[attr-defined]
    assert len(patcher.identities) == 1 and "x.safetensors" in patcher.identities[0]


def test_an_embedding_name_in_the_prompt_acts_and_is_listed(client: TestClient, api_data_dir: Path) -> None:
    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed["loaded"]["shiny"] == {
        "step": 1500,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        "shape": listed["loaded"]["shiny"]["shape"],
        "vectors": 2,
    }
    assert "xlonly" in listed["skipped"] and "xlonly" not in listed["loaded"]
    plain = _pixels(_txt2img(client, "a cat"))
    answer = _txt2img(client, "a (shiny:1.1) cat")
    assert np.abs(_pixels(answer) - plain).max() > 0
    shorthash = sha256_file(api_data_dir / "embeddings" / "shiny.pt")[:12]
    assert f'TI hashes: "shiny: {shorthash}"' in json.loads(answer["info"])["infotexts"][0]  # type: ignore[arg-type]
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200


def test_a_hypernetwork_tag_changes_the_image_and_leaves_no_hooks(client: TestClient, api_services: object) -> None:
    assert [item["name"] for item in client.get("/sdapi/v1/hypernetworks").json()] == ["h", "wide"]
    plain = _pixels(_txt2img(client, "a cat"))
    strong = _pixels(_txt2img(client, "a cat <hypernet:h:1>"))
    assert np.abs(strong - plain).max() > 0
    zero = _pixels(_txt2img(client, "a cat <hypernet:h:0>"))
    assert np.array_equal(zero, plain)
    unet = api_services.models.active.model.unet  # type: ignore[attr-defined]
    assert not any(m._forward_pre_hooks for m in unet.modules())


def test_the_add_network_to_prompt_option_appends_its_tag(client: TestClient) -> None:
    answer = _txt2img(client, "a cat", override_settings={"sd_lora": "x"})
    infotext = json.loads(answer["info"])["infotexts"][0]  # type: ignore[arg-type]
    assert infotext.startswith("a cat<lora:x:1.0>") and 'Lora hashes: "x: ' in infotext
    again = _txt2img(client, "a cat <lora:x:0.2>", override_settings={"sd_lora": "x"})
    assert json.loads(again["info"])["infotexts"][0].startswith("a cat <lora:x:0.2>\n")  # type: ignore[arg-type]


def test_a_loras_bundled_embedding_acts_only_with_the_lora(client: TestClient, api_data_dir: Path) -> None:
    with_lora = _txt2img(client, "a zemb cat <lora:z:1>")
    infotext = json.loads(with_lora["info"])["infotexts"][0]  # type: ignore[arg-type]
    lora_hash = addnet_hash_safetensors(api_data_dir / "models" / "Lora" / "z.safetensors")[:12]
    assert f'TI hashes: "zemb: {lora_hash}"' in infotext  # A1111 writes the LoRA's hash for it
    plain = json.loads(_txt2img(client, "a zemb cat")["info"])["infotexts"][0]  # type: ignore[arg-type]
    assert "TI hashes" not in plain  # without its LoRA the name is a plain word again


def test_an_embedding_dropped_into_the_folder_works_without_a_refresh(client: TestClient, api_data_dir: Path) -> None:
    width = client.get("/sdapi/v1/embeddings").json()["loaded"]["shiny"]["shape"]
    write_a1111_pt(api_data_dir / "embeddings" / "fresh.pt", vectors(1, width, seed=5))
    infotext = json.loads(_txt2img(client, "a fresh cat")["info"])["infotexts"][0]  # type: ignore[arg-type]
    assert 'TI hashes: "fresh: ' in infotext
