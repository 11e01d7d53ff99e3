"""The trainers' model view (modules/engine/training/diffusion.py): captions encode exactly as the
engine encodes a plain prompt (SD1, SD2, SDXL), trainable token vectors get a gradient, the noise
schedule and the loss follow the formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modules.engine.conditioning import Encoder
from modules.engine.sampling import a1111_alphas_cumprod
from modules.engine.training.diffusion import NoiseSchedule, TokenHook, TrainingView, sdxl_time_ids
from modules.models.loader import Placement, StableDiffusionModel, load_single_file

CAPTIONS = ["a photo of a cat, sitting on a mat", "", "red fox in the snow"]


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, StableDiffusionModel]:
    return {name: load_single_file(tiny_models[name], Placement()) for name in ("sd1", "sd2", "sdxl")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_encode_text_equals_the_engine_encoder(models: dict[str, StableDiffusionModel], family: str) -> None:
    model = models[family]
    view = TrainingView(model)
    cond = view.encode_text(CAPTIONS, grad=False)
    assert cond.hidden.shape[:2] == (len(CAPTIONS), 77)
    assert not cond.hidden.requires_grad
    engine = Encoder(model)
    for row, caption in enumerate(CAPTIONS):
        expected = engine.encode(caption)
        torch.testing.assert_close(cond.hidden[row : row + 1], expected.hidden, rtol=1e-5, atol=1e-5)
        if family == "sdxl":
            assert cond.pooled is not None and expected.pooled is not None
            torch.testing.assert_close(cond.pooled[row : row + 1], expected.pooled, rtol=1e-5, atol=1e-5)
        else:
            assert cond.pooled is None


def test_clip_skip_equals_the_engine_setting(models: dict[str, StableDiffusionModel]) -> None:
    from modules.engine.conditioning import ConditioningSettings

    model = models["sd1"]
    cond = TrainingView(model, clip_skip=2).encode_text(CAPTIONS[:1], grad=False)
    expected = Encoder(model, ConditioningSettings(clip_skip=2)).encode(CAPTIONS[0])
    torch.testing.assert_close(cond.hidden, expected.hidden, rtol=1e-5, atol=1e-5)
    plain = TrainingView(model).encode_text(CAPTIONS[:1], grad=False)
    assert not torch.allclose(plain.hidden, cond.hidden)


def test_long_captions_are_cut_to_75_tokens(models: dict[str, StableDiffusionModel]) -> None:
    view = TrainingView(models["sd1"])
    long = ", ".join(["cat"] * 100)
    ids = view.token_ids([long])[0]
    assert ids.shape == (1, 77)
    tok = models["sd1"].tokenizers[0]
    assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.eos_token_id
    assert (ids[0, 1:76] != tok.eos_token_id).all()


def test_grad_flows_into_the_encoders_only_when_asked(models: dict[str, StableDiffusionModel]) -> None:
    model = models["sd1"]
    view = TrainingView(model)
    assert view.encode_text(["x"], grad=True).hidden.requires_grad is False  # frozen encoder: nothing to track
    layer = model.text_encoders[0].get_input_embeddings()
    layer.weight.requires_grad_(True)
    try:
        assert view.encode_text(["x"], grad=True).hidden.requires_grad
        assert not view.encode_text(["x"], grad=False).hidden.requires_grad
    finally:
        layer.weight.requires_grad_(False)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_token_hook_puts_trainable_vectors_in_place_of_the_word(
    models: dict[str, StableDiffusionModel], family: str
) -> None:
    model = models[family]
    view = TrainingView(model)
    tok = model.tokenizers[0]
    word = tuple(tok(["zebra"], add_special_tokens=False).input_ids[0])
    widths = [int(e.get_input_embeddings().weight.shape[1]) for e in model.text_encoders]
    vectors = tuple(torch.randn(3, w, requires_grad=True) for w in widths)
    hook = TokenHook(word, vectors)
    cond = view.encode_text(["a zebra on grass", "no word here"], grad=True, token_hook=hook)
    ids = view.token_ids(["a zebra on grass"], hook)[0]
    a_id = tok(["a"], add_special_tokens=False).input_ids[0][0]
    assert ids[0, 1] == a_id and ids[0, 5] == tok(["on"], add_special_tokens=False).input_ids[0][0]
    cond.hidden[0].sum().backward()
    for v in vectors:
        assert v.grad is not None and v.grad.abs().sum() > 0
    # the row without the word is the plain encoding
    plain = view.encode_text(["no word here"], grad=False)
    torch.testing.assert_close(cond.hidden[1:].detach(), plain.hidden, rtol=1e-5, atol=1e-5)
    # the hook is gone afterwards
    again = view.encode_text(["a zebra on grass"], grad=False)
    assert not torch.allclose(again.hidden, cond.hidden[:1].detach())


def test_schedule_is_the_engines_and_the_targets_follow_the_formulas(models: dict[str, StableDiffusionModel]) -> None:
    schedule = NoiseSchedule.for_model(models["sd1"])
    torch.testing.assert_close(schedule.alphas_cumprod, a1111_alphas_cumprod())
    x0 = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    ac = schedule.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), ac.sqrt() * x0 + (1 - ac).sqrt() * noise)
    assert torch.equal(schedule.target(x0, noise, t), noise)
    v = NoiseSchedule(schedule.alphas_cumprod, "v_prediction")
    torch.testing.assert_close(v.target(x0, noise, t), ac.sqrt() * noise - (1 - ac).sqrt() * x0)
    snr = (ac / (1 - ac)).flatten()
    torch.testing.assert_close(schedule.min_snr_weight(t, 5.0), torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(v.min_snr_weight(t, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))
    # at t=10 the SNR is far above 5: the weight is < 1; at t=900 it is below 5: eps weight is 1
    w = schedule.min_snr_weight(t, 5.0)
    assert w[0] < 0.1 and w[1] == pytest.approx(1.0)


def test_noise_offset_adds_a_per_channel_constant() -> None:
    schedule = NoiseSchedule(a1111_alphas_cumprod())
    latents = torch.zeros(2, 4, 16, 16)
    g1 = torch.Generator().manual_seed(3)
    plain = schedule.sample_noise(latents, generator=g1)
    g2 = torch.Generator().manual_seed(3)
    offset = schedule.sample_noise(latents, noise_offset=0.5, generator=g2)
    diff = offset - plain
    assert diff.abs().sum() > 0
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff))


def test_sdxl_time_ids(models: dict[str, StableDiffusionModel]) -> None:
    ids = sdxl_time_ids(models["sdxl"], [(768, 512)], [(0, 32)], [(512, 512)])
    assert ids is not None and ids.tolist() == [[768.0, 512.0, 0.0, 32.0, 512.0, 512.0]]
    assert sdxl_time_ids(models["sd1"], [(1, 1)], [(0, 0)], [(1, 1)]) is None


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_loss_is_the_per_sample_mse_of_the_unet(models: dict[str, StableDiffusionModel], family: str) -> None:
    model = models[family]
    view = TrainingView(model)
    cond = view.encode_text(["a", "b"], grad=False)
    latents = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 700])
    loss = view.loss(latents, cond, t, noise)
    assert loss.shape == (2,)
    with torch.no_grad():
        prediction = view.predict(view.schedule.add_noise(latents, noise, t), t, cond).float()
    expected = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)
    weight = torch.zeros(2, 1, 8, 8)
    weight[:, :, :4] = 2.0
    weighted = view.loss(latents, cond, t, noise, weight_map=weight)
    torch.testing.assert_close(weighted, (((prediction - noise) ** 2) * weight).mean(dim=(1, 2, 3)))
    snr = view.loss(latents, cond, t, noise, min_snr_gamma=5.0)
    torch.testing.assert_close(snr, expected * view.schedule.min_snr_weight(t, 5.0))


def test_encode_images_gives_the_scaled_posterior(models: dict[str, StableDiffusionModel]) -> None:
    model = models["sd1"]
    view = TrainingView(model)
    pixels = torch.rand(1, 3, 64, 48) * 2 - 1
    mean, std = view.encode_images(pixels)
    assert mean.shape == (1, 4, 8, 6) and std.shape == mean.shape
    with torch.no_grad():
        dist = model.vae.encode(pixels).latent_dist
    torch.testing.assert_close(mean, dist.mean * 0.18215)
    torch.testing.assert_close(std, dist.std * 0.18215)
    assert (std > 0).all()
