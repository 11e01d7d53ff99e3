"""The Train tab (a1111.md 10.6, NOTES "Train"): A1111's Create embedding, Create hypernetwork
and Train sub-tabs with their labels, defaults and elem_ids; "Preprocess images" (A1111's old
preprocessing tab: crop / split / flip / caption into a new folder); and "Train LoRA", our form
over kohya's options (`LoraTrainRequest`, elem_ids `train_lora_<field>`).

Each form is a `dict[str, Component]` named by its request's fields and turned into the request
by one plain function (`create_embedding_request`, `create_hypernetwork_request`,
`train_request`, `lora_request`). A Train button submits one job to the engine and returns at
once; a `gr.Timer` then polls `engine.training_status(job_id)` about once a second for the
progress line, the loss plot and the sample gallery, and stops when the run has ended. When it
ends, the extra-networks cards of txt2img and img2img for that kind are rebuilt, so the new file
is there without a refresh. Interrupt asks the run to stop (it saves what it has).

Folders typed here are server folders: relative to the data dir, and only inside the data dir
or the outputs folder (as Extras' batch folders). Bad input is a `gr.Error` with the message.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import pandas as pd  # type: ignore[import-untyped]
from gradio.context import Context
from PIL import Image

from modules.core.errors import SdWebuiError, UserError
from modules.core.training import (
    CLIP_GRAD_MODES,
    HYPERNETWORK_ACTIVATIONS,
    HYPERNETWORK_INITS,
    HYPERNETWORK_SIZES,
    LATENT_SAMPLING_METHODS,
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    OPTIMIZERS,
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from modules.engine.interrogation import Interrogator
from modules.engine.training.preprocess import EXISTING_CAPTION_ACTIONS, PreprocessReport, preprocess_images
from modules.engine.training.templates import DEFAULT_EMBEDDING_TEMPLATE, list_templates
from modules.services import Services
from modules.ui.common import sampler_choices
from modules.ui.extra_network_cards import HYPERNETWORKS, LORA, TEXTUAL_INVERSION
from modules.ui.extra_networks import render_page
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.server_folders import server_dir

WIKI = "https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/Textual-Inversion"
POLL_SECONDS = 1.0
PREPROCESS_POLL_SECONDS = 0.25
PLOT_POINTS = 1000  # the loss plot shows at most this many points (evenly thinned)
RUNNING = "running"
CARD_PREFIXES = ("txt2img", "img2img")
KIND_PAGES = {"embedding": TEXTUAL_INVERSION, "hypernetwork": HYPERNETWORKS, "lora": LORA}
KIND_TITLES = {"embedding": "Embedding", "hypernetwork": "Hypernetwork", "lora": "LoRA"}

# "Read parameters (prompt, etc...) from txt2img tab when making previews": request field ->
# the txt2img control's elem_id (A1111's txt2img_preview_params)
TXT2IMG_PREVIEW = {
    "preview_prompt": "txt2img_prompt",
    "preview_negative_prompt": "txt2img_neg_prompt",
    "preview_steps": "txt2img_steps",
    "preview_sampler_name": "txt2img_sampling",
    "preview_cfg_scale": "txt2img_cfg_scale",
    "preview_seed": "txt2img_seed",
    "preview_width": "txt2img_width",
    "preview_height": "txt2img_height",
}


# -- form values -> requests ----------------------------------------------------------------------


def parse_numbers(text: str | None, label: str) -> tuple[float, ...]:
    """ "1, 2, 1" -> (1.0, 2.0, 1.0); anything else is a `UserError` naming `label`."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"{label}: expected numbers separated by commas, got {text!r}") from None


def _float(value: Any, label: str) -> float:
    try:
        return float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label}: expected a number, got {value!r}") from None


def _optional_float(value: Any, label: str) -> float | None:
    """An empty box is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _float(value, label)


def _int(value: Any, label: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label}: please enter a number")
    number = _float(value, label)
    if number != int(number):
        raise UserError(f"{label}: expected a whole number, got {value!r}")
    return int(number)


def create_embedding_request(
    *, name: str | None, init_text: str | None, num_vectors_per_token: float, overwrite_old: bool
) -> CreateEmbeddingRequest:
    return CreateEmbeddingRequest(
        name=(name or "").strip(),
        num_vectors_per_token=int(num_vectors_per_token),
        overwrite_old=bool(overwrite_old),
        init_text=init_text if init_text is not None else "*",
    )


def create_hypernetwork_request(
    *,
    name: str | None,
    enable_sizes: Sequence[str | int],
    layer_structure: str | None,
    activation_func: str,
    weight_init: str,
    add_layer_norm: bool,
    use_dropout: bool,
    dropout_structure: str | None,
    overwrite_old: bool,
) -> CreateHypernetworkRequest:
    """A1111's create form; the dropout structure counts only with "Use dropout" (empty: none)."""
    dropout = parse_numbers(dropout_structure, "Dropout structure") if use_dropout else ()
    return CreateHypernetworkRequest(
        name=(name or "").strip(),
        enable_sizes=tuple(int(s) for s in enable_sizes),
        overwrite_old=bool(overwrite_old),
        layer_structure=parse_numbers(layer_structure, "Hypernetwork layer structure"),
        activation_func=activation_func,
        weight_init=weight_init,
        add_layer_norm=bool(add_layer_norm),
        use_dropout=bool(use_dropout),
        dropout_structure=dropout or None,
    )


# the Train sub-tab's controls shared by both kinds (request field names)
TRAIN_SHARED = (
    "batch_size",
    "gradient_step",
    "data_root",
    "log_directory",
    "training_width",
    "training_height",
    "varsize",
    "steps",
    "clip_grad_mode",
    "clip_grad_value",
    "shuffle_tags",
    "tag_drop_out",
    "latent_sampling_method",
    "use_weight",
    "create_image_every",
    "template_filename",
    "preview_from_txt2img",
)


