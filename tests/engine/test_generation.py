"""End-to-end generation on tiny fixture models: txt2img, hires, img2img, inpaint, control flow."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.errors import NotFoundError, ValidationError
from modules.core.infotext import parse_infotext
from modules.core.options import Options, default_option_infos
from modules.core.requests import Img2ImgRequest
from modules.engine import processing
from modules.engine import samplers as smp
from modules.engine.conditioning import Encoder
from modules.engine.service import GenerationService
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")


def test_txt2img_same_seed_same_pixels_and_infotext_roundtrip(engine: GenerationService) -> None:
    a = engine.run_sync(t2i(), 120)
    b = engine.run_sync(t2i(), 120)
    c = engine.run_sync(t2i(seed=1235), 120)
    assert a.images[0].size == (64, 64)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
    parsed = parse_infotext(a.infotexts[0])
    assert parsed["Prompt"] == "a cat" and parsed["Seed"] == "1234" and parsed["Steps"] == "3"
    assert parsed["Sampler"] == "Euler" and parsed["Model"] == "sd1"
    assert parsed["Size-1"] == "64" and parsed["Size-2"] == "64"


def test_random_seed_is_resolved_and_batches_use_seed_plus_i(engine: GenerationService) -> None:
    r = engine.run_sync(t2i(seed=-1, batch_size=2, n_iter=2), 120)
    assert len(r.images) == 4 and r.seeds[0] >= 0
    assert r.seeds == [r.seeds[0] + i for i in range(4)]
    alone = engine.run_sync(t2i(seed=r.seeds[1]), 120)  # image 1 of the batch == same seed alone
    assert np.abs(pixels(alone.images[0]) - pixels(r.images[1])).max() <= 1


def test_subseed_strength_zero_equals_no_subseed(engine: GenerationService) -> None:
    a = engine.run_sync(t2i(subseed=99, subseed_strength=0.0), 120)
    b = engine.run_sync(t2i(), 120)
    c = engine.run_sync(t2i(subseed=99, subseed_strength=0.5), 120)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(c.images[0]), pixels(b.images[0]))
    assert "Variation seed: 99" in c.infotexts[0]


@pytest.mark.parametrize("model", ["sd2", "xl", "inpaint", "ip2p", "xlinpaint"])
def test_txt2img_every_family(engine: GenerationService, model: str) -> None:
    r = engine.run_sync(t2i(override_settings={"sd_model_checkpoint": model}, negative_prompt="blurry"), 120)
    assert r.images[0].size == (64, 64)
    assert np.isfinite(pixels(r.images[0])).all()


def test_every_published_sampler_runs(engine: GenerationService) -> None:
    names = [s.name for s in smp.list_samplers()]
    assert "Euler" in names and "DPM++ 2M" in names
    for name in names:
        r = engine.run_sync(t2i(sampler_name=name, steps=2), 120)
        assert len(r.images) == 1, name


def test_unknown_sampler_is_rejected_before_queueing(engine: GenerationService) -> None:
    with pytest.raises(NotFoundError):
        engine.submit(t2i(sampler_name="No Such Sampler"))
    with pytest.raises(ValidationError):
        engine.submit(t2i(steps=0))


def test_sizes_round_down_to_multiples_of_8_and_are_reported(engine: GenerationService) -> None:
    r = engine.run_sync(t2i(width=70, height=66), 120)
    assert r.images[0].size == (64, 64)
    assert any("rounded down" in w for w in r.warnings)


def test_hires_fix_gives_the_target_size(engine: GenerationService) -> None:
    r = engine.run_sync(t2i(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5), 120)
    assert r.images[0].size == (96, 96)
    parsed = parse_infotext(r.infotexts[0])
    assert parsed["Hires upscale"] == "1.5"
    assert parsed["Denoising strength"] == "0.5"


def test_prompt_editing_switches_conditioning_at_the_step(
    engine: GenerationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the texts each model call's conditioning asks for (all are encoded once before sampling;
    # the per-call lookups hit the encoder's cache)
    seen: list[str] = []
    inside: list[bool] = [False]
    real = Encoder.encode
    real_step_conds = processing.step_conds

    def spy(self: Encoder, text: str, *, is_negative: bool = False):  # type: ignore[no-untyped-def]
        if not is_negative and inside[0]:
            seen.append(text)
        return real(self, text, is_negative=is_negative)

    def step_spy(encoder: Encoder, plan, step: int):  # type: ignore[no-untyped-def]
        inside[0] = True
        try:
            return real_step_conds(encoder, plan, step)
        finally:
            inside[0] = False

    monkeypatch.setattr(Encoder, "encode", spy)
    monkeypatch.setattr(processing, "step_conds", step_spy)
    engine.run_sync(t2i(prompt="a [cat:dog:2] photo", steps=4), 120)
    assert seen == ["a cat photo"] * 3 + ["a dog photo"]  # steps 0..2 use "from" (A1111: step <= when)
    seen.clear()
    engine.run_sync(t2i(prompt="[cat|dog]", steps=6), 120)
    # A1111: schedule entries (1,cat) (2,dog) (3,cat)...; the 0-based sampler step takes the first
    # entry with step <= end, so steps 0 and 1 both use "cat", then it alternates.
    assert seen == ["cat", "cat", "dog", "cat", "dog", "cat"]


def test_break_and_long_prompts_make_more_chunks(engine: GenerationService) -> None:
    with engine.models.lease("sd1") as model:
        enc = Encoder(model)
        assert enc.encode("a cat").hidden.shape[1] == 77
        assert enc.encode("a cat BREAK a dog").hidden.shape[1] == 154
        long_prompt = ", ".join(["a photo of a cat"] * 20)  # 5 words + comma = 100+ tokens
        assert enc.encode(long_prompt).hidden.shape[1] == 154


def test_interrupt_returns_one_partial_image(engine: GenerationService) -> None:
    job = engine.submit(t2i(steps=40, n_iter=3))
    while engine.worker.current is None or engine.worker.current.sampling_step < 2:
        time.sleep(0.01)
    engine.worker.interrupt()
    r = job.future.result(120)
    assert r.interrupted and len(r.images) == 1
    assert len(engine.run_sync(t2i(), 120).images) == 1  # the next job runs normally


def test_skip_with_n_iter_3_returns_2(engine: GenerationService) -> None:
    job = engine.submit(t2i(steps=30, n_iter=3))
    while engine.worker.current is None or engine.worker.current.sampling_step < 2:
        time.sleep(0.01)
    engine.worker.skip()
    r = job.future.result(120)
    assert len(r.images) == 2 and not r.interrupted


def test_progress_during_a_run(engine: GenerationService) -> None:
    job = engine.submit(t2i(steps=10))
    states = []
    while not job.future.done():
        p = engine.worker.progress(with_preview=False)
        if p["state"]["sampling_steps"]:
            states.append(p)
        time.sleep(0.005)
    job.future.result(10)
    assert states and all(s["state"]["sampling_steps"] == 10 for s in states)
    values = [s["progress"] for s in states]
    assert values == sorted(values) and all(0 <= v <= 1 for v in values)


def _init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_img2img_runs_and_denoising_controls_change(engine: GenerationService) -> None:
    init = _init_image()
    low = engine.run_sync(
        Img2ImgRequest(
            init_images=(init,),
            width=64,
            height=64,
            steps=4,
            seed=1,
            denoising_strength=0.1,
            sampler_name="Euler",
            override_settings={"sd_model_checkpoint": "sd1"},
        ),
        120,
    )
    high = engine.run_sync(
        Img2ImgRequest(
            init_images=(init,),
            width=64,
            height=64,
            steps=4,
            seed=1,
            denoising_strength=0.9,
            sampler_name="Euler",
            override_settings={"sd_model_checkpoint": "sd1"},
        ),
        120,
    )
    d_low = np.abs(pixels(low.images[0]) - pixels(init)).mean()
    d_high = np.abs(pixels(high.images[0]) - pixels(init)).mean()
    assert low.images[0].size == (64, 64)
    assert "Denoising strength: 0.1" in low.infotexts[0]
    assert d_low < d_high  # with a random model the VAE round trip dominates, but less noise stays closer


@pytest.mark.parametrize("model", ["sd1", "inpaint"])
def test_only_masked_inpaint_leaves_pixels_outside_mask_padding_blur_unchanged(
    engine: GenerationService, model: str
) -> None:
    init = _init_image().resize((128, 128))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (48, 48, 72, 72))
    r = engine.run_sync(
        Img2ImgRequest(
            init_images=(init,),
            mask=mask,
            width=64,
            height=64,
            steps=3,
            seed=1,
            sampler_name="Euler",
            inpaint_full_res=True,
            inpaint_full_res_padding=8,
            mask_blur=4,
            inpainting_fill=1,
            override_settings={"sd_model_checkpoint": model},
        ),
        120,
    )
    out = pixels(r.images[0])
    assert r.images[0].size == (128, 128)
    reach = 8 + 2 * int(2.5 * 4 + 0.5) + 1  # padding + blur kernel
    keep = np.ones((128, 128), bool)
    keep[48 - reach : 72 + reach, 48 - reach : 72 + reach] = False
    assert np.array_equal(out[keep], pixels(init)[keep])
    assert not np.array_equal(out[50:70, 50:70], pixels(init)[50:70, 50:70])


def test_whole_picture_inpaint_keeps_the_unmasked_area(engine: GenerationService) -> None:
    init = _init_image()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    r = engine.run_sync(
        Img2ImgRequest(
            init_images=(init,),
            mask=mask,
            width=64,
            height=64,
            steps=3,
            seed=1,
            sampler_name="Euler",
            inpaint_full_res=False,
            mask_blur=0,
            inpainting_fill=2,
            override_settings={"sd_model_checkpoint": "sd1"},
        ),
        120,
    )
    assert np.array_equal(pixels(r.images[0])[:, 40:], pixels(init)[:, 40:])


def test_ip2p_uses_image_cfg(engine: GenerationService) -> None:
    init = _init_image()
    r = engine.run_sync(
        Img2ImgRequest(
            init_images=(init,),
            width=64,
            height=64,
            steps=3,
            seed=1,
            image_cfg_scale=1.5,
            sampler_name="Euler",
            override_settings={"sd_model_checkpoint": "ip2p"},
        ),
        120,
    )
    assert "Image CFG scale: 1.5" in r.infotexts[0]


def test_override_checkpoint_is_for_that_request_only(engine: GenerationService) -> None:
    selected = engine.selected_checkpoint
    engine.selected_checkpoint = lambda: "sd1"
    try:
        overridden = engine.run_sync(t2i(override_settings={"sd_model_checkpoint": "sd2"}), 120)
        plain = engine.run_sync(t2i(), 120)
    finally:
        engine.selected_checkpoint = selected
    assert overridden.model.name == "sd2" and "Model: sd2" in overridden.infotexts[0]
    assert plain.model.name == "sd1" and "Model: sd1" in plain.infotexts[0]


def test_concurrent_submissions_each_get_their_own_result(engine: GenerationService) -> None:
    jobs = [engine.submit(t2i(seed=100 + i, steps=2)) for i in range(5)]
    results = [j.future.result(120) for j in jobs]
    assert [r.seeds[0] for r in results] == [100, 101, 102, 103, 104]


def test_failing_job_does_not_wedge_the_worker(engine: GenerationService, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    with engine.models.lease("sd1") as model:
        unet = model.unet
    real_forward = unet.forward

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("injected")
        return real_forward(*a, **k)

    monkeypatch.setattr(unet, "forward", boom)
    from modules.core.errors import OutOfMemoryError

    with pytest.raises(OutOfMemoryError):  # torch's error, reported as the project's (freed, clear message)
        engine.run_sync(t2i(), 120)
    assert engine.worker.progress()["state"]["job_count"] == 0
    assert len(engine.run_sync(t2i(), 120).images) == 1


def test_tiling_pads_circularly_during_the_job_only(engine: GenerationService, monkeypatch: pytest.MonkeyPatch) -> None:
    with engine.models.lease("sd1") as model:
        conv = model.unet.conv_in
    modes: list[str] = []
    real = conv.forward
    monkeypatch.setattr(conv, "forward", lambda x: modes.append(conv.padding_mode) or real(x))
    tiled = engine.run_sync(t2i(tiling=True), 120)
    assert modes and set(modes) == {"circular"}
    assert conv.padding_mode == "zeros"
    plain = engine.run_sync(t2i(), 120)
    assert not np.array_equal(pixels(tiled.images[0]), pixels(plain.images[0]))
    assert "Tiling: True" in tiled.infotexts[0]


def test_face_restore_hook(engine: GenerationService) -> None:
    class Flip:
        name = "Flipper"

        def restore(self, image: Image.Image) -> Image.Image:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    plain = engine.run_sync(t2i(), 120)
    missing = engine.run_sync(t2i(restore_faces=True), 120)
    assert any("restore_faces" in w for w in missing.warnings)
    engine.face_restorer = lambda: Flip()
    try:
        restored = engine.run_sync(t2i(restore_faces=True), 120)
    finally:
        engine.face_restorer = lambda: None
    flipped = pixels(plain.images[0])[:, ::-1]
    assert np.array_equal(pixels(restored.images[0]), flipped)
    assert parse_infotext(restored.infotexts[0])["Face restoration"] == "Flipper"


def test_saved_images_parse_back_to_the_same_parameters(engine: GenerationService, tmp_path: Path) -> None:
    from modules.core.paths import Paths
    from modules.core.settings import parse_settings
    from modules.engine.image_metadata import read_infotext_from_image
    from modules.engine.outputs import ImageSaver
    from modules.engine.service import image_saver_for

    paths = Paths.from_settings(parse_settings(["--data-dir", str(tmp_path)], {}), tmp_path, {})
    options = Options(default_option_infos(), None)
    engine.saver = image_saver_for(ImageSaver(options, paths))
    try:
        r = engine.run_sync(
            t2i(prompt='a "quoted", colon: prompt\nsecond line', negative_prompt="ugly, bad", batch_size=2), 120
        )
    finally:
        engine.saver = None
    assert len(r.paths) == 2 and all(p.is_file() for p in r.paths)
    assert r.paths[0].parent.parent == tmp_path / "outputs" / "txt2img-images"
    for path, text in zip(r.paths, r.infotexts, strict=True):
        with Image.open(path) as saved:
            stored = read_infotext_from_image(saved)
        assert stored == text
        back = parse_infotext(stored)
        assert back["Prompt"] == 'a "quoted", colon: prompt\nsecond line'
        assert back["Negative prompt"] == "ugly, bad"
    assert parse_infotext(r.infotexts[1])["Seed"] == str(r.seeds[1])
    assert (tmp_path / "params.txt").read_text() == r.infotexts[0]


def test_outpaint_canvas_masks_the_new_border_and_the_seam() -> None:
    from modules.engine.images import outpaint_canvas

    image = _init_image()
    canvas, mask = outpaint_canvas(image, right=32, mask_overlap=8)
    assert canvas.size == (96, 64) and mask.size == (96, 64)
    assert np.array_equal(pixels(canvas)[:, :64], pixels(image))
    m = np.asarray(mask)
    assert (m[:, 56:] == 255).all() and (m[:, :56] == 0).all()


def test_styles_are_applied_server_side_and_tags_are_not_encoded(
    engine: GenerationService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modules.core.styles import PromptStyle, StyleDatabase

    styles = StyleDatabase([tmp_path / "styles.csv"])
    styles.save(PromptStyle("Film", "{prompt}, film grain", "blurry"))
    engine.styles = styles
    seen: list[str] = []
    real = Encoder.encode
    monkeypatch.setattr(
        Encoder,
        "encode",
        lambda self, text, *, is_negative=False: seen.append(text) or real(self, text, is_negative=is_negative),
    )
    try:
        r = engine.run_sync(t2i(prompt="a cat <lora:detail:0.5>", styles=("Film", "Nope")), 120)
    finally:
        engine.styles = None
    assert "a cat , film grain" in seen and "blurry" in seen
    assert not any("<lora" in text for text in seen)
    assert r.infotexts[0].startswith("a cat <lora:detail:0.5>, film grain\nNegative prompt: blurry")
    assert any("Nope" in w for w in r.warnings) and any("lora:detail" in w for w in r.warnings)


def test_pixel_cap_comes_from_the_setting(engine: GenerationService) -> None:
    engine.options.set("max_pixels_times_batch", 64 * 64 * 2)
    try:
        with pytest.raises(ValidationError, match="exceeds the limit"):
            engine.submit(t2i(batch_size=3))
        assert len(engine.run_sync(t2i(batch_size=2, steps=1), 120).images) == 2
    finally:
        engine.options.set("max_pixels_times_batch", 2048 * 2048 * 8)


def test_a_variation_strength_keeps_the_seed_and_varies_the_subseed_across_a_batch(engine: GenerationService) -> None:
    """A1111's rule: all_seeds = seed + i only without a variation strength; with one every image
    has the seed and the subseeds count up."""
    plain = engine.run_sync(t2i(seed=50, subseed=7, batch_size=2), 120)
    varied = engine.run_sync(t2i(seed=50, subseed=7, subseed_strength=0.5, batch_size=2), 120)
    assert plain.seeds == [50, 51]
    assert varied.seeds == [50, 50] and varied.subseeds == [7, 8]
    assert "Seed: 50" in varied.infotexts[1] and "Variation seed: 8" in varied.infotexts[1]
