# ruff: noqa: F811  (test arguments named as the imported API fixtures)
"""The built-in X/Y/Z plot script: value parsing, A1111's axis numbering per tab, labelled grids,
and runs through the API with A1111's `script_args` (tiny sd1 model, 64x64, 1-2 steps)."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageChops

from modules.core.requests import Txt2ImgRequest
from modules.core.results import Result
from modules.engine.hooks import BatchEvent, Hooks
from modules.engine.worker import JobContext
from modules.extensions import runtime
from modules.extensions.builtin_scripts import grid_labels
from modules.extensions.builtin_scripts.grid_labels import (
    GridAnnotation,
    GridStyle,
    draw_grid_annotations,
    image_grid,
)
from modules.extensions.builtin_scripts.xyz_grid import (
    XYZPlot,
    axis_controls,
    axis_options,
    csv_values,
    expand_float_ranges,
    expand_int_ranges,
    fill_values,
    parse_size,
    pick_axis,
    reorder_prompt,
    swap_axes,
    to_csv,
)
from modules.extensions.callbacks import CallbackRegistry
from modules.extensions.processing_api import Processed, p_from_request
from tests.api.conftest import api_app, api_services, client  # noqa: F401 (the API fixtures)
from tests.fixtures.module_tmp import ModuleTempDirs


@pytest.fixture(scope="module")
def api_data_dir(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Path:
    """The API app's data dir: the tiny sd1 checkpoint and two prompt styles."""
    root = module_tmp.mktemp("xyz-data")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], checkpoints / "sd1.safetensors")
    (root / "styles.csv").write_text(
        'name,prompt,negative_prompt\nred,"{prompt}, red",\nblue,"blue {prompt}",ugly\n', encoding="utf-8"
    )
    return root


# features.md 5 (A1111 v1.10.1): the axis type lists as clients number them
TXT2IMG_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn",
    "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma",
    "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order", "Face restore",
    "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
    "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
]  # fmt: skip
IMG2IMG_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
    "Extra noise", "Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier",
    "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
]  # fmt: skip
STEPS, CFG, PROMPT_SR, SAMPLER, TOME = 4, 6, 7, 9, 33  # txt2img numbers
SIZE = 64
BASE: dict[str, Any] = {
    "prompt": "a cat",
    "negative_prompt": "",
    "steps": 1,
    "width": SIZE,
    "height": SIZE,
    "seed": 1234,
    "sampler_name": "Euler",
    "cfg_scale": 7,
}


def xyz_args(
    x_type: Any = 1,
    x_values: Any = "",
    y_type: Any = 0,
    y_values: Any = "",
    z_type: Any = 0,
    z_values: Any = "",
    *,
    x_dropdown: Any = None,
    draw_legend: bool = True,
    include_lone_images: bool = False,
    include_sub_grids: bool = False,
    no_fixed_seeds: bool = False,
    vary_seeds: tuple[bool, bool, bool] = (False, False, False),
    margin_size: int = 0,
    csv_mode: bool = False,
) -> list[Any]:
    """A1111's 18 script_args in its order."""
    return [
        x_type,
        x_values,
        x_dropdown or [],
        y_type,
        y_values,
        [],
        z_type,
        z_values,
        [],
        draw_legend,
        include_lone_images,
        include_sub_grids,
        no_fixed_seeds,
        *vary_seeds,
        margin_size,
        csv_mode,
    ]


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1]))).convert("RGB")


def post(client: TestClient, args: list[Any], *, path: str = "/sdapi/v1/txt2img", **fields: Any) -> Any:
    return client.post(path, json={**BASE, **fields, "script_name": "x/y/z plot", "script_args": args})