def train_request(kind: str, values: Mapping[str, Any]) -> TrainEmbeddingRequest | TrainHypernetworkRequest:
    """The Train sub-tab's values as an embedding or hypernetwork training request. `values` are
    by the form's names: `embedding_name` / `hypernetwork_name`, `embedding_learn_rate` /
    `hypernetwork_learn_rate`, `save_embedding_every` (A1111 uses it for both kinds), the
    shared fields (`TRAIN_SHARED`) and, when the txt2img tab is on the page, the `preview_*`
    fields read from it."""
    common: dict[str, Any] = {
        "batch_size": _int(values["batch_size"], "Batch size"),
        "gradient_step": _int(values["gradient_step"], "Gradient accumulation steps"),
        "data_root": str(values["data_root"] or ""),
        "log_directory": str(values["log_directory"] or ""),
        "training_width": int(values["training_width"]),
        "training_height": int(values["training_height"]),
        "varsize": bool(values["varsize"]),
        "steps": _int(values["steps"], "Max steps"),
        "clip_grad_mode": str(values["clip_grad_mode"]),
        "clip_grad_value": str(values["clip_grad_value"] or ""),
        "shuffle_tags": bool(values["shuffle_tags"]),
        "tag_drop_out": float(values["tag_drop_out"]),
        "latent_sampling_method": str(values["latent_sampling_method"]),
        "use_weight": bool(values["use_weight"]),
        "create_image_every": _int(values["create_image_every"], "Save an image every N steps"),
        "template_filename": str(values["template_filename"] or DEFAULT_EMBEDDING_TEMPLATE),
        "preview_from_txt2img": bool(values["preview_from_txt2img"]),
    }
    previews = {
        "preview_prompt": lambda v: str(v or ""),
        "preview_negative_prompt": lambda v: str(v or ""),
        "preview_steps": lambda v: int(v),
        "preview_sampler_name": lambda v: str(v),
        "preview_cfg_scale": lambda v: float(v),
        "preview_seed": lambda v: int(v) if v not in (None, "") else -1,
        "preview_width": lambda v: int(v),
        "preview_height": lambda v: int(v),
    }
    for name, convert in previews.items():
        if name in values and values[name] is not None:
            common[name] = convert(values[name])
    save_every = _int(values["save_embedding_every"], "Save a copy every N steps")
    if kind == "embedding":
        return TrainEmbeddingRequest(
            embedding_name=str(values["embedding_name"] or ""),
            learn_rate=str(values["embedding_learn_rate"] or "").strip(),
            save_embedding_every=save_every,
            save_image_with_stored_embedding=bool(values["save_image_with_stored_embedding"]),
            **common,
        )
    return TrainHypernetworkRequest(
        hypernetwork_name=str(values["hypernetwork_name"] or ""),
        learn_rate=str(values["hypernetwork_learn_rate"] or "").strip(),
        save_hypernetwork_every=save_every,
        **common,
    )


def lora_request(values: Mapping[str, Any]) -> LoraTrainRequest:
    """The Train LoRA form as a request. Names are the request's fields, except the two halves
    of `resolution` (`resolution_width`, `resolution_height`); empty per-part learning rates,
    0 epochs and a 0 min-SNR gamma are "not set" (None)."""
    v = values
    epochs = _int(v["max_train_epochs"], "Max epochs")
    gamma = _float(v["min_snr_gamma"], "Min-SNR gamma")
    return LoraTrainRequest(
        name=str(v["name"] or "").strip(),
        data_root=str(v["data_root"] or ""),
        output_dir=str(v["output_dir"] or ""),
        resolution=(_int(v["resolution_width"], "Training width"), _int(v["resolution_height"], "Training height")),
        enable_bucket=bool(v["enable_bucket"]),
        min_bucket_reso=_int(v["min_bucket_reso"], "Min bucket resolution"),
        max_bucket_reso=_int(v["max_bucket_reso"], "Max bucket resolution"),
        bucket_reso_steps=_int(v["bucket_reso_steps"], "Bucket resolution steps"),
        bucket_no_upscale=bool(v["bucket_no_upscale"]),
        random_crop=bool(v["random_crop"]),
        flip_aug=bool(v["flip_aug"]),
        caption_extension=str(v["caption_extension"] or ".txt"),
        shuffle_caption=bool(v["shuffle_caption"]),
        keep_tokens=_int(v["keep_tokens"], "Keep tokens"),
        caption_dropout_rate=float(v["caption_dropout_rate"]),
        network_dim=_int(v["network_dim"], "Network rank"),
        network_alpha=_float(v["network_alpha"], "Network alpha"),
        conv_dim=_int(v["conv_dim"], "Conv rank"),
        conv_alpha=_float(v["conv_alpha"], "Conv alpha"),
        train_unet=bool(v["train_unet"]),
        train_text_encoder=bool(v["train_text_encoder"]),
        learning_rate=_float(v["learning_rate"], "Learning rate"),
        unet_lr=_optional_float(v["unet_lr"], "UNet learning rate"),
        text_encoder_lr=_optional_float(v["text_encoder_lr"], "Text encoder learning rate"),
        lr_scheduler=str(v["lr_scheduler"]),
        lr_warmup_steps=_int(v["lr_warmup_steps"], "Warmup steps"),
        optimizer_type=str(v["optimizer_type"]),
        train_batch_size=_int(v["train_batch_size"], "Batch size"),
        max_train_epochs=epochs or None,
        max_train_steps=_int(v["max_train_steps"], "Max steps"),
        gradient_accumulation_steps=_int(v["gradient_accumulation_steps"], "Gradient accumulation steps"),
        gradient_checkpointing=bool(v["gradient_checkpointing"]),
        mixed_precision=str(v["mixed_precision"]),
        max_grad_norm=_float(v["max_grad_norm"], "Max gradient norm"),
        min_snr_gamma=gamma or None,
        noise_offset=_float(v["noise_offset"], "Noise offset"),
        seed=_int(v["seed"], "Seed"),
        save_every_n_steps=_int(v["save_every_n_steps"], "Save every N steps"),
        sample_every_n_steps=_int(v["sample_every_n_steps"], "Sample every N steps"),
        sample_prompt=str(v["sample_prompt"] or ""),
        sample_negative_prompt=str(v["sample_negative_prompt"] or ""),
        sample_steps=_int(v["sample_steps"], "Sample steps"),
        sample_sampler_name=str(v["sample_sampler_name"]),
        sample_cfg_scale=_float(v["sample_cfg_scale"], "Sample CFG scale"),
        sample_seed=_int(v["sample_seed"], "Sample seed"),
        sample_width=_int(v["sample_width"], "Sample width"),
        sample_height=_int(v["sample_height"], "Sample height"),
        resume=bool(v["resume"]),
        cache_latents=bool(v["cache_latents"]),
        comment=str(v["comment"] or ""),
    )


