"""Ours: /sdapi/v1/merge-checkpoint, /sdapi/v1/extract-lora and /sdapi/v1/merge-block-presets on
the tiny checkpoints: a block-weighted merge with a LoRA baked in, the result listed at once; the
refusals in A1111's error shape (unknown fields, bad weights, other families, unknown LoRA);
an interrupted merge answers 409 and leaves no file; an extracted LoRA is listed in /loras; and
a file the command line writes into the folder is listed after refresh-checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from modules import merge as merge_cli
from modules.models import merge as mg
from modules.models.checkpoint_io import read_state_dict
from modules.models.loader import Placement, load_single_file
from modules.services import Services
from tests.fixtures import lora_files as lf
from tests.fixtures.ldm_checkpoints import write_checkpoint

API_CHECKPOINTS = {"sd1": "sd1.safetensors", "sd2": "sd2.safetensors"}


@pytest.fixture(scope="module", autouse=True)
def extra_files(api_data_dir: Path, client: TestClient) -> None:
    """A second SD 1.x checkpoint and a kohya LoRA for SD 1.x in the data dir."""
    sd = api_data_dir / "models" / "Stable-diffusion"
    write_checkpoint(sd / "other.safetensors", "sd1", seed=1)
    lora_dir = api_data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    model = load_single_file(sd / "sd1.safetensors", Placement())
    lf.kohya_ldm(lora_dir / "style.safetensors", sd / "sd1.safetensors", model)
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200


def _sd(api_data_dir: Path) -> Path:
    return api_data_dir / "models" / "Stable-diffusion"


def _error(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail", "body", "errors"}
    assert text in json.dumps(body["detail"]), body


def test_block_merge_with_a_baked_lora(client: TestClient, api_data_dir: Path) -> None:
    payload = {
        "primary_model_name": "sd1.safetensors",
        "secondary_model_name": "other.safetensors",
        "interp_method": "weighted_sum",
        "multiplier": 0.5,
        "block_weights": "ALL_B",
        "base_alpha": 0.0,
        "bake_loras": [{"name": "style", "weight": 0.5}],
        "custom_name": "api-blocks",
    }
    response = client.post("/sdapi/v1/merge-checkpoint", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    path = Path(body["path"])
    assert path == _sd(api_data_dir) / "api-blocks.safetensors" and path.is_file()
    assert body["info"] == f"Checkpoint saved to {path}" and body["warnings"] == []
    recipe = json.loads(body["metadata"]["sd_merge_recipe"])
    assert recipe["bake_loras"] == [["style", 0.5]] and recipe["base_alpha"] == 0.0
    # listed at once, under the title the response names
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert body["title"] in titles
    # ALL_B + base 0: the UNet blocks are B's, the rest A's - plus the LoRA on the layers it targets
    a, b, out = (read_state_dict(_sd(api_data_dir) / n) for n in ("sd1.safetensors", "other.safetensors", path.name))
    untouched_block = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"  # a norm: no LoRA there
    assert torch.equal(out[untouched_block], b[untouched_block])
    vae = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(out[vae], a[vae])
    lora_target = next(k for k in out if k.endswith("attn1.to_q.weight") and k.startswith("model.diffusion_model."))
    assert not torch.equal(out[lora_target], b[lora_target])  # baked


def test_refusals_in_a1111_error_shape(client: TestClient) -> None:
    base = {"primary_model_name": "sd1.safetensors", "secondary_model_name": "other.safetensors"}
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**base, "alpha": 0.5}), 422, "alpha")  # unknown field
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**base, "block_weights": "0.5,0.5"}), 422, "values")
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**base, "block_weights": "NOPE"}), 422, "preset")
    _error(
        client.post("/sdapi/v1/merge-checkpoint", json={**base, "secondary_model_name": "sd2.safetensors"}),
        422,
        "same kind",
    )
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**base, "bake_loras": ["missing:1"]}), 404, "missing")
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**base, "multiplier": 2}), 422, "between 0 and 1")
    _error(client.post("/sdapi/v1/extract-lora", json={"original_model_name": "sd1.safetensors"}), 422, "tuned")


def test_interrupted_merge_is_409_and_leaves_nothing(
    client: TestClient, api_services: Services, api_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in _sd(api_data_dir).iterdir())
    real_get = mg.TensorSource.get

    def interrupt_on_read(self: mg.TensorSource, key: str) -> torch.Tensor | None:
        api_services.engine.interrupt()  # what /sdapi/v1/interrupt does, while the merge reads
        return real_get(self, key)

    monkeypatch.setattr(mg.TensorSource, "get", interrupt_on_read)
    payload = {"primary_model_name": "sd1.safetensors", "secondary_model_name": "other.safetensors"}
    _error(client.post("/sdapi/v1/merge-checkpoint", json={**payload, "custom_name": "stopped"}), 409, "Interrupted")
    assert sorted(p.name for p in _sd(api_data_dir).iterdir()) == before


def test_extract_lora_is_listed(client: TestClient, api_data_dir: Path) -> None:
    response = client.post(
        "/sdapi/v1/extract-lora",
        json={
            "original_model_name": "sd1.safetensors",
            "tuned_model_name": "other.safetensors",
            "name": "from-api",
            "rank": 4,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert Path(body["path"]) == api_data_dir / "models" / "Lora" / "from-api.safetensors"
    assert body["modules"] > 0 and body["text_encoder_included"] is True
    assert "from-api" in [item["name"] for item in client.get("/sdapi/v1/loras").json()]
    again = client.post(
        "/sdapi/v1/extract-lora",
        json={"original_model_name": "sd1.safetensors", "tuned_model_name": "other.safetensors", "name": "from-api"},
    )
    _error(again, 400, "already exists")


def test_presets_route(client: TestClient) -> None:
    presets = client.get("/sdapi/v1/merge-block-presets").json()
    assert len(presets["sd"]["GRAD_V"]) == 25 and len(presets["sdxl"]["GRAD_V"]) == 19
    assert "WRAP08" in presets["sd"] and "WRAP08" not in presets["sdxl"]


def test_command_line_result_is_listed_after_refresh(client: TestClient, api_data_dir: Path) -> None:
    sd = _sd(api_data_dir)
    out = sd / "from-cli.safetensors"
    code = merge_cli.main(
        [str(sd / "sd1.safetensors"), str(sd / "other.safetensors"), "--alpha", "0.4", "--out", str(out), "-q"]
    )
    assert code == 0 and out.is_file()
    assert "from-cli.safetensors" not in [
        m["model_name"] + ".safetensors" for m in client.get("/sdapi/v1/sd-models").json()
    ]
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "from-cli" in [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