def generate(client: TestClient, args: list[Any], **fields: Any) -> tuple[list[Image.Image], dict[str, Any]]:
    response = post(client, args, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    return [decode(i) for i in body["images"]], json.loads(body["info"])


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


# -- values ----------------------------------------------------------------------------------


def test_int_ranges() -> None:
    assert expand_int_ranges(["1-5"]) == [1, 2, 3, 4, 5]
    assert expand_int_ranges(["1-5 (+2)"]) == [1, 3, 5]
    assert expand_int_ranges(["1-10 (+3)"]) == [1, 4, 7, 10]
    assert expand_int_ranges(["10-1 (-3)"]) == [10, 7, 4, 1]
    assert expand_int_ranges(["5-3"]) == [5, 4, 3]
    assert expand_int_ranges(["1-10 [5]"]) == [1, 3, 5, 7, 10]  # evenly spaced, truncated (A1111)
    assert expand_int_ranges(["-2-2"]) == [-2, -1, 0, 1, 2]
    assert expand_int_ranges(["7", "1-2", " ", "-1"]) == ["7", 1, 2, "-1"]
    with pytest.raises(ValueError, match="step"):
        expand_int_ranges(["1-5 (+0)"])


def test_float_ranges() -> None:
    assert expand_float_ranges(["0.5-1.5 (+0.25)"]) == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert expand_float_ranges(["1-2 (+0.3)"]) == [1.0, 1.3, 1.6, 1.9]  # never past the end
    assert expand_float_ranges(["1-2 [5]"]) == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert expand_float_ranges(["3-5"]) == [3.0, 4.0, 5.0]
    assert expand_float_ranges(["7.5"]) == ["7.5"]


def test_csv_values_and_back() -> None:
    assert csv_values('a, "b, c",d ,  e') == ["a", "b, c", "d", "e"]
    assert csv_values("") == []
    assert to_csv(["Euler a", "DPM++ 2M, odd"]) == 'Euler a,"DPM++ 2M, odd"'
    assert csv_values(to_csv(["x, y", "z"])) == ["x, y", "z"]


def test_sizes_and_prompt_order() -> None:
    assert parse_size("512x768") == (512, 768)
    assert parse_size(" 64 X 96 ") == (64, 96)
    with pytest.raises(Exception, match="Size"):
        parse_size("512")
    assert reorder_prompt("a cat, red, big", ["big", "red", "cat"]) == "a big, red, cat"
    assert reorder_prompt("a cat, red, big", ["cat", "red", "big"]) == "a cat, red, big"


# -- axis numbering ----------------------------------------------------------------------------


def test_axis_numbering_matches_a1111_per_tab() -> None:
    assert [o.label for o in axis_options(False)] == TXT2IMG_AXES
    assert [o.label for o in axis_options(True)] == IMG2IMG_AXES
    assert axis_options(True)[5].label == "CFG Scale"
    assert axis_options(False)[5].label == "Hires steps"


def test_pick_axis_by_index_or_label() -> None:
    options = axis_options(False)
    assert pick_axis(options, 6, "X").label == "CFG Scale"
    assert pick_axis(options, "6", "X").label == "CFG Scale"
    assert pick_axis(options, "cfg scale", "X").label == "CFG Scale"  # the page's default is a label
    assert pick_axis(options, None, "Y").label == "Nothing"
    with pytest.raises(Exception, match="axis number"):
        pick_axis(options, 42, "Z")


def test_unusable_axes_keep_their_slot_and_say_why() -> None:
    for label in ("Token merging ratio", "Token merging ratio high-res", "FP8 mode"):
        for is_img2img in (False, True):
            (opt,) = [o for o in axis_options(is_img2img) if o.label == label]
            assert opt.unsupported
    txt2img_noise = axis_options(False)[26]
    assert txt2img_noise.label == "Initial noise multiplier" and "img2img" in (txt2img_noise.unsupported or "")
    assert axis_options(True)[25].unsupported is None


def test_page_controls_follow_the_axis_type() -> None:
    options = axis_options(False)
    button, textbox, dropdown = axis_controls(options, STEPS, "1-3", [], False)
    assert (button["visible"], textbox["visible"], dropdown["visible"]) == (False, True, False)
    # a choices axis: the dropdown, with the typed values that are choices carried over
    button, textbox, dropdown = axis_controls(options, SAMPLER, "Euler, Bogus, DDIM", [], False)
    assert button["visible"] and not textbox["visible"] and dropdown["visible"]
    assert dropdown["value"] == ["Euler", "DDIM"] and "Euler a" in dropdown["choices"]
    # CSV mode: back to the textbox, chosen values as CSV
    _, textbox, dropdown = axis_controls(options, SAMPLER, "", ["Euler", "DDIM"], True)
    assert textbox == {"visible": True, "value": "Euler,DDIM"} and not dropdown["visible"]
    assert fill_values(options, STEPS, False) == ({}, {})
    assert fill_values(options, 39, True) == ({"value": "GPU,CPU,NV"}, {})
    assert fill_values(options, 39, False)[1]["value"] == ["GPU", "CPU", "NV"]
    assert swap_axes(options, STEPS, "1-3", [], SAMPLER, "", ["Euler"]) == (
        "Sampler",
        "",
        ["Euler"],
        "Steps",
        "1-3",
        [],
    )


def test_ui_builds_a1111s_controls_with_their_ids() -> None:
    import gradio as gr

    script = XYZPlot()
    script.is_img2img = True
    with gr.Blocks():
        controls = script.ui(True)
    assert len(controls) == 18
    ids = [c.elem_id for c in controls]
    assert ids[:3] == [
        "script_img2img_xyz_plot_x_type",
        "script_img2img_xyz_plot_x_values",
        "script_img2img_xyz_plot_x_values_dropdown",
    ]
    assert ids[9:] == [
        f"script_img2img_xyz_plot_{name}"
        for name in (
            "draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
            "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode",
        )
    ]  # fmt: skip
    assert [label for _, label in script.infotext_fields or [] if isinstance(label, str)] == [
        "X Type", "X Values", "Y Type", "Y Values", "Z Type", "Z Values",
    ]  # fmt: skip


# -- labelled grids ----------------------------------------------------------------------------

WHITE = GridStyle()


def cells(n: int, size: int = SIZE) -> list[Image.Image]:
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    return [Image.new("RGB", (size, size), colors[i % len(colors)]) for i in range(n)]


def test_image_grid_rows_and_background() -> None:
    grid = image_grid(cells(3), rows=1, style=WHITE)
    assert grid.size == (3 * SIZE, SIZE)
    mixed = image_grid([Image.new("RGB", (SIZE, SIZE), "red"), Image.new("RGB", (32, 32), "blue")], rows=1, style=WHITE)
    assert mixed.size == (2 * SIZE, SIZE)
    assert mixed.getpixel((SIZE + 1, 1)) == (255, 255, 255)  # the small image is centred on the background
    assert mixed.getpixel((SIZE + 32, 32)) == (0, 0, 255)
    auto = image_grid(cells(6), style=GridStyle(prevent_empty_spots=True))
    assert auto.size == (3 * SIZE, 2 * SIZE)


def test_image_grid_fires_the_image_grid_callbacks() -> None:
    callbacks = CallbackRegistry()

    def one_row(params: Any) -> None:
        params.cols, params.rows = len(params.imgs), 1

    callbacks.add("image_grid", one_row)
    before = runtime.maybe_environment()
    runtime.install(cast(runtime.ScriptEnvironment, SimpleNamespace(callbacks=callbacks, options={})))
    try:
        grid = image_grid(cells(4), rows=2, style=WHITE)
    finally:
        runtime.install(before)
    assert grid.size == (4 * SIZE, SIZE)


def test_annotations_add_label_bands_and_margins() -> None:
    grid = image_grid(cells(4), rows=2, style=WHITE)
    hor = [[GridAnnotation("Steps: 1")], [GridAnnotation("Steps: 2")]]
    ver = [[GridAnnotation("CFG Scale: 3.0")], [GridAnnotation("CFG Scale: 7.0")]]
    out = draw_grid_annotations(grid, SIZE, SIZE, hor, ver, margin=6, style=WHITE)
    pad_left = SIZE * 3 // 4
    assert out.width == 2 * SIZE + pad_left + 6
    pad_top = out.height - 2 * SIZE - 6
    assert pad_top > 0
    # the cells sit after the bands, spread by the margin
    assert out.getpixel((pad_left + 1, pad_top + 1)) == (255, 0, 0)
    assert out.getpixel((pad_left + SIZE + 6 + 1, pad_top + SIZE + 6 + 1)) == (255, 255, 0)
    assert out.getpixel((pad_left + SIZE + 2, pad_top + 1)) == (255, 255, 255)  # margin
    # there is text in both bands
    assert out.crop((pad_left, 0, out.width, pad_top)).getextrema() != ((255, 255),) * 3
    assert out.crop((0, pad_top, pad_left, out.height)).getextrema() != ((255, 255),) * 3
    # no texts: no bands
    blank = draw_grid_annotations(grid, SIZE, SIZE, [[GridAnnotation()]] * 2, [[GridAnnotation()]] * 2, style=WHITE)
    assert same(blank, grid)


def test_annotations_follow_the_color_options_and_strike_inactive_labels() -> None:
    style = GridStyle.from_options(
        {
            "grid_background_color": "#102030",
            "grid_text_active_color": "#ff0000",
            "grid_text_inactive_color": "#00ff00",
        }
    )
    grid = image_grid(cells(2, 256), rows=1, style=style)
    out = draw_grid_annotations(
        grid,
        256,
        256,
        [[GridAnnotation("on")], [GridAnnotation("off", is_active=False)]],
        [[GridAnnotation()]],
        style=style,
    )
    pad_top = out.height - 256
    assert out.getpixel((0, 0)) == (0x10, 0x20, 0x30)
    left = out.crop((0, 0, 256, pad_top))
    right = out.crop((256, 0, 512, pad_top))
    assert (255, 0, 0) in {c for _, c in left.getcolors(65536) or []}
    right_colors = {c for _, c in right.getcolors(65536) or []}
    assert (0, 255, 0) in right_colors and (255, 0, 0) not in right_colors
    # the strike-through: a full run of the inactive color across the middle of the label
    row = pad_top // 2
    assert sum(1 for x in range(256) if right.getpixel((x, row)) == (0, 255, 0)) >= 10


def test_long_labels_wrap_and_font_option_falls_back() -> None:
    grid = image_grid(cells(1, 128), rows=1, style=WHITE)
    one = draw_grid_annotations(grid, 128, 128, [[GridAnnotation("short")]], [[GridAnnotation()]], style=WHITE)
    wrapped = draw_grid_annotations(
        grid, 128, 128, [[GridAnnotation("a very long label that cannot fit")]], [[GridAnnotation()]], style=WHITE
    )
    assert wrapped.height > one.height  # more lines, taller band
    bad_font = GridStyle(font="/nonexistent/font.ttf")
    assert same(
        draw_grid_annotations(grid, 128, 128, [[GridAnnotation("short")]], [[GridAnnotation()]], style=bad_font), one
    )
    assert grid_labels.BUNDLED_FONT.is_file()


# -- progress and interrupt, with a stand-in engine ---------------------------------------------


class FakeEngine:
    """`job.process` for a scripted job: fires before_batch per batch as the engine does, records
    the progress the job context shows then, and returns a one-color image per image."""

    def __init__(self, ctx: JobContext, interrupt_after: int | None = None) -> None:
        self.ctx = ctx
        self.interrupt_after = interrupt_after
        self.requests: list[Any] = []
        self.progress: list[tuple[int, int]] = []

    def __call__(self, request: Any, hooks: Hooks | None) -> Result:
        self.requests.append(request)
        images, seeds = [], []
        for n in range(request.n_iter):
            self.ctx.begin_image(n, request.n_iter)  # what the engine does: its own count
            indices = list(range(n * request.batch_size, (n + 1) * request.batch_size))
            batch_seeds = [request.all_seeds[i] for i in indices]
            event = BatchEvent(request, n, indices, batch_seeds, ["p"] * len(indices), [""] * len(indices))
            if hooks is not None:
                hooks.before_batch.fire(event)
            self.progress.append((self.ctx.job_no, self.ctx.job_count))
            images += [Image.new("RGB", (8, 8), (request.steps, 0, 0)) for _ in indices]
            seeds += batch_seeds
        if self.interrupt_after is not None and len(self.requests) >= self.interrupt_after:
            self.ctx.interrupted = True
        count = len(images)
        return Result(
            images=images,
            infotexts=[f"p\nSteps: {request.steps}, Seed: {s}" for s in seeds],
            seeds=seeds,
            subseeds=seeds,
            prompts=["p"] * count,
            negative_prompts=[""] * count,
            params=[{"Steps": request.steps}] * count,
            width=8,
            height=8,
        )


def run_script(engine_for: Any, args: list[Any], **fields: Any) -> tuple[Processed, FakeEngine]:
    ctx = JobContext(id="xyz-test")
    engine = engine_for(ctx)
    request = Txt2ImgRequest(**{**BASE, "width": 8, "height": 8, **fields})
    p = p_from_request(request)
    with runtime.running(runtime.ScriptJob(ctx, engine, request)):
        processed = XYZPlot().run(p, *args)
    return processed, engine


def test_progress_counts_every_cell_and_batch() -> None:
    # no batch grids (A1111 puts one first in each cell when grids are on; that is not the point here)
    processed, engine = run_script(
        FakeEngine, xyz_args(STEPS, "1-3", CFG, "3, 7", draw_legend=False), n_iter=2, do_not_save_grid=True
    )
    assert len(engine.requests) == 6
    assert [count for _, count in engine.progress] == [12] * 12  # cells x n_iter, not the engine's n_iter
    assert [no for no, _ in engine.progress] == list(range(12))
    assert processed.images[0].size == (3 * 8, 2 * 8)


def test_interrupt_stops_between_cells() -> None:
    processed, engine = run_script(
        lambda ctx: FakeEngine(ctx, interrupt_after=2), xyz_args(STEPS, "1-3", CFG, "3, 7", draw_legend=False)
    )
    assert len(engine.requests) == 2  # no cell starts after the interrupt
    grid = processed.images[0]
    assert grid.size == (3 * 8, 2 * 8)
    assert grid.getpixel((0, 0)) == (1, 0, 0) and grid.getpixel((8, 0)) == (2, 0, 0)
    assert grid.getpixel((16, 8)) == (0, 0, 0)  # a cell never made is left blank


def test_cell_order_costly_axes_outermost_and_overrides_per_cell() -> None:
    _, plain = run_script(FakeEngine, xyz_args(39, "CPU, GPU", STEPS, "1, 2", draw_legend=False))
    assert [(r.override_settings["randn_source"], r.steps) for r in plain.requests] == [
        ("CPU", 1),
        ("GPU", 1),
        ("CPU", 2),
        ("GPU", 2),
    ]  # Z, then Y, then X: X varies fastest
    assert [o.cost for o in axis_options(False) if o.label in ("Checkpoint name", "VAE", "UniPC Order")] == [
        1.0,
        0.7,
        0.5,
    ]
    _, costly = run_script(FakeEngine, xyz_args(31, "1, 2", STEPS, "3, 4", draw_legend=False), steps=10)
    assert [(r.override_settings["uni_pc_order"], r.steps) for r in costly.requests] == [
        (1, 3),
        (1, 4),
        (2, 3),
        (2, 4),
    ]  # the slow-to-change X axis (UniPC order) is iterated outermost


# -- through the API ---------------------------------------------------------------------------


MARGIN = 4


@pytest.fixture(scope="module")
def steps_by_cfg(client: TestClient) -> tuple[list[Image.Image], dict[str, Any]]:
    """One 2x2 run (X: Steps 1-2, Y: CFG Scale 3, 7) with legend, margins and the lone images."""
    return generate(client, xyz_args(STEPS, "1-2", CFG, "3, 7", include_lone_images=True, margin_size=MARGIN))


def test_steps_by_cfg_grid_cells_equal_the_requests_made_alone(
    client: TestClient, steps_by_cfg: tuple[list[Image.Image], dict[str, Any]]
) -> None:
    images, info = steps_by_cfg
    grid, lone = images[0], images[1:]
    assert info["index_of_first_image"] == 1
    assert len(lone) == 4
    pad_left = SIZE * 3 // 4  # the row-label band: 3/4 of a cell
    assert grid.width == 2 * SIZE + pad_left + MARGIN
    pad_top = grid.height - 2 * SIZE - MARGIN
    assert pad_top > 0
    combos = [(1, 3.0), (2, 3.0), (1, 7.0), (2, 7.0)]  # X varies fastest
    for index, (steps, cfg) in enumerate(combos):
        col, row = index % 2, index // 2
        left, top = pad_left + col * (SIZE + MARGIN), pad_top + row * (SIZE + MARGIN)
        assert same(grid.crop((left, top, left + SIZE, top + SIZE)), lone[index])
        alone = client.post("/sdapi/v1/txt2img", json={**BASE, "steps": steps, "cfg_scale": cfg})
        assert alone.status_code == 200, alone.text
        assert same(decode(alone.json()["images"][0]), lone[index]), (steps, cfg)
        assert f"Steps: {steps}," in info["infotexts"][1 + index]
        assert f"CFG scale: {cfg}" in info["infotexts"][1 + index]
    assert info["all_seeds"] == [1234] * 4
    main_info = info["infotexts"][0]
    assert "Script: X/Y/Z plot" in main_info
    assert "X Type: Steps" in main_info and "X Values: 1-2" in main_info
    assert "Y Type: CFG Scale" in main_info and 'Y Values: "3, 7"' in main_info


def test_labels_are_drawn_only_with_draw_legend(
    client: TestClient, steps_by_cfg: tuple[list[Image.Image], dict[str, Any]]
) -> None:
    (with_legend, *lone), _ = steps_by_cfg
    (plain,), _ = generate(client, xyz_args(STEPS, "1-2", CFG, "3, 7", draw_legend=False, margin_size=MARGIN))
    assert plain.size == (2 * SIZE, 2 * SIZE)  # the cells alone (margins come with the legend, as in A1111)
    for index, cell in enumerate(lone):
        col, row = index % 2, index // 2
        assert same(plain.crop((col * SIZE, row * SIZE, (col + 1) * SIZE, (row + 1) * SIZE)), cell)
    pad_left = SIZE * 3 // 4
    pad_top = with_legend.height - 2 * SIZE - MARGIN
    top_band = with_legend.crop((pad_left, 0, with_legend.width, pad_top))
    left_band = with_legend.crop((0, pad_top, pad_left, with_legend.height))
    assert top_band.getextrema() != ((255, 255),) * 3  # not all background: the labels are there
    assert left_band.getextrema() != ((255, 255),) * 3
    corner = with_legend.crop((0, 0, pad_left, pad_top))
    assert corner.getextrema() == ((255, 255),) * 3
    gap = with_legend.crop((pad_left + SIZE, pad_top, pad_left + SIZE + MARGIN, with_legend.height))
    assert gap.getextrema() == ((255, 255),) * 3  # the margin between columns is background


def test_z_axis_sub_grids_and_vary_seeds(client: TestClient) -> None:
    args = xyz_args(
        STEPS, "1", CFG, "3", PROMPT_SR, "cat, dog", include_sub_grids=True, include_lone_images=True,
        vary_seeds=(False, False, True),
    )  # fmt: skip
    images, info = generate(client, args)
    main, sub1, sub2, cell1, cell2 = images
    assert sub1.size == sub2.size and main.width == 2 * sub1.width and main.height > sub1.height  # Z titles on top
    assert info["all_prompts"] == ["a cat", "a dog", "a cat", "a dog"]
    assert info["all_seeds"] == [1234, 1235, 1234, 1235]  # vary seeds along Z
    assert "Z Type: Prompt S/R" in info["infotexts"][0] and "Z Type" not in info["infotexts"][1]
    assert not same(cell1, cell2)


def test_seed_axis_fixes_minus_one_and_keep_minus_one(client: TestClient) -> None:
    _, info = generate(client, xyz_args(1, "-1, 7", include_lone_images=True, draw_legend=False), seed=-1)
    random_seed, seven = info["all_seeds"]
    assert seven == 7 and random_seed != -1
    assert f'Fixed X Values: "{random_seed}, 7"' in info["infotexts"][0]
    _, kept = generate(client, xyz_args(STEPS, "1, 1", include_lone_images=True, no_fixed_seeds=True), seed=-1)
    assert "Fixed X Values" not in kept["infotexts"][0]
    assert kept["all_seeds"][0] != kept["all_seeds"][1]  # each cell drew its own seed


def test_sampler_axis_dropdown_and_csv_mode(client: TestClient) -> None:
    _, from_list = generate(client, xyz_args(SAMPLER, "", x_dropdown=["Euler", "DDIM"], include_lone_images=True))
    assert ["Sampler: Euler," in t for t in from_list["infotexts"][1:]] == [True, False]
    assert "Sampler: DDIM," in from_list["infotexts"][2]
    assert 'X Values: "Euler,DDIM"' in from_list["infotexts"][0]
    _, from_text = generate(
        client, xyz_args(SAMPLER, "DDIM, Euler", x_dropdown=["Euler"], csv_mode=True, include_lone_images=True)
    )
    assert "Sampler: DDIM," in from_text["infotexts"][1] and "Sampler: Euler," in from_text["infotexts"][2]


def test_img2img_numbering(client: TestClient) -> None:
    init = Image.new("RGB", (SIZE, SIZE), (120, 60, 30))
    out = io.BytesIO()
    init.save(out, format="PNG")
    args = xyz_args(5, "3, 9", include_lone_images=True)  # 5 = CFG Scale on img2img (Hires steps on txt2img)
    response = post(
        client,
        args,
        path="/sdapi/v1/img2img",
        init_images=[base64.b64encode(out.getvalue()).decode()],
        denoising_strength=0.5,
    )
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "X Type: CFG Scale" in info["infotexts"][0]
    assert "CFG scale: 3.0" in info["infotexts"][1] and "CFG scale: 9.0" in info["infotexts"][2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (xyz_args(TOME, "0.1, 0.5"), "Token merging ratio"),
        (xyz_args(26, "1, 2"), "Initial noise multiplier"),
        (xyz_args(SAMPLER, "Euler, Nonexistent", csv_mode=True), "unknown sampler: Nonexistent"),
        (xyz_args(11, "no-such-model", csv_mode=True), "unknown checkpoint: no-such-model"),
        (xyz_args(PROMPT_SR, "dog, wolf"), "Prompt S/R did not find 'dog'"),
        (xyz_args(STEPS, "1, two"), "X values for Steps"),
        (xyz_args(STEPS, ""), "no X values for Steps"),
        (xyz_args(41, "64x64, 64x99999"), "height must be"),
        (xyz_args(99, "1"), "X type 99"),
    ],
)
def test_bad_axes_are_user_errors_before_any_image(
    client: TestClient,
    api_data_dir: Path,
    args: list[Any],
    message: str,
) -> None:
    before = set((api_data_dir / "outputs").rglob("*.png"))
    response = post(client, args, save_images=True)
    assert response.status_code in (400, 404, 422), response.text
    assert message in response.json()["errors"]
    assert set((api_data_dir / "outputs").rglob("*.png")) == before  # nothing was generated


