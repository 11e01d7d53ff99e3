"""A1111's sampling semantics on real (tiny) models, observed through the UNet wrapper seam:
where img2img starts on the schedule, when prompt edits switch with second-order samplers, the
hires pass's step count and prompt offsets, masks read as A1111 reads them, eta / churn acting
and written to the infotext, the SDXL refiner handover."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.infotext import parse_infotext
from modules.core.requests import Img2ImgRequest
from modules.engine import images as imgops
from modules.engine.sampler_runner import img2img_steps
from modules.engine.sampling import DiscreteSchedule, UNetCall, UNetFn, a1111_alphas_cumprod
from modules.engine.service import GenerationService
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")


class Recorder:
    """A UNet wrapper that records every call (sigma, step, text fingerprint, time-id width)."""

    def __init__(self) -> None:
        self.calls: list[UNetCall] = []

    def __call__(self, call: UNetCall, call_next: UNetFn) -> torch.Tensor:
        self.calls.append(call)
        return call_next(call)

    def texts(self) -> list[float]:
        """A fingerprint of the first cond row's text of each call."""
        return [round(float(c.text.hidden[0].double().sum()), 3) for c in self.calls]


@pytest.fixture()
def recorder(engine: GenerationService) -> Iterator[Recorder]:
    rec = Recorder()
    remove = engine.hooks.add_unet_wrapper(rec)
    try:
        yield rec
    finally:
        remove()


def _sd_sigmas(n: int) -> torch.Tensor:
    return DiscreteSchedule(a1111_alphas_cumprod()).get_sigmas(n)


def _init(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _i2i(**kw: Any) -> Img2ImgRequest:
    base: dict[str, Any] = {
        "prompt": "a cat",
        "init_images": (_init(),),
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 7,
        "sampler_name": "Euler",
        "denoising_strength": 0.5,
        "override_settings": {"sd_model_checkpoint": "sd1"},
    }
    base.update(kw)
    return Img2ImgRequest(**base)


# -- img2img and second-order samplers ---------------------------------------------------------------------


def test_img2img_with_heun_starts_at_a1111s_sigma(engine: GenerationService, recorder: Recorder) -> None:
    steps, denoise = 10, 0.5
    engine.run_sync(_i2i(sampler_name="Heun", steps=steps, denoising_strength=denoise), 120)
    total, t_enc = img2img_steps(steps, denoise, exact=False)
    sigmas = _sd_sigmas(total)
    sched = sigmas[total - t_enc - 1 :]
    # A1111 runs the last t_enc + 1 sigmas of the full schedule; Heun makes 2 calls per step, 1 on the last
    assert recorder.calls[0].sigma == pytest.approx(float(sched[0]), rel=1e-6)
    assert len(recorder.calls) == 2 * (len(sched) - 1) - 1
    main = [c.sigma for c in recorder.calls[::2]]
    np.testing.assert_allclose(main, sched[:-1].numpy(), rtol=1e-6)


def test_prompt_edit_switches_at_the_step_with_a_second_order_sampler(
    engine: GenerationService, recorder: Recorder
) -> None:
    # [a:b:0.5] over 6 Heun steps: A1111 counts 12 model calls (end step int(0.5 * 12) = 6) and uses
    # the first prompt while calls made <= 6: it switches within step 3 (calls 6, 7), at its second
    # evaluation. Counting sampler steps instead (our old loop) switched at step 1.5.
    engine.run_sync(t2i(prompt="[a cat:a dog:0.5]", sampler_name="Heun", steps=6), 120)
    texts = recorder.texts()
    assert len(texts) == 11  # 2 calls per step, the last step 1
    first_change = next(i for i, t in enumerate(texts) if t != texts[0])
    assert first_change == 7
    assert recorder.calls[6].sigma == pytest.approx(float(_sd_sigmas(6)[3]), rel=1e-6)  # step 3's first call
    # the same edit with Euler (6 calls, end step 3): the first four calls use the first prompt
    recorder.calls.clear()
    engine.run_sync(t2i(prompt="[a cat:a dog:0.5]", sampler_name="Euler", steps=6), 120)
    texts = recorder.texts()
    assert next(i for i, t in enumerate(texts) if t != texts[0]) == 4


# -- hires fix -----------------------------------------------------------------------------------------------


def test_hires_runs_the_hires_step_count_and_applies_the_offsets(engine: GenerationService, recorder: Recorder) -> None:
    engine.run_sync(
        t2i(
            prompt="a [cat:dog:6] photo",
            steps=4,
            enable_hr=True,
            hr_scale=1.5,
            hr_second_pass_steps=5,
            denoising_strength=0.3,
        ),
        120,
    )
    first = [c for c in recorder.calls if c.x.shape[-1] == 8]
    hires = [c for c in recorder.calls if c.x.shape[-1] == 12]
    assert len(first) == 4
    assert len(hires) == 5  # exactly hr_second_pass_steps, over a schedule stretched by the strength
    total, t_enc = img2img_steps(5, 0.3, exact=True)
    assert (total, t_enc) == (16, 4)
    sigmas = _sd_sigmas(total)
    assert hires[0].sigma == pytest.approx(float(sigmas[total - t_enc - 1]), rel=1e-6)
    # the edit at 6 ends 2 calls into the hires pass (offset by the 4 first-pass steps): A1111 uses
    # the first prompt while calls made <= 2
    fp = [round(float(c.text.hidden[0].double().sum()), 3) for c in hires]
    assert fp[0] == fp[1] == fp[2] and fp[3] != fp[2] and fp[3] == fp[4]


def test_hires_with_both_targets_covers_then_crops(engine: GenerationService) -> None:
    r = engine.run_sync(
        t2i(width=64, height=48, enable_hr=True, hr_resize_x=80, hr_resize_y=80, hr_second_pass_steps=1), 120
    )
    assert r.images[0].size == (80, 80)
    assert "Hires resize: 80x80" in r.infotexts[0]


# -- masks and init images ---------------------------------------------------------------------------------


def test_binary_mask_reads_opaque_rgba_by_luminance_and_transparent_by_alpha() -> None:
    opaque = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (0, 0, 4, 8))
    lum = np.asarray(imgops.binary_mask(opaque))
    assert lum[:, :4].min() == 255 and lum[:, 4:].max() == 0
    sketch = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    sketch.paste((255, 0, 0, 200), (4, 0, 8, 8))
    alpha = np.asarray(imgops.binary_mask(sketch))
    assert alpha[:, :4].max() == 0 and alpha[:, 4:].min() == 255


