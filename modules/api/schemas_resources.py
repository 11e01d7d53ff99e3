"""Response bodies of the resource routes (options, models, info, server), with A1111's field names.

Hand-written to match `modules/api/models.py` of A1111 v1.10.1 field for field (see
reference/a1111.md 1.3); nothing here is generated from internal classes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- models -------------------------------------------------------------------------------


class SDModelItem(_Item):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(_Item):
    model_name: str
    filename: str


class HypernetworkItem(_Item):
    name: str
    path: str | None = None


class LoraItem(_Item):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = {}


class EmbeddingItem(_Item):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(_Item):
    loaded: dict[str, EmbeddingItem] = {}
    skipped: dict[str, EmbeddingItem] = {}


# --- info ---------------------------------------------------------------------------------


class SamplerItem(_Item):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(_Item):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(_Item):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(_Item):
    name: str


class FaceRestorerItem(_Item):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(_Item):
    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(_Item):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class ScriptsList(_Item):
    txt2img: list[str] = []
    img2img: list[str] = []


class ScriptArg(_Item):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(_Item):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg]


class ExtensionItem(_Item):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool


class MemoryResponse(_Item):
    """`ram` in bytes (A1111's meaning: `used` is this process's resident memory, `free` is the
    machine's total minus that); `cuda` is `{"error": "unavailable"}` without CUDA."""

    ram: dict[str, Any]
    cuda: dict[str, Any]
