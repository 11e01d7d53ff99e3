"""The txt2img tab: A1111's controls (labels, defaults and elem_ids, a1111.md 10.1), named by the
keywords of one converter (`txt2img_request_from_ui`), submitted to the engine
(`services.engine.submit`); the job's progress is polled through its handle while it runs and
shown with the live preview in the gallery.

Hires. fix offers A1111's whole upscaler list (latent modes, the built-ins, the server's model
upscalers) and, in rows shown when the options `hires_fix_show_sampler` / `hires_fix_show_prompts`
are on, the hires checkpoint, sampler, schedule type and prompts; the Refiner checkbox-accordion
is `modules.ui.refiner`'s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.context import Context

from modules.core.requests import Txt2ImgRequest
from modules.services import Services
from modules.ui.common import (
    AUTOMATIC,
    OutputButtons,
    PromptRow,
    build_prompt_row,
    build_results_column,
    build_seed_section,
    run_generation,
    sampler_choices,
    scheduler_choices,
    wire_generate,
)
from modules.ui.controlnet import ControlNetSection, add_send_button, build_controlnet_section
from modules.ui.extra_networks import extra_networks_tabs
from modules.ui.extras import upscaler_names
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.refiner import build_refiner, checkpoint_titles, refiner_request_values, refresh_checkpoint_choices
from modules.ui.scripts import ScriptSection, build_script_section
from modules.ui.token_counter import wire_token_counters

LATENT_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
SAME_CHECKPOINT = "Use same checkpoint"
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
SHOW_SAMPLER_OPTION = "hires_fix_show_sampler"
SHOW_PROMPTS_OPTION = "hires_fix_show_prompts"


def hr_upscaler_choices(services: Services) -> list[str]:
    """A1111's hires upscaler list: the latent modes, then the Extras tab's upscalers (None,
    Lanczos, Nearest, then every model upscaler the server has)."""
    return [*LATENT_UPSCALERS, *(name for name in upscaler_names(services) if name not in LATENT_UPSCALERS)]


def hr_checkpoint_choices(services: Services) -> list[str]:
    return [SAME_CHECKPOINT, *checkpoint_titles(services)]


def hr_sampler_choices() -> list[str]:
    return [SAME_SAMPLER, *sampler_choices()[0]]


def hr_scheduler_choices() -> list[str]:
    """ "Use same scheduler", then every schedule label (Automatic included, as A1111)."""
    return [SAME_SCHEDULER, *scheduler_choices()]


def _chosen(value: str | None, same: str) -> str | None:
    """A hires dropdown's value for the request: None for "Use same ..." (A1111's
    `txt2img_create_processing`) or nothing chosen."""
    return None if not value or value == same else value


def show_row_unless(same: str) -> Callable[[str | None], Any]:
    """A change handler for a hires control: shows its row when the value is set to something
    other than `same` ("Use same ...", or empty for the prompts); otherwise changes nothing."""

    def shown(value: str | None) -> Any:
        return gr.update(visible=True) if value and value != same else gr.skip()

    return shown


def hires_rows_visible(services: Services) -> tuple[bool, bool]:
    """(the hires checkpoint/sampler row shown, the hires prompts row shown), from the options."""
    return bool(services.options.get(SHOW_SAMPLER_OPTION)), bool(services.options.get(SHOW_PROMPTS_OPTION))


def txt2img_request_from_ui(
    *,
    prompt: str,
    negative_prompt: str,
    styles: list[str] | tuple[str, ...] | None,
    sampler_name: str,
    scheduler: str,
    steps: float,
    enable_hr: bool,
    hr_upscaler: str,
    hr_second_pass_steps: float,
    denoising_strength: float,
    hr_scale: float,
    hr_resize_x: float,
    hr_resize_y: float,
    hr_checkpoint_name: str | None,
    hr_sampler_name: str | None,
    hr_scheduler: str | None,
    hr_prompt: str | None,
    hr_negative_prompt: str | None,
    enable_refiner: bool,
    refiner_checkpoint: str | None,
    refiner_switch_at: float,
    width: float,
    height: float,
    n_iter: float,
    batch_size: float,
    cfg_scale: float,
    seed: float,
    subseed: float,
    subseed_strength: float,
    seed_resize_from_w: float,
    seed_resize_from_h: float,
) -> Txt2ImgRequest:
    """The UI's values (sliders send floats) as a request; nothing else happens here. The hires
    dropdowns' "Use same ..." is None; the refiner is there only when ticked with a checkpoint."""
    refiner, switch_at = refiner_request_values(enable_refiner, refiner_checkpoint, refiner_switch_at)
    return Txt2ImgRequest(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        styles=tuple(styles or ()),
        sampler_name=sampler_name or None,
        scheduler=scheduler or None,
        steps=int(steps),
        enable_hr=bool(enable_hr),
        hr_upscaler=hr_upscaler or None,
        hr_second_pass_steps=int(hr_second_pass_steps),
        denoising_strength=float(denoising_strength),
        hr_scale=float(hr_scale),
        hr_resize_x=int(hr_resize_x),
        hr_resize_y=int(hr_resize_y),
        hr_checkpoint_name=_chosen(hr_checkpoint_name, SAME_CHECKPOINT),
        hr_sampler_name=_chosen(hr_sampler_name, SAME_SAMPLER),
        hr_scheduler=_chosen(hr_scheduler, SAME_SCHEDULER),
        hr_prompt=hr_prompt or "",
        hr_negative_prompt=hr_negative_prompt or "",
        refiner_checkpoint=refiner,
        refiner_switch_at=switch_at,
        width=int(width),
        height=int(height),
        n_iter=int(n_iter),
        batch_size=int(batch_size),
        cfg_scale=float(cfg_scale),
        seed=int(seed),
        subseed=int(subseed),
        subseed_strength=float(subseed_strength),
        seed_resize_from_w=int(seed_resize_from_w),
        seed_resize_from_h=int(seed_resize_from_h),
    )


