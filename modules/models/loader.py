"""Offline loading of checkpoints into diffusers components.

Single-file checkpoints: read the tensors once (memory-mapped for safetensors), detect the family
from keys and shapes, derive every component config from shapes (`architecture`), build the
modules with empty weights, convert keys with diffusers' own LDM converters and assign the
tensors in (strict: a missing or unexpected tensor is an error, never silently random weights).
Diffusers folders load from their own configs, after refusing any folder that carries code.
Nothing here can reach a model hub: no repo id is ever passed to a `from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import init_empty_weights
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

# From their modules: under TYPE_CHECKING diffusers' package namespace resolves to its dummy objects,
# so a type checker would see placeholder classes instead of these nn.Modules.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules.core.errors import ModelFileError, UnknownModelError, UnsafeModelFileError
from modules.models import families as fam
from modules.models.architecture import (
    Architecture,
    TextEncoderSpec,
    architecture,
    find_vae_prefix,
    scheduler_config,
    vae_config,
)
from modules.models.checkpoint_io import read_state_dict
from modules.models.clip_tokenizer import PAD_EOS, PAD_ZERO, build_clip_tokenizer

if TYPE_CHECKING:
    from modules.models.offload import Offloader

log = logging.getLogger(__name__)

TextEncoder = CLIPTextModel | CLIPTextModelWithProjection


@dataclass(frozen=True)
class Placement:
    """Where and in which precision each component lives (from the flags)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    text_encoder_dtype: torch.dtype = torch.float32


@dataclass
class LoadTimings:
    read: float = 0.0
    build: float = 0.0
    move: float = 0.0

    @property
    def total(self) -> float:
        return self.read + self.build + self.move

    def __str__(self) -> str:
        return f"read {self.read:.2f}s, build {self.build:.2f}s, move {self.move:.2f}s"


