"""A1111's initial and per-step noise (reference/a1111.md section 12).

Every image of a batch has its own generator, seeded with its own seed, so image i of a batch is
the image generated alone with seed + i. The first draw is the initial latent noise (optionally
blended with a variation seed's noise by slerp, optionally drawn at another size and pasted
centred: "seed resize"); later draws (ancestral / SDE steps) continue each image's generator, or,
with ENSD (eta noise seed delta), generators re-created from seed + ENSD.

RNG sources:
- "CPU": `torch.Generator("cpu")`, float32 `torch.randn` per image (the same numbers on every machine).
- "GPU": the draw happens on the model's device when it is CUDA; elsewhere it is the CPU draw.
- "NV": NVIDIA's CUDA `torch.randn` emulated on the CPU (`PhiloxGenerator`), so GPU seeds can be
  reproduced without an NVIDIA card.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch

__all__ = [
    "SEED_RANGE",
    "ImageRNG",
    "PhiloxGenerator",
    "RngSource",
    "philox4x32_10",
    "random_seed",
    "resolve_seed",
    "slerp",
]

RngSource = Literal["CPU", "GPU", "NV"]

# A1111 draws a random seed with random.randrange(4294967294): 0 <= seed < 2**32 - 2.
SEED_RANGE = 4294967294
LATENT_FACTOR = 8


def random_seed() -> int:
    """A fresh random seed in A1111's range (what -1 means)."""
    return random.SystemRandom().randrange(SEED_RANGE)


def resolve_seed(seed: int | None) -> int:
    """-1 (or None) -> a random seed; any other value is used as given."""
    if seed is None or int(seed) == -1:
        return random_seed()
    return int(seed)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Spherical interpolation from `low` (val 0) to `high` (val 1).

    As A1111 applies it to one image's (C, H, W) noise: the vectors are taken along `dim` = 1, so
    every (channel, column) is interpolated on its own great circle. When the two are nearly
    parallel (mean cosine > 0.9995) it falls back to linear interpolation.
    """
    low_n = low / torch.linalg.vector_norm(low, dim=dim, keepdim=True)
    high_n = high / torch.linalg.vector_norm(high, dim=dim, keepdim=True)
    dot = (low_n * high_n).sum(dim)
    if dot.mean() > 0.9995:
        return low * (1.0 - val) + high * val
    omega = torch.acos(dot)
    so = torch.sin(omega)
    w_low = (torch.sin((1.0 - val) * omega) / so).unsqueeze(dim)
    w_high = (torch.sin(val * omega) / so).unsqueeze(dim)
    return w_low * low + w_high * high


# --------------------------------------------------------------------------------------------
# NVIDIA Philox emulation
# --------------------------------------------------------------------------------------------

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint32(0x9E3779B9)
_PHILOX_W1 = np.uint32(0xBB67AE85)
_U32 = np.uint64(0xFFFFFFFF)
_TWO_POW_32_INV = np.float32(2.3283064e-10)  # curand's CURAND_2POW32_INV
_TWO_POW_32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)  # CURAND_2POW32_INV_2PI


def philox4x32_10(counter: Sequence[np.ndarray], key: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Philox4x32 with 10 rounds (Salmon et al. 2011) on arrays of uint32 lanes.

    `counter` is 4 arrays, `key` 2 arrays; returns 4 arrays. Checked against Random123's
    known-answer vectors in the tests.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint32) for k in key)
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 = k0 + _PHILOX_W0
                k1 = k1 + _PHILOX_W1
            p0 = _PHILOX_M0 * c0.astype(np.uint64)
            p1 = _PHILOX_M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & _U32).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & _U32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


class PhiloxGenerator:
    """Emulates `torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))`.

    PyTorch's CUDA normal kernel gives element i its own curand Philox4x32-10 stream (key = seed,
    subsequence = i, counter.x = calls so far) and turns the first two 32-bit outputs into a normal
    with curand's Box-Muller (the sine branch). That holds while one kernel launch covers the whole
    tensor with one thread per element (about 100k-270k elements depending on the card; a 1024x1024
    SDXL latent is 65,536), which is every latent A1111 draws, since it draws per image.

    Checked against the Random123 known-answer vectors (the integer part) and against published
    CUDA `torch.randn` output for seed 0 to the 4 decimals printed. GPUs compute sin/log with their
    own fast intrinsics, so values can differ in the last float32 bits: bit-exactness is not claimed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        lanes = np.arange(n, dtype=np.uint64)
        counter = (
            np.full(n, self.offset, dtype=np.uint32),
            np.zeros(n, dtype=np.uint32),
            (lanes & _U32).astype(np.uint32),
            (lanes >> np.uint64(32)).astype(np.uint32),
        )
        key = (
            np.full(n, self.seed & 0xFFFFFFFF, dtype=np.uint32),
            np.full(n, self.seed >> 32, dtype=np.uint32),
        )
        self.offset += 1
        x, y, _, _ = philox4x32_10(counter, key)
        u = x.astype(np.float32) * _TWO_POW_32_INV + _TWO_POW_32_INV / np.float32(2.0)
        v = y.astype(np.float32) * _TWO_POW_32_INV_2PI + _TWO_POW_32_INV_2PI / np.float32(2.0)
        s = np.sqrt(np.float32(-2.0) * np.log(u))
        out = (s * np.sin(v)).astype(np.float32)
        return torch.from_numpy(out.reshape(tuple(shape)))


