"""A1111's initial noise (reference/a1111.md section 12): per-image generators, variation seeds,
seed resize, ENSD, RNG sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.engine.noise import (
    SEED_RANGE,
    ImageRNG,
    PhiloxGenerator,
    philox4x32_10,
    random_seed,
    resolve_seed,
    slerp,
)

SHAPE = (4, 8, 8)  # a 64x64 image's latent


def cpu_randn(seed: int, shape: tuple[int, ...], draws: int = 1) -> torch.Tensor:
    """The `draws`-th tensor of a fresh CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(shape, generator=g)
    for _ in range(draws - 1):
        out = torch.randn(shape, generator=g)
    return out


# -- seeds --------------------------------------------------------------------------------------


def test_resolve_seed() -> None:
    assert resolve_seed(1234) == 1234
    assert resolve_seed(0) == 0
    for value in (-1, None):
        seed = resolve_seed(value)
        assert 0 <= seed < SEED_RANGE
    assert len({random_seed() for _ in range(20)}) > 1
    assert SEED_RANGE == 4294967294


# -- CPU noise ------------------------------------------------------------------------------------


def test_cpu_noise_is_torch_randn_of_the_seed() -> None:
    # A1111's verified vector: seed 1234 at 64x64 = Generator().manual_seed(1234), randn((4, 8, 8)).
    noise = ImageRNG(SHAPE, [1234]).first()
    assert noise.shape == (1, *SHAPE) and noise.dtype == torch.float32
    assert torch.equal(noise[0], cpu_randn(1234, SHAPE))
    expected = [-0.1117185652256012, -0.49659010767936707, 0.16307370364665985, -0.8816877603530884]
    assert noise[0].flatten()[:4].tolist() == pytest.approx(expected, abs=1e-7)


def test_batch_image_equals_the_seed_alone() -> None:
    batch = ImageRNG(SHAPE, [100, 101, 102]).first()
    for i in range(3):
        assert torch.equal(batch[i], ImageRNG(SHAPE, [100 + i]).first()[0])


def test_gpu_source_on_a_cpu_device_is_the_cpu_draw() -> None:
    assert torch.equal(ImageRNG(SHAPE, [7], source="GPU").first(), ImageRNG(SHAPE, [7], source="CPU").first())


def test_first_can_be_called_again() -> None:
    rng = ImageRNG(SHAPE, [5])
    a = rng.first()
    rng.next()
    assert torch.equal(rng.first(), a)


def test_next_continues_each_images_generator() -> None:
    rng = ImageRNG(SHAPE, [10, 11])
    rng.first()
    step1, step2 = rng.next(), rng.next()
    for i, seed in enumerate((10, 11)):
        assert torch.equal(step1[i], cpu_randn(seed, SHAPE, draws=2))
        assert torch.equal(step2[i], cpu_randn(seed, SHAPE, draws=3))


def test_next_before_first_is_the_initial_noise() -> None:
    assert torch.equal(ImageRNG(SHAPE, [3]).next(), ImageRNG(SHAPE, [3]).first())


def test_next_per_image_is_independent_of_batch_size() -> None:
    batch = ImageRNG(SHAPE, [40, 41, 42], ensd=31337)
    alone = ImageRNG(SHAPE, [41], ensd=31337)
    assert torch.equal(batch.first()[1], alone.first()[0])
    for _ in range(3):
        assert torch.equal(batch.next()[1], alone.next()[0])


def test_ensd_recreates_generators_after_the_first_draw() -> None:
    rng = ImageRNG(SHAPE, [500, 501], ensd=31337)
    first = rng.first()
    assert torch.equal(first[0], cpu_randn(500, SHAPE))  # the initial noise is unaffected
    later = rng.next()
    assert torch.equal(later[0], cpu_randn(500 + 31337, SHAPE))
    assert torch.equal(later[1], cpu_randn(501 + 31337, SHAPE))
    assert torch.equal(rng.next()[1], cpu_randn(501 + 31337, SHAPE, draws=2))


def test_torch_generators_are_the_step_noise_source() -> None:
    # A scheduler that takes `generator=` draws per image from these, as next() would.
    a, b = ImageRNG(SHAPE, [8, 9]), ImageRNG(SHAPE, [8, 9])
    a.first()
    b.first()
    gens = a.torch_generators
    assert gens is not None and a.generators is not None and len(gens) == 2
    drawn = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    assert torch.equal(drawn, b.next())


# -- variation seeds ------------------------------------------------------------------------------


def test_subseed_strength_zero_is_no_subseed() -> None:
    plain = ImageRNG(SHAPE, [1, 2]).first()
    assert torch.equal(ImageRNG(SHAPE, [1, 2], subseeds=[9, 10], subseed_strength=0.0).first(), plain)


def test_subseed_strength_one_is_the_subseed_alone() -> None:
    blended = ImageRNG(SHAPE, [1, 2], subseeds=[9, 10], subseed_strength=1.0).first()
    torch.testing.assert_close(blended, ImageRNG(SHAPE, [9, 10]).first(), atol=1e-5, rtol=1e-5)


def test_subseed_blend_is_slerp_of_seed_and_subseed_noise() -> None:
    blended = ImageRNG(SHAPE, [1], subseeds=[9], subseed_strength=0.3).first()[0]
    expected = slerp(0.3, cpu_randn(1, SHAPE), cpu_randn(9, SHAPE))
    assert torch.equal(blended, expected)
    # Variance roughly kept (a lerp would shrink it), and both sources contribute.
    assert 0.6 < blended.std().item() < 1.4
    assert not torch.allclose(blended, cpu_randn(1, SHAPE))


