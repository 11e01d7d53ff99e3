"""The job requests other than generation, as plain data (generation requests are in
`modules.core.requests`). Every door (API, UI, scripts, later a replica in another process)
submits one of these to the engine facade (`modules.engine.facade.Engine.submit`).

Images are opaque here (PIL images at run time): core imports no imaging library.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# -- Extras ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExtrasRequest:
    """A1111's Extras (postprocessing) over one or more images, with its API defaults.
    `upscale_first` is accepted and ignored, as A1111 1.10 ignores it (the order is the
    `postprocessing_operation_order` option, else Upscale, GFPGAN, CodeFormer)."""

    images: tuple[object, ...]
    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False

    def operation_kwargs(self) -> dict[str, object]:
        """Everything but the images, as keyword arguments of `run_extras`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "images"}


# -- Checkpoint Merger -------------------------------------------------------------------------

NO_INTERPOLATION = "No interpolation"
WEIGHTED_SUM = "Weighted sum"
ADD_DIFFERENCE = "Add difference"
INTERP_METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
CHECKPOINT_FORMATS = ("ckpt", "safetensors")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
NO_VAE = "None"


@dataclass(frozen=True)
class MergeRequest:
    """The Checkpoint Merger form, with A1111's defaults. Checkpoints are named as in the top-bar
    dropdown (titles; any registry alias works)."""

    primary_model_name: str | None
    secondary_model_name: str | None = None
    tertiary_model_name: str | None = None
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    save_as_half: bool = False
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str | None = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    # per-block alphas (`modules.core.merge_blocks`): a full list, sparse "block:value" pairs or a
    # preset name; empty = the multiplier for every key
    block_weights: str = ""
    base_alpha: float | None = None  # keys outside the UNet's blocks, with block weights; None = M
    # LoRAs baked into the result after merging: (name, weight) with weight as in <lora:name:weight>
    bake_loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ExtractLoraRequest:
    """A LoRA of rank `rank` from the difference of two checkpoints (tuned - original), saved in
    kohya's format into the Lora folder as `<name>.safetensors`."""

    original_model_name: str
    tuned_model_name: str
    name: str
    rank: int = 8
    conv_rank: int = 0  # 3x3 convolutions too (LoCon) when > 0
    clamp_quantile: float = 0.99
    min_diff: float = 0.01  # text encoders whose largest difference is below this are left out
    save_as_half: bool = False


# -- Model jobs: only the worker thread touches device weights ---------------------------------

VAE_AUTOMATIC = "Automatic"  # a same-name VAE next to the checkpoint, else the checkpoint's own
VAE_NONE = "None"  # the checkpoint's own (baked) VAE


@dataclass(frozen=True)
class SwitchModel:
    """Make `checkpoint` (any registry alias) the active model and/or `vae` ("Automatic", "None"
    or a VAE name) the default VAE choice. None leaves that part as it is."""

    checkpoint: str | None = None
    vae: str | None = None


@dataclass(frozen=True)
class UnloadModel:
    """A1111's unload-checkpoint: the active model leaves the device (kept in the RAM cache when it fits)."""


@dataclass(frozen=True)
class ReloadModel:
    """A1111's reload-checkpoint: the most recently used checkpoint becomes active again."""


ModelJob = SwitchModel | UnloadModel | ReloadModel
