"""/sdapi/v1/loras, /refresh-loras and /hypernetworks filled from the network registry in A1111's
shapes; broken files, odd names and odd header values never make them fail."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.services import Services
from tests.fixtures.embedding_files import hypernetwork_sequential, write_a1111_hypernetwork

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}
V1 = "/sdapi/v1"
KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _lora(path: Path, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{KEY}.lora_down.weight": torch.ones(2, 768), f"{KEY}.lora_up.weight": torch.ones(320, 2)}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def folders(api_services: Services) -> dict[str, Path]:
    """Files in place, then the registry rescanned."""
    lora, lyco, hn = api_services.paths.lora_dir, api_services.paths.lycoris_dir, api_services.paths.hypernetwork_dir
    _lora(lora / "kohya.safetensors", {"ss_output_name": "kohya_alias", "ss_tag_frequency": '{"img": {"cat": 3}}'})
    _lora(lyco / "sub" / "locon.safetensors")
    (lora / "broken.safetensors").write_bytes(b"\x01\x02 not safetensors")
    (lora / "dangling.safetensors").symlink_to(lora / "nowhere.safetensors")
    (lora / "loop").symlink_to(lora, target_is_directory=True)
    # header values JSON cannot carry once decoded: NaN, a lone surrogate
    _lora(lora / "odd.safetensors", {"ss_numbers": "[NaN, 1]", "ss_text": '{"a": "\\ud800"}'})
    with open(os.fsencode(lora) + b"/caf\xe9.safetensors", "wb") as handle:  # a Latin-1 file name
        handle.write((lora / "kohya.safetensors").read_bytes())
    seq = hypernetwork_sequential(768, (1, 2, 1), "relu")
    write_a1111_hypernetwork(hn / "anime.pt", {768: (seq, seq)})
    (hn / "empty.pt").write_bytes(b"")
    api_services.networks.refresh()  # the page (the Train tab's list) may have scanned already
    return {"lora": lora, "lyco": lyco, "hn": hn}


def _loras(client: TestClient) -> dict[str, dict[str, object]]:
    response = client.get(f"{V1}/loras")
    assert response.status_code == 200, response.text
    items = response.json()
    assert all(set(item) == {"name", "alias", "path", "metadata"} for item in items)
    return {item["name"]: item for item in items}


def test_loras_lists_every_file_in_a1111_shape(client: TestClient, folders: dict[str, Path]) -> None:
    loras = _loras(client)
    assert loras["kohya"] == {
        "name": "kohya",
        "alias": "kohya_alias",
        "path": str(folders["lora"] / "kohya.safetensors"),
        "metadata": {"ss_output_name": "kohya_alias", "ss_tag_frequency": {"img": {"cat": 3}}},
    }
    assert loras["locon"]["path"] == str(folders["lyco"] / "sub" / "locon.safetensors")
    assert loras["locon"]["alias"] == "locon" and loras["locon"]["metadata"] == {}
    assert loras["broken"]["metadata"] == {} and loras["dangling"]["alias"] == "dangling"  # listed, as A1111
    assert loras["odd"]["metadata"] == {"ss_numbers": ["nan", 1], "ss_text": {"a": "\ufffd"}}
    assert "caf\ufffd" in loras  # the undecodable byte replaced
    assert len([n for n in loras if n == "kohya"]) == 1  # the symlink loop is walked once


def test_hypernetworks_list_name_and_path(client: TestClient, folders: dict[str, Path]) -> None:
    response = client.get(f"{V1}/hypernetworks")
    assert response.status_code == 200, response.text
    assert sorted(response.json(), key=lambda item: item["name"]) == [
        {"name": "anime", "path": str(folders["hn"] / "anime.pt")},
        {"name": "empty", "path": str(folders["hn"] / "empty.pt")},
    ]


def test_refresh_loras_picks_up_a_file_added_after_start(client: TestClient, folders: dict[str, Path]) -> None:
    before = _loras(client)
    _lora(folders["lora"] / "later.safetensors", {"ss_output_name": "later_alias"})
    assert "later" not in _loras(client)  # the list is the last scan's
    response = client.post(f"{V1}/refresh-loras")
    assert response.status_code == 200 and response.json() is None
    after = _loras(client)
    assert set(after) == set(before) | {"later"}
    assert after["later"]["alias"] == "later_alias"
    assert json.dumps(after)  # plain JSON throughout