@dataclass
class Txt2ImgTab:
    row: PromptRow
    gallery: gr.Gallery
    html_info: gr.HTML
    generation_info: gr.Textbox
    output_buttons: OutputButtons
    # the input components by converter keyword, plus "subseed_show" and the ControlNet units'
    # (`controlnet_<i>_<name>`): send-to and paste fill them
    fields: dict[str, Any] = field(default_factory=dict)
    scripts: ScriptSection | None = None
    controlnet: ControlNetSection | None = None


def final_resolution(
    *, enable_hr: bool, width: float, height: float, hr_scale: float, hr_resize_x: float, hr_resize_y: float
) -> str:
    """`#txtimg_hr_finalres`: the size hires. fix makes ("from WxH to WxH"); empty when it is off."""
    if not enable_hr:
        return ""
    w, h = int(width), int(height)
    if hr_resize_x or hr_resize_y:
        tw = int(hr_resize_x) or int(w * int(hr_resize_y) / h)
        th = int(hr_resize_y) or int(h * int(hr_resize_x) / w)
    else:
        tw, th = int(w * hr_scale), int(h * hr_scale)
    return f"<span>from <b>{w}x{h}</b> to <b>{tw}x{th}</b></span>"


def build_txt2img_tab(services: Services) -> Txt2ImgTab:
    samplers, sampler_default = sampler_choices()

    row = build_prompt_row("txt2img", services)
    prompt, negative, style_dropdown = row.prompt, row.negative, row.styles

    # the settings go into the "Generation" tab, the extra-network tabs next to it (A1111)
    with (
        extra_networks_tabs("txt2img", services, prompt, negative),
        gr.Row(elem_id="txt2img_settings_and_results", equal_height=False),
    ):
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            with gr.Row(elem_id="txt2img_sampler_row"):
                sampler = gr.Dropdown(
                    label="Sampling method", choices=samplers, value=sampler_default, elem_id="txt2img_sampling"
                )
                scheduler = gr.Dropdown(
                    label="Schedule type", choices=scheduler_choices(), value=AUTOMATIC, elem_id="txt2img_scheduler"
                )
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            show_sampler, show_prompts = hires_rows_visible(services)
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
                enable_hr = gr.Checkbox(label="Enable", value=False, elem_id="txt2img_hr-checkbox")
                hr_final = gr.HTML("", elem_id="txtimg_hr_finalres")
                with gr.Row(elem_id="txt2img_hires_fix_row1"):
                    hr_upscaler = gr.Dropdown(
                        label="Upscaler",
                        choices=hr_upscaler_choices(services),
                        value="Latent",
                        elem_id="txt2img_hr_upscaler",
                    )
                    hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
                    hr_denoise = gr.Slider(
                        0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id="txt2img_denoising_strength"
                    )
                with gr.Row(elem_id="txt2img_hires_fix_row2"):
                    hr_scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
                    hr_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
                    hr_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
                with gr.Row(
                    elem_id="txt2img_hires_fix_row3", equal_height=True, visible=show_sampler
                ) as hr_sampler_row:
                    hr_checkpoint = gr.Dropdown(
                        label="Checkpoint",
                        choices=hr_checkpoint_choices(services),
                        value=SAME_CHECKPOINT,
                        elem_id="hr_checkpoint",
                        scale=4,
                    )
                    hr_checkpoint_refresh = gr.Button(
                        "🔄",
                        elem_id="hr_checkpoint_refresh",
                        size="sm",
                        min_width=40,
                        scale=0,
                        elem_classes="sdw-small-refresh",
                    )
                    hr_sampler = gr.Dropdown(
                        label="Hires sampling method",
                        choices=hr_sampler_choices(),
                        value=SAME_SAMPLER,
                        elem_id="hr_sampler",
                        scale=4,
                    )
                    hr_scheduler = gr.Dropdown(
                        label="Hires schedule type",
                        choices=hr_scheduler_choices(),
                        value=SAME_SCHEDULER,
                        elem_id="hr_scheduler",
                        scale=4,
                    )
                with gr.Row(elem_id="txt2img_hires_fix_row4", visible=show_prompts) as hr_prompts_row:
                    with gr.Column(scale=80, min_width=160):  # side by side, as A1111
                        hr_prompt = gr.Textbox(
                            label="Hires prompt",
                            show_label=False,
                            lines=3,
                            placeholder="Prompt for hires fix pass.\n"
                            "Leave empty to use the same prompt as in first pass.",
                            elem_id="hires_prompt",
                        )
                    with gr.Column(scale=80, min_width=160):  # side by side, as A1111
                        hr_negative = gr.Textbox(
                            label="Hires negative prompt",
                            show_label=False,
                            lines=3,
                            placeholder="Negative prompt for hires fix pass.\n"
                            "Leave empty to use the same negative prompt as in first pass.",
                            elem_id="hires_neg_prompt",
                        )
            refiner = build_refiner("txt2img", services)
            with gr.Row(equal_height=True):
                with gr.Column(scale=4, min_width=200):
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                swap = gr.Button("⇅", elem_id="txt2img_res_switch_btn", size="sm", min_width=40, scale=0)
                with gr.Column(scale=2, min_width=160):
                    n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            seeds = build_seed_section("txt2img")
            seed, extra, subseed = seeds.seed, seeds.extra, seeds.subseed
            subseed_strength, resize_w, resize_h = seeds.subseed_strength, seeds.resize_w, seeds.resize_h
            controlnet = build_controlnet_section(services, is_img2img=False, size=(width, height), enable_hr=enable_hr)
            scripts = build_script_section(services, is_img2img=False)
        results = build_results_column("txt2img")
    progress, gallery, html_info = results.progress, results.gallery, results.html_info
    generation_info, output_buttons = results.generation_info, results.output_buttons
    add_send_button(controlnet, output_buttons.send_to_extras)  # "Send to ControlNet" after 📐
    last_seeds = seeds.last_seeds

    # the controls by the converter's keywords: the handler gets their values by these names
    request_fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "styles": style_dropdown,
        "sampler_name": sampler,
        "scheduler": scheduler,
        "steps": steps,
        "enable_hr": enable_hr,
        "hr_upscaler": hr_upscaler,
        "hr_second_pass_steps": hr_steps,
        "denoising_strength": hr_denoise,
        "hr_scale": hr_scale,
        "hr_resize_x": hr_x,
        "hr_resize_y": hr_y,
        "hr_checkpoint_name": hr_checkpoint,
        "hr_sampler_name": hr_sampler,
        "hr_scheduler": hr_scheduler,
        "hr_prompt": hr_prompt,
        "hr_negative_prompt": hr_negative,
        **refiner.fields,
        "width": width,
        "height": height,
        "n_iter": n_iter,
        "batch_size": batch_size,
        "cfg_scale": cfg,
        "seed": seed,
        "subseed": subseed,
        "subseed_strength": subseed_strength,
        "seed_resize_from_w": resize_w,
        "seed_resize_from_h": resize_h,
    }

    def run(values: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        request = txt2img_request_from_ui(**{name: values[name] for name in request_fields})
        yield from run_generation(services, controlnet.apply(scripts.apply(request, values), values))

    outputs = [progress, gallery, html_info, generation_info, last_seeds]
    wire_generate(services, row, run, {**request_fields, **scripts.fields, **controlnet.fields}, outputs)

    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)

    wire_token_counters(services, row, steps)

    hr_fields = {
        "enable_hr": enable_hr,
        "width": width,
        "height": height,
        "hr_scale": hr_scale,
        "hr_resize_x": hr_x,
        "hr_resize_y": hr_y,
    }
    gr.on(
        [enable_hr.change, width.change, height.change, hr_scale.change, hr_x.change, hr_y.change],
        lambda data: final_resolution(**values_of(hr_fields, data)),
        inputs_of(hr_fields),
        hr_final,
        queue=False,
        show_progress="hidden",
    )

    hr_checkpoint_refresh.click(
        lambda value: refresh_checkpoint_choices(services, value, (SAME_CHECKPOINT,)),
        hr_checkpoint,
        hr_checkpoint,
        queue=False,
    )
    # the options may have changed in Settings since the page was built: a reload shows them
    root = Context.root_block
    if isinstance(root, gr.Blocks):
        root.load(
            lambda: tuple(gr.update(visible=shown) for shown in hires_rows_visible(services)),
            None,
            [hr_sampler_row, hr_prompts_row],
            queue=False,
            show_progress="hidden",
        )

    # a pasted (or sent) hires checkpoint, sampler, schedule or prompt shows its hidden row, as
    # A1111's paste does; nothing here hides a row
    for control, same, row_shown in (
        (hr_checkpoint, SAME_CHECKPOINT, hr_sampler_row),
        (hr_sampler, SAME_SAMPLER, hr_sampler_row),
        (hr_scheduler, SAME_SCHEDULER, hr_sampler_row),
        (hr_prompt, "", hr_prompts_row),
        (hr_negative, "", hr_prompts_row),
    ):
        control.change(show_row_unless(same), control, row_shown, queue=False, show_progress="hidden")

    # the ControlNet units' fields too: a paste restores them
    fields = {**request_fields, "subseed_show": extra, **controlnet.paste_fields}
    return Txt2ImgTab(row, gallery, html_info, generation_info, output_buttons, fields, scripts, controlnet)