# -- a run's status -> what the page shows --------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_text(status: Mapping[str, Any] | None, *, queued: bool = False) -> str:
    """The progress line: step/max, epoch, loss, learning rate, elapsed and ETA."""
    if status is None:
        return ""
    title = f"{KIND_TITLES.get(str(status.get('kind')), 'Training')} {status.get('name', '')}".strip()
    if queued:
        return f"{title}: waiting for the worker…"
    step, total = int(status.get("step") or 0), int(status.get("max_steps") or 0)
    if status.get("state") == RUNNING and total == 0:
        return f"{title}: preparing…"
    parts = [f"step {step}/{total}", f"epoch {int(status.get('epoch') or 0)}"]
    loss = status.get("loss")
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    rate = status.get("learning_rate")
    if rate:
        parts.append(f"lr {float(rate):.2e}")
    parts.append(f"elapsed {_duration(status.get('elapsed'))}")
    if status.get("state") == RUNNING:
        parts.append(f"ETA {_duration(status.get('eta'))}")
    return f"{title}: " + " · ".join(parts)


def progress_html(status: Mapping[str, Any] | None, *, queued: bool = False) -> str:
    text = progress_text(status, queued=queued)
    if not text:
        return ""
    state = html.escape(str((status or {}).get("state", "")))
    out = f"<div class='sdw-train-progress' data-state='{state}'>{html.escape(text)}</div>"
    warnings = (status or {}).get("warnings") or []
    if warnings:
        items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
        out += f"<ul class='sdw-train-warnings'>{items}</ul>"
    return out


