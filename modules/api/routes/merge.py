"""Ours (A1111 has no merge route): the Checkpoint Merger and LoRA extraction over HTTP.

- ``POST /sdapi/v1/merge-checkpoint``: the Checkpoint Merger tab's form, by its field names
  (`MergeRequest`: A1111's Merger labels, plus ``block_weights`` / ``base_alpha`` and
  ``bake_loras``), merged as one job (progress and interrupt through ``/sdapi/v1/progress`` and
  ``/sdapi/v1/interrupt``); answers where the checkpoint was saved and its title in
  ``/sdapi/v1/sd-models``.
- ``POST /sdapi/v1/extract-lora``: a LoRA of rank ``rank`` from ``tuned - original``, written into
  the Lora folder; answers the file and its name in ``/sdapi/v1/loras``.
- ``GET /sdapi/v1/merge-block-presets``: the block-weight presets (name -> 25 values for
  SD 1.x/2.x, 19 for SDXL).

Unknown fields are refused (422), never ignored. An interrupted job answers 409 and leaves no file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.errors import error_response
from modules.core.errors import ValidationError
from modules.core.jobs import (
    ADD_DIFFERENCE,
    CHECKPOINT_FORMATS,
    CONFIG_SOURCES,
    INTERP_METHODS,
    NO_INTERPOLATION,
    NO_VAE,
    WEIGHTED_SUM,
    ExtractLoraRequest,
    MergeRequest,
)
from modules.core.merge_blocks import SD_LAYOUT, SDXL_LAYOUT, presets_for
from modules.core.results import ExtractLoraResult, MergeResult
from modules.engine.facade import JobInterrupted
from modules.services import Services

router = APIRouter()

_METHOD_ALIASES = {"weighted_sum": WEIGHTED_SUM, "add_difference": ADD_DIFFERENCE, "no_interpolation": NO_INTERPOLATION}


class BakeLora(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A LoRA as listed by /sdapi/v1/loras (name or alias).")
    weight: float = Field(default=1.0, description="As in <lora:name:weight>.")


class MergeCheckpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    primary_model_name: str = Field(description="Checkpoint A (any name /sdapi/v1/sd-models lists).")
    secondary_model_name: str | None = Field(default=None, description="Checkpoint B.")
    tertiary_model_name: str | None = Field(default=None, description="Checkpoint C (Add difference).")
    interp_method: str = Field(default=WEIGHTED_SUM, description=f"One of {', '.join(INTERP_METHODS)}.")
    multiplier: float = Field(default=0.3, description="M, between 0 and 1.")
    custom_name: str = ""
    checkpoint_format: str = Field(default="safetensors", description=f"One of {', '.join(CHECKPOINT_FORMATS)}.")
    save_as_half: bool = False
    config_source: str = Field(default=CONFIG_SOURCES[0], description=f"One of {', '.join(CONFIG_SOURCES)}.")
    bake_in_vae: str = Field(default=NO_VAE, description="A VAE name from /sdapi/v1/sd-vae, or None.")
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str | dict[str, Any] = "{}"
    block_weights: str | list[float] = Field(
        default="",
        description="Per-block alphas: 25 values IN00-IN11,M00,OUT00-OUT11 (19 for SDXL), a sparse "
        "'IN03:0.6, M00:0.1' list or a preset name; empty = M for every key.",
    )
    base_alpha: float | None = Field(default=None, description="With block weights: every other key (default M).")
    bake_loras: list[BakeLora | str] = Field(
        default_factory=list, description='LoRAs baked in after merging: {"name", "weight"} or "name:weight".'
    )

    @field_validator("interp_method")
    @classmethod
    def _method(cls, value: str) -> str:
        return _METHOD_ALIASES.get(value, value)

    def to_request(self) -> MergeRequest:
        return MergeRequest(
            primary_model_name=self.primary_model_name,
            secondary_model_name=self.secondary_model_name,
            tertiary_model_name=self.tertiary_model_name,
            interp_method=self.interp_method,
            multiplier=self.multiplier,
            custom_name=self.custom_name,
            checkpoint_format=self.checkpoint_format,
            save_as_half=self.save_as_half,
            config_source=self.config_source,
            bake_in_vae=self.bake_in_vae,
            discard_weights=self.discard_weights,
            save_metadata=self.save_metadata,
            add_merge_recipe=self.add_merge_recipe,
            copy_metadata_fields=self.copy_metadata_fields,
            metadata_json=self.metadata_json if isinstance(self.metadata_json, str) else json.dumps(self.metadata_json),
            block_weights=(
                self.block_weights
                if isinstance(self.block_weights, str)
                else ",".join(repr(float(v)) for v in self.block_weights)
            ),
            base_alpha=self.base_alpha,
            bake_loras=tuple(_bake_entry(entry) for entry in self.bake_loras),
        )


def _bake_entry(entry: BakeLora | str) -> tuple[str, float]:
    if isinstance(entry, BakeLora):
        return entry.name, entry.weight
    name, sep, weight = entry.rpartition(":")
    if not sep:
        return entry, 1.0
    try:
        return name, float(weight)
    except ValueError:
        raise ValidationError(f"bake_loras: {entry!r} is not name:weight") from None


class ExtractLoraBody(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    original_model_name: str = Field(description="The base checkpoint.")
    tuned_model_name: str = Field(description="The fine-tuned checkpoint; the LoRA is tuned - original.")
    name: str = Field(description="The LoRA's file name (without .safetensors) in the Lora folder.")
    rank: int = 8
    conv_rank: int = Field(default=0, description="Rank of the 3x3 convolutions (LoCon); 0 = none.")
    clamp_quantile: float = 0.99
    min_diff: float = Field(default=0.01, description="Text encoders that differ less are left out.")
    save_as_half: bool = False


def _interrupted() -> JSONResponse:
    message = "Interrupted: nothing was saved"
    return error_response(409, "JobInterrupted", message, "")


def _sd_model_title(services: Services, path: Path) -> str | None:
    for info in services.registry.checkpoints():
        if info.filename == path:
            return info.title
    return None


@router.post("/merge-checkpoint")
async def merge_checkpoint(body: MergeCheckpointRequest, services: Services = Depends(get_services)) -> Any:
    request = body.to_request()
    handle = await run_in_threadpool(services.engine.submit, request)
    try:
        result: MergeResult = await asyncio.wrap_future(handle.future)
    except JobInterrupted:
        return _interrupted()
    return {
        "info": result.message,
        "path": str(result.path),
        "title": _sd_model_title(services, result.path),
        "tensors": result.tensors,
        "merged": result.merged,
        "discarded": result.discarded,
        "is_inpainting": result.is_inpainting,
        "is_instruct_pix2pix": result.is_instruct_pix2pix,
        "seconds": result.seconds,
        "warnings": list(result.warnings),
        "metadata": result.metadata,
    }


@router.post("/extract-lora")
async def extract_lora(body: ExtractLoraBody, services: Services = Depends(get_services)) -> Any:
    request = ExtractLoraRequest(**body.model_dump())
    handle = await run_in_threadpool(services.engine.submit, request)
    try:
        result: ExtractLoraResult = await asyncio.wrap_future(handle.future)
    except JobInterrupted:
        return _interrupted()
    return {
        "info": result.message,
        "path": str(result.path),
        "name": result.path.name.rsplit(".", 1)[0],
        "modules": result.modules,
        "text_encoder_included": result.text_encoder_included,
        "seconds": result.seconds,
        "warnings": list(result.warnings),
    }


@router.get("/merge-block-presets")
def merge_block_presets() -> dict[str, dict[str, list[float]]]:
    """The presets by model kind: "sd" (25 blocks) and "sdxl" (19 blocks)."""
    return {"sd": presets_for(SD_LAYOUT), "sdxl": presets_for(SDXL_LAYOUT)}