# --------------------------------------------------------------------------------------------
# Per-image noise
# --------------------------------------------------------------------------------------------


class _Stream(Protocol):
    def randn(self, shape: Sequence[int]) -> torch.Tensor: ...


class _TorchStream:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.device = device

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=self.device, dtype=torch.float32)


class ImageRNG:
    """A1111's per-image noise for one batch.

    `shape` is one image's latent shape (C, H // 8, W // 8); `seeds[i]` (and `subseeds[i]`) belong
    to image i. `seed_resize_from` is (width, height) in pixels (A1111's `seed_resize_from_w/h`);
    None or a non-positive value means no resize. `first()` returns the initial noise
    (B, *shape) on `device`; `next()` the noise of the next ancestral / SDE step. Both float32.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        seeds: list[int],
        subseeds: list[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from: tuple[int, int] | None = None,
        source: RngSource = "CPU",
        device: torch.device = torch.device("cpu"),  # noqa: B008 - immutable
        ensd: int = 0,
    ) -> None:
        if source not in ("CPU", "GPU", "NV"):
            raise ValueError(f"unknown RNG source {source!r}: expected CPU, GPU or NV")
        if not seeds:
            raise ValueError("at least one seed is needed")
        self.shape = tuple(int(x) for x in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.source: RngSource = source
        self.device = torch.device(device)
        self.ensd = int(ensd)
        self.noise_shape = self.shape
        if seed_resize_from is not None and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
            if len(self.shape) != 3:
                raise ValueError("seed resize needs a (C, H, W) latent shape")
            from_w, from_h = int(seed_resize_from[0]), int(seed_resize_from[1])
            self.noise_shape = (self.shape[0], from_h // LATENT_FACTOR, from_w // LATENT_FACTOR)
        self._streams: list[_Stream] = [self._stream(seed) for seed in self.seeds]
        self._first_done = False

    @property
    def draw_device(self) -> torch.device:
        """Where torch draws happen: the model's CUDA device for "GPU", otherwise the CPU."""
        if self.source == "GPU" and self.device.type == "cuda":
            return self.device
        return torch.device("cpu")

    def _stream(self, seed: int) -> _Stream:
        if self.source == "NV":
            return PhiloxGenerator(seed)
        return _TorchStream(seed, self.draw_device)

    @property
    def torch_generators(self) -> list[torch.Generator] | None:
        """The images' current torch generators, for schedulers that take `generator=` (they then
        draw each image's step noise from it, as `next()` would); None for the NV source, whose
        generators are not torch generators."""
        if self.source == "NV":
            return None
        return [s.generator for s in self._streams if isinstance(s, _TorchStream)]

    @property
    def generators(self) -> list[torch.Generator] | None:
        """Same as `torch_generators`."""
        return self.torch_generators

    def _subseed(self, i: int) -> int:
        assert self.subseeds is not None
        return self.subseeds[i] if i < len(self.subseeds) else 0

    def first(self) -> torch.Tensor:
        """Initial noise for every image: (B, *shape). Calling it again starts over."""
        resized = self.noise_shape != self.shape
        streams = [self._stream(seed) for seed in self.seeds]
        images: list[torch.Tensor] = []
        for i, (seed, stream) in enumerate(zip(self.seeds, streams, strict=True)):
            noise = self._stream(seed).randn(self.noise_shape) if resized else stream.randn(self.shape)
            if self.subseeds is not None and self.subseed_strength != 0:
                sub = self._stream(self._subseed(i)).randn(self.noise_shape)
                noise = slerp(self.subseed_strength, noise, sub)
            if resized:
                noise = _paste_centred(noise, stream.randn(self.shape))
            images.append(noise.to(device=self.device))
        if self.ensd:
            streams = [self._stream(seed + self.ensd) for seed in self.seeds]
        self._streams = streams
        self._first_done = True
        return torch.stack(images)

    def next(self) -> torch.Tensor:
        """Noise for the next ancestral / SDE step: (B, *shape), each image from its own generator.
        Before `first()` it returns `first()` (A1111's order of draws)."""
        if not self._first_done:
            return self.first()
        return torch.stack([s.randn(self.shape).to(device=self.device) for s in self._streams])


def _paste_centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Put `small` (C, h, w) in the middle of `full` (C, H, W), cropping its middle if it is larger.

    Offsets are floor((H - h) / 2); when cropping an odd excess the last row/column of `full` keeps
    its own noise (A1111's arithmetic).
    """
    out = full.clone()
    (_, h, w), (_, big_h, big_w) = small.shape, full.shape
    spans = []
    for size, big in ((h, big_h), (w, big_w)):
        d = math.floor((big - size) / 2)
        length = size if d >= 0 else size + 2 * d
        spans.append((max(d, 0), max(-d, 0), length))
    (ty, sy, ly), (tx, sx, lx) = spans
    out[:, ty : ty + ly, tx : tx + lx] = small[:, sy : sy + ly, sx : sx + lx]
    return out