def loss_frame(status: Mapping[str, Any] | None) -> pd.DataFrame:
    """The loss history as the plot's data (at most `PLOT_POINTS` points, the last one kept)."""
    losses = list((status or {}).get("losses") or [])
    if len(losses) > PLOT_POINTS:
        stride = -(-len(losses) // PLOT_POINTS)
        losses = losses[::stride] + ([losses[-1]] if (len(losses) - 1) % stride else [])
    return pd.DataFrame(
        {"step": [int(s) for s, _ in losses], "loss": [float(v) for _, v in losses]},
        columns=["step", "loss"],
    )


def outcome_text(status: Mapping[str, Any]) -> str:
    """What the output box says when a run has ended (A1111's text for a finished run)."""
    state = status.get("state")
    title = KIND_TITLES.get(str(status.get("kind")), "Training")
    if state == "failed":
        return f"Training failed: {status.get('message') or 'unknown error'}"
    how = "interrupted" if state == "interrupted" else "finished"
    text = f"Training {how} at {int(status.get('step') or 0)} steps."
    if status.get("filename"):
        text += f"\n{title} saved to {status['filename']}"
    return text


def sample_gallery(status: Mapping[str, Any] | None) -> list[tuple[Image.Image, str]]:
    """The run's sample images (read from disk; unreadable ones left out), captioned by step."""
    items = []
    for step, path in (status or {}).get("samples") or []:
        try:
            with Image.open(path) as image:
                image.load()
                items.append((image.copy(), f"step {step}"))
        except (OSError, ValueError):
            continue
    return items


# -- the page ---------------------------------------------------------------------------------------


@dataclass
class TrainTab:
    tabs: gr.Tabs
    output: gr.Textbox
    progress: gr.HTML
    plot: gr.LinePlot
    gallery: gr.Gallery
    error: gr.HTML
    timer: gr.Timer
    watch: gr.State  # {"job": id, "samples": shown} of the run this page follows
    embedding: gr.Dropdown
    hypernetwork: gr.Dropdown
    create_embedding_fields: dict[str, Any] = field(default_factory=dict)
    create_hypernetwork_fields: dict[str, Any] = field(default_factory=dict)
    train_fields: dict[str, Any] = field(default_factory=dict)
    lora_fields: dict[str, Any] = field(default_factory=dict)
    preprocess_fields: dict[str, Any] = field(default_factory=dict)
    cards: list[tuple[str, Any]] = field(default_factory=list)  # (page, cards component) to rebuild


def embedding_names(services: Services) -> list[str]:
    found = services.engine.embeddings()
    return sorted(found.loaded) if found is not None else []


def hypernetwork_names(services: Services) -> list[str]:
    return sorted(info.name for info in services.networks.hypernetworks())


def template_names(services: Services) -> list[str]:
    """The prompt templates the trainers read (A1111's `textual_inversion_templates`)."""
    return list(list_templates())


def _find_component(elem_id: str) -> Any:
    """A component already built on this page (the txt2img tab, the cards), by elem_id."""
    root = Context.root_block
    if root is None:
        return None
    return next((b for b in root.blocks.values() if getattr(b, "elem_id", None) == elem_id), None)


def _fire_train_tabs(services: Services, preview: Mapping[str, Any]) -> None:
    """Extensions' `on_ui_train_tabs` callbacks, inside `#train_tabs` (their `gr.Tab`s become
    sub-tabs), with A1111's `UiTrainTabParams` (txt2img's preview controls, in A1111's order)."""
    setup = getattr(services, "scripts", None)
    if setup is None:
        return
    from modules.extensions.callbacks import UiTrainTabParams

    setup.callbacks.fire("ui_train_tabs", UiTrainTabParams([preview.get(name) for name in TXT2IMG_PREVIEW]))


def _refresh_button(elem_id: str) -> gr.Button:
    return gr.Button("🔄", elem_id=elem_id, size="sm", scale=0, min_width=40, elem_classes="sdw-train-refresh")


def _user_error(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc


def build_train_tab(services: Services) -> TrainTab:
    # txt2img's controls (read when "Read parameters from txt2img" is on), when on the page
    preview = {name: c for name, elem_id in TXT2IMG_PREVIEW.items() if (c := _find_component(elem_id)) is not None}
    gr.HTML(
        f"<p class='sdw-train-note'>See <b><a href='{WIKI}' target='_blank'>wiki</a></b> for detailed explanation.</p>"
    )
    with gr.Row(equal_height=False, elem_id="train_row"):
        with gr.Column(scale=1, elem_id="train_inputs"), gr.Tabs(elem_id="train_tabs") as tabs:
            with gr.Tab("Create embedding", id="create_embedding"):
                create_embedding_fields, create_embedding = _create_embedding_form()
            with gr.Tab("Create hypernetwork", id="create_hypernetwork"):
                create_hypernetwork_fields, create_hypernetwork = _create_hypernetwork_form()
            with gr.Tab("Preprocess images", id="preprocess_images"):
                preprocess_fields, run_preprocess, interrupt_preprocess = _preprocess_form(services)
            with gr.Tab("Train", id="train"):
                train_fields, refreshes, train_buttons = _train_form(services)
            with gr.Tab("Train LoRA", id="train_lora"):
                lora_fields, lora_buttons = _lora_form(services)
            _fire_train_tabs(services, preview)
        with gr.Column(scale=1, elem_id="ti_gallery_container"):
            output = gr.Textbox(value="", show_label=False, interactive=False, lines=2, elem_id="ti_output")
            progress = gr.HTML("", elem_id="ti_progress", padding=False)
            plot = gr.LinePlot(
                loss_frame(None),
                x="step",
                y="loss",
                title="Loss",
                x_title="step",
                y_title="loss",
                height=240,
                label="Loss",
                show_label=False,
                visible=False,  # shown once a run starts
                elem_id="ti_loss_plot",
            )
            gallery = gr.Gallery(
                label="Output", show_label=False, columns=4, height=320, elem_id="ti_gallery", interactive=False
            )
            error = gr.HTML("", elem_id="ti_error", padding=False)
    timer = gr.Timer(POLL_SECONDS, active=False)
    watch = gr.State({})
    preprocess_job = gr.State("")

    train_fields.update(preview)
    cards = [
        (page, component)
        for prefix in CARD_PREFIXES
        for page in (LORA, TEXTUAL_INVERSION, HYPERNETWORKS)
        if (component := _find_component(f"{prefix}_{page}_cards_html")) is not None
    ]
    tab = TrainTab(
        tabs=tabs,
        output=output,
        progress=progress,
        plot=plot,
        gallery=gallery,
        error=error,
        timer=timer,
        watch=watch,
        embedding=train_fields["embedding_name"],
        hypernetwork=train_fields["hypernetwork_name"],
        create_embedding_fields=create_embedding_fields,
        create_hypernetwork_fields=create_hypernetwork_fields,
        train_fields=train_fields,
        lora_fields=lora_fields,
        preprocess_fields=preprocess_fields,
        cards=cards,
    )
    _wire_create(services, tab, create_embedding, create_hypernetwork)
    _wire_refresh(services, tab, refreshes)
    _wire_training(services, tab, train_buttons, lora_buttons)
    _wire_preprocess(services, tab, preprocess_job, run_preprocess, interrupt_preprocess)
    return tab


# -- the forms -----------------------------------------------------------------------------------


def _create_embedding_form() -> tuple[dict[str, Any], gr.Button]:
    fields: dict[str, Any] = {
        "name": gr.Textbox(label="Name", elem_id="train_new_embedding_name"),
        "init_text": gr.Textbox(label="Initialization text", value="*", elem_id="train_initialization_text"),
        "num_vectors_per_token": gr.Slider(
            minimum=1, maximum=75, step=1, value=1, label="Number of vectors per token", elem_id="train_nvpt"
        ),
        "overwrite_old": gr.Checkbox(
            value=False, label="Overwrite Old Embedding", elem_id="train_overwrite_old_embedding"
        ),
    }
    button = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding")
    return fields, button


def _create_hypernetwork_form() -> tuple[dict[str, Any], gr.Button]:
    sizes = [str(s) for s in HYPERNETWORK_SIZES]
    fields: dict[str, Any] = {
        "name": gr.Textbox(label="Name", elem_id="train_new_hypernetwork_name"),
        "enable_sizes": gr.CheckboxGroup(
            label="Modules",
            value=["768", "320", "640", "1280"],
            choices=sizes,
            elem_id="train_new_hypernetwork_sizes",
        ),
        "layer_structure": gr.Textbox(
            "1, 2, 1",
            label="Enter hypernetwork layer structure",
            placeholder="1st and last digit must be 1. ex:'1, 2, 1'",
            elem_id="train_new_hypernetwork_layer_structure",
        ),
        "activation_func": gr.Dropdown(
            value="linear",
            label="Select activation function of hypernetwork. Recommended : Swish / Linear(none)",
            choices=list(HYPERNETWORK_ACTIVATIONS),
            elem_id="train_new_hypernetwork_activation_func",
        ),
        "weight_init": gr.Dropdown(
            value="Normal",
            label="Select Layer weights initialization. Recommended: Kaiming for relu-like, Xavier for "
            "sigmoid-like, Normal otherwise",
            choices=list(HYPERNETWORK_INITS),
            elem_id="train_new_hypernetwork_initialization_option",
        ),
        "add_layer_norm": gr.Checkbox(label="Add layer normalization", elem_id="train_new_hypernetwork_add_layer_norm"),
        "use_dropout": gr.Checkbox(label="Use dropout", elem_id="train_new_hypernetwork_use_dropout"),
        "dropout_structure": gr.Textbox(
            "0, 0, 0",
            label="Enter hypernetwork Dropout structure (or empty). Recommended : 0~0.35 incrementing sequence: "
            "0, 0.05, 0.15",
            placeholder="1st and last digit must be 0 and values should be between 0 and 1. ex:'0, 0.01, 0'",
            elem_id="train_new_hypernetwork_dropout_structure",
        ),
        "overwrite_old": gr.Checkbox(
            value=False, label="Overwrite Old Hypernetwork", elem_id="train_overwrite_old_hypernetwork"
        ),
    }
    button = gr.Button("Create hypernetwork", variant="primary", elem_id="train_create_hypernetwork")
    return fields, button


@dataclass
class _Captioners:
    """Which auto-captioners can run, and why not when they cannot."""

    blip: str | None  # None: available; else the note naming the missing weights
    deepbooru: str | None


def captioner_status(services: Services) -> _Captioners:
    interrogator = _interrogator(services)
    return _Captioners(blip=interrogator.missing("blip"), deepbooru=interrogator.missing("deepbooru"))


def _interrogator(services: Services) -> Interrogator:
    """The engine's interrogator (loaded models shared with img2img's buttons and the API), else
    one over the model folders."""
    found = getattr(services.engine, "interrogator", None)
    return found if isinstance(found, Interrogator) else Interrogator.from_paths(services.paths, services.options)


def _preprocess_form(services: Services) -> tuple[dict[str, Any], gr.Button, gr.Button]:
    status = captioner_status(services)
    fields: dict[str, Any] = {
        "src": gr.Textbox(
            label="Source directory",
            placeholder="a folder inside the data dir or the outputs folder",
            elem_id="train_process_src",
        ),
        "dst": gr.Textbox(label="Destination directory", elem_id="train_process_dst"),
        "width": gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=512, elem_id="train_process_width"),
        "height": gr.Slider(
            minimum=64, maximum=2048, step=8, label="Height", value=512, elem_id="train_process_height"
        ),
        "existing_caption": gr.Dropdown(
            label="Existing Caption txt Action",
            value="ignore",
            choices=list(EXISTING_CAPTION_ACTIONS),
            elem_id="train_preprocess_txt_action",
        ),
    }
    with gr.Row():
        fields["flip"] = gr.Checkbox(label="Create flipped copies", elem_id="train_process_flip")
        fields["split"] = gr.Checkbox(label="Split oversized images", elem_id="train_process_split")
        fields["caption_blip"] = gr.Checkbox(
            label="Use BLIP for caption", interactive=status.blip is None, elem_id="train_process_caption"
        )
        fields["caption_deepbooru"] = gr.Checkbox(
            label="Use deepbooru for caption",
            interactive=status.deepbooru is None,
            elem_id="train_process_caption_deepbooru",
        )
    notes = list(dict.fromkeys(n for n in (status.blip, status.deepbooru) if n))
    gr.HTML(
        "".join(f"<p>{html.escape(n)}</p>" for n in notes),
        visible=bool(notes),
        elem_id="train_process_caption_note",
        elem_classes="sdw-train-note",
    )
    with gr.Row(visible=False) as split_row:
        fields["split_threshold"] = gr.Slider(
            label="Split image threshold",
            value=0.5,
            minimum=0.0,
            maximum=1.0,
            step=0.05,
            elem_id="train_process_split_threshold",
        )
        fields["overlap_ratio"] = gr.Slider(
            label="Split image overlap ratio",
            value=0.2,
            minimum=0.0,
            maximum=0.9,
            step=0.05,
            elem_id="train_process_overlap_ratio",
        )
    fields["split"].change(lambda on: gr.update(visible=bool(on)), fields["split"], split_row, queue=False)
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id="train_interrupt_preprocessing")
        run = gr.Button("Preprocess", variant="primary", elem_id="train_run_preprocess")
    return fields, run, interrupt


