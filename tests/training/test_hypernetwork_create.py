"""Creating hypernetworks (A1111's Create hypernetwork): A1111's `.pt` layout and metadata, the
layer stack our loader rebuilds, the named initialisations, and the checks on the request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modules.core.errors import UserError
from modules.core.training import CreateHypernetworkRequest
from modules.engine.training.creation import create_hypernetwork
from modules.models.hypernetworks import read_hypernetwork

METADATA = {
    "step",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "activate_output",
    "use_dropout",
    "dropout_structure",
    "last_layer_dropout",
    "optional_info",
}


def test_default_file_layout_and_load(tmp_path: Path) -> None:
    result = create_hypernetwork(CreateHypernetworkRequest(name="hn"), tmp_path)
    assert (result.kind, result.name, Path(result.filename)) == ("hypernetwork", "hn", tmp_path / "hn.pt")
    data = torch.load(result.filename, weights_only=True)
    assert {k for k in data if isinstance(k, str)} == METADATA
    assert sorted(k for k in data if isinstance(k, int)) == [320, 640, 768, 1280]
    assert data["layer_structure"] == [1.0, 2.0, 1.0]
    assert (data["activation_func"], data["weight_initialization"], data["step"]) == ("linear", "Normal", 0)
    assert (data["activate_output"], data["use_dropout"], data["dropout_structure"]) == (False, False, [0.0] * 3)
    k_state, v_state = data[768]
    assert set(k_state) == {"linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"}
    assert k_state["linear.0.weight"].shape == (1536, 768) and k_state["linear.1.weight"].shape == (768, 1536)
    weight = k_state["linear.0.weight"]
    assert 0.005 < float(weight.std()) < 0.015 and not k_state["linear.0.bias"].any()  # Normal: N(0, 0.01)
    assert not torch.equal(k_state["linear.0.weight"], v_state["linear.0.weight"])
    hn = read_hypernetwork(Path(result.filename))
    assert sorted(hn.layers) == [320, 640, 768, 1280] and hn.step == 0 and hn.stored_name == "hn"
    assert torch.equal(dict(hn.layers[768][0].state_dict())["linear.0.weight"], weight)


def test_activation_norm_dropout_layout(tmp_path: Path) -> None:
    request = CreateHypernetworkRequest(
        name="deep",
        enable_sizes=(768,),
        layer_structure=(1.0, 1.5, 1.5, 1.0),
        activation_func="swish",
        weight_init="KaimingUniform",
        add_layer_norm=True,
        use_dropout=True,
        dropout_structure=(0.0, 0.1, 0.2, 0.0),
    )
    data = torch.load(create_hypernetwork(request, tmp_path).filename, weights_only=True)
    assert data["dropout_structure"] == [0.0, 0.1, 0.2, 0.0] and data["last_layer_dropout"] is True
    # per layer: Linear, activation (not after the last Linear: activate_output False), LayerNorm, Dropout
    module = read_hypernetwork(tmp_path / "deep.pt").layers[768][0]
    kinds = [type(m) for m in module.modules() if not isinstance(m, nn.Sequential) and m is not module]
    assert kinds == [
        nn.Linear, nn.Hardswish, nn.LayerNorm, nn.Dropout,
        nn.Linear, nn.Hardswish, nn.LayerNorm, nn.Dropout,
        nn.Linear, nn.LayerNorm,
    ]  # fmt: skip
    k_state = data[768][0]
    assert not k_state["linear.0.bias"].any()  # Kaiming: zero biases
    assert float(k_state["linear.0.weight"].std()) > 0.02  # not Normal's 0.01
    # LayerNorm weights take N(0, 0.01) whatever the scheme (A1111)
    assert float(k_state["linear.2.weight"].abs().max()) < 0.1
    # use_dropout without a structure: no dropout (A1111 writes zeros)
    plain = CreateHypernetworkRequest(name="nodrop", enable_sizes=(320,), use_dropout=True)
    assert (
        torch.load(create_hypernetwork(plain, tmp_path).filename, weights_only=True)["dropout_structure"] == [0.0] * 3
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"layer_structure": (2.0, 1.0)},
        {"layer_structure": (1.0, 2.0)},
        {"layer_structure": (1.0,)},
        {"layer_structure": (1.0, -2.0, 1.0)},
        {"activation_func": "nonsense"},
        {"weight_init": "Zeros"},
        {"enable_sizes": ()},
        {"use_dropout": True, "dropout_structure": (0.0, 0.5)},
        {"use_dropout": True, "dropout_structure": (0.0, 1.5, 0.0)},
        {"name": "../up"},
        {"name": ""},
    ],
)
def test_refused_requests(tmp_path: Path, changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": "bad", **changes}
    with pytest.raises(UserError):
        create_hypernetwork(CreateHypernetworkRequest(**fields), tmp_path)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    create_hypernetwork(CreateHypernetworkRequest(name="once", enable_sizes=(320,)), tmp_path)
    with pytest.raises(UserError, match="already exists"):
        create_hypernetwork(CreateHypernetworkRequest(name="once", enable_sizes=(640,)), tmp_path)
    create_hypernetwork(CreateHypernetworkRequest(name="once", enable_sizes=(640,), overwrite_old=True), tmp_path)
    assert sorted(read_hypernetwork(tmp_path / "once.pt").layers) == [640]
