"""A1111 hypernetwork files: the layer layouts load with their indices lined up, the hooks change
every attention's k and v inputs exactly as `x + hn(x) * strength`, and go away afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from modules.core.errors import ModelFileError, UnsafeModelFileError
from modules.models.hypernetworks import Hypernetwork, attention_projections, hypernetworks_applied, read_hypernetwork
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from tests.fixtures import embedding_files as ef
from tests.fixtures import pickles

pytestmark = pytest.mark.usefixtures("no_network")

LAYOUTS: dict[str, dict[str, Any]] = {
    "relu": {"layer_structure": (1, 2, 1), "activation_func": "relu"},
    "linear": {"layer_structure": (1, 2, 1), "activation_func": "linear"},
    "leakyrelu-norm-dropout": {
        "layer_structure": (1, 2, 2, 1),
        "activation_func": "leakyrelu",
        "is_layer_norm": True,
        "use_dropout": True,
        "dropout_structure": (0, 0.3, 0.3, 0),
    },
    "swish-activate-output": {"layer_structure": (1, 1.5, 1), "activation_func": "swish", "activate_output": True},
    "mish-by-torch-name": {"layer_structure": (1, 2, 1), "activation_func": "mish"},
    "tanh-norm": {"layer_structure": (1, 2, 1), "activation_func": "tanh", "is_layer_norm": True},
}


def _reference(dim: int, layout: dict[str, Any], seed: int) -> nn.Sequential:
    torch_name = {"mish": "Mish"}.get(layout["activation_func"], layout["activation_func"])
    return ef.hypernetwork_sequential(
        dim,
        layout["layer_structure"],
        torch_name,
        layer_norm=layout.get("is_layer_norm", False),
        dropout=layout.get("dropout_structure"),
        activate_output=layout.get("activate_output", False),
        seed=seed,
    )


def _write(path: Path, dims: tuple[int, ...], layout: dict[str, Any]) -> dict[int, tuple[nn.Sequential, nn.Sequential]]:
    modules = {d: (_reference(d, layout, seed=d), _reference(d, layout, seed=d + 1)) for d in dims}
    ef.write_a1111_hypernetwork(path, modules, **layout)
    return modules


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_a1111_layouts_load_with_their_layer_indices(layout: str, tmp_path: Path) -> None:
    path = tmp_path / f"{layout}.pt"
    reference = _write(path, (64, 32), LAYOUTS[layout])
    hn = read_hypernetwork(path)
    assert (hn.name, hn.filename, sorted(hn.layers)) == (layout, path, [32, 64])
    assert hn.step == 1000 and hn.sd_checkpoint == "cc6cb27103" and hn.stored_name == layout
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    for index in (0, 1):
        module = hn.layers[64][index]
        assert not module.training  # dropout off at inference
        assert torch.equal(module(x), reference[64][index](x))


def test_old_linear1_linear2_files(tmp_path: Path) -> None:
    first, second = nn.Linear(32, 64), nn.Linear(64, 32)
    path = ef.write_old_hypernetwork(tmp_path / "old.pt", {32: (first, second)})
    hn = read_hypernetwork(path)
    x = torch.randn(3, 32)
    assert torch.equal(hn.layers[32][0](x), second(first(x)))  # no activation in the first format
    assert hn.layout.activate_output  # A1111's default when the key is missing


def test_forbidden_global_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    path, marker = pickles.write_zip_system_ckpt(tmp_path, name="evil.pt")
    with pytest.raises(UnsafeModelFileError, match="forbidden"):
        read_hypernetwork(path)
    assert not marker.exists()


def test_broken_files_are_model_file_errors(tmp_path: Path) -> None:
    good = {64: (_reference(64, LAYOUTS["relu"], 0), _reference(64, LAYOUTS["relu"], 1))}
    bad_structure = ef.write_a1111_hypernetwork(tmp_path / "s.pt", good, layer_structure=(2, 2, 1))
    with pytest.raises(ModelFileError, match="start and end with 1"):
        read_hypernetwork(bad_structure)
    wrong_layout = ef.write_a1111_hypernetwork(tmp_path / "w.pt", good, layer_structure=(1, 3, 1))
    with pytest.raises(ModelFileError, match="do not fit"):
        read_hypernetwork(wrong_layout)
    unknown = ef.write_a1111_hypernetwork(tmp_path / "u.pt", good, activation_func="nonsense")
    with pytest.raises(ModelFileError, match="nonsense"):
        read_hypernetwork(unknown)
    torch.save({"step": 3}, tmp_path / "empty.pt")
    with pytest.raises(ModelFileError, match="no layers"):
        read_hypernetwork(tmp_path / "empty.pt")


# -- applied to a UNet ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tiny_models: dict[str, Path]) -> StableDiffusionModel:
    return load_single_file(tiny_models["sd1"], Placement())


Calls = list[tuple[str, str, torch.Tensor, torch.Tensor]]


@contextmanager
def _recording(unet: nn.Module) -> Iterator[Calls]:
    """(attention, "k"/"v", input as the UNet gave it, output of the projection) for every call.
    The input is taken by a pre-hook registered before the hypernetwork's, so it is unchanged."""
    calls: Calls = []
    handles = []
    for name, to_k, to_v in attention_projections(unet):
        for kind, proj in (("k", to_k), ("v", to_v)):
            pending: list[torch.Tensor] = []

            def before(_m: nn.Module, args: tuple[Any, ...], pending: list[torch.Tensor] = pending) -> None:
                pending.append(args[0].detach().clone())

            def after(
                _m: nn.Module, _a: Any, out: torch.Tensor, pending: list[torch.Tensor] = pending, key: str = name
            ) -> None:
                calls.append((key, _m.kind, pending.pop(), out.detach().clone()))  # type: ignore[attr-defined]

            proj.kind = kind  # type: ignore[assignment]
            handles += [proj.register_forward_pre_hook(before), proj.register_forward_hook(after)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _run_unet(model: StableDiffusionModel) -> None:
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, 64, generator=g)
    with torch.no_grad():
        model.unet(sample, torch.tensor([500]), encoder_hidden_states=context)


