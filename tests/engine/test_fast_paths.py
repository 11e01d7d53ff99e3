"""GPU fast paths on the tiny fixture model, each changing what it should and nothing else:
batched cond/uncond (`batch_cond_uncond`), channels_last weights (`--opt-channelslast`), the SDPA
kernel choice (`--opt-sdp-no-mem-attention`) and `torch.compile` (`torch_compile*` options)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from modules.core.infotext import parse_infotext
from modules.engine.compile import CompileSettings
from modules.engine.sampling import UNetCall
from modules.engine.service import GenerationService
from modules.models.fast_paths import FastPaths, is_channels_last
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")

SD1 = {"sd_model_checkpoint": "sd1"}


@pytest.fixture()
def unet_rows(engine: GenerationService) -> Iterator[list[int]]:
    """The number of rows of every UNet call the engine makes while the test runs."""
    rows: list[int] = []

    def count(call: UNetCall, rest):  # type: ignore[no-untyped-def]
        rows.append(call.x.shape[0])
        return rest(call)

    remove = engine.hooks.add_unet_wrapper(count)
    yield rows
    remove()


def test_batch_cond_uncond_off_calls_the_unet_twice_as_often_for_the_same_pixels(
    engine: GenerationService, unet_rows: list[int]
) -> None:
    batched = engine.run_sync(t2i(negative_prompt="blurry", batch_size=2), 120)
    calls_batched, rows_batched = len(unet_rows), sum(unet_rows)
    unet_rows.clear()
    apart = engine.run_sync(
        t2i(negative_prompt="blurry", batch_size=2, override_settings={**SD1, "batch_cond_uncond": False}), 120
    )
    assert calls_batched == 3 and set(unet_rows) == {2}  # 3 steps: cond and uncond rows of 2 images each call
    assert len(unet_rows) == 2 * calls_batched and sum(unet_rows) == rows_batched
    for a, b in zip(batched.images, apart.images, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_channels_last_keeps_the_pixels_and_stores_the_weights_channels_last(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(), 120)
    model = engine.models.active.model  # type: ignore[union-attr]
    assert not is_channels_last(model.unet)
    fast = GenerationService(engine.models, engine.options, engine.worker, fast_paths=FastPaths(channels_last=True))
    try:
        result = fast.run_sync(t2i(), 120)
        assert is_channels_last(model.unet) and is_channels_last(model.vae)
        assert np.abs(pixels(result.images[0]) - pixels(plain.images[0])).max() <= 1
    finally:  # the module's other tests use the model as loaded
        for module in (model.unet, model.vae):
            module.to(memory_format=torch.contiguous_format)
            vars(module).pop("_sdwebui_fast_paths", None)


def test_sdp_no_mem_attention_disables_the_memory_efficient_kernel_around_the_job(engine: GenerationService) -> None:
    seen: list[bool] = []

    def record(call: UNetCall, rest):  # type: ignore[no-untyped-def]
        seen.append(torch.backends.cuda.mem_efficient_sdp_enabled())
        return rest(call)

    # the kernel choice is made for CUDA devices; the switch itself is global and visible here
    fast = GenerationService(
        engine.models, engine.options, engine.worker, fast_paths=FastPaths(device=torch.device("cuda"), sdp_no_mem=True)
    )
    remove = fast.hooks.add_unet_wrapper(record)
    try:
        fast.run_sync(t2i(steps=1), 120)
    finally:
        remove()
    assert seen == [False]
    assert torch.backends.cuda.mem_efficient_sdp_enabled()  # back after the job


def test_torch_compile_gives_the_eager_image_and_reports_its_cost(engine: GenerationService) -> None:
    eager = engine.run_sync(t2i(steps=1), 120)
    compiled_options = {**SD1, "torch_compile": True, "torch_compile_backend": "aot_eager"}
    first = engine.run_sync(t2i(steps=1, override_settings=compiled_options), 300)
    again = engine.run_sync(t2i(steps=1, override_settings=compiled_options), 120)
    assert np.abs(pixels(first.images[0]) - pixels(eager.images[0])).max() <= 1
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))
    compile_field = parse_infotext(first.infotexts[0])["Compile"]
    assert compile_field.endswith(" s, recompiles: 0"), compile_field
    assert "Compile" not in again.infotexts[0]  # nothing compiled the second time
    assert "Compile" not in eager.infotexts[0]


def test_the_compiled_vae_decoder_is_swapped_in_for_the_block_and_keyed_by_shape() -> None:
    from types import SimpleNamespace

    from modules.engine.compile import CompileReport, compiled_vae

    decoder = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 1))
    vae = SimpleNamespace(decoder=decoder)
    report = CompileReport()
    settings = CompileSettings(vae=True, backend="eager")
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        expected = decoder(z)
        with compiled_vae(vae, settings, report):
            assert vae.decoder is not decoder
            got = vae.decoder(z)
            vae.decoder(z)  # same shape: no new compile
            vae.decoder(torch.randn(1, 4, 6, 4))  # a new shape: a recompile
        assert vae.decoder is decoder
    assert torch.allclose(got, expected)
    assert report.compiles == 2 and report.recompiles == 1
    assert report.infotext() is not None and report.infotext().endswith(" s, recompiles: 1")  # type: ignore[union-attr]


def test_compile_settings_from_options_and_the_flag() -> None:
    options = {"torch_compile": False, "torch_compile_mode": "reduce-overhead"}
    assert not CompileSettings.from_options(options.__getitem__, {}).any
    forced = CompileSettings.from_options(options.__getitem__, {}, forced=True)
    assert forced.unet and forced.vae and forced.mode == "reduce-overhead" and forced.backend == "inductor"
    assert CompileSettings.from_options(options.__getitem__, {"torch_compile_mode": "bogus"}).mode == "default"


def test_fp8_storage_on_a_device_without_fp8_says_so_and_changes_nothing(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(steps=1), 120)
    asked = engine.run_sync(t2i(steps=1, override_settings={**SD1, "fp8_storage": "Enable"}), 120)
    assert any("fp8_storage 'Enable': cpu has no fp8 support" in w for w in asked.warnings), asked.warnings
    assert "FP8 weight" not in asked.infotexts[0]
    assert np.array_equal(pixels(asked.images[0]), pixels(plain.images[0]))


def test_vae_tiling_decodes_a_two_tile_image_close_to_the_whole_one(engine: GenerationService) -> None:
    from modules.models.vae_tiling import vae_tiling

    engine.run_sync(t2i(steps=1), 120)
    vae = engine.models.active.model.vae  # type: ignore[union-attr]
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    tiles: list[tuple[int, ...]] = []
    handle = vae.decoder.register_forward_pre_hook(lambda _m, args: tiles.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            whole = vae.decode(z).sample
            with vae_tiling(vae, True, 128):  # 256 px image, 128 px tiles
                tiled = vae.decode(z).sample
            with vae_tiling(vae, True, 256):  # not larger than a tile: decoded whole
                same = vae.decode(z).sample
    finally:
        handle.remove()
    middle = tiles[1:-1]  # overlapping tiles of at most 16x16 latents
    assert tiles[0] == tiles[-1] == (32, 32) and len(middle) > 2 and all(max(t) <= 16 for t in middle), tiles
    assert torch.equal(same, whole)
    assert not vae.use_tiling  # put back after the block
    # each tile's GroupNorms see only the tile: close, not equal (this random tiny VAE exaggerates it)
    correlation = torch.corrcoef(torch.stack([whole.flatten(), tiled.flatten()]))[0, 1].item()
    assert correlation > 0.85 and (whole - tiled).abs().mean() < 0.5 * whole.std()


def test_vae_tiling_option_acts_on_large_images_only(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(steps=1, width=256), 120)
    small_tiles = {**SD1, "sd_vae_tiling": True, "sd_vae_tiling_threshold": 128}
    tiled = engine.run_sync(t2i(steps=1, width=256, override_settings=small_tiles), 120)
    large_tiles = {**SD1, "sd_vae_tiling": True, "sd_vae_tiling_threshold": 256}
    whole = engine.run_sync(t2i(steps=1, width=256, override_settings=large_tiles), 120)
    assert np.array_equal(pixels(whole.images[0]), pixels(plain.images[0]))
    assert not np.array_equal(pixels(tiled.images[0]), pixels(plain.images[0]))


def test_live_preview_types_full_and_taesd_without_its_file(engine: GenerationService) -> None:
    from modules.engine.processing import preview_decoder

    engine.run_sync(t2i(steps=1), 120)
    model = engine.models.active.model  # type: ignore[union-attr]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert preview_decoder(model, full=True)(latents).size == (64, 64)  # "Full": the VAE itself
    assert preview_decoder(model)(latents).size == (8, 8)  # "Approx cheap": one pixel per latent
    previews = {**SD1, "show_progress_every_n_steps": 1}
    asked = engine.run_sync(t2i(steps=1, override_settings={**previews, "show_progress_type": "TAESD"}), 120)
    assert any("TAESD asked for, but models/VAE-taesd has no taesd_decoder" in w for w in asked.warnings)
    cheap = engine.run_sync(t2i(steps=1, override_settings={**previews, "show_progress_type": "Approx cheap"}), 120)
    assert not any("TAESD" in w for w in cheap.warnings)