def _train_form(services: Services) -> tuple[dict[str, Any], dict[str, gr.Button], dict[str, gr.Button]]:
    gr.HTML(
        "<p class='sdw-train-note'>Train an embedding or Hypernetwork; you must specify a directory with a set of "
        f"1:1 ratio images <a href='{WIKI}' target='_blank'><b>[wiki]</b></a></p>"
    )
    fields: dict[str, Any] = {}
    refreshes: dict[str, gr.Button] = {}
    with gr.Row(elem_classes="sdw-train-pick"):
        fields["embedding_name"] = gr.Dropdown(
            label="Embedding", choices=embedding_names(services), value=None, elem_id="train_embedding"
        )
        refreshes["embedding"] = _refresh_button("refresh_train_embedding_name")
        fields["hypernetwork_name"] = gr.Dropdown(
            label="Hypernetwork", choices=hypernetwork_names(services), value=None, elem_id="train_hypernetwork"
        )
        refreshes["hypernetwork"] = _refresh_button("refresh_train_hypernetwork_name")
    with gr.Row():
        fields["embedding_learn_rate"] = gr.Textbox(
            label="Embedding Learning rate",
            placeholder="Embedding Learning rate",
            value="0.005",
            elem_id="train_embedding_learn_rate",
        )
        fields["hypernetwork_learn_rate"] = gr.Textbox(
            label="Hypernetwork Learning rate",
            placeholder="Hypernetwork Learning rate",
            value="0.00001",
            elem_id="train_hypernetwork_learn_rate",
        )
    with gr.Row():
        fields["clip_grad_mode"] = gr.Dropdown(
            value="disabled", label="Gradient Clipping", choices=list(CLIP_GRAD_MODES), elem_id="train_clip_grad_mode"
        )
        fields["clip_grad_value"] = gr.Textbox(
            placeholder="Gradient clip value", value="0.1", show_label=False, elem_id="train_clip_grad_value"
        )
    with gr.Row():
        fields["batch_size"] = gr.Number(label="Batch size", value=1, precision=0, elem_id="train_batch_size")
        fields["gradient_step"] = gr.Number(
            label="Gradient accumulation steps", value=1, precision=0, elem_id="train_gradient_step"
        )
    fields["data_root"] = gr.Textbox(
        label="Dataset directory", placeholder="Path to directory with input images", elem_id="train_dataset_directory"
    )
    fields["log_directory"] = gr.Textbox(
        label="Log directory",
        placeholder="Path to directory where to write outputs",
        value="textual_inversion",
        elem_id="train_log_directory",
    )
    with gr.Row(elem_classes="sdw-train-pick"):
        templates = template_names(services)
        fields["template_filename"] = gr.Dropdown(
            label="Prompt template",
            value=DEFAULT_EMBEDDING_TEMPLATE if DEFAULT_EMBEDDING_TEMPLATE in templates else None,
            choices=templates,
            elem_id="train_template_file",
        )
        refreshes["template"] = _refresh_button("refrsh_train_template_file")  # A1111's spelling
    fields["training_width"] = gr.Slider(
        minimum=64, maximum=2048, step=8, label="Width", value=512, elem_id="train_training_width"
    )
    fields["training_height"] = gr.Slider(
        minimum=64, maximum=2048, step=8, label="Height", value=512, elem_id="train_training_height"
    )
    fields["varsize"] = gr.Checkbox(label="Do not resize images", value=False, elem_id="train_varsize")
    fields["steps"] = gr.Number(label="Max steps", value=100000, precision=0, elem_id="train_steps")
    with gr.Row():
        fields["create_image_every"] = gr.Number(
            label="Save an image to log directory every N steps, 0 to disable",
            value=500,
            precision=0,
            elem_id="train_create_image_every",
        )
        fields["save_embedding_every"] = gr.Number(
            label="Save a copy of embedding to log directory every N steps, 0 to disable",
            value=500,
            precision=0,
            elem_id="train_save_embedding_every",
        )
    fields["use_weight"] = gr.Checkbox(label="Use PNG alpha channel as loss weight", value=False, elem_id="use_weight")
    fields["save_image_with_stored_embedding"] = gr.Checkbox(
        label="Save images with embedding in PNG chunks", value=True, elem_id="train_save_image_with_stored_embedding"
    )
    fields["preview_from_txt2img"] = gr.Checkbox(
        label="Read parameters (prompt, etc...) from txt2img tab when making previews",
        value=False,
        elem_id="train_preview_from_txt2img",
    )
    fields["shuffle_tags"] = gr.Checkbox(
        label="Shuffle tags by ',' when creating prompts.", value=False, elem_id="train_shuffle_tags"
    )
    fields["tag_drop_out"] = gr.Slider(
        minimum=0,
        maximum=1,
        step=0.1,
        label="Drop out tags when creating prompts.",
        value=0,
        elem_id="train_tag_drop_out",
    )
    fields["latent_sampling_method"] = gr.Radio(
        label="Choose latent sampling method",
        value="once",
        choices=list(LATENT_SAMPLING_METHODS),
        elem_id="train_latent_sampling_method",
    )
    buttons: dict[str, gr.Button] = {}
    with gr.Row():
        buttons["embedding"] = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding")
        buttons["interrupt"] = gr.Button("Interrupt", elem_id="train_interrupt_training")
        buttons["hypernetwork"] = gr.Button("Train Hypernetwork", variant="primary", elem_id="train_train_hypernetwork")
    return fields, refreshes, buttons


