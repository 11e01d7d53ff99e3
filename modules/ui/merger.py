"""The Checkpoint Merger tab (a1111.md 10.5, NOTES "Checkpoint Merger"): A1111's controls, labels,
defaults and elem_ids, named by `MergeRequest`'s fields (`merge_request_from_ui`). The merge is
one job on the engine (`services.engine.submit(MergeRequest(...))`, never alongside a
generation); the result box follows its handle's progress (tensors done / total) and then says
where the checkpoint was saved. Errors are `gr.Error`s."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.core.jobs import (
    ADD_DIFFERENCE,
    CHECKPOINT_FORMATS,
    CONFIG_SOURCES,
    INTERP_METHODS,
    NO_INTERPOLATION,
    NO_VAE,
    WEIGHTED_SUM,
    MergeRequest,
)
from modules.core.results import MergeResult
from modules.core.safetensors_header import read_safetensors_header
from modules.engine.facade import JobHandle
from modules.services import Services
from modules.ui.named_inputs import inputs_of, values_of

DESCRIPTIONS = {
    NO_INTERPOLATION: "No interpolation will be used. Requires one model; A. "
    "Allows for format conversion and VAE baking.",
    WEIGHTED_SUM: "A weighted sum will be used for interpolation. Requires two models; A and B. "
    "The result is calculated as A * (1 - M) + B * M",
    ADD_DIFFERENCE: "The difference between the last two models will be added to the first. "
    "Requires three models; A, B and C. The result is calculated as A + (B - C) * M",
}
POLL_SECONDS = 0.25


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
    )


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
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
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

    models = [primary, secondary, tertiary]
    for button in (refresh_a, refresh_b, refresh_c):
        button.click(refresh_models, models, models, queue=False)
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

    def run_merge(data: dict[Any, Any]) -> Iterator[str]:
        job = submit_merge(services, merge_request_from_ui(**values_of(fields, data)))
        while not job.done():
            yield _progress_html(job)
            time.sleep(POLL_SECONDS)
        try:
            outcome = job.result()
        except SdWebuiError as exc:
            raise gr.Error(str(exc)) from exc
        message = html.escape(outcome.message)
        detail = f"{outcome.tensors} tensors, {outcome.merged} merged, {outcome.seconds:.1f} s"
        yield f"<p class='sdw-merger-done'>{message}</p><p class='sdw-merger-detail'>{html.escape(detail)}</p>"

    merge.click(
        run_merge,
        inputs_of(fields),
        result,
        concurrency_limit=1,
        show_progress="minimal",
    ).success(refresh_models, models, models, queue=False, show_progress="hidden")
    return MergerTab(primary=primary, secondary=secondary, tertiary=tertiary, result=result, merge=merge, fields=fields)
