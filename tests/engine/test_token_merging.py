"""Token merging (ToMe): the merge itself, and A1111's options on the tiny model."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from modules.core.infotext import parse_infotext
from modules.engine.service import GenerationService
from modules.engine.token_merging import job_ratios, plan_merge
from tests.engine.support import pixels, t2i

pytestmark = pytest.mark.usefixtures("no_network")

SD1 = {"sd_model_checkpoint": "sd1"}


def test_a_merge_plan_halves_the_tokens_and_unmerges_to_every_position() -> None:
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    assert plan_merge(x, 8, 8, 0.0, torch.Generator().manual_seed(0)) is None
    plan = plan_merge(x, 8, 8, 0.5, torch.Generator().manual_seed(0))
    assert plan is not None and plan.merged_count == 32
    merged = plan.merge(x)
    assert merged.shape == (2, 32, 8)
    back = plan.unmerge(merged)
    assert back.shape == x.shape
    # kept sources come back exactly; a merged source gets its destination's (mean) value
    kept_positions = plan.src_idx[plan.kept[0]]
    assert torch.equal(back[0, kept_positions], x[0, kept_positions])
    moved = plan.src_idx[plan.merged[0]]
    assert torch.equal(back[0, moved], back[0, plan.dst_idx[plan.into[0]]])
    assert not torch.equal(back, x)


def test_ratios_follow_a1111() -> None:
    opts = {"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.6, "token_merging_ratio_hr": 0.0}

    def get(key: str, default: float) -> float:
        return opts.get(key, default)

    assert job_ratios(get, img2img=False, overridden=False) == (0.3, 0.3)
    assert job_ratios(get, img2img=True, overridden=False) == (0.6, 0.6)
    assert job_ratios(get, img2img=True, overridden=True) == (0.3, 0.3)
    opts["token_merging_ratio_hr"] = 0.5
    assert job_ratios(get, img2img=False, overridden=False) == (0.3, 0.5)


@pytest.fixture()
def attended(engine: GenerationService) -> Iterator[list[int]]:
    """The sequence lengths the self-attentions' queries were computed over."""
    engine.run_sync(t2i(steps=1), 120)  # the model is loaded
    unet = engine.models.active.model.unet  # type: ignore[union-attr]
    from diffusers.models.attention import BasicTransformerBlock

    lengths: list[int] = []
    handles = [
        m.attn1.to_q.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
        for m in unet.modules()
        if isinstance(m, BasicTransformerBlock)
    ]
    yield lengths
    for handle in handles:
        handle.remove()


def test_ratio_zero_is_identical_and_half_merges_tokens_and_changes_the_image_a_little(
    engine: GenerationService, attended: list[int]
) -> None:
    plain = engine.run_sync(t2i(), 120)
    full = max(attended)
    attended.clear()
    zero = engine.run_sync(t2i(override_settings={**SD1, "token_merging_ratio": 0.0}), 120)
    assert np.array_equal(pixels(zero.images[0]), pixels(plain.images[0]))
    assert "Token merging ratio" not in zero.infotexts[0]
    attended.clear()
    half = engine.run_sync(t2i(override_settings={**SD1, "token_merging_ratio": 0.5}), 120)
    assert full // 2 in attended and full not in attended  # the full-resolution blocks attend half the tokens
    diff = np.abs(pixels(half.images[0]) - pixels(plain.images[0]))
    assert 0 < diff.mean() < 40  # changed, but the same picture
    assert parse_infotext(half.infotexts[0])["Token merging ratio"] == "0.5"
    assert "Token merging ratio: 0.5" in half.infotexts[0]
    # the processors are removed after the job
    attended.clear()
    again = engine.run_sync(t2i(), 120)
    assert np.array_equal(pixels(again.images[0]), pixels(plain.images[0])) and full in attended


def test_a_hires_pass_on_another_checkpoint_is_said_to_run_without_it(engine: GenerationService) -> None:
    request = t2i(
        steps=1,
        enable_hr=True,
        hr_scale=2.0,
        hr_second_pass_steps=1,
        hr_checkpoint_name="sd2",
        override_settings={**SD1, "token_merging_ratio": 0.5},
    )
    result = engine.run_sync(request, 240)
    notes = [w for w in result.warnings if w.startswith("token merging: not applied to the pass that ran on sd2")]
    assert len(notes) == 1, result.warnings
    same = engine.run_sync(dataclasses.replace(request, hr_checkpoint_name="Use same checkpoint"), 240)
    assert not any("token merging" in w for w in same.warnings)
