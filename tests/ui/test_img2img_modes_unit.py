"""The img2img tab's converter for every sub-tab: the Sketch composite, the Inpaint sketch mask
(and its transparency), "Resize by" sizes, Batch plans (folders only inside the allowed roots,
masks matched by name, results written with their infotext) and the errors for missing input."""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.app import build_services
from modules.core.requests import Img2ImgRequest
from modules.core.results import Result
from modules.core.settings import parse_settings
from modules.services import Services
from modules.ui.img2img import build_img2img_tab, is_instruct_pix2pix
from modules.ui.img2img_batch import BATCH_FROM_DIR, BATCH_UPLOAD, limit_results, merge_results, save_batch_outputs
from modules.ui.img2img_batch import batch_plan as _batch_plan
from modules.ui.img2img_modes import BATCH, IMG2IMG, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, SKETCH, SUBTAB_IDS
from modules.ui.img2img_request import RESIZE_BY, RESIZE_TO, img2img_request_from_ui, resolution_preview, scaled_size

# the converter's keyword names: the tab's fields by name
UI_FIELDS = tuple(inspect.signature(img2img_request_from_ui).parameters)

RED, BLUE = (200, 30, 30), (20, 40, 220)

DEFAULTS: dict[str, Any] = {
    "mode": IMG2IMG,
    "init_image": None,
    "sketch": None,
    "inpaint_editor": None,
    "inpaint_sketch": None,
    "inpaint_base": None,
    "inpaint_mask": None,
    "mask_alpha": 0.0,
    "prompt": "a cat",
    "negative_prompt": "",
    "styles": [],
    "resize_mode": 0,
    "mask_blur": 4.0,
    "inpainting_mask_invert": 0,
    "inpainting_fill": 1,
    "inpaint_full_res": 0,
    "inpaint_full_res_padding": 32.0,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
    "steps": 3.0,
    "enable_refiner": False,
    "refiner_checkpoint": None,
    "refiner_switch_at": 0.8,
    "selected_scale_tab": RESIZE_TO,
    "width": 64.0,
    "height": 64.0,
    "scale_by": 1.0,
    "n_iter": 1.0,
    "batch_size": 1.0,
    "cfg_scale": 7.0,
    "image_cfg_scale": 1.5,
    "denoising_strength": 0.75,
    "seed": 1.0,
    "subseed": -1.0,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0.0,
    "seed_resize_from_h": 0.0,
}


def _request(**changes: Any) -> Img2ImgRequest:
    values = {**DEFAULTS, **changes}
    assert set(values) == set(UI_FIELDS)
    return img2img_request_from_ui(**values)


def _background(size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGBA", size, (*RED, 255))


def _stroke(size: tuple[int, int] = (32, 24), box: tuple[int, int, int, int] = (4, 4, 12, 10)) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((*BLUE, 255), box)
    return layer


def _editor(with_composite: bool = True, painted: bool = True) -> dict[str, Any]:
    background = _background()
    layers = [_stroke()] if painted else []
    composite = background.copy()
    for layer in layers:
        composite.alpha_composite(layer)
    return {"background": background, "layers": layers, "composite": composite if with_composite else None}


# -- Sketch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_composite", [True, False])
def test_sketch_sends_the_composite_and_no_mask(with_composite: bool) -> None:
    request = _request(mode=SKETCH, sketch=_editor(with_composite))
    (image,) = request.init_images
    assert request.mask is None
    assert image.mode == "RGB" and image.size == (32, 24)
    assert image.getpixel((6, 6)) == BLUE  # the stroke
    assert image.getpixel((20, 20)) == RED  # the uploaded image


def test_sketch_without_strokes_is_the_image() -> None:
    request = _request(mode=SKETCH, sketch=_editor(painted=False))
    assert request.init_images[0].getpixel((6, 6)) == RED


# -- Inpaint sketch ----------------------------------------------------------------------------


def test_inpaint_sketch_mask_is_where_something_was_painted() -> None:
    request = _request(mode=INPAINT_SKETCH, inpaint_sketch=_editor())
    image, mask = request.init_images[0], request.mask
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (32, 24)
    assert mask.getbbox() == (4, 4, 12, 10)
    assert set(mask.getdata()) == {0, 255}
    assert image.getpixel((6, 6)) == BLUE and image.getpixel((20, 20)) == RED


def test_inpaint_sketch_mask_transparency_blends_the_strokes() -> None:
    request = _request(mode=INPAINT_SKETCH, inpaint_sketch=_editor(), mask_alpha=50.0)
    r, _g, b = request.init_images[0].getpixel((6, 6))
    assert abs(r - (RED[0] + BLUE[0]) / 2) <= 2 and abs(b - (RED[2] + BLUE[2]) / 2) <= 2
    assert request.mask is not None and request.mask.getbbox() == (4, 4, 12, 10)  # the mask stays whole


def test_inpaint_sketch_with_nothing_painted_is_an_error() -> None:
    with pytest.raises(gr.Error, match="nothing is painted"):
        _request(mode=INPAINT_SKETCH, inpaint_sketch=_editor(painted=False))


def test_inpaint_mask_is_the_painted_layer_over_the_background() -> None:
    request = _request(mode=INPAINT, inpaint_editor=_editor())
    assert request.init_images[0].getpixel((6, 6)) == RED  # the brush does not paint the image
    assert request.mask is not None and request.mask.getbbox() == (4, 4, 12, 10)


# -- missing input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": IMG2IMG}, "Please upload an image for img2img"),
        ({"mode": SKETCH}, "Please upload an image to sketch on"),
        ({"mode": SKETCH, "sketch": {"background": None, "layers": [], "composite": None}}, "sketch on"),
        ({"mode": INPAINT}, "Please upload an image to inpaint"),
        ({"mode": INPAINT, "inpaint_editor": _editor(painted=False)}, "the mask is empty"),
        ({"mode": INPAINT_SKETCH}, "Please upload an image to sketch on"),
        ({"mode": INPAINT_UPLOAD}, "Please upload an image to inpaint"),
        ({"mode": INPAINT_UPLOAD, "inpaint_base": _background()}, "Please upload a mask"),
        ({"mode": BATCH}, "one request per image"),
    ],
)
def test_missing_input_is_a_user_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(gr.Error, match=message):
        _request(**changes)


