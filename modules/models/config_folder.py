"""Write a diffusers-layout config folder (no weights) for an `Architecture`.

This is what diffusers' `from_single_file(..., config=<folder>)` needs to load a checkpoint
offline: model_index.json, per-component config.json, tokenizer files and the scheduler config.
The benchmark uses it to run diffusers' own loader as the baseline on the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modules.core.atomic import atomic_write_text
from modules.models.architecture import Architecture
from modules.models.clip_tokenizer import write_tokenizer_files


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


def write_config_folder(arch: Architecture, dest: Path) -> Path:
    is_xl = arch.family.is_sdxl
    pipeline = "StableDiffusionXLPipeline" if is_xl else "StableDiffusionPipeline"
    if arch.family.variant == "inpaint":
        pipeline = "StableDiffusionXLInpaintPipeline" if is_xl else "StableDiffusionInpaintPipeline"
    elif arch.family.variant == "ip2p":
        pipeline = "StableDiffusionInstructPix2PixPipeline"
    scheduler = "EulerDiscreteScheduler" if is_xl else "PNDMScheduler"
    index: dict[str, Any] = {
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    names = ["text_encoder", "text_encoder_2"] if len(arch.text_encoders) == 2 else ["text_encoder"]
    if arch.family.base == "sdxl-refiner":
        names = ["text_encoder_2"]
        index["text_encoder"] = [None, None]
        index["tokenizer"] = [None, None]
    for name, spec in zip(names, arch.text_encoders, strict=True):
        cls = "CLIPTextModelWithProjection" if spec.with_projection else "CLIPTextModel"
        index[name] = ["transformers", cls]
        tok = name.replace("text_encoder", "tokenizer")
        index[tok] = ["transformers", "CLIPTokenizer"]
        _write_json(
            dest / name / "config.json", {"architectures": [cls], "model_type": "clip_text_model", **spec.config}
        )
        write_tokenizer_files(dest / tok, spec.pad_token)
    if not is_xl:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    else:
        index["force_zeros_for_empty_prompt"] = arch.family.base == "sdxl"
    _write_json(dest / "model_index.json", index)
    _write_json(dest / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **arch.unet})
    _write_json(dest / "vae" / "config.json", {"_class_name": "AutoencoderKL", **arch.vae})
    sched = {"_class_name": scheduler, **arch.scheduler}
    if not is_xl:
        sched["skip_prk_steps"] = True
    _write_json(dest / "scheduler" / "scheduler_config.json", sched)
    return dest
