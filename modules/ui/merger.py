"""The Checkpoint Merger tab (a1111.md 10.5, NOTES "Checkpoint Merger"): A1111's controls, labels,
defaults and elem_ids, named by `MergeRequest`'s fields (`merge_request_from_ui`). The merge is
one job on the engine (`services.engine.submit(MergeRequest(...))`, never alongside a
generation); the result box follows its handle's progress (tensors done / total) and then says
where the checkpoint was saved. Errors are `gr.Error`s."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from modules.core.errors import SdWebuiError, ValidationError
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
from modules.core.merge_blocks import (
    PRESET_NAMES,
    SD_LAYOUT,
    BlockLayout,
    layout_of,
    parse_block_weights,
    preset_values,
)
from modules.core.results import ExtractLoraResult, MergeResult
from modules.core.safetensors_header import read_safetensors_header
from modules.engine.facade import JobHandle, JobInterrupted
from modules.services import Services
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.user_events import user_change

DESCRIPTIONS = {
    NO_INTERPOLATION: "No interpolation will be used. Requires one model; A. "
    "Allows for format conversion and VAE baking.",
    WEIGHTED_SUM: "A weighted sum will be used for interpolation. Requires two models; A and B. "
    "The result is calculated as A * (1 - M) + B * M",
    ADD_DIFFERENCE: "The difference between the last two models will be added to the first. "
    "Requires three models; A, B and C. The result is calculated as A + (B - C) * M",
}
POLL_SECONDS = 0.25
T = TypeVar("T")
BLOCK_NAMES = SD_LAYOUT.names  # one slider each; SDXL uses IN00-IN08, M00, OUT00-OUT08 of them
CUSTOM_PRESET = "(custom)"
MERGER_JOB_KINDS = ("model-merge", "lora-extract")  # what the tab's Interrupt stops


def description_html(method: str) -> str:
    return f"<p style='margin-bottom: 2.5em'>{html.escape(DESCRIPTIONS.get(method, ''))}</p>"


def checkpoint_choices(services: Services) -> list[str]:
    return [info.title for info in services.registry.checkpoints() if not info.is_folder]  # folders cannot be merged


def vae_choices(services: Services) -> list[str]:
    return [NO_VAE] + [v.name for v in services.registry.vaes()]


def current_title(services: Services, value: str | None) -> str | None:
    """The title now shown for a chosen checkpoint (None when it is gone)."""
    if not value:
        return None
    try:
        return services.registry.find_checkpoint(value).title
    except SdWebuiError:
        return None


def merge_request_from_ui(
    *,
    primary_model_name: str | None,
    secondary_model_name: str | None,
    tertiary_model_name: str | None,
    interp_method: str,
    multiplier: float,
    custom_name: str | None,
    checkpoint_format: str,
    save_as_half: bool,
    config_source: str,
    bake_in_vae: str | None,
    discard_weights: str | None,
    save_metadata: bool,
    add_merge_recipe: bool,
    copy_metadata_fields: bool,
    metadata_json: str | None,
    block_weights: str = "",
    base_alpha: float | None = None,
    bake_loras: str | None = "",
) -> MergeRequest:
    """The form's values as a request (empty boxes as A1111's defaults)."""
    return MergeRequest(
        primary_model_name=primary_model_name,
        secondary_model_name=secondary_model_name,
        tertiary_model_name=tertiary_model_name,
        interp_method=interp_method,
        multiplier=float(multiplier),
        custom_name=custom_name or "",
        checkpoint_format=checkpoint_format,
        save_as_half=bool(save_as_half),
        config_source=config_source,
        bake_in_vae=bake_in_vae or NO_VAE,
        discard_weights=discard_weights or "",
        save_metadata=bool(save_metadata),
        add_merge_recipe=bool(add_merge_recipe),
        copy_metadata_fields=bool(copy_metadata_fields),
        metadata_json=metadata_json or "{}",
        block_weights=block_weights,
        base_alpha=base_alpha if block_weights else None,
        bake_loras=parse_bake_loras(bake_loras or ""),
    )


def parse_bake_loras(text: str) -> tuple[tuple[str, float], ...]:
    """ "name:weight" entries, one per line or comma-separated (weight 1 when left out)."""
    entries: list[tuple[str, float]] = []
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, weight = entry.rpartition(":")
        if not sep:
            entries.append((entry, 1.0))
            continue
        try:
            entries.append((name.strip(), float(weight)))
        except ValueError:
            raise gr.Error(f"LoRAs to bake in: {entry!r} is not name:weight") from None
    return tuple(entries)


def block_layout(services: Services, title: str | None) -> BlockLayout:
    """The block layout of a chosen checkpoint, from its header (SD 1.x/2.x's 25 when unknown)."""
    if not title:
        return SD_LAYOUT
    try:
        info = services.registry.find_checkpoint(title)
        if info.is_folder or info.filename.suffix.lower() != ".safetensors":
            return SD_LAYOUT
        return layout_of(read_safetensors_header(info.filename).tensors)
    except (SdWebuiError, OSError, ValueError):
        return SD_LAYOUT


def block_weights_text(layout: BlockLayout, values: list[float]) -> str:
    """The slider values the layout uses (IN00..IN{n}, M00, OUT00..OUT{n}), in block order."""
    by_name = dict(zip(BLOCK_NAMES, values, strict=True))
    return ",".join(f"{float(by_name[name]):.6g}" for name in layout.names if name in by_name)


def submit_merge(services: Services, request: MergeRequest) -> JobHandle[MergeResult]:
    """The engine validates on the caller's thread (a user error is a `gr.Error` before anything
    is queued), then merges as one job (progress: one step per tensor of A)."""
    try:
        handle: JobHandle[MergeResult] = services.engine.submit(request)
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return handle


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's safetensors `__metadata__` (empty for other formats)."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    return dict(read_safetensors_header(path).metadata)


def read_metadata_json(services: Services, *names: str | None) -> str:
    """ "Read metadata from selected checkpoints": A's, B's and C's safetensors metadata, merged."""
    metadata: dict[str, Any] = {}
    for name in names:
        if not name:
            continue
        try:
            info = services.registry.find_checkpoint(name)
        except SdWebuiError:
            continue
        if not info.is_folder:
            metadata.update(_safetensors_metadata(info.filename))
    return json.dumps(metadata, indent=4, ensure_ascii=False)


@dataclass
class MergerTab:
    primary: gr.Dropdown
    secondary: gr.Dropdown
    tertiary: gr.Dropdown
    result: gr.HTML
    merge: gr.Button
    # Merge's inputs by `MergeRequest` field name
    fields: dict[str, Any] = field(default_factory=dict)
    # the block weight controls (use_blocks, base_alpha, block_IN00...) and bake_loras
    extra: dict[str, Any] = field(default_factory=dict)
    interrupt: gr.Button | None = None


def _refresh_button(elem_id: str) -> gr.Button:
    return gr.Button("🔄", elem_id=elem_id, size="sm", scale=0, min_width=40, elem_classes="sdw-merger-refresh")


def _progress_html(job: JobHandle[MergeResult]) -> str:
    if not job.is_running():
        return "<p class='sdw-merger-progress'>Waiting for the worker…</p>"
    state = job.progress()["state"]
    total = int(state["sampling_steps"])
    what = html.escape(job.textinfo or "Merging")
    if total:
        return f"<p class='sdw-merger-progress'>{what}… {state['sampling_step']}/{total} tensors</p>"
    return f"<p class='sdw-merger-progress'>{what}…</p>"


def build_merger_tab(services: Services) -> MergerTab:
    choices = checkpoint_choices(services)
    with gr.Row(equal_height=False, elem_id="modelmerger_row"):
        with gr.Column(scale=3, variant="compact", elem_id="modelmerger_inputs"):
            description = gr.HTML(description_html(WEIGHTED_SUM), elem_id="modelmerger_interp_description")
            with gr.Row(elem_id="modelmerger_models"):
                with gr.Row(elem_classes="sdw-merger-model"):
                    primary = gr.Dropdown(
                        choices=choices, value=None, label="Primary model (A)", elem_id="modelmerger_primary_model_name"
                    )
                    refresh_a = _refresh_button("refresh_checkpoint_A")
                with gr.Row(elem_classes="sdw-merger-model"):
                    secondary = gr.Dropdown(
                        choices=choices,
                        value=None,
                        label="Secondary model (B)",
                        elem_id="modelmerger_secondary_model_name",
                    )
                    refresh_b = _refresh_button("refresh_checkpoint_B")
                with gr.Row(elem_classes="sdw-merger-model"):
                    tertiary = gr.Dropdown(
                        choices=choices,
                        value=None,
                        label="Tertiary model (C)",
                        elem_id="modelmerger_tertiary_model_name",
                    )
                    refresh_c = _refresh_button("refresh_checkpoint_C")
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            amount = gr.Slider(
                minimum=0.0,
                maximum=1.0,
                step=0.05,
                value=0.3,
                label="Multiplier (M) - set to 0 to get model A",
                elem_id="modelmerger_interp_amount",
            )
            method = gr.Radio(
                choices=list(INTERP_METHODS),
                value=WEIGHTED_SUM,
                label="Interpolation Method",
                elem_id="modelmerger_interp_method",
            )
            with gr.Row():
                fmt = gr.Radio(
                    choices=list(CHECKPOINT_FORMATS),
                    value="safetensors",
                    label="Checkpoint format",
                    elem_id="modelmerger_checkpoint_format",
                )
                save_as_half = gr.Checkbox(value=False, label="Save as float16", elem_id="modelmerger_save_as_half")
            config = gr.Radio(
                choices=list(CONFIG_SOURCES),
                value=CONFIG_SOURCES[0],
                label="Copy config from",
                elem_id="modelmerger_config_method",
            )
            with gr.Row(elem_classes="sdw-merger-model"):
                bake_vae = gr.Dropdown(
                    choices=vae_choices(services),
                    value=NO_VAE,
                    label="Bake in VAE",
                    elem_id="modelmerger_bake_in_vae",
                )
                refresh_vae = _refresh_button("modelmerger_refresh_bake_in_vae")
            discard = gr.Textbox(label="Discard weights with matching name", elem_id="modelmerger_discard_weights")
            with gr.Accordion("Metadata", open=False, elem_id="modelmerger_metadata_accordion"):
                save_metadata = gr.Checkbox(value=True, label="Save metadata", elem_id="modelmerger_save_metadata")
                add_recipe = gr.Checkbox(
                    value=True, label="Add merge recipe metadata", elem_id="modelmerger_add_recipe"
                )
                copy_metadata = gr.Checkbox(
                    value=True, label="Copy metadata from merged models", elem_id="modelmerger_copy_metadata"
                )
                metadata_json = gr.Textbox(
                    value="{}", label="Metadata in JSON format", lines=4, elem_id="modelmerger_metadata_json"
                )
                read_metadata = gr.Button(
                    "Read metadata from selected checkpoints", elem_id="modelmerger_read_metadata"
                )
            with gr.Accordion("Merge by block", open=False, elem_id="modelmerger_blocks_accordion"):
                use_blocks = gr.Checkbox(
                    value=False,
                    label="Use block weights (one alpha per UNet block instead of M)",
                    elem_id="modelmerger_use_blocks",
                )
                with gr.Row():
                    preset = gr.Dropdown(
                        choices=[CUSTOM_PRESET, *PRESET_NAMES],
                        value=CUSTOM_PRESET,
                        label="Preset",
                        elem_id="modelmerger_block_preset",
                    )
                    base_alpha = gr.Slider(
                        minimum=0.0,
                        maximum=1.0,
                        step=0.01,
                        value=0.3,
                        label="Base alpha (text encoders, VAE, time embedding, out)",
                        elem_id="modelmerger_base_alpha",
                    )
                blocks_note = gr.HTML(
                    "<p class='sdw-merger-blocks-note'>SD 1.x/2.x: 25 blocks</p>", elem_id="modelmerger_blocks_note"
                )
                sliders: list[gr.Slider] = []
                for group, names in (
                    ("IN", BLOCK_NAMES[:12]),
                    ("M", BLOCK_NAMES[12:13]),
                    ("OUT", BLOCK_NAMES[13:]),
                ):
                    with gr.Row(elem_classes="sdw-merger-block-row", elem_id=f"modelmerger_blocks_{group.lower()}"):
                        for name in names:
                            sliders.append(
                                gr.Slider(
                                    minimum=0.0,
                                    maximum=1.0,
                                    step=0.01,
                                    value=0.3,
                                    label=name,
                                    min_width=90,
                                    elem_id=f"modelmerger_block_{name}",
                                )
                            )
                with gr.Row():
                    weights_text = gr.Textbox(
                        label="Block weights as text (25 or 19 values, 'IN03:0.6, M00:0.1', or a preset name)",
                        elem_id="modelmerger_block_weights_text",
                    )
                    apply_text = gr.Button("Set sliders", size="sm", scale=0, elem_id="modelmerger_block_apply")
            with gr.Accordion("Bake in LoRAs", open=False, elem_id="modelmerger_bake_lora_accordion"):
                bake_loras = gr.Textbox(
                    label="LoRAs to bake in after merging (name:weight, comma-separated or one per line)",
                    placeholder="my_style:0.8, detail_tweaker:0.5",
                    lines=2,
                    elem_id="modelmerger_bake_loras",
                )
            with gr.Row():
                merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
                interrupt = gr.Button("Interrupt", elem_id="modelmerger_interrupt")
            with gr.Accordion("Extract LoRA", open=False, elem_id="modelmerger_extract_accordion"):
                gr.HTML(
                    "<p>A LoRA of the chosen rank from the difference <i>tuned - original</i> of two checkpoints "
                    "of the same kind, saved into the Lora folder.</p>"
                )
                with gr.Row():
                    extract_original = gr.Dropdown(
                        choices=choices, value=None, label="Original model", elem_id="modelmerger_extract_original"
                    )
                    extract_tuned = gr.Dropdown(
                        choices=choices, value=None, label="Tuned model", elem_id="modelmerger_extract_tuned"
                    )
                extract_name = gr.Textbox(label="LoRA name", elem_id="modelmerger_extract_name")
                with gr.Row():
                    extract_rank = gr.Slider(
                        minimum=1, maximum=320, step=1, value=8, label="Rank", elem_id="modelmerger_extract_rank"
                    )
                    extract_conv_rank = gr.Slider(
                        minimum=0,
                        maximum=320,
                        step=1,
                        value=0,
                        label="Conv rank (3x3 convolutions; 0 = none)",
                        elem_id="modelmerger_extract_conv_rank",
                    )
                with gr.Row():
                    extract_clamp = gr.Slider(
                        minimum=0.5,
                        maximum=1.0,
                        step=0.001,
                        value=0.99,
                        label="Clamp quantile",
                        elem_id="modelmerger_extract_clamp",
                    )
                    extract_min_diff = gr.Number(
                        value=0.01,
                        label="Leave out text encoders differing less than",
                        elem_id="modelmerger_extract_min_diff",
                    )
                    extract_half = gr.Checkbox(
                        value=False, label="Save as float16", elem_id="modelmerger_extract_save_as_half"
                    )
                extract = gr.Button("Extract LoRA", variant="primary", elem_id="modelmerger_extract")
        with gr.Column(scale=2, elem_id="modelmerger_results_container"):
            result = gr.HTML(elem_id="modelmerger_result", padding=False)

    def refresh_models(*values: str | None) -> tuple[Any, ...]:
        # a hash computed meanwhile (for the merge metadata) changes a title: keep the choice
        services.registry.refresh()
        new = checkpoint_choices(services)
        return tuple(gr.update(choices=new, value=current_title(services, value)) for value in values)

    def refresh_vaes() -> Any:
        services.registry.refresh()
        return gr.update(choices=vae_choices(services))

    models = [primary, secondary, tertiary, extract_original, extract_tuned]
    for button in (refresh_a, refresh_b, refresh_c):
        button.click(refresh_models, models, models, queue=False)

    def show_layout(title: str | None) -> tuple[Any, ...]:
        layout = block_layout(services, title)
        used = set(layout.names)
        note = f"<p class='sdw-merger-blocks-note'>{len(layout)} blocks: {html.escape(', '.join(layout.names))}</p>"
        return (note, *(gr.update(visible=name in used) for name in BLOCK_NAMES))

    def set_preset(name: str, title: str | None) -> list[Any]:
        if not name or name == CUSTOM_PRESET:
            return [gr.update() for _ in sliders]
        layout = block_layout(services, title)
        try:
            values = dict(zip(layout.names, preset_values(name, layout), strict=True))
        except ValidationError as exc:
            raise gr.Error(str(exc)) from exc
        return [gr.update(value=values[n]) if n in values else gr.update() for n in BLOCK_NAMES]

    def set_from_text(text: str, title: str | None, amount: float, *current: float) -> list[Any]:
        layout = block_layout(services, title)
        try:
            weights = parse_block_weights(text or "", layout, default=float(amount))
        except ValidationError as exc:
            raise gr.Error(str(exc)) from exc
        values = dict(zip(layout.names, weights.values, strict=True))
        return [
            gr.update(value=weights.base),
            gr.update(value=CUSTOM_PRESET),
            *(gr.update(value=values.get(n, v)) for n, v in zip(BLOCK_NAMES, current, strict=True)),
        ]

    # progress on one component, not on each of the ~25 sliders (see modules/ui/send_to.QUIET)
    primary.change(show_layout, primary, [blocks_note, *sliders], queue=False, show_progress_on=blocks_note)
    user_change(preset)(set_preset, [preset, primary], sliders, queue=False, show_progress_on=preset)
    apply_text.click(
        set_from_text,
        [weights_text, primary, amount, *sliders],
        [base_alpha, preset, *sliders],
        show_progress_on=weights_text,
    )
    refresh_vae.click(refresh_vaes, None, bake_vae, queue=False)
    method.change(description_html, method, description, queue=False)
    read_metadata.click(
        lambda a, b, c: read_metadata_json(services, a, b, c), [primary, secondary, tertiary], metadata_json
    )

    # the form by `MergeRequest`'s field names
    fields: dict[str, Any] = {
        "primary_model_name": primary,
        "secondary_model_name": secondary,
        "tertiary_model_name": tertiary,
        "interp_method": method,
        "multiplier": amount,
        "custom_name": custom_name,
        "checkpoint_format": fmt,
        "save_as_half": save_as_half,
        "config_source": config,
        "bake_in_vae": bake_vae,
        "discard_weights": discard,
        "save_metadata": save_metadata,
        "add_merge_recipe": add_recipe,
        "copy_metadata_fields": copy_metadata,
        "metadata_json": metadata_json,
    }

    # block weights and LoRAs: composed from several controls, not one request field each
    extra: dict[str, Any] = {
        "use_blocks": use_blocks,
        "base_alpha": base_alpha,
        "bake_loras": bake_loras,
        **{f"block_{name}": slider for name, slider in zip(BLOCK_NAMES, sliders, strict=True)},
    }

    def form_request(data: dict[Any, Any]) -> MergeRequest:
        values = values_of(fields, data)
        more = values_of(extra, data)
        weights = ""
        if more["use_blocks"]:
            layout = block_layout(services, values["primary_model_name"])
            weights = block_weights_text(layout, [more[f"block_{name}"] for name in BLOCK_NAMES])
        return merge_request_from_ui(
            **values,
            block_weights=weights,
            base_alpha=float(more["base_alpha"]),
            bake_loras=more["bake_loras"],
        )

    def follow(job: JobHandle[Any]) -> Iterator[str]:
        while not job.done():
            yield _progress_html(job)
            time.sleep(POLL_SECONDS)

    def run_merge(data: dict[Any, Any]) -> Iterator[str]:
        job = submit_merge(services, form_request(data))
        yield from follow(job)
        outcome = _outcome(job)
        if outcome is None:
            yield "<p class='sdw-merger-interrupted'>Interrupted: nothing was saved.</p>"
            return
        detail = f"{outcome.tensors} tensors, {outcome.merged} merged, {outcome.seconds:.1f} s"
        yield _done_html(outcome.message, detail, outcome.warnings)

    def run_extract(data: dict[Any, Any]) -> Iterator[str]:
        values = values_of(extract_fields, data)
        request = ExtractLoraRequest(
            original_model_name=values["original"] or "",
            tuned_model_name=values["tuned"] or "",
            name=values["name"] or "",
            rank=int(values["rank"]),
            conv_rank=int(values["conv_rank"]),
            clamp_quantile=float(values["clamp_quantile"]),
            min_diff=float(values["min_diff"] or 0.0),
            save_as_half=bool(values["save_as_half"]),
        )
        try:
            job: JobHandle[ExtractLoraResult] = services.engine.submit(request)
        except SdWebuiError as exc:
            raise gr.Error(str(exc)) from exc
        yield from follow(job)
        outcome = _outcome(job)
        if outcome is None:
            yield "<p class='sdw-merger-interrupted'>Interrupted: nothing was saved.</p>"
            return
        text_encoder = "with" if outcome.text_encoder_included else "without (the text encoders did not differ)"
        detail = f"{outcome.modules} modules, {text_encoder} text encoder layers, {outcome.seconds:.1f} s"
        yield _done_html(outcome.message, detail, outcome.warnings)

    def stop() -> None:
        """Interrupt the running merge or LoRA extraction (whoever started it); never a generation."""
        job_id = services.engine.current_job_id()
        if job_id is None:
            return
        try:
            kind = services.engine.handle(job_id).kind
        except SdWebuiError:
            return
        if kind in MERGER_JOB_KINDS:
            services.engine.interrupt(job_id)

    extract_fields: dict[str, Any] = {
        "original": extract_original,
        "tuned": extract_tuned,
        "name": extract_name,
        "rank": extract_rank,
        "conv_rank": extract_conv_rank,
        "clamp_quantile": extract_clamp,
        "min_diff": extract_min_diff,
        "save_as_half": extract_half,
    }
    merge.click(
        run_merge,
        inputs_of({**fields, **extra}),
        result,
        concurrency_limit=1,
        concurrency_id="model_merger",
        show_progress="minimal",
    ).success(refresh_models, models, models, queue=False, show_progress="hidden")
    extract.click(
        run_extract,
        inputs_of(extract_fields),
        result,
        concurrency_limit=1,
        concurrency_id="model_merger",
        show_progress="minimal",
    )
    interrupt.click(stop, None, None, queue=False)
    return MergerTab(
        primary=primary,
        secondary=secondary,
        tertiary=tertiary,
        result=result,
        merge=merge,
        fields=fields,
        extra=extra,
        interrupt=interrupt,
    )


def _outcome(job: JobHandle[T]) -> T | None:
    """The job's result; None when it was interrupted; a user error as a `gr.Error`."""
    try:
        return job.result()
    except JobInterrupted:
        return None
    except SdWebuiError as exc:
        raise gr.Error(str(exc)) from exc


def _done_html(message: str, detail: str, warnings: tuple[str, ...]) -> str:
    parts = [
        f"<p class='sdw-merger-done'>{html.escape(message)}</p>",
        f"<p class='sdw-merger-detail'>{html.escape(detail)}</p>",
    ]
    parts += [f"<p class='sdw-merger-warning'>⚠ {html.escape(w)}</p>" for w in warnings]
    return "".join(parts)