def _lora_form(services: Services) -> tuple[dict[str, Any], dict[str, gr.Button]]:
    samplers, _ = sampler_choices()
    d = LoraTrainRequest(name="", data_root="")  # kohya's defaults, shown as the form's
    fields: dict[str, Any] = {}

    def box(name: str, label: str, value: Any = "", **kw: Any) -> None:
        fields[name] = gr.Textbox(label=label, value=value, elem_id=f"train_lora_{name}", **kw)

    def number(name: str, label: str, value: float, precision: int | None = 0, **kw: Any) -> None:
        fields[name] = gr.Number(label=label, value=value, precision=precision, elem_id=f"train_lora_{name}", **kw)

    def check(name: str, label: str, value: bool, **kw: Any) -> None:
        fields[name] = gr.Checkbox(label=label, value=value, elem_id=f"train_lora_{name}", **kw)

    def choice(name: str, label: str, choices: Sequence[str], value: str) -> None:
        fields[name] = gr.Dropdown(label=label, choices=list(choices), value=value, elem_id=f"train_lora_{name}")

    gr.HTML(
        "<p class='sdw-train-note'>Train a LoRA on the loaded checkpoint with aspect-ratio bucketing (kohya's "
        "options). Captions come from a <code>.txt</code> beside each image, else the file name; "
        "<code>N_name</code> folders repeat their images N times.</p>"
    )
    with gr.Row():
        box("name", "LoRA name", placeholder="the file name, without .safetensors")
        box("data_root", "LoRA dataset directory", placeholder="a folder inside the data dir")
    box("output_dir", "LoRA output directory", placeholder="empty: the Lora folder")
    with gr.Accordion("Dataset and buckets", open=True, elem_id="train_lora_group_dataset"):
        with gr.Row():
            number("resolution_width", "Training width", d.resolution[0], minimum=64, step=8)
            number("resolution_height", "Training height", d.resolution[1], minimum=64, step=8)
        with gr.Row():
            check("enable_bucket", "Aspect-ratio buckets", d.enable_bucket)
            check("bucket_no_upscale", "Do not upscale small images into buckets", d.bucket_no_upscale)
        with gr.Row():
            number("min_bucket_reso", "Min bucket resolution", d.min_bucket_reso, minimum=64, step=8)
            number("max_bucket_reso", "Max bucket resolution", d.max_bucket_reso, minimum=64, step=8)
            number("bucket_reso_steps", "Bucket steps", d.bucket_reso_steps, minimum=8, step=8)
        with gr.Row():
            check("random_crop", "Random crop", d.random_crop)
            check("flip_aug", "Flip augmentation", d.flip_aug)
            check("cache_latents", "Cache latents", d.cache_latents)
        with gr.Row():
            box("caption_extension", "Caption extension", d.caption_extension)
            number("keep_tokens", "Keep first N tags when shuffling", d.keep_tokens, minimum=0)
        with gr.Row():
            check("shuffle_caption", "Shuffle caption tags", d.shuffle_caption)
            fields["caption_dropout_rate"] = gr.Slider(
                0, 1, value=d.caption_dropout_rate, step=0.05, label="Caption dropout rate",
                elem_id="train_lora_caption_dropout_rate",
            )  # fmt: skip
    with gr.Accordion("Network", open=True, elem_id="train_lora_group_network"):
        with gr.Row():
            number("network_dim", "Network rank (dim)", d.network_dim, minimum=1)
            number("network_alpha", "Network alpha", d.network_alpha, precision=None, minimum=0)
        with gr.Row():
            number("conv_dim", "Conv rank (0: none)", d.conv_dim, minimum=0)
            number("conv_alpha", "Conv alpha", d.conv_alpha, precision=None, minimum=0)
        with gr.Row():
            check("train_unet", "Train the UNet", d.train_unet)
            check("train_text_encoder", "Train the text encoder(s)", d.train_text_encoder)
    with gr.Accordion("Optimizer and schedule", open=True, elem_id="train_lora_group_optimizer"):
        with gr.Row():
            box("learning_rate", "Learning rate", f"{d.learning_rate:g}")
            box("unet_lr", "UNet learning rate", placeholder="empty: the learning rate")
            box("text_encoder_lr", "Text encoder learning rate", placeholder="empty: the learning rate")
        with gr.Row():
            choice("optimizer_type", "Optimizer", OPTIMIZERS, d.optimizer_type)
            choice("lr_scheduler", "LR scheduler", LR_SCHEDULERS, d.lr_scheduler)
        with gr.Row():
            number("lr_warmup_steps", "Warmup steps", d.lr_warmup_steps, minimum=0)
            number("max_grad_norm", "Max gradient norm (0: off)", d.max_grad_norm, precision=None, minimum=0)
    with gr.Accordion("Steps", open=True, elem_id="train_lora_group_steps"):
        with gr.Row():
            number("max_train_steps", "LoRA max steps", d.max_train_steps, minimum=1)
            number("max_train_epochs", "Max epochs (0: use max steps)", d.max_train_epochs or 0, minimum=0)
        with gr.Row():
            number("train_batch_size", "LoRA batch size", d.train_batch_size, minimum=1)
            number(
                "gradient_accumulation_steps", "LoRA gradient accumulation", d.gradient_accumulation_steps, minimum=1
            )
            number("seed", "Training seed", d.seed)
    with gr.Accordion("Memory and loss", open=False, elem_id="train_lora_group_memory"):
        with gr.Row():
            check("gradient_checkpointing", "Gradient checkpointing", d.gradient_checkpointing)
            choice("mixed_precision", "Mixed precision", MIXED_PRECISIONS, d.mixed_precision)
        with gr.Row():
            number("min_snr_gamma", "Min-SNR gamma (0: off)", d.min_snr_gamma or 0, precision=None, minimum=0)
            number("noise_offset", "Noise offset", d.noise_offset, precision=None, minimum=0)
    with gr.Accordion("Samples and saving", open=False, elem_id="train_lora_group_samples"):
        with gr.Row():
            number("sample_every_n_steps", "Sample every N steps (0: never)", d.sample_every_n_steps, minimum=0)
            number("save_every_n_steps", "Save every N steps (0: at the end)", d.save_every_n_steps, minimum=0)
        box("sample_prompt", "Sample prompt", d.sample_prompt, lines=2)
        box("sample_negative_prompt", "Sample negative prompt", d.sample_negative_prompt, lines=1)
        with gr.Row():
            number("sample_steps", "Sample steps", d.sample_steps, minimum=1)
            choice(
                "sample_sampler_name",
                "Sample sampler",
                samplers,
                d.sample_sampler_name if d.sample_sampler_name in samplers else samplers[0],
            )
            number("sample_cfg_scale", "Sample CFG scale", d.sample_cfg_scale, precision=None, minimum=1)
        with gr.Row():
            number("sample_seed", "Sample seed", d.sample_seed)
            number("sample_width", "Sample width", d.sample_width, minimum=64, step=8)
            number("sample_height", "Sample height", d.sample_height, minimum=64, step=8)
    with gr.Accordion("Resume and metadata", open=False, elem_id="train_lora_group_resume"):
        check("resume", "Resume from the saved state when there is one", d.resume)
        box("comment", "Comment (saved in the file's metadata)", d.comment)
    buttons: dict[str, gr.Button] = {}
    with gr.Row():
        buttons["interrupt"] = gr.Button("Interrupt", elem_id="train_lora_interrupt")
        buttons["train"] = gr.Button("Train LoRA", variant="primary", elem_id="train_lora_train")
    return fields, buttons