# -- Resize to / Resize by ---------------------------------------------------------------------


def test_resize_to_uses_the_sliders() -> None:
    request = _request(init_image=_background((100, 60)), width=256.0, height=128.0, scale_by=3.0)
    assert (request.width, request.height) == (256, 128)


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [((100, 60), 1.5, (144, 88)), ((512, 512), 1.0, (512, 512)), ((64, 64), 0.5, (32, 32)), ((30, 20), 4.0, (120, 80))],
)
def test_resize_by_is_the_image_size_times_scale_rounded_down_to_8(
    size: tuple[int, int], scale: float, expected: tuple[int, int]
) -> None:
    assert scaled_size(*size, scale) == expected
    request = _request(
        init_image=_background(size), selected_scale_tab=RESIZE_BY, scale_by=scale, width=512.0, height=512.0
    )
    assert (request.width, request.height) == expected


def test_resize_by_follows_the_sub_tabs_image() -> None:
    request = _request(mode=INPAINT_SKETCH, inpaint_sketch=_editor(), selected_scale_tab=RESIZE_BY, scale_by=2.0)
    assert (request.width, request.height) == (64, 48)


def test_resize_by_too_small_is_an_error() -> None:
    with pytest.raises(gr.Error, match="too small"):
        _request(init_image=_background((20, 20)), selected_scale_tab=RESIZE_BY, scale_by=0.1)


def test_resolution_preview_text() -> None:
    assert "from" in resolution_preview((100, 60), 1.5)
    text = resolution_preview((100, 60), 1.5)
    assert ">100x60<" in text and ">144x88<" in text
    assert resolution_preview(None, 2.0) == ""


def test_seed_extras_and_image_cfg_reach_the_request() -> None:
    request = _request(
        init_image=_background(),
        subseed=77.0,
        subseed_strength=0.3,
        seed_resize_from_w=128.0,
        seed_resize_from_h=96.0,
        image_cfg_scale=2.25,
    )
    assert (request.subseed, request.subseed_strength) == (77, 0.3)
    assert (request.seed_resize_from_w, request.seed_resize_from_h) == (128, 96)
    assert request.image_cfg_scale == 2.25


# -- Batch -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        built = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
        yield built
        built.worker.shutdown()


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16), RED).save(folder / name)


def batch_plan(services: Services, **kwargs: Any) -> Any:
    values = {
        "batch_source": BATCH_FROM_DIR,
        "batch_files": None,
        "batch_input_dir": "",
        "batch_output_dir": "",
        "batch_inpaint_mask_dir": "",
        **kwargs,
    }
    return _batch_plan(services, **values)


def test_batch_from_dir_lists_images_with_their_masks(services: Services) -> None:
    data = services.paths.data_dir
    _images(data / "b1" / "in", ["a.png", "b.jpg", "c.png"])
    (data / "b1" / "in" / "notes.txt").write_text("not an image")
    _images(data / "b1" / "masks", ["a.png", "b.png", "c.webp"])
    plan = batch_plan(
        services, batch_input_dir="b1/in", batch_output_dir="b1/out", batch_inpaint_mask_dir=str(data / "b1" / "masks")
    )
    assert [i.path.name for i in plan.items] == ["a.png", "b.jpg", "c.png"]
    assert [i.mask_path.name for i in plan.items] == ["a.png", "b.png", "c.webp"]
    assert plan.output_dir == (data / "b1" / "out").resolve()


def test_batch_single_mask_is_used_for_every_image(services: Services) -> None:
    data = services.paths.data_dir
    _images(data / "b2" / "in", ["x.png", "y.png"])
    _images(data / "b2" / "mask", ["whatever.png"])
    plan = batch_plan(services, batch_input_dir="b2/in", batch_inpaint_mask_dir="b2/mask")
    assert {i.mask_path.name for i in plan.items} == {"whatever.png"}
    assert plan.output_dir is None


