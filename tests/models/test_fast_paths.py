"""The flags' fast paths as the device policy sees them, and the model-side helpers."""

from __future__ import annotations

import logging

import pytest
import torch

from modules.core.settings import parse_settings
from modules.models import fast_paths as fp
from modules.models.devices import policy_from_settings

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _paths(*flags: str, device: torch.device = CUDA) -> fp.FastPaths:
    return policy_from_settings(parse_settings(list(flags), {}), device).fast_paths


def test_the_flags_act_and_are_no_longer_reported_as_ignored() -> None:
    flags = ["--opt-sdp-no-mem-attention", "--opt-channelslast", "--xformers", "--torch-compile"]
    assert parse_settings(flags, {}).warnings == ()
    paths = _paths(*flags)
    assert paths.channels_last and paths.torch_compile
    assert paths.xformers == fp.xformers_available()
    assert paths.sdp_no_mem == (not paths.xformers)  # xformers, when present, replaces SDPA
    assert _paths() == fp.FastPaths(device=CUDA)


def test_sdp_no_mem_attention_leaves_out_the_memory_efficient_kernel_on_cuda_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from torch.nn.attention import SDPBackend

    assert fp.sdpa_backends(_paths("--opt-sdp-no-mem-attention")) == [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    assert fp.sdpa_backends(_paths()) is None
    with caplog.at_level(logging.WARNING):
        cpu = _paths("--opt-sdp-no-mem-attention", device=CPU)
    assert fp.sdpa_backends(cpu) is None
    assert "--opt-sdp-no-mem-attention: SDPA kernels are only chosen on CUDA; on cpu the flag changes nothing" in (
        caplog.text
    )


@pytest.mark.skipif(fp.xformers_available(), reason="xformers is installed here")
def test_xformers_missing_says_so_and_uses_sdpa(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        paths = _paths("--xformers")
    assert paths.attention == "sdp" and not paths.xformers
    assert fp.XFORMERS_MISSING in caplog.text


def test_transfers_pin_and_do_not_block_for_cuda_only() -> None:
    assert fp.transfer_kwargs(CUDA) == {"non_blocking": True}
    assert fp.transfer_kwargs(CPU) == {}
    assert fp.pins_when_parked(CUDA) == torch.cuda.is_available()
    assert not fp.pins_when_parked(CPU)
    module = torch.nn.Linear(2, 2)
    t = module.weight.data
    assert fp.pin_for(t, CPU) is t and fp.pin_module(module, CPU) == 0  # nothing pinned for a CPU model
    if torch.cuda.is_available():
        assert fp.pin_module(module, CUDA) == 2 and module.weight.is_pinned() and module.bias.is_pinned()


def test_models_move_to_cuda_non_blocking_and_elsewhere_as_before() -> None:
    class Model:
        def __init__(self) -> None:
            self.unet, self.vae = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            self.text_encoders = (torch.nn.Linear(2, 2),)
            self.baked_vae = None
            self.to_device_calls: list[torch.device] = []

        def to_device(self, device: torch.device) -> None:
            self.to_device_calls.append(device)

    model = Model()
    fp.move_model(model, CPU)
    assert model.to_device_calls == [CPU]
    if torch.cuda.is_available():
        fp.move_model(model, CUDA)
        assert model.unet.weight.is_cuda and model.text_encoders[0].weight.is_cuda
        assert model.to_device_calls == [CPU]  # the CUDA path moves the parts itself


def test_prepare_model_makes_conv_weights_channels_last_once() -> None:
    class Model:
        unet = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Linear(8, 8))
        vae = torch.nn.Sequential(torch.nn.Conv2d(8, 3, 3))

    model = Model()
    assert not fp.prepare_model(model, fp.FastPaths())  # nothing asked
    assert not fp.is_channels_last(model.unet)
    paths = fp.FastPaths(channels_last=True)
    assert fp.prepare_model(model, paths)
    assert fp.is_channels_last(model.unet) and fp.is_channels_last(model.vae)
    assert model.unet[1].weight.is_contiguous()  # 2-D weights as they were
    assert not fp.prepare_model(model, paths)  # already done
