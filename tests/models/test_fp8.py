"""FP8 weight storage: the mechanism on the CPU (a device without fp8 compute runs none of it)."""

from __future__ import annotations

import pytest
import torch

from modules.models import fp8


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(16, 8, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 32),
    )


def test_weights_are_stored_in_fp8_and_upcast_per_layer_with_close_outputs() -> None:
    net = _net()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = net(x)
    assert fp8.store_fp8(net, torch.float32) == 3
    assert fp8.is_fp8(net)
    assert all(m.weight.dtype == fp8.FP8 for m in net if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    with torch.no_grad():
        out = net(x)
    assert out.dtype == torch.float32
    assert all(m.weight.dtype == fp8.FP8 for m in net if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    # e4m3 keeps 3 mantissa bits (relative rounding up to 1/16 per weight): stated tolerance 5% of
    # the output's range, and the numbers did change
    error = (out - reference).abs().max().item()
    assert 0 < error <= 0.05 * reference.abs().max().item()
    assert fp8.store_fp8(net, torch.float32) == 0  # once
    net[0].weight.data = net[0].weight.data.float()  # what a LoRA restore does: the original weight back
    assert fp8.store_fp8(net, torch.float32) == 1 and net[0].weight.dtype == fp8.FP8
    assert fp8.restore(net) == 3 and not fp8.is_fp8(net)
    assert net[0].weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(net(x), out)  # back in fp32 with the precision fp8 kept, no hooks left


def test_a_layer_that_raises_still_gets_its_fp8_weight_back() -> None:
    net = torch.nn.Linear(4, 4)
    fp8.store_fp8(net, torch.float32)
    with pytest.raises(RuntimeError):
        net(torch.zeros(3, 5))  # wrong width
    assert net.weight.dtype == fp8.FP8


def test_sync_follows_the_setting_and_says_why_a_device_cannot() -> None:
    net = _net()
    cpu = torch.device("cpu")
    assert fp8.sync(net, "Enable for SDXL", is_sdxl=False, device=cpu) is None  # not asked for SD1
    note = fp8.sync(net, "Enable", is_sdxl=False, device=cpu)
    assert note is not None and "cpu has no fp8 support (CUDA compute capability 8.9 or newer" in note
    assert not fp8.is_fp8(net) and net[0].weight.dtype == torch.float32
    assert fp8.wanted("Enable for SDXL", True) and not fp8.wanted("Disable", True)
    assert not fp8.device_supports_fp8(cpu)