def test_batch_missing_mask_is_an_error(services: Services) -> None:
    data = services.paths.data_dir
    _images(data / "b3" / "in", ["x.png", "y.png"])
    _images(data / "b3" / "mask", ["x.png", "z.png"])
    with pytest.raises(gr.Error, match=r"No mask for y\.png"):
        batch_plan(services, batch_input_dir="b3/in", batch_inpaint_mask_dir="b3/mask")


def test_batch_into_the_outputs_folder_is_allowed(services: Services) -> None:
    _images(services.paths.outputs_dir / "b4", ["x.png"])
    plan = batch_plan(services, batch_input_dir=str(services.paths.outputs_dir / "b4"))
    assert len(plan.items) == 1


@pytest.mark.parametrize("field", ["batch_input_dir", "batch_output_dir", "batch_inpaint_mask_dir"])
@pytest.mark.parametrize("outside", ["/etc", "../..", "/tmp"])
def test_batch_dirs_outside_the_allowed_roots_are_refused(services: Services, field: str, outside: str) -> None:
    _images(services.paths.data_dir / "b5", ["x.png"])
    values = {"batch_input_dir": "b5", field: outside}
    with pytest.raises(gr.Error, match="only folders inside the data dir or the outputs folder"):
        batch_plan(services, **values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_input_dir": ""}, "Input directory: please enter a folder"),
        ({"batch_input_dir": "does-not-exist"}, "Input directory not found"),
        ({"batch_input_dir": "b6-empty"}, "Input directory has no images"),
        ({"batch_source": BATCH_UPLOAD, "batch_files": None}, "Please upload the images"),
        ({"batch_source": BATCH_UPLOAD, "batch_files": []}, "Please upload the images"),
    ],
)
def test_batch_without_images_is_an_error(services: Services, kwargs: dict[str, Any], message: str) -> None:
    (services.paths.data_dir / "b6-empty").mkdir(exist_ok=True)
    with pytest.raises(gr.Error, match=message):
        batch_plan(services, **kwargs)


def test_batch_upload_takes_the_files(services: Services, tmp_path: Path) -> None:
    _images(tmp_path, ["u1.png", "u2.png"])
    plan = batch_plan(services, batch_source=BATCH_UPLOAD, batch_files=[str(tmp_path / "u1.png"), tmp_path / "u2.png"])
    assert [i.path.name for i in plan.items] == ["u1.png", "u2.png"]
    assert plan.output_dir is None and all(i.mask_path is None for i in plan.items)


def test_save_batch_outputs_writes_pngs_with_infotext(tmp_path: Path) -> None:
    one = Result(images=[Image.new("RGB", (8, 8))], infotexts=["a cat\nSteps: 3, Seed: 1"])
    assert [p.name for p in save_batch_outputs(one, "photo", tmp_path / "out")] == ["photo.png"]
    with Image.open(tmp_path / "out" / "photo.png") as saved:
        assert saved.info["parameters"] == "a cat\nSteps: 3, Seed: 1"
    two = Result(images=[Image.new("RGB", (8, 8))] * 2, infotexts=["x\nSteps: 1", "y\nSteps: 1"])
    assert [p.name for p in save_batch_outputs(two, "pic", tmp_path / "out")] == ["pic-1.png", "pic-2.png"]


# -- the tab's mode switching ------------------------------------------------------------------


def test_select_mode_shows_the_inpaint_controls_and_mask_transparency(services: Services) -> None:
    with gr.Blocks(), gr.Tab("img2img"):
        tab = build_img2img_tab(services)
    assert list(SUBTAB_IDS) == [0, 1, 2, 3, 4, 5]
    assert tab.mask_alpha is not None and tab.mask_alpha in tab.mode_outputs
    for number in SUBTAB_IDS:
        updates = tab.select_mode(number)
        assert updates[tab.mode] == number
        assert updates[tab.inpaint_controls]["visible"] is (number in (INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH))
        assert updates[tab.mask_alpha]["visible"] is (number == INPAINT_SKETCH)
    assert {name for name in tab.fields if not name.startswith("controlnet_")} == {*UI_FIELDS, "subseed_show"}
    assert tab.image_cfg_scale is not None and not tab.image_cfg_scale.visible
    assert not is_instruct_pix2pix(services)


def test_batch_results_are_merged_and_the_gallery_limited() -> None:
    def one(seed: int) -> Result:
        return Result(
            images=[Image.new("RGB", (8, 8))],
            infotexts=[f"p\nSeed: {seed}"],
            seeds=[seed],
            subseeds=[seed],
            elapsed=1.0,
        )

    merged = merge_results([one(1), one(2), dataclasses.replace(one(3), interrupted=True)])
    assert merged.seeds == [1, 2, 3] and len(merged.images) == 3 and merged.infotexts[2] == "p\nSeed: 3"
    assert merged.interrupted and merged.elapsed == 3.0
    assert limit_results(merged, -1) is merged
    shown = limit_results(merged, 2)
    assert len(shown.images) == 2 and shown.seeds == [1, 2] and shown.infotexts == merged.infotexts[:2]
