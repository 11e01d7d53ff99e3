"""The Checkpoint Merger tab (a1111.md 10.5, NOTES "Checkpoint Merger"): A1111's controls, labels,
defaults and elem_ids, bound to `modules.models.merge`. The merge runs as one job on the single
worker (never alongside a generation); the result box follows its progress (tensors done / total)
and then says where the checkpoint was saved. Errors are `gr.Error`s."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.core.errors import SdWebuiError
from modules.core.jobs import MergeRequest
from modules.core.results import MergeResult
from modules.engine.facade import JobHandle
from modules.models import merge as mg
from modules.services import Services

DESCRIPTIONS = {
    mg.NO_INTERPOLATION: "No interpolation will be used. Requires one model; A. "
    "Allows for format conversion and VAE baking.",
    mg.WEIGHTED_SUM: "A weighted sum will be used for interpolation. Requires two models; A and B. "
    "The result is calculated as A * (1 - M) + B * M",
    mg.ADD_DIFFERENCE: "The difference between the last two models will be added to the first. "
    "Requires three models; A, B and C. The result is calculated as A + (B - C) * M",
}
POLL_SECONDS = 0.25


def description_html(method: str) -> str:
    return f"<p style='margin-bottom: 2.5em'>{html.escape(DESCRIPTIONS.get(method, ''))}</p>"


def checkpoint_choices(services: Services) -> list[str]:
    return list(mg.iter_titles(services.registry))


def vae_choices(services: Services) -> list[str]:
    return [mg.NO_VAE] + [v.name for v in services.registry.vaes()]


def current_title(services: Services, value: str | None) -> str | None:
    """The title now shown for a chosen checkpoint (None when it is gone)."""
    if not value:
        return None
    try:
        return services.registry.find_checkpoint(value).title
    except SdWebuiError:
        return None


def output_dir(services: Services) -> Path:
    """A1111's `--ckpt-dir` or models/Stable-diffusion."""
    return services.settings.ckpt_dir or services.paths.checkpoint_dir


def submit_merge(services: Services, request: MergeRequest) -> JobHandle[MergeResult]:
    """Validate on the caller's thread, then merge as one job on the worker (progress: one step
    per tensor of A)."""
    handle: JobHandle[MergeResult] = services.engine.submit(request)
    return handle


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
            metadata.update(mg.read_metadata(info.filename))
    return json.dumps(metadata, indent=4, ensure_ascii=False)


@dataclass
class MergerTab:
    primary: gr.Dropdown
    secondary: gr.Dropdown
    tertiary: gr.Dropdown
    result: gr.HTML
    merge: gr.Button


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
            description = gr.HTML(description_html(mg.WEIGHTED_SUM), elem_id="modelmerger_interp_description")
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
                choices=list(mg.INTERP_METHODS),
                value=mg.WEIGHTED_SUM,
                label="Interpolation Method",
                elem_id="modelmerger_interp_method",
            )
            with gr.Row():
                fmt = gr.Radio(
                    choices=list(mg.CHECKPOINT_FORMATS),
                    value="safetensors",
                    label="Checkpoint format",
                    elem_id="modelmerger_checkpoint_format",
                )
                save_as_half = gr.Checkbox(value=False, label="Save as float16", elem_id="modelmerger_save_as_half")
            config = gr.Radio(
                choices=list(mg.CONFIG_SOURCES),
                value=mg.CONFIG_SOURCES[0],
                label="Copy config from",
                elem_id="modelmerger_config_method",
            )
            with gr.Row(elem_classes="sdw-merger-model"):
                bake_vae = gr.Dropdown(
                    choices=vae_choices(services),
                    value=mg.NO_VAE,
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

    def run_merge(
        a: str | None,
        b: str | None,
        c: str | None,
        interp_method: str,
        multiplier: float,
        name: str,
        checkpoint_format: str,
        half: bool,
        config_source: str,
        vae: str | None,
        discard_weights: str,
        with_metadata: bool,
        recipe: bool,
        copy_fields: bool,
        extra_json: str,
    ) -> Iterator[str]:
        request = MergeRequest(
            primary_model_name=a,
            secondary_model_name=b,
            tertiary_model_name=c,
            interp_method=interp_method,
            multiplier=float(multiplier),
            custom_name=name or "",
            checkpoint_format=checkpoint_format,
            save_as_half=bool(half),
            config_source=config_source,
            bake_in_vae=vae or mg.NO_VAE,
            discard_weights=discard_weights or "",
            save_metadata=bool(with_metadata),
            add_merge_recipe=bool(recipe),
            copy_metadata_fields=bool(copy_fields),
            metadata_json=extra_json or "{}",
        )
        try:
            job = submit_merge(services, request)
        except SdWebuiError as exc:
            raise gr.Error(str(exc)) from exc
        while not job.future.done():
            yield _progress_html(job)
            time.sleep(POLL_SECONDS)
        try:
            outcome = job.future.result()
        except SdWebuiError as exc:
            raise gr.Error(str(exc)) from exc
        message = html.escape(outcome.message)
        detail = f"{outcome.tensors} tensors, {outcome.merged} merged, {outcome.seconds:.1f} s"
        yield f"<p class='sdw-merger-done'>{message}</p><p class='sdw-merger-detail'>{html.escape(detail)}</p>"

    merge.click(
        run_merge,
        [
            primary,
            secondary,
            tertiary,
            method,
            amount,
            custom_name,
            fmt,
            save_as_half,
            config,
            bake_vae,
            discard,
            save_metadata,
            add_recipe,
            copy_metadata,
            metadata_json,
        ],
        result,
        concurrency_limit=1,
        show_progress="minimal",
    ).success(refresh_models, models, models, queue=False, show_progress="hidden")
    return MergerTab(primary=primary, secondary=secondary, tertiary=tertiary, result=result, merge=merge)