def test_grid_saved_with_grid_save(client: TestClient, api_data_dir: Path) -> None:
    before = set((api_data_dir / "outputs").rglob("xyz_grid-*.png"))
    generate(client, xyz_args(STEPS, "1, 2"), save_images=True)
    saved = set((api_data_dir / "outputs").rglob("xyz_grid-*.png")) - before
    assert len(saved) == 1, saved
    (path,) = saved
    assert "txt2img-grids" in path.as_posix()
    with Image.open(path) as image:
        assert "X Type: Steps" in str(image.info.get("parameters", ""))


def test_script_info_lists_a1111s_18_controls(client: TestClient) -> None:
    response = client.get("/sdapi/v1/script-info")
    assert response.status_code == 200, response.text
    entries = [e for e in response.json() if e["name"] == "x/y/z plot"]
    assert {e["is_img2img"] for e in entries} == {False, True}
    for entry in entries:
        args = entry["args"]
        assert [a["label"] for a in args] == [
            "X type", "X values", "X values", "Y type", "Y values", "Y values", "Z type", "Z values", "Z values",
            "Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds", "Vary seeds for X",
            "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)", "Use text inputs instead of dropdowns",
        ]  # fmt: skip
        assert [args[i]["value"] for i in (0, 3, 6)] == ["Seed", "Nothing", "Nothing"]
        assert args[0]["choices"] == (IMG2IMG_AXES if entry["is_img2img"] else TXT2IMG_AXES)
        assert [args[i]["value"] for i in range(9, 16)] == [True, False, False, False, False, False, False]
        assert (args[16]["value"], args[16]["minimum"], args[16]["maximum"], args[16]["step"]) == (0, 0, 500, 2)


