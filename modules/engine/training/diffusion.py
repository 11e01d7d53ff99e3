"""What every trainer needs from a loaded model: captions -> conditioning, pixels -> latents, the
noise schedule and the denoising loss (shared by the LoRA, textual-inversion and hypernetwork
trainers).

Text (`TrainingView.encode_text`): each caption is tokenized without special tokens, cut to its
first 75 tokens (kohya's default `max_token_length`; captions are not split into several chunks),
framed as [BOS] + tokens + [EOS] and padded to 77 as the engine pads (the end token; OpenCLIP
encoders put their pad token after the first end token). Each text encoder then gives what the
engine's `conditioning.Encoder` gives for the same plain caption under default settings: SD 1.x /
2.x the last hidden state (clip skip n > 1: the final layer norm over `hidden_states[-n]`); SDXL
both encoders' penultimate hidden states concatenated on the channel axis, and the second
encoder's projected pooled output (`text_embeds`). With `grad=True` the encoders run with autograd
on (their LoRA / trainable parts get gradients); with `grad=False` under `no_grad`.

Trainable token vectors (textual inversion, `TokenHook`): wherever a caption's tokens hold the
hook's word ids, the word takes as many positions as the hook has vectors, and a forward hook on
each encoder's token embedding puts the vectors there (the engine's `Encoder` does the same for a
loaded embedding), so the gradient flows into them.

Images (`encode_images`): the VAE posterior's mean and std, both times the VAE's scaling factor
(a latent is `mean + std * randn`, or `mean` for the deterministic mode).

Noise (`NoiseSchedule`): the model's `alphas_cumprod` as the engine's sampler derives it from
`model.scheduler_config` (`sampling.a1111_alphas_cumprod`), uniform timesteps in [0, T),
`add_noise`, the epsilon / v-prediction targets, kohya's `noise_offset` (a per-channel constant
added to the noise) and min-SNR-gamma weights (epsilon: min(snr, γ) / snr; v: min(snr, γ) /
(snr + 1)). SDXL's added conditions are the pooled text embeds and per-sample `time_ids`
(original size, crop top/left, target size; the refiner: size, crop, aesthetic score), as the
engine builds them for inference.

`TrainingView.loss` runs the UNet on one noisy batch and returns the per-sample mean squared
error (optionally weighted per pixel, A1111's `use_weight`) with the min-SNR weight applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from modules.engine.sampling import TextCond, a1111_alphas_cumprod
from modules.models.loader import StableDiffusionModel

__all__ = [
    "CHUNK",
    "NoiseSchedule",
    "TokenHook",
    "TrainingView",
    "sdxl_time_ids",
]

CHUNK = 75  # caption tokens kept (kohya's default max_token_length)
REFINER_AESTHETIC_SCORE = 6.0  # A1111's sdxl_refiner_high_aesthetic_score


# ------------------------------------------------------------------------------ trainable tokens


@dataclass(frozen=True, eq=False)
class TokenHook:
    """Trainable vectors in place of a word (textual inversion).

    `ids`: the word's token ids as the model's tokenizer gives them without BOS/EOS (all SD
    tokenizers share one BPE, so one list serves every encoder). `vectors`: one tensor
    [n, width] per text encoder, in the order of `model.text_encoders` (SDXL: CLIP-L's, then
    OpenCLIP-G's); all have the same n. Wherever the caption holds `ids`, the word takes n
    positions and the vectors go there (positions past the 75th are cut, as A1111 cuts them)."""

    ids: tuple[int, ...]
    vectors: tuple[torch.Tensor, ...]

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])


# ------------------------------------------------------------------------------------ schedule


@dataclass
class NoiseSchedule:
    """The training noise schedule of one model (float32 `alphas_cumprod` on `device`)."""

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"

    @classmethod
    def for_model(cls, model: StableDiffusionModel, device: torch.device | None = None) -> NoiseSchedule:
        cfg = model.scheduler_config
        alphas = a1111_alphas_cumprod(
            float(cfg.get("beta_start", 0.00085)),
            float(cfg.get("beta_end", 0.012)),
            int(cfg.get("num_train_timesteps", 1000)),
        )
        return cls(alphas.to(device or model.device), model.prediction_type)

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _ac(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod.to(like.device)[timesteps.to(like.device).long()]
        return ac.view(-1, *([1] * (like.dim() - 1)))

    def sample_timesteps(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        min_timestep: int = 0,
        max_timestep: int | None = None,
    ) -> torch.Tensor:
        """`batch` integer timesteps, uniform in [min_timestep, max_timestep) (kohya's defaults:
        the whole schedule), on the schedule's device."""
        high = self.num_timesteps if max_timestep is None else max_timestep
        device = generator.device if generator is not None else self.alphas_cumprod.device
        t = torch.randint(min_timestep, high, (batch,), generator=generator, device=device)
        return t.to(self.alphas_cumprod.device)

    def sample_noise(
        self, latents: torch.Tensor, *, noise_offset: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Gaussian noise like `latents` (float32); with `noise_offset`, plus that times one
        normal value per sample and channel (kohya's noise offset)."""
        device = generator.device if generator is not None else latents.device
        shape = tuple(latents.shape)
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if noise_offset:
            offset = torch.randn((shape[0], shape[1], 1, 1), generator=generator, device=device, dtype=torch.float32)
            noise = noise + noise_offset * offset
        return noise.to(latents.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ac_t) x_0 + sqrt(1 - ac_t) noise."""
        ac = self._ac(timesteps, latents)
        return ac.sqrt() * latents + (1 - ac).sqrt() * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict: the noise (epsilon) or v = sqrt(ac) noise - sqrt(1 - ac) x_0."""
        if self.prediction_type == "v_prediction":
            ac = self._ac(timesteps, latents)
            return ac.sqrt() * noise - (1 - ac).sqrt() * latents
        if self.prediction_type != "epsilon":
            raise ValueError(f"cannot train a {self.prediction_type} model")
        return noise

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[timesteps.to(self.alphas_cumprod.device).long()]
        return ac / (1 - ac)

    def min_snr_weight(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Per-sample loss weight of min-SNR-gamma (Hang et al. 2023)."""
        snr = self.snr(timesteps)
        clipped = torch.clamp(snr, max=gamma)
        if self.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr


def sdxl_time_ids(
    model: StableDiffusionModel,
    original_sizes: Sequence[tuple[int, int]],
    crops: Sequence[tuple[int, int]],
    target_sizes: Sequence[tuple[int, int]],
    *,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """SDXL's micro-conditioning per sample, sizes as (height, width), crops as (top, left):
    the base model gets [orig h, orig w, top, left, target h, target w]; the refiner
    [orig h, orig w, top, left, aesthetic score 6.0] (as the engine builds them for a prompt).
    None for other families."""
    if not model.family.is_sdxl:
        return None
    rows: list[list[float]] = []
    for (oh, ow), (top, left), (th, tw) in zip(original_sizes, crops, target_sizes, strict=True):
        if model.family.base == "sdxl-refiner":
            rows.append([oh, ow, top, left, REFINER_AESTHETIC_SCORE])
        else:
            rows.append([oh, ow, top, left, th, tw])
    return torch.tensor(rows, dtype=torch.float32, device=device or model.device)


# ---------------------------------------------------------------------------------- the view


@dataclass
class TrainingView:
    """A trainer's access to one loaded model (see the module docstring)."""

    model: StableDiffusionModel
    clip_skip: int = 1  # SD 1.x / 2.x: which hidden state (1 = last), as the engine's setting
    schedule: NoiseSchedule = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = NoiseSchedule.for_model(self.model)

    # -- facts -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def is_sdxl(self) -> bool:
        return self.model.family.is_sdxl

    @property
    def prediction_type(self) -> str:
        return self.model.prediction_type

    @property
    def unet(self) -> torch.nn.Module:
        return cast(torch.nn.Module, self.model.unet)

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        return tuple(cast(torch.nn.Module, e) for e in self.model.text_encoders)

    # -- text --------------------------------------------------------------------------------

    def token_ids(self, captions: Sequence[str], token_hook: TokenHook | None = None) -> list[torch.Tensor]:
        """Per text encoder, the [B, 77] ids of the captions; with a hook, the word's positions
        hold the end token (they are replaced by the vectors), see `token_positions`."""
        return [ids for ids, _ in self._tokenize(captions, token_hook)]

    def _tokenize(
        self, captions: Sequence[str], token_hook: TokenHook | None
    ) -> list[tuple[torch.Tensor, list[list[int]]]]:
        """Per encoder: ([B, 77] ids, per caption the start positions of the hook's word)."""
        out: list[tuple[torch.Tensor, list[list[int]]]] = []
        for tokenizer in self.model.tokenizers:
            tok: Any = tokenizer
            bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
            content = tok(list(captions), add_special_tokens=False, truncation=False).input_ids
            rows: list[list[int]] = []
            starts: list[list[int]] = []
            for ids in content:
                ids, positions = _expand_word(list(ids), token_hook, eos)
                ids = ids[:CHUNK]
                row = [bos, *ids, eos] + [eos] * (CHUNK - len(ids))
                if pad != eos:  # OpenCLIP: pad after the first end token
                    first_end = len(ids) + 1
                    row = row[: first_end + 1] + [pad] * (len(row) - first_end - 1)
                rows.append(row)
                starts.append([p for p in positions if p < CHUNK])
            out.append((torch.tensor(rows, dtype=torch.long, device=self.device), starts))
        return out

    def encode_text(self, captions: Sequence[str], *, grad: bool, token_hook: TokenHook | None = None) -> TextCond:
        """The conditioning of a batch of captions: `hidden` [B, 77, C] and (SDXL) `pooled`
        [B, P], in the encoders' dtype. See the module docstring."""
        if not captions:
            raise ValueError("no captions")
        tokenized = self._tokenize(captions, token_hook)
        hidden_parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
            for index, (encoder, (ids, starts)) in enumerate(zip(self.text_encoders, tokenized, strict=True)):
                if token_hook is not None:
                    stack.enter_context(_vectors_in(encoder, ids, starts, token_hook.vectors[index]))
                z, p = self._run_encoder(encoder, ids)
                hidden_parts.append(z)
                if p is not None:
                    pooled = p
        hidden = torch.cat(hidden_parts, dim=-1) if len(hidden_parts) > 1 else hidden_parts[0]
        return TextCond(hidden, pooled if self.is_sdxl else None)

    def _run_encoder(self, encoder: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        skip = max(1, self.clip_skip)
        if self.is_sdxl:
            out = encoder(ids, output_hidden_states=True)
            return out.hidden_states[-2], getattr(out, "text_embeds", None)
        if skip == 1:
            return encoder(ids).last_hidden_state, None
        out = encoder(ids, output_hidden_states=True)
        text_model = getattr(encoder, "text_model", encoder)
        final_layer_norm = cast(torch.nn.Module, text_model.final_layer_norm)
        return final_layer_norm(out.hidden_states[-skip]), None

    # -- images ------------------------------------------------------------------------------

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior of images in [-1, 1] ([B, 3, H, W]), each times the
        VAE's scaling factor, float32 on the pixels' device (the latent cache's encode callable)."""
        vae: Any = self.model.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist
        factor = float(vae.config["scaling_factor"])
        mean = dist.mean.float() * factor
        std = dist.std.float() * factor
        return mean.to(pixels.device), std.to(pixels.device)

    @staticmethod
    def sample_latents(
        mean: torch.Tensor, std: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One draw from the (scaled) posterior: mean + std * randn."""
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(tuple(mean.shape), generator=generator, device=device, dtype=mean.dtype)
        return mean + std * eps.to(mean.device)

    # -- the loss ----------------------------------------------------------------------------

    def time_ids(
        self,
        original_sizes: Sequence[tuple[int, int]],
        crops: Sequence[tuple[int, int]],
        target_sizes: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        return sdxl_time_ids(self.model, original_sizes, crops, target_sizes, device=self.device)

    def predict(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        cond: TextCond,
        *,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's output for a noisy batch (inputs cast to the UNet's dtype; callers wrap it
        in autocast for mixed precision)."""
        unet: Any = self.model.unet
        dtype = unet.dtype
        extra: dict[str, Any] = {}
        if self.is_sdxl:
            if cond.pooled is None:
                raise ValueError("SDXL needs the pooled text embeds")
            if time_ids is None:
                height, width = noisy.shape[-2] * 8, noisy.shape[-1] * 8
                size = [(height, width)] * noisy.shape[0]
                time_ids = self.time_ids(size, [(0, 0)] * noisy.shape[0], size)
            assert time_ids is not None
            extra["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids.to(dtype)}
        return cast(
            torch.Tensor,
            unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond.hidden.to(dtype), **extra).sample,
        )

    def loss(
        self,
        latents: torch.Tensor,
        cond: TextCond,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        *,
        time_ids: torch.Tensor | None = None,
        weight_map: torch.Tensor | None = None,
        min_snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """Per-sample loss [B] (float32): mean over C, H, W of (prediction - target)^2, times the
        per-pixel `weight_map` ([B, 1 or C, H, W] at latent size) when given, times the
        min-SNR-gamma weight when `min_snr_gamma` is set. The caller draws `timesteps` and
        `noise` (`schedule.sample_timesteps` / `sample_noise`) and takes the mean."""
        latents = latents.float()
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        target = self.schedule.target(latents, noise, timesteps)
        prediction = self.predict(noisy, timesteps, cond, time_ids=time_ids).float()
        error = F.mse_loss(prediction, target, reduction="none")
        if weight_map is not None:
            error = error * weight_map.to(error)
        per_sample = error.mean(dim=tuple(range(1, error.dim())))
        if min_snr_gamma:
            per_sample = per_sample * self.schedule.min_snr_weight(timesteps, min_snr_gamma).to(per_sample)
        return per_sample


# ------------------------------------------------------------------------------------ helpers


def _expand_word(ids: list[int], hook: TokenHook | None, filler: int) -> tuple[list[int], list[int]]:
    """The caption's ids with each occurrence of the hook's word taking `count` positions
    (holding `filler`), and the start positions of those occurrences (after BOS: 0-based)."""
    if hook is None or not hook.ids:
        return ids, []
    word, count = list(hook.ids), hook.count
    out: list[int] = []
    starts: list[int] = []
    i = 0
    while i < len(ids):
        if ids[i : i + len(word)] == word:
            starts.append(len(out))
            out += [filler] * count
            i += len(word)
        else:
            out.append(ids[i])
            i += 1
    return out, starts


@contextmanager
def _vectors_in(
    encoder: torch.nn.Module, ids: torch.Tensor, starts: list[list[int]], vectors: torch.Tensor
) -> Iterator[None]:
    """While the block runs, the token embedding of `encoder` puts `vectors` at 1 + start of each
    row's starts (cut at the end of the row) for the call with exactly `ids`."""
    embedding = cast(torch.nn.Module, encoder.get_input_embeddings())  # type: ignore[operator]

    def put(_module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        ids_in = args[0] if args else None
        if not isinstance(ids_in, torch.Tensor) or ids_in.shape != ids.shape:
            return None
        if not torch.equal(ids_in.to(ids.device), ids):
            return None
        rows = []
        length = output.shape[1]
        for row, row_starts in enumerate(starts):
            current = output[row]
            for start in row_starts:
                count = min(length - start - 1, vectors.shape[0])
                if count <= 0:
                    continue
                patch = vectors[:count].to(device=current.device, dtype=current.dtype)
                current = torch.cat([current[: start + 1], patch, current[start + 1 + count :]], dim=0)
            rows.append(current)
        return torch.stack(rows)

    handle = embedding.register_forward_hook(put)
    try:
        yield
    finally:
        handle.remove()
