"""A1111's `Processed.js()` JSON from a request and its Result: the API's `info` string and the
UI's generation info. Built from the Result alone (the model it ran with is captured there), so
it is the same whichever model is active by the time a client reads it."""

from __future__ import annotations

from typing import Any

from modules.core.infotext import INFOTEXT_KEYS_AFTER_EXTRA, INFOTEXT_KEYS_BEFORE_EXTRA
from modules.core.requests import GenerationRequest
from modules.core.results import Result

# infotext keys with a fixed place in A1111's infotext; everything else is extra_generation_params
_OWN_KEYS = frozenset(INFOTEXT_KEYS_BEFORE_EXTRA) | frozenset(INFOTEXT_KEYS_AFTER_EXTRA)


def _first(values: list[Any], default: Any = None) -> Any:
    return values[0] if values else default


def generation_info(request: GenerationRequest, result: Result, first: int = 0) -> dict[str, Any]:
    """A1111's `Processed.js()` keys plus `warnings` (ours: what was accepted but not acted on,
    and anything else the caller should know). `first` is 1 when a grid leads the images."""
    params = _first(result.params, {})
    model = result.model
    clip_skip = params.get("Clip skip")
    infotexts = list(result.infotexts)
    if result.leading_images:
        first = result.leading_images  # a script's grids lead, each with its own infotext
    elif first:
        infotexts = infotexts[:1] + infotexts
    return {
        "prompt": request.prompt,
        "all_prompts": list(result.prompts),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": list(result.negative_prompts),
        "seed": _first(result.seeds, request.seed),
        "all_seeds": list(result.seeds),
        "subseed": _first(result.subseeds, request.subseed),
        "all_subseeds": list(result.subseeds),
        "subseed_strength": request.subseed_strength,
        "width": result.width or request.width,
        "height": result.height or request.height,
        "sampler_name": params.get("Sampler", request.effective_sampler),
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": bool(request.restore_faces),
        "face_restoration_model": params.get("Face restoration"),
        "sd_model_name": params.get("Model") or model.name,
        "sd_model_hash": params.get("Model hash") or model.shorthash,
        "sd_vae_name": params.get("VAE") or model.vae_name,
        "sd_vae_hash": params.get("VAE hash") or model.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {k: v for k, v in params.items() if k not in _OWN_KEYS},
        "index_of_first_image": first,
        "infotexts": infotexts,
        "styles": list(request.styles),
        "job_timestamp": result.job_timestamp,
        "clip_skip": int(clip_skip) if clip_skip is not None else 1,
        "is_using_inpainting_conditioning": "Conditional mask weight" in params,
        "version": result.version,
        "warnings": list(result.warnings),
    }