def _projection(unet: nn.Module, name: str, kind: str) -> nn.Linear:
    module: nn.Linear = getattr(unet.get_submodule(name), f"to_{kind}")
    return module


def test_k_and_v_get_x_plus_hn_of_x_times_strength(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    unet = sd1.unet
    widths = {int(k.in_features) for _n, k, _v in attention_projections(unet)}
    assert widths == {32, 64}  # self-attention 32 / 64 and cross-attention 64 in the tiny SD1
    path = tmp_path / "hn.pt"
    _write(path, (64,), LAYOUTS["leakyrelu-norm-dropout"])
    hn = read_hypernetwork(path)
    strength = 0.7

    with _recording(unet) as plain_calls:
        _run_unet(sd1)
    with _recording(unet) as calls, hypernetworks_applied(unet, [(hn, strength)]):
        _run_unet(sd1)
    assert len(calls) == len(plain_calls) > 0
    changed = 0
    for name, kind, x, out in calls:
        proj = _projection(unet, name, kind)
        if x.shape[-1] == 64:
            hn_module = hn.layers[64][0 if kind == "k" else 1]
            expected = proj(x + hn_module(x) * strength)
            changed += 1
        else:
            expected = proj(x)
        assert torch.equal(out, expected), (name, kind)
    assert changed >= 4  # cross-attention and the 64-wide self-attention, k and v

    for _name, to_k, to_v in attention_projections(unet):
        assert not to_k._forward_pre_hooks and not to_v._forward_pre_hooks
    with _recording(unet) as after_calls:
        _run_unet(sd1)
    assert all(torch.equal(a[3], b[3]) for a, b in zip(after_calls, plain_calls, strict=True))


def test_two_hypernetworks_chain_and_empty_does_nothing(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    unet = sd1.unet
    _write(tmp_path / "a.pt", (32,), LAYOUTS["relu"])
    first = read_hypernetwork(tmp_path / "a.pt")
    second_modules = {32: (_reference(32, LAYOUTS["tanh-norm"], 7), _reference(32, LAYOUTS["tanh-norm"], 8))}
    ef.write_a1111_hypernetwork(tmp_path / "b.pt", second_modules, **LAYOUTS["tanh-norm"])
    second = read_hypernetwork(tmp_path / "b.pt")
    _name, to_k, to_v = next(p for p in attention_projections(unet) if p[1].in_features == 32)
    x = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with hypernetworks_applied(unet, [(first, 0.5), (second, -1.0)]):
            got_k, got_v = to_k(x), to_v(x)
        k1 = x + first.layers[32][0](x) * 0.5
        v1 = x + first.layers[32][1](x) * 0.5
        assert torch.equal(got_k, to_k(k1 + second.layers[32][0](k1) * -1.0))
        assert torch.equal(got_v, to_v(v1 + second.layers[32][1](v1) * -1.0))
        with hypernetworks_applied(unet, []):
            assert not to_k._forward_pre_hooks
            assert torch.equal(to_k(x), x @ to_k.weight.T + (to_k.bias if to_k.bias is not None else 0))


def test_hooks_are_removed_on_an_error(sd1: StableDiffusionModel, tmp_path: Path) -> None:
    _write(tmp_path / "a.pt", (64,), LAYOUTS["relu"])
    hn: Hypernetwork = read_hypernetwork(tmp_path / "a.pt")
    with pytest.raises(RuntimeError, match="boom"), hypernetworks_applied(sd1.unet, [(hn, 1.0)]):
        raise RuntimeError("boom")
    assert all(not k._forward_pre_hooks for _n, k, _v in attention_projections(sd1.unet))