# -- events ----------------------------------------------------------------------------------------


def _wire_create(
    services: Services, tab: TrainTab, create_embedding: gr.Button, create_hypernetwork: gr.Button
) -> None:
    ti_cards = [c for page, c in tab.cards if page == TEXTUAL_INVERSION]
    hn_cards = [c for page, c in tab.cards if page == HYPERNETWORKS]
    fields_e, fields_h = tab.create_embedding_fields, tab.create_hypernetwork_fields

    def make_embedding(data: dict[Any, Any]) -> list[Any]:
        request = _user_error(lambda: create_embedding_request(**values_of(fields_e, data)))
        result = _user_error(lambda: services.engine.create_embedding(request))
        return [f"Created: {result.filename}", ""]

    def make_hypernetwork(data: dict[Any, Any]) -> list[Any]:
        request = _user_error(lambda: create_hypernetwork_request(**values_of(fields_h, data)))
        result = _user_error(lambda: services.engine.create_hypernetwork(request))
        return [f"Created: {result.filename}", ""]

    def embeddings_listed() -> list[Any]:
        pages = [render_page(services, _prefix_of(c), TEXTUAL_INVERSION) for c in ti_cards]
        return [gr.update(choices=embedding_names(services)), *pages]

    def hypernetworks_listed() -> list[Any]:
        pages = [render_page(services, _prefix_of(c), HYPERNETWORKS) for c in hn_cards]
        return [gr.update(choices=hypernetwork_names(services)), *pages]

    # the lists are updated by a second event: an error marks only the first one's outputs
    create_embedding.click(make_embedding, inputs_of(fields_e), [tab.output, tab.error], concurrency_limit=1).success(
        embeddings_listed, None, [tab.embedding, *ti_cards], queue=False, show_progress="hidden"
    )
    create_hypernetwork.click(
        make_hypernetwork, inputs_of(fields_h), [tab.output, tab.error], concurrency_limit=1
    ).success(hypernetworks_listed, None, [tab.hypernetwork, *hn_cards], queue=False, show_progress="hidden")


def _prefix_of(cards: Any) -> str:
    return str(cards.elem_id).split("_", 1)[0]


def _wire_refresh(services: Services, tab: TrainTab, refreshes: Mapping[str, gr.Button]) -> None:
    def embeddings() -> Any:
        services.engine.refresh_embeddings()
        return gr.update(choices=embedding_names(services))

    def hypernetworks() -> Any:
        services.networks.refresh("hypernetwork")
        return gr.update(choices=hypernetwork_names(services))

    def templates() -> Any:
        return gr.update(choices=template_names(services))

    refreshes["embedding"].click(embeddings, None, tab.embedding, queue=False)
    refreshes["hypernetwork"].click(hypernetworks, None, tab.hypernetwork, queue=False)
    refreshes["template"].click(templates, None, tab.train_fields["template_filename"], queue=False)


def _resolve_dirs(services: Services, values: dict[str, Any], labels: Mapping[str, str]) -> None:
    """Replace each named folder with the server folder it names (empty optional ones stay)."""
    for name, label in labels.items():
        text = str(values.get(name) or "")
        if name == "output_dir" and not text.strip():
            continue
        values[name] = str(server_dir(services.paths, text, label))