@dataclass
class StableDiffusionModel:
    """The diffusers components of one loaded checkpoint, plus what the engine needs to know."""

    family: fam.ModelFamily
    prediction_type: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple[TextEncoder, ...]
    tokenizers: tuple[CLIPTokenizer, ...]
    scheduler_config: dict[str, Any]
    source: Path
    baked_vae: AutoencoderKL | None = None  # the checkpoint's own VAE while another one is active
    vae_source: Path | None = None  # the separate VAE file in use, None for the baked one
    timings: LoadTimings = field(default_factory=LoadTimings)
    offloader: Offloader | None = None  # the memory-mode hooks while the model is placed under one

    def modules(self) -> Iterator[torch.nn.Module]:
        yield self.unet
        yield self.vae
        yield from self.text_encoders
        if self.baked_vae is not None:
            yield self.baked_vae

    def nbytes(self) -> int:
        """Bytes of all parameters and buffers (what this model costs in a RAM or VRAM cache)."""
        seen: set[int] = set()
        total = 0
        for module in self.modules():
            for tensor in (*module.parameters(), *module.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total

    @property
    def device(self) -> torch.device:
        """Where the model computes: the device its inputs go to (under a memory mode, the
        execution device, wherever the parts are resting)."""
        if self.offloader is not None:
            return self.offloader.execution_device or self.offloader.device
        return next(self.unet.parameters()).device

    def to_device(self, device: torch.device) -> None:
        """Move every active component to `device` (dtypes were fixed when the model was built).
        A baked VAE that a separate VAE replaces waits on the CPU."""
        # as plain nn.Modules: diffusers wraps ModelMixin.to in a way type checkers misread
        active: list[torch.nn.Module] = [self.unet, self.vae, *self.text_encoders]
        for module in active:
            module.to(device=device)
        baked: torch.nn.Module | None = self.baked_vae
        if baked is not None:
            baked.to(device="cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (a RuntimeError) or a RuntimeError saying so: memory ran out, the
    file is not at fault, so it must never be reported as a bad file."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------ single files


def load_single_file(
    path: Path,
    placement: Placement,
    *,
    prediction_type: str | None = None,
    default_sd2_prediction: str = "v_prediction",
) -> StableDiffusionModel:
    """Load an LDM/SGM single-file checkpoint (`.safetensors`, `.ckpt`, ...).

    `prediction_type` overrides detection; SD 2.x files otherwise use the `<name>.yaml` next to
    them (as A1111 does) and then `default_sd2_prediction`. Others are epsilon models.
    """
    timings = LoadTimings()
    t0 = time.perf_counter()
    state_dict = read_state_dict(path)
    timings.read = time.perf_counter() - t0

    t0 = time.perf_counter()
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    family = fam.detect_family(shapes, path)
    if prediction_type is None:
        prediction_type = predict_type_for(path, family, default_sd2_prediction)
    try:
        arch = architecture(shapes, family, prediction_type)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{path}: not a usable {family.label} checkpoint: {exc}") from exc
    try:
        model = build_from_state_dict(state_dict, arch, placement, path)
    except (RuntimeError, KeyError, ValueError) as exc:
        if is_out_of_memory(exc):
            raise
        raise ModelFileError(f"{path}: tensors do not fit a {family.label} model: {exc}") from exc
    del state_dict
    timings.build = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.to_device(placement.device)
    timings.move = time.perf_counter() - t0
    model.timings = timings
    return model


def predict_type_for(path: Path, family: fam.ModelFamily, default_sd2: str) -> str:
    """A1111's rule: a `<name>.yaml` beside the checkpoint decides (parameterization: "v");
    without one, SD 2.x uses the configured default and everything else is epsilon."""
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE):
            return "v_prediction"
        return "epsilon"
    return default_sd2 if family.base == "sd2" else "epsilon"


def build_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    arch: Architecture,
    placement: Placement,
    source: Path,
) -> StableDiffusionModel:
    unet = _build_unet(state_dict, arch.unet, placement.dtype)
    vae = _build_vae(state_dict, arch.vae, placement.vae_dtype)
    encoders = tuple(_build_text_encoder(state_dict, spec, placement.text_encoder_dtype) for spec in arch.text_encoders)
    tokenizers = tuple(build_clip_tokenizer(spec.pad_token) for spec in arch.text_encoders)
    return StableDiffusionModel(
        family=arch.family,
        prediction_type=str(arch.scheduler["prediction_type"]),
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=arch.scheduler,
        source=source,
    )


def _cast(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}