def test_subseed_does_not_change_later_draws() -> None:
    with_sub = ImageRNG(SHAPE, [1], subseeds=[9], subseed_strength=0.5)
    plain = ImageRNG(SHAPE, [1])
    with_sub.first()
    plain.first()
    assert torch.equal(with_sub.next(), plain.next())


def test_slerp_endpoints_and_great_circle() -> None:
    g = torch.Generator().manual_seed(0)
    low, high = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    assert torch.equal(slerp(0.0, low, high), low)
    torch.testing.assert_close(slerp(1.0, low, high), high)
    mid = slerp(0.5, low, high)
    # Along dim 1 every vector stays between the two norms' range (a lerp of near-orthogonal
    # vectors would shrink it by about 1/sqrt(2)).
    n_low, n_high, n_mid = (torch.linalg.vector_norm(t, dim=1) for t in (low, high, mid))
    assert (n_mid >= torch.minimum(n_low, n_high) * 0.999).all()
    assert (n_mid <= torch.maximum(n_low, n_high) * 1.001).all()


def test_slerp_of_parallel_vectors_falls_back_to_lerp() -> None:
    low = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    high = low * 2.0
    torch.testing.assert_close(slerp(0.25, low, high), low * 1.25)


# -- seed resize ----------------------------------------------------------------------------------


def test_seed_resize_pastes_the_from_size_noise_centred() -> None:
    # A 128x128 image whose seed was found at 64x64: the 64x64 noise sits in the middle.
    out = ImageRNG((4, 16, 16), [77], seed_resize_from=(64, 64)).first()[0]
    small, full = cpu_randn(77, (4, 8, 8)), cpu_randn(77, (4, 16, 16))
    assert torch.equal(out[:, 4:12, 4:12], small)
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = False
    assert torch.equal(out[:, mask], full[:, mask])


def test_seed_resize_crops_a_larger_from_size_centred() -> None:
    out = ImageRNG((4, 8, 8), [77], seed_resize_from=(128, 96)).first()[0]  # from (w, h) = 128x96
    big = cpu_randn(77, (4, 12, 16))
    assert torch.equal(out, big[:, 2:10, 4:12])


def test_seed_resize_with_odd_difference_uses_floor_offsets() -> None:
    out = ImageRNG((4, 16, 16), [5], seed_resize_from=(72, 56)).first()[0]  # 9 wide, 7 high
    small = cpu_randn(5, (4, 7, 9))
    assert torch.equal(out[:, 4:11, 3:12], small)


def test_seed_resize_blends_the_subseed_at_the_from_size() -> None:
    out = ImageRNG((4, 16, 16), [1], subseeds=[2], subseed_strength=0.5, seed_resize_from=(64, 64)).first()[0]
    expected = slerp(0.5, cpu_randn(1, (4, 8, 8)), cpu_randn(2, (4, 8, 8)))
    assert torch.equal(out[:, 4:12, 4:12], expected)


def test_seed_resize_of_the_same_size_or_off_is_plain() -> None:
    plain = ImageRNG(SHAPE, [3]).first()
    assert torch.equal(ImageRNG(SHAPE, [3], seed_resize_from=(64, 64)).first(), plain)
    assert torch.equal(ImageRNG(SHAPE, [3], seed_resize_from=(-1, -1)).first(), plain)


def test_seed_resize_keeps_next_on_the_image_generator() -> None:
    rng = ImageRNG((4, 16, 16), [77], seed_resize_from=(64, 64))
    rng.first()
    assert torch.equal(rng.next()[0], cpu_randn(77, (4, 16, 16), draws=2))


# -- NV (Philox) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_matches_random123_known_answers(
    counter: tuple[int, ...], key: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    out = philox4x32_10(
        [np.array([c], dtype=np.uint32) for c in counter], [np.array([k], dtype=np.uint32) for k in key]
    )
    assert tuple(int(x[0]) for x in out) == expected


def test_nv_matches_published_cuda_randn_for_seed_0() -> None:
    # torch.manual_seed(0); torch.randn(16, device="cuda") as printed (4 decimals) in public logs.
    cuda = [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284]
    cuda += [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820]
    assert PhiloxGenerator(0).randn((16,)).tolist() == pytest.approx(cuda, abs=5e-5)


def test_nv_is_deterministic_and_advances_per_draw() -> None:
    a, b = PhiloxGenerator(1234), PhiloxGenerator(1234)
    first = a.randn(SHAPE)
    assert torch.equal(first, b.randn(SHAPE))
    second = a.randn(SHAPE)
    assert not torch.equal(first, second)
    assert torch.equal(second, b.randn(SHAPE))
    assert first.dtype == torch.float32 and first.shape == SHAPE
    # a standard normal, not some other distribution
    big = PhiloxGenerator(3).randn((4, 64, 64))
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1.0) < 0.05


def test_nv_image_rng() -> None:
    rng = ImageRNG(SHAPE, [1234, 1235], source="NV", ensd=10)
    first = rng.first()
    assert torch.equal(first[1], PhiloxGenerator(1235).randn(SHAPE))
    assert not torch.equal(first[0], ImageRNG(SHAPE, [1234]).first()[0])
    assert torch.equal(rng.next()[1], PhiloxGenerator(1235 + 10).randn(SHAPE))
    assert rng.torch_generators is None
    again = ImageRNG(SHAPE, [1234, 1235], source="NV", ensd=10)
    assert torch.equal(again.first(), first)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ImageRNG(SHAPE, [1], source="TPU")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ImageRNG(SHAPE, [])