def test_defaults_fill_missing_args(client: TestClient) -> None:
    """A client sending only the first args: the rest are the controls' defaults (X type default
    is the label "Seed", read as the Seed axis)."""
    response = post(client, ["Steps", "1, 2"])
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "X Type: Steps" in info["infotexts"][0]
    assert len(response.json()["images"]) == 1  # no lone images by default


def test_checkpoint_vae_and_styles_axes(client: TestClient) -> None:
    args = xyz_args(11, "", 29, "Automatic, None", 30, "red, blue", x_dropdown=["sd1"], include_lone_images=True)
    images, info = generate(client, args)
    assert len(images) == 1 + 4
    assert all("Model: sd1" in text for text in info["infotexts"][1:])
    assert info["all_prompts"] == ["a cat, red", "a cat, red", "blue a cat", "blue a cat"]
    assert info["all_negative_prompts"] == ["", "", "ugly", "ugly"]
    assert "X Type: Checkpoint name, X Values: sd1" in info["infotexts"][0]
    response = post(client, xyz_args(30, "red, green", csv_mode=True))
    assert response.status_code == 422 and "unknown style: green" in response.json()["errors"]
    response = post(client, xyz_args(29, "Automatic, nonexistent.pt", csv_mode=True))
    assert response.status_code == 422 and "unknown VAE: nonexistent.pt" in response.json()["errors"]