def _wire_training(
    services: Services, tab: TrainTab, buttons: Mapping[str, gr.Button], lora_buttons: Mapping[str, gr.Button]
) -> None:
    train_fields, lora_fields = tab.train_fields, tab.lora_fields

    def start(request: Any) -> list[Any]:
        handle = _user_error(lambda: services.engine.submit(request))
        return [{"job": handle.id, "samples": 0}, ""]

    def started(watch: dict[str, Any] | None) -> list[Any]:
        """After a submit: a fresh output column, and the poll on."""
        job = str((watch or {}).get("job") or "")
        status = services.engine.training_status(job) if job else None
        return [
            progress_html(status, queued=_queued(services, job)),
            gr.update(value=loss_frame(None), visible=True),
            [],
            "",
            gr.Timer(active=True),
        ]

    def train_ti(kind: str, data: dict[Any, Any]) -> list[Any]:
        values = values_of(train_fields, data)
        _resolve_dirs(services, values, {"data_root": "Dataset directory", "log_directory": "Log directory"})
        return start(_user_error(lambda: train_request(kind, values)))

    def train_lora(data: dict[Any, Any]) -> list[Any]:
        values = values_of(lora_fields, data)
        _resolve_dirs(services, values, {"data_root": "LoRA dataset directory", "output_dir": "LoRA output directory"})
        return start(_user_error(lambda: lora_request(values)))

    # the output column is reset by a second event: an error marks only the first one's outputs
    for button, fn, inputs in (
        (buttons["embedding"], lambda data: train_ti("embedding", data), inputs_of(train_fields)),
        (buttons["hypernetwork"], lambda data: train_ti("hypernetwork", data), inputs_of(train_fields)),
        (lora_buttons["train"], train_lora, inputs_of(lora_fields)),
    ):
        button.click(fn, inputs, [tab.watch, tab.output], concurrency_limit=1).success(
            started,
            tab.watch,
            [tab.progress, tab.plot, tab.gallery, tab.error, tab.timer],
            queue=False,
            show_progress="hidden",
        )

    def interrupt(watch: dict[str, Any] | None) -> None:
        """Stop the run this page follows, else the latest run that is still going."""
        status = None
        if watch and watch.get("job"):
            status = services.engine.training_status(str(watch["job"]))
        if status is None or status.get("state") != RUNNING:
            status = services.engine.training_status()
        if status is not None and status.get("state") == RUNNING and status.get("job_id"):
            services.engine.interrupt(str(status["job_id"]))

    for button in (buttons["interrupt"], lora_buttons["interrupt"]):
        button.click(interrupt, tab.watch, None, queue=False)

    cards = [c for _page, c in tab.cards]
    poll_outputs = [tab.watch, tab.progress, tab.plot, tab.gallery, tab.output, tab.error, tab.timer, *cards]

    def poll(watch: dict[str, Any] | None) -> list[Any]:
        job = str((watch or {}).get("job") or "")
        status = services.engine.training_status(job) if job else None
        if status is None:
            return [gr.skip()] * 6 + [gr.Timer(active=False)] + [gr.skip()] * len(cards)
        ended = status.get("state") != RUNNING and _job_done(services, job)
        shown = int((watch or {}).get("samples") or 0)
        samples = status.get("samples") or []
        gallery = sample_gallery(status) if len(samples) != shown else gr.skip()
        out: list[Any] = [
            {"job": job, "samples": len(samples)},
            progress_html(status, queued=_queued(services, job)),
            loss_frame(status),
            gallery,
        ]
        if not ended:
            return [*out, gr.skip(), gr.skip(), gr.skip()] + [gr.skip()] * len(cards)
        failed = status.get("state") == "failed"
        error = f"<p class='sdw-train-error'>{html.escape(str(status.get('message') or ''))}</p>" if failed else ""
        page = KIND_PAGES.get(str(status.get("kind")))
        rebuilt = [render_page(services, _prefix_of(c), p) if p == page else gr.skip() for p, c in tab.cards]
        return [*out, outcome_text(status), error, gr.Timer(active=False), *rebuilt]

    # ticks every second: its progress goes on one component, not on each output (see send_to.QUIET)
    tab.timer.tick(poll, tab.watch, poll_outputs, queue=False, show_progress="hidden", show_progress_on=tab.plot)

    # a page opened while a run goes on (started here before a reload, elsewhere, or by the API)
    root = Context.root_block
    if isinstance(root, gr.Blocks):

        def attach() -> list[Any]:
            status = services.engine.training_status()
            if status is None or status.get("state") != RUNNING or not status.get("job_id"):
                return [gr.skip(), gr.skip(), gr.skip()]
            return [{"job": status["job_id"], "samples": -1}, gr.Timer(active=True), gr.update(visible=True)]

        root.load(attach, None, [tab.watch, tab.timer, tab.plot], queue=False, show_progress="hidden")


def _job_done(services: Services, job_id: str) -> bool:
    """The run's job has returned (the registries are refreshed by then); a job the engine has
    forgotten counts as done."""
    try:
        return services.engine.handle(job_id).done()
    except SdWebuiError:
        return True


def _queued(services: Services, job_id: str) -> bool:
    try:
        handle = services.engine.handle(job_id)
    except SdWebuiError:
        return False
    return not handle.done() and not handle.is_running()


def _wire_preprocess(
    services: Services, tab: TrainTab, job_state: gr.State, run: gr.Button, interrupt: gr.Button
) -> None:
    fields = tab.preprocess_fields

    def preprocess(data: dict[Any, Any]) -> Iterator[tuple[str, str]]:
        values = values_of(fields, data)
        src = server_dir(services.paths, str(values["src"] or ""), "Source directory")
        dst = server_dir(services.paths, str(values["dst"] or ""), "Destination directory")
        caption = _user_error(
            lambda: make_captioner(
                services, blip=bool(values["caption_blip"]), deepbooru=bool(values["caption_deepbooru"])
            )
        )
        counts = [0, 0]
        lock = threading.Lock()

        def progress(done: int, total: int) -> None:
            with lock:
                counts[:] = [done, total]

        def work(ctx: Any) -> PreprocessReport:
            return preprocess_images(
                src,
                dst,
                width=int(values["width"]),
                height=int(values["height"]),
                flip=bool(values["flip"]),
                split=bool(values["split"]),
                split_threshold=float(values["split_threshold"]),
                overlap_ratio=float(values["overlap_ratio"]),
                caption=caption,
                existing_caption=str(values["existing_caption"]),
                on_progress=progress,
                should_stop=lambda: bool(ctx.interrupted),
            )

        handle = _user_error(lambda: services.engine.submit_call(work, description="preprocess"))
        while not handle.future.done():
            with lock:
                done, total = counts
            yield (f"Preprocessing… {done}/{total} images" if total else "Preprocessing…"), handle.id
            time.sleep(PREPROCESS_POLL_SECONDS)
        try:
            report = handle.result()
        except SdWebuiError as exc:
            raise gr.Error(str(exc)) from exc
        yield report.summary(), ""

    run.click(preprocess, inputs_of(fields), [tab.output, job_state], concurrency_limit=1)

    def stop(job: str | None) -> None:
        if job:
            services.engine.interrupt(job)

    interrupt.click(stop, job_state, None, queue=False)


def make_captioner(services: Services, *, blip: bool, deepbooru: bool) -> Callable[[Image.Image], str] | None:
    """The caption function for preprocessing: BLIP's caption, then DeepBooru's tags, joined by
    ", " (A1111's order); None when neither is asked for. Missing weights are a `UserError`
    naming the file, raised here (before anything is queued)."""
    return _interrogator(services).caption_function(blip=blip, deepbooru=deepbooru)
