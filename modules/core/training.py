"""Training requests and results as plain data (the Train tab, `/sdapi/v1/create/*`, `/train/*`).

The embedding and hypernetwork requests carry A1111's `train_embedding` / `train_hypernetwork`
keywords with A1111's defaults, so the API can pass a client's body through unchanged. LoRA
training (which A1111 leaves to kohya's sd-scripts) takes kohya's option names and defaults where
kohya has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# -- creating empty networks -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreateEmbeddingRequest:
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


HYPERNETWORK_SIZES = (768, 1024, 320, 640, 1280)
HYPERNETWORK_ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid")
HYPERNETWORK_INITS = ("Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal")


@dataclass(frozen=True, kw_only=True)
class CreateHypernetworkRequest:
    name: str
    enable_sizes: tuple[int, ...] = (768, 320, 640, 1280)
    overwrite_old: bool = False
    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "linear"
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: tuple[float, ...] | None = None


# -- A1111's embedding / hypernetwork training ---------------------------------------------------

CLIP_GRAD_MODES = ("disabled", "value", "norm")
LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")


@dataclass(frozen=True, kw_only=True)
class _A1111TrainFields:
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = 500
    template_filename: str = "style_filewords.txt"
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str = "Euler a"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512


@dataclass(frozen=True, kw_only=True)
class TrainEmbeddingRequest(_A1111TrainFields):
    embedding_name: str
    save_embedding_every: int = 500
    save_image_with_stored_embedding: bool = True


@dataclass(frozen=True, kw_only=True)
class TrainHypernetworkRequest(_A1111TrainFields):
    hypernetwork_name: str
    learn_rate: str = "0.00001"
    save_hypernetwork_every: int = 500


# -- LoRA ----------------------------------------------------------------------------------------

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
OPTIMIZERS = ("AdamW", "AdamW8bit", "SGD")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass(frozen=True, kw_only=True)
class LoraTrainRequest:
    """kohya's `train_network.py` options (names and defaults) that we act on."""

    name: str
    data_root: str
    output_dir: str = ""  # empty: the Lora folder
    resolution: tuple[int, int] = (512, 512)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    random_crop: bool = False
    flip_aug: bool = False
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    network_dim: int = 4
    network_alpha: float = 1.0
    conv_dim: int = 0  # 0: no LoRA on 3x3 convolutions (kohya's conv_dim for LoCon)
    conv_alpha: float = 1.0
    train_unet: bool = True
    train_text_encoder: bool = True
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    optimizer_type: str = "AdamW"
    train_batch_size: int = 1
    max_train_epochs: int | None = None
    max_train_steps: int = 1600
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    seed: int = -1
    save_every_n_steps: int = 0
    sample_every_n_steps: int = 0
    sample_prompt: str = ""
    sample_negative_prompt: str = ""
    sample_steps: int = 20
    sample_sampler_name: str = "Euler a"
    sample_cfg_scale: float = 7.0
    sample_seed: int = -1
    sample_width: int = 512
    sample_height: int = 512
    resume: bool = True  # continue from the saved state beside the output file when there is one
    cache_latents: bool = True
    comment: str = ""


TrainRequest = TrainEmbeddingRequest | TrainHypernetworkRequest | LoraTrainRequest


@dataclass(frozen=True)
class TrainResult:
    kind: str  # "embedding" | "hypernetwork" | "lora"
    name: str
    filename: str
    steps_done: int
    interrupted: bool = False
    last_loss: float | None = None
    samples: tuple[str, ...] = ()
    saved: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    skipped_images: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (file name, reason)


@dataclass(frozen=True)
class CreateResult:
    kind: str  # "embedding" | "hypernetwork"
    name: str
    filename: str
