"""What jobs produce, as plain data: the adapters (API, UI, a remote replica) turn these into JSON or
gallery items without asking the engine or the model manager anything afterwards.

Images are opaque here (PIL images at run time): core imports no imaging library.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.core.infotext import format_params_line


@dataclass(frozen=True)
class ModelUsed:
    """The checkpoint and VAE a generation actually ran with, captured inside its model lease, so
    generation info never reads whatever model is active afterwards."""

    name: str | None = None  # the checkpoint's A1111 model name (file stem)
    title: str | None = None
    shorthash: str | None = None
    sha256: str | None = None
    vae_name: str | None = None  # a separate VAE file's name; None = the checkpoint's own
    vae_hash: str | None = None
    family: str | None = None  # e.g. "SD 1.x", "SDXL"


@dataclass
class Result:
    """What one generation job produced."""

    images: list[Any] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    params: list[dict[str, Any]] = field(default_factory=list)  # infotext params per image
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    job_timestamp: str = ""
    paths: list[Path] = field(default_factory=list)  # saved files, when saving was asked
    grid: Any = None
    grid_path: Path | None = None
    model: ModelUsed = field(default_factory=ModelUsed)
    version: str = ""  # the engine's version string ("sd-webui-x.y.z")
    # images before the generated ones (grids a script made; A1111's index_of_first_image); their
    # infotexts lead `infotexts` too, while prompts/seeds/params are the generated images' only
    leading_images: int = 0
    # images shown and returned after the generated ones, not generations themselves: the ControlNet
    # units' detected maps (the extension appends them to the API's images unless a unit says not to)
    extra_images: list[Any] = field(default_factory=list)


def extras_infotext(info: dict[str, Any]) -> str:
    """A1111's params line (`key: value, ...`, quoted where needed, Nones left out), floats as %g."""
    return format_params_line({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in info.items()})


def plaintext_to_html(text: str) -> str:
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


@dataclass
class ExtrasResult:
    """One image out of Extras with A1111's postprocessing infotext as a dict."""

    image: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def infotext(self) -> str:
        return extras_infotext(self.info)

    @property
    def html_info(self) -> str:
        return plaintext_to_html(self.infotext)


@dataclass
class MergeResult:
    """A finished checkpoint merge."""

    path: Path
    tensors: int  # tensors written
    merged: int  # tensors combined from two or three models
    discarded: int
    is_inpainting: bool
    is_instruct_pix2pix: bool
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what was asked and not done (e.g. LoRA keys no layer matched)

    @property
    def message(self) -> str:
        return f"Checkpoint saved to {self.path}"


@dataclass(frozen=True)
class ExtractLoraResult:
    """A LoRA extracted from the difference of two checkpoints."""

    path: Path
    modules: int  # LoRA modules written
    text_encoder_included: bool  # False when the text encoders did not differ (min_diff)
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        return f"LoRA saved to {self.path}"


@dataclass(frozen=True)
class ModelSwitched:
    """The outcome of a model job (switch, unload, reload): what is active now."""

    checkpoint: str | None  # title, None when nothing is loaded
    vae: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ModelStatus:
    """What the model manager holds, readable at any time without waiting for the worker."""

    checkpoint: str | None = None  # title of the active checkpoint
    checkpoint_name: str | None = None  # its A1111 name (file name relative to the folder)
    model_name: str | None = None  # its A1111 model name (file stem)
    checkpoint_hash: str | None = None  # AutoV2 short hash, once known
    sha256: str | None = None
    family: str | None = None  # e.g. "SD 1.x"
    variant: str = ""  # "inpaint", "ip2p" or "" for a normal model
    is_sdxl: bool = False
    vae: str | None = None  # the separate VAE file in use, None = the checkpoint's own
    vae_choice: str = "Automatic"  # the selected VAE choice (the sd_vae option's value)
    loading: str | None = None  # name of a checkpoint being loaded now
    last_error: str | None = None
    cached: tuple[str, ...] = ()
    cache_bytes_used: int = 0