def _assign(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    expected = set(module.state_dict().keys())
    extra = set(tensors) - expected
    # Buffers that transformers recomputes (and no longer saves) are not an error.
    for key in [k for k in extra if k.endswith("position_ids")]:
        tensors.pop(key)
        extra.discard(key)
    missing = expected - set(tensors)
    if missing or extra:
        raise ModelFileError(
            f"{what}: {len(missing)} missing tensors (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
        )
    module.load_state_dict(tensors, strict=True, assign=True)
    module.eval()
    module.requires_grad_(False)


def _build_unet(state_dict: Mapping[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype) -> Any:
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    converted = convert_ldm_unet_checkpoint(dict(state_dict), unet.config)
    _assign(unet, _cast(converted, dtype), "UNet")
    return unet


def _build_vae(state_dict: Mapping[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype) -> Any:
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    converted = convert_ldm_vae_checkpoint(dict(state_dict), vae.config)
    _assign(vae, _cast(converted, dtype), "VAE")
    return vae


def _build_text_encoder(
    state_dict: Mapping[str, torch.Tensor], spec: TextEncoderSpec, dtype: torch.dtype
) -> TextEncoder:
    config = CLIPTextConfig(**spec.config)
    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    with init_empty_weights():
        model = cls(config)
    if spec.layout == "clip":
        tensors = {k[len(spec.prefix) :]: v for k, v in state_dict.items() if k.startswith(spec.prefix)}
        if not any(k.startswith("text_model.") for k in tensors):
            tensors = {"text_model." + k: v for k, v in tensors.items()}  # very old SD 1.x files
    else:
        source = dict(state_dict)
        if spec.drop_last_layer:
            last = spec.config["num_hidden_layers"]
            dropped = f"{spec.prefix}transformer.resblocks.{last}."
            source = {k: v for k, v in source.items() if not k.startswith(dropped)}
        tensors = convert_open_clip_checkpoint(model, source, prefix=spec.prefix)
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the projection model kept it.
    if not hasattr(model, "text_model"):
        tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    _assign(model, _cast(tensors, dtype), f"text encoder {spec.prefix}")
    return model


# ---------------------------------------------------------------------------------- VAE files


def load_vae_file(path: Path, family: fam.ModelFamily, placement: Placement) -> AutoencoderKL:
    """A separate VAE: LDM keys (bare or under `first_stage_model.`) or diffusers keys."""
    state_dict = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes:
        try:
            vae = _diffusers_vae_from_state_dict(state_dict, family, placement.vae_dtype)
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: {exc}") from exc
        except (RuntimeError, KeyError, ValueError, IndexError) as exc:
            if is_out_of_memory(exc):
                raise
            raise ModelFileError(f"{path}: VAE tensors do not fit: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            prefix = find_vae_prefix(shapes)
        except UnknownModelError as exc:
            raise UnknownModelError(f"{path}: not a VAE: {exc} ({fam.describe_contents(shapes)})") from exc
        try:
            vae = _build_vae(state_dict, vae_config(shapes, prefix, family), placement.vae_dtype)
        except UnknownModelError as exc:
            raise UnknownModelError(f"{path}: not a usable VAE: {exc}") from exc
        except (RuntimeError, KeyError, ValueError) as exc:
            if is_out_of_memory(exc):
                raise
            raise ModelFileError(f"{path}: VAE tensors do not fit: {exc}") from exc
    check_vae_fits(vae.config, family, path)
    vae.to(device=placement.device)
    return vae


LATENT_CHANNELS = 4  # every supported family's UNet works on 4-channel latents
VAE_LEVELS = 4  # three downsamplings: latents are 1/8 of the image side


def check_vae_fits(config: Mapping[str, Any], family: fam.ModelFamily, path: Path) -> None:
    """Refuse a VAE that reads and builds but cannot serve `family`'s UNet: another latent width
    (an SD3/Flux VAE has 16 channels), another downsampling than 8x, or not RGB in and out. Such a
    file would otherwise load fine and fail (or give garbage) in every generation."""
    latent = int(config.get("latent_channels", 0))
    levels = len(config.get("block_out_channels", ()))
    rgb = (int(config.get("in_channels", 0)), int(config.get("out_channels", 0)))
    problems = []
    if latent != LATENT_CHANNELS:
        problems.append(f"it has {latent} latent channels, {family.label} models use {LATENT_CHANNELS}")
    if levels != VAE_LEVELS:
        problems.append(f"it downsamples {2 ** max(levels - 1, 0)}x, {family.label} models need 8x")
    if rgb != (3, 3):
        problems.append(f"it maps {rgb[0]} image channels to {rgb[1]}, not RGB to RGB")
    if problems:
        raise ModelFileError(
            f"{path}: this VAE does not fit a {family.label} checkpoint: {'; '.join(problems)} "
            "(a VAE made for another model family?)"
        )


def _diffusers_vae_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], family: fam.ModelFamily, dtype: torch.dtype
) -> Any:
    levels = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.down_blocks.")})
    block_out = [int(state_dict[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels]
    config = {
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "layers_per_block": len(
            {k.split(".")[4] for k in state_dict if k.startswith("encoder.down_blocks.0.resnets.")}
        ),
        "latent_channels": int(state_dict["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": 32,
        "scaling_factor": family.vae_scaling_factor,
        "force_upcast": family.is_sdxl,
    }
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    _assign(vae, _cast(dict(state_dict), dtype), "VAE")
    return vae


# --------------------------------------------------------------------------- diffusers folders

_ALLOWED_CLASSES = {
    "UNet2DConditionModel",
    "AutoencoderKL",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTokenizer",
    "CLIPTokenizerFast",
    "CLIPImageProcessor",
    "CLIPFeatureExtractor",
    "StableDiffusionSafetyChecker",
}


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and (path / "unet").is_dir()


def check_diffusers_folder(path: Path) -> dict[str, Any]:
    """Refuse folders that carry code or name classes we do not load (diffusers' custom-code
    gate has been bypassed before: CVE-2026-44513 and friends)."""
    code = [p for p in path.rglob("*.py")]
    if code:
        raise UnsafeModelFileError(f"{path}: refused: the folder contains code ({code[0].name}); nothing was run")
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}/model_index.json: unreadable: {exc}") from exc
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
            continue
        if value[1] not in _ALLOWED_CLASSES and not str(value[1]).endswith("Scheduler"):
            raise UnsafeModelFileError(f"{path}: refused: component {name!r} has class {value[1]!r}")
    return index


def load_diffusers_folder(path: Path, placement: Placement) -> StableDiffusionModel:
    timings = LoadTimings()
    t0 = time.perf_counter()
    index = check_diffusers_folder(path)
    common: dict[str, Any] = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=placement.dtype, **common)
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=placement.vae_dtype, **common)
    encoders: list[TextEncoder] = []
    tokenizers: list[CLIPTokenizer] = []
    for suffix in ("", "_2"):
        te_dir = path / f"text_encoder{suffix}"
        if not te_dir.is_dir():
            continue
        te_class = index.get(f"text_encoder{suffix}", [None, "CLIPTextModel"])[1]
        cls = CLIPTextModelWithProjection if te_class == "CLIPTextModelWithProjection" else CLIPTextModel
        encoders.append(cls.from_pretrained(te_dir, torch_dtype=placement.text_encoder_dtype, **common))
        tok_dir = path / f"tokenizer{suffix}"
        if (tok_dir / "vocab.json").is_file():
            tokenizers.append(CLIPTokenizer.from_pretrained(tok_dir, **common))
        else:
            gelu = encoders[-1].config.hidden_act == "gelu"
            tokenizers.append(build_clip_tokenizer(PAD_ZERO if gelu else PAD_EOS))
    if not encoders:
        raise ModelFileError(f"{path}: diffusers folder without a text encoder")
    timings.read = time.perf_counter() - t0

    family = _family_of_folder(unet, encoders, path)
    sched_path = path / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text(encoding="utf-8")) if sched_path.is_file() else {}
    prediction = str(sched.get("prediction_type", "epsilon"))
    model = StableDiffusionModel(
        family=family,
        prediction_type=prediction,
        unet=unet,
        vae=vae,
        text_encoders=tuple(encoders),
        tokenizers=tuple(tokenizers),
        scheduler_config=scheduler_config(family, prediction),
        source=path,
    )
    for module in model.modules():
        module.eval()
        module.requires_grad_(False)
    t0 = time.perf_counter()
    model.to_device(placement.device)
    timings.move = time.perf_counter() - t0
    model.timings = timings
    return model


def _family_of_folder(unet: Any, encoders: list[TextEncoder], path: Path) -> fam.ModelFamily:
    in_channels = int(unet.config.in_channels)
    if unet.config.addition_embed_type == "text_time":
        base = "sdxl" if len(encoders) == 2 else "sdxl-refiner"
    else:
        base = "sd2" if encoders[0].config.hidden_act == "gelu" else "sd1"
    for family in fam.FAMILIES.values():
        if family.base == base and family.unet_in_channels == in_channels:
            return family
    raise UnknownModelError(f"{path}: unsupported diffusers model ({base} UNet with {in_channels} input channels)")