def test_opaque_rgba_mask_repaints_only_where_its_luminance_says(engine: GenerationService) -> None:
    init = _init(3)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))  # what a browser canvas sends: opaque everywhere
    mask.paste((255, 255, 255, 255), (0, 0, 32, 64))
    r = engine.run_sync(
        _i2i(init_images=(init,), mask=mask, mask_blur=0, inpaint_full_res=False, denoising_strength=0.9), 120
    )
    out, original = pixels(r.images[0]), pixels(init)
    assert np.array_equal(out[:, 40:], original[:, 40:])  # kept (overlay of the original)
    assert not np.array_equal(out[:, :24], original[:, :24])  # repainted


def test_transparent_init_image_is_flattened_on_the_background_colour() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert imgops.flatten(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert imgops.flatten(rgba, "#000000").getpixel((0, 0)) == (0, 0, 0)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert imgops.flatten(half).getpixel((0, 0))[0] in (126, 127, 128)


# -- sampler parameters ------------------------------------------------------------------------------------


def test_eta_changes_ancestral_results_and_is_written(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(sampler_name="Euler a"), 120)
    half = engine.run_sync(t2i(sampler_name="Euler a", eta=0.5), 120)
    assert not np.array_equal(pixels(plain.images[0]), pixels(half.images[0]))
    assert parse_infotext(half.infotexts[0])["Eta"] == "0.5"
    assert "Eta" not in parse_infotext(plain.infotexts[0])
    zero = engine.run_sync(t2i(sampler_name="Euler a", eta=0.0), 120)
    euler = engine.run_sync(t2i(sampler_name="Euler"), 120)
    assert np.array_equal(pixels(zero.images[0]), pixels(euler.images[0]))  # eta 0 is Euler


def test_ddim_eta_from_the_option(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(sampler_name="DDIM"), 120)
    noisy = engine.run_sync(
        t2i(sampler_name="DDIM", override_settings={"sd_model_checkpoint": "sd1", "eta_ddim": 0.7}), 120
    )
    assert not np.array_equal(pixels(plain.images[0]), pixels(noisy.images[0]))
    assert parse_infotext(noisy.infotexts[0])["Eta DDIM"] == "0.7"


def test_s_churn_changes_euler_and_is_written(engine: GenerationService) -> None:
    plain = engine.run_sync(t2i(sampler_name="Euler"), 120)
    churn = engine.run_sync(t2i(sampler_name="Euler", s_churn=0.5), 120)
    assert not np.array_equal(pixels(plain.images[0]), pixels(churn.images[0]))
    info = parse_infotext(churn.infotexts[0])
    assert info["Sigma churn"] == "0.5"
    opt = engine.run_sync(
        t2i(sampler_name="Euler", override_settings={"sd_model_checkpoint": "sd1", "s_churn": 0.5}), 120
    )
    assert np.array_equal(pixels(opt.images[0]), pixels(churn.images[0]))
    assert not churn.warnings


def test_cfg_scale_is_written_as_a1111_writes_it(engine: GenerationService) -> None:
    r = engine.run_sync(t2i(cfg_scale=7), 120)
    assert "CFG scale: 7.0," in r.infotexts[0]


# -- SDXL refiner ------------------------------------------------------------------------------------------


def test_refiner_takes_over_at_the_switch_step(engine: GenerationService, recorder: Recorder) -> None:
    r = engine.run_sync(
        t2i(
            steps=4,
            override_settings={"sd_model_checkpoint": "xl", "refiner_switch_by_sample_steps": True},
            refiner_checkpoint="refiner",
            refiner_switch_at=0.5,
        ),
        120,
    )
    widths = [None if c.added_time_ids is None else c.added_time_ids.shape[1] for c in recorder.calls]
    assert widths == [6, 6, 5, 5]  # base micro-conditioning (6 numbers), then the refiner's (5, aesthetic score)
    refined = recorder.calls[2]
    assert refined.added_time_ids is not None
    assert refined.added_time_ids[0, -1].item() == 6.0  # the prompt rows' aesthetic score
    assert refined.added_time_ids[-1, -1].item() == 2.5  # the negative rows' (A1111's default low score)
    info = parse_infotext(r.infotexts[0])
    assert str(info["Refiner"]).startswith("refiner")
    assert info["Refiner switch at"] == "0.5"
    # the job's own model is the active one again afterwards
    assert engine.models.active is not None and engine.models.active.info.name.startswith("xl")


def test_refiner_switch_by_sigma(engine: GenerationService, recorder: Recorder) -> None:
    engine.run_sync(
        t2i(
            steps=6,
            override_settings={"sd_model_checkpoint": "xl"},
            refiner_checkpoint="refiner",
            refiner_switch_at=0.8,
        ),
        120,
    )
    ds = DiscreteSchedule(a1111_alphas_cumprod())
    sigmas = ds.get_sigmas(6)[:-1]
    ratios = [(999 - int(torch.argmin((ds.sigmas - s).abs()))) / 1000 for s in sigmas]
    expected = next(i for i, ratio in enumerate(ratios) if ratio >= 0.8)
    widths = [c.added_time_ids.shape[1] for c in recorder.calls if c.added_time_ids is not None]
    assert widths.index(5) == expected


def test_unknown_refiner_is_a_404_before_queueing(engine: GenerationService) -> None:
    from modules.core.errors import NotFoundError

    with pytest.raises(NotFoundError, match="refiner_checkpoint"):
        engine.submit(t2i(refiner_checkpoint="nope", refiner_switch_at=0.5))


# -- SDXL clip skip -------------------------------------------------------------------------------------------


def test_sdxl_clip_skip_acts_on_clip_l_only_with_its_option(engine: GenerationService) -> None:
    from modules.engine.conditioning import ConditioningSettings, Encoder

    with engine.models.lease("xl") as model:
        width_l = model.text_encoders[0].config.hidden_size

        def encode(**kw: Any) -> torch.Tensor:
            return Encoder(model, ConditioningSettings(**kw)).encode("a cat").hidden

        plain = encode(clip_skip=1)
        skipped = encode(clip_skip=2)
        assert torch.equal(plain, skipped)  # A1111: clip skip does not touch SDXL by default
        l_last = encode(clip_skip=1, sdxl_clip_l_skip=True)
        assert not torch.equal(l_last[..., :width_l], plain[..., :width_l])  # CLIP-L moved to its last layer
        assert torch.equal(l_last[..., width_l:], plain[..., width_l:])  # OpenCLIP-G never skips


def test_beta_schedule_runs_and_is_written(engine: GenerationService, recorder: Recorder) -> None:
    r = engine.run_sync(
        t2i(scheduler="Beta", override_settings={"sd_model_checkpoint": "sd1", "beta_dist_alpha": 0.5}), 120
    )
    info = parse_infotext(r.infotexts[0])
    assert info["Schedule type"] == "Beta"
    assert info["Beta schedule alpha"] == "0.5" and info["Beta schedule beta"] == "0.6"
    ds = DiscreteSchedule(a1111_alphas_cumprod())
    assert recorder.calls[0].sigma == pytest.approx(float(ds.sigma_max), rel=1e-6)
    assert recorder.calls[-1].sigma < recorder.calls[1].sigma < recorder.calls[0].sigma


def test_unipc_with_fewer_steps_than_its_order_lowers_it_and_says_so(engine: GenerationService) -> None:
    r = engine.run_sync(t2i(sampler_name="UniPC", steps=2), 120)
    assert len(r.images) == 1
    assert any("UniPC order 3 lowered to 2" in w for w in r.warnings), r.warnings
    r = engine.run_sync(t2i(sampler_name="UniPC", steps=4), 120)
    assert not any("UniPC" in w for w in r.warnings)
