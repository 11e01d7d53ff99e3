"""ControlNet preprocessors: the extension's list, names, slider configs and control types; every
weight-free preprocessor on a synthetic image against its documented output (OpenCV called
directly where the extension calls it); weighted ones refused without their files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from modules.core.errors import NotFoundError, UserError, ValidationError
from modules.models import controlnet_preprocessors as cp

WEIGHT_FREE = {
    "none",
    "invert",
    "canny",
    "blur_gaussian",
    "scribble_xdog",
    "shuffle",
    "threshold",
    "tile_resample",
    "tile_colorfix",
    "tile_colorfix+sharp",
    "lineart_standard",
    "color",
    "recolor_luminance",
    "recolor_intensity",
    "inpaint",
    "inpaint_only",
    "reference_only",
    "reference_adain",
    "reference_adain+attn",
}


def scene(height: int = 128, width: int = 192) -> np.ndarray:
    """A synthetic RGB test image: a colour gradient, a dark rectangle, a bright disc, a red bar,
    and a faint square (a weak edge that only low Canny thresholds keep)."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.stack(
        [
            (xs * 200 // max(width - 1, 1)) + 20,
            (ys * 180 // max(height - 1, 1)) + 40,
            np.full_like(xs, 150),
        ],
        axis=2,
    ).astype(np.uint8)
    cv2.rectangle(img, (width // 8, height // 8), (width // 2, height // 2), (10, 20, 30), thickness=-1)
    cv2.circle(img, (3 * width // 4, 2 * height // 3), min(height, width) // 5, (250, 245, 240), thickness=-1)
    img[height - 12 : height - 6, :, :] = (230, 10, 10)
    faint = img[height // 8 : height // 2, 9 * width // 16 : 15 * width // 16]
    faint[:] = (faint.astype(np.int16) + 20).clip(0, 255).astype(np.uint8)
    return img


def pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array)


def out(result: cp.PreprocessResult) -> np.ndarray:
    assert result.image.mode == "RGB"
    return np.asarray(result.image)


def expected_with_pad(img: np.ndarray, resolution: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The extension's resolution handling done by hand: short side to `resolution` (cubic up,
    area down), edge-pad to multiples of 64, `fn`, crop."""
    h, w = img.shape[:2]
    k = resolution / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(img, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    ph, pw = (-th) % 64, (-tw) % 64
    padded = np.pad(resized, [[0, ph], [0, pw], [0, 0]], mode="edge")
    return fn(padded)[:th, :tw]


# -- names, list, details ---------------------------------------------------------------------------


def test_module_list_names_and_aliases_pair_up_none_first() -> None:
    names, labels = cp.module_list(), cp.module_list(alias_names=True)
    assert len(names) == len(labels) == len(set(names)) == len(set(labels))
    assert names[0] == labels[0] == "none"
    pairs = dict(zip(names, labels, strict=True))
    assert pairs["canny"] == "canny"
    assert pairs["invert"] == "invert (from white bg & black line)"
    assert pairs["depth"] == "depth_midas"
    assert pairs["lineart"] == "lineart_realistic"
    assert pairs["lineart_standard"] == "lineart_standard (from white bg & black line)"
    assert pairs["hed"] == "softedge_hed"
    assert pairs["color"] == "t2ia_color_grid"
    assert pairs["inpaint"] == "inpaint_global_harmonious"
    assert pairs["normal_map"] == "normal_midas"
    assert pairs["ip-adapter_clip_sd15"] == "ip-adapter_clip_h"
    for weighted in ("openpose", "openpose_full", "dw_openpose_full", "mlsd", "normal_bae", "depth_zoe", "pidinet"):
        assert weighted in names


def test_module_list_order_is_priority_then_label_descending() -> None:
    names = cp.module_list()
    # the extension's order: ip-adapter-auto (priority 1000), then the priority-100 ones by label
    # descending, ..., and the priority-0 ones by label descending
    assert names[:4] == ["none", "ip-adapter-auto", "tile_resample", "pidinet"]
    assert names.index("canny") < names.index("invert") < names.index("tile_colorfix") < names.index("blur_gaussian")
    assert names[-1] == "animal_openpose"


def test_every_listed_preprocessor_is_either_weight_free_or_weighted() -> None:
    free, weighted = cp.weight_free_preprocessors(), cp.weighted_preprocessors()
    assert set(free) == WEIGHT_FREE
    assert not set(free) & set(weighted)
    assert sorted(free + weighted) == sorted(cp.module_list())


def test_module_detail_shape_and_slider_configs() -> None:
    details = cp.preprocessor_details()
    assert list(details) == cp.module_list()
    assert details["canny"] == {
        "model_free": False,
        "sliders": [
            {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    assert details["invert"] == {"model_free": False, "sliders": []}
    assert details["shuffle"] == {"model_free": False, "sliders": []}
    assert details["inpaint_only"]["sliders"] == []
    assert details["reference_only"]["model_free"] is True
    assert details["reference_only"]["sliders"][1] == {
        "name": "Style Fidelity (only for Balanced mode)",
        "value": 0.5,
        "min": 0.0,
        "max": 1.0,
        "step": 0.01,
    }
    assert details["threshold"]["sliders"][1] == {
        "name": "Binarization Threshold",
        "value": 127,
        "min": 0,
        "max": 255,
        "step": 0.01,
    }
    assert details["tile_resample"]["sliders"][1]["name"] == "Down Sampling Rate"
    assert details["softedge_anyline"]["sliders"][0]["value"] == 1280
    by_label = cp.preprocessor_details(alias_names=True)
    assert list(by_label) == cp.module_list(alias_names=True)
    assert by_label["depth_midas"] == details["depth"]


def test_lookup_by_label_or_name_and_unknown_refused() -> None:
    assert cp.get_preprocessor("depth_midas") is cp.get_preprocessor("depth")
    assert cp.find_preprocessor("no_such_module") is None
    with pytest.raises(NotFoundError, match="no_such_module"):
        cp.get_preprocessor("no_such_module")
    with pytest.raises(NotFoundError, match="no_such_module"):
        cp.run_preprocessor("no_such_module", pil(scene()))


def test_control_types() -> None:
    tags = cp.control_type_tags()
    assert tags[0] == "All" and tags[1:] == sorted(tags[1:])
    assert {"Canny", "Depth", "OpenPose", "Tile", "Inpaint", "Reference", "Shuffle", "T2I-Adapter"} <= set(tags)
    assert cp.default_control_type_preprocessor("Canny") == "canny"
    assert cp.default_control_type_preprocessor("Tile") == "tile_resample"
    assert cp.default_control_type_preprocessor("Depth") == "depth_midas"
    assert cp.default_control_type_preprocessor("Inpaint") == "inpaint_only"
    assert cp.default_control_type_preprocessor("InstructP2P") == "none"
    assert cp.default_control_type_preprocessor("All") == "none"
    assert cp.control_type_preprocessors("Canny") == ["none", "canny", "invert (from white bg & black line)"]
    assert cp.control_type_preprocessors("All") == cp.module_list(alias_names=True)
    assert cp.control_type_filters("Tile") == {"tile", "blur", "union"}
    assert cp.control_type_filters("T2I-Adapter") == {"t2i-adapter", "t2i_adapter", "t2iadapter", "t2ia"}


# -- parameters -------------------------------------------------------------------------------------


def test_out_of_range_parameters_become_slider_defaults() -> None:
    assert cp.effective_parameters("canny", -1, -1, -1) == (512, 100.0, 200.0)
    assert cp.effective_parameters("canny", None, None, None) == (512, 100.0, 200.0)
    assert cp.effective_parameters("canny", 300, 50, 300) == (300, 50.0, 200.0)
    assert cp.effective_parameters("canny", 4096, 0, 255) == (512, 100.0, 255.0)
    # shuffle's hidden resolution slider pins it to 512; pixel perfect bypasses the check
    assert cp.effective_parameters("shuffle", 768)[0] == 512
    assert cp.effective_parameters("canny", 2500, pixel_perfect=True)[0] == 2500


def test_pixel_perfect_resolution() -> None:
    # a 512x768 (w x h) image for a 512x512 generation
    assert cp.pixel_perfect_resolution((512, 768), 512, 512, "Crop and Resize") == 512
    assert cp.pixel_perfect_resolution((512, 768), 512, 512, "Just Resize") == 512
    assert cp.pixel_perfect_resolution((512, 768), 512, 512, "Resize and Fill") == 341
    assert cp.pixel_perfect_resolution((300, 200), 1024, 768, "Crop and Resize") == 768
    assert cp.pixel_perfect_resolution((300, 200), 1024, 768, "Resize and Fill") == 683
    with pytest.raises(ValidationError):
        cp.pixel_perfect_resolution((512, 512), 512, 512, "Stretch")


def test_preprocessor_seed() -> None:
    assert cp.preprocessor_seed(1234, 0) == 1234
    assert cp.preprocessor_seed(1234, 10) == 1244
    assert cp.preprocessor_seed(-5, 7) == 7
    assert cp.preprocessor_seed(0xFFFFFFFF, 2) == 1


# -- every weight-free preprocessor -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WEIGHT_FREE))
def test_every_weight_free_preprocessor_runs_and_gives_rgb(name: str) -> None:
    result = cp.run_preprocessor(name, pil(scene()), resolution=128, seed=1)
    arr = out(result)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def test_canny_is_cv2_canny_pixel_for_pixel_at_native_size() -> None:
    img = scene(128, 192)  # short side 128 = resolution, sides multiples of 64: no resize, no pad
    edges = cv2.Canny(img, 100, 200)
    assert edges.max() == 255 and (edges == 255).sum() > 100
    result = out(cp.run_preprocessor("canny", pil(img), resolution=128, threshold_a=-1, threshold_b=-1))
    assert np.array_equal(result, np.stack([edges] * 3, axis=2))
    custom = out(cp.run_preprocessor("canny", pil(img), resolution=128, threshold_a=30, threshold_b=90))
    assert np.array_equal(custom[:, :, 0], cv2.Canny(img, 30, 90))
    assert (custom == 255).sum() > (result == 255).sum()  # the faint square's edges


@pytest.mark.parametrize(("size", "resolution"), [((100, 150), 200), ((300, 200), 128), ((97, 131), 512)])
def test_canny_resized_and_padded_as_the_extension(size: tuple[int, int], resolution: int) -> None:
    img = scene(*size)
    expected = expected_with_pad(img, resolution, lambda x: cv2.Canny(x, 100, 200))
    result = out(cp.run_preprocessor("canny", pil(img), resolution=resolution))
    assert result.shape[:2] == expected.shape[:2]
    assert min(result.shape[:2]) == resolution
    assert np.array_equal(result[:, :, 1], expected)


def test_none_and_identity_modules_give_the_image_itself() -> None:
    img = scene(100, 150)
    for name in (
        "none",
        "tile_colorfix",
        "tile_colorfix+sharp",
        "reference_only",
        "reference_adain",
        "reference_adain+attn",
    ):
        assert np.array_equal(out(cp.run_preprocessor(name, pil(img), resolution=512)), img), name


def test_invert_keeps_size_and_inverts() -> None:
    img = scene(100, 150)
    result = out(cp.run_preprocessor("invert (from white bg & black line)", pil(img), resolution=512))
    assert np.array_equal(result, 255 - img)
    # transparent input: composited over white first (the extension's HWC3)
    rgba = np.dstack([img, np.zeros(img.shape[:2], np.uint8)])
    assert np.array_equal(out(cp.run_preprocessor("invert", pil(rgba))), np.zeros_like(img))


def test_threshold() -> None:
    img = scene(128, 192)
    for level, expected_level in ((-1, 127), (200, 200)):
        result = out(cp.run_preprocessor("threshold", pil(img), resolution=128, threshold_a=level))
        expected = np.where(img.min(axis=2) > expected_level, 255, 0).astype(np.uint8)
        assert np.array_equal(result, np.stack([expected] * 3, axis=2))
        assert 0 < (expected == 255).sum() < expected.size


def test_blur_gaussian() -> None:
    img = scene(128, 192)
    result = out(cp.run_preprocessor("blur_gaussian", pil(img), resolution=128))
    assert np.array_equal(result, cv2.GaussianBlur(img, (0, 0), 9.0))
    sharp = out(cp.run_preprocessor("blur_gaussian", pil(img), resolution=128, threshold_a=0.5))
    assert np.array_equal(sharp, cv2.GaussianBlur(img, (0, 0), 0.5))
    resized = out(cp.run_preprocessor("blur_gaussian", pil(scene(100, 150)), resolution=256))
    assert resized.shape == (256, 384, 3)


def _xdog(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    dog = 255 - np.min(cv2.GaussianBlur(f, (0, 0), 5.0) - cv2.GaussianBlur(f, (0, 0), 0.5), axis=2)
    doubled = (2 * (255 - dog.clip(0, 255).astype(np.uint8).astype(np.int64))) % 256
    return np.where(doubled > 32, 255, 0).astype(np.uint8)


def test_scribble_xdog() -> None:
    img = scene(128, 192)
    result = out(cp.run_preprocessor("scribble_xdog", pil(img), resolution=128))
    expected = _xdog(img)  # the extension doubles the response in uint8 (wrapping)
    assert np.array_equal(result, np.stack([expected] * 3, axis=2))
    assert set(np.unique(result)) == {0, 255}
    flat = out(cp.run_preprocessor("scribble_xdog", pil(np.full((128, 128, 3), 90, np.uint8)), resolution=128))
    assert not flat.any()


def _lineart(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(f, (0, 0), 6.0) - f, axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > 8]))
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def test_filters_run_on_the_edge_padded_image() -> None:
    """The 64-pixel edge padding changes what a blur sees near the right and bottom borders."""
    img = scene(100, 150)
    xdog = out(cp.run_preprocessor("scribble_xdog", pil(img), resolution=100))
    assert np.array_equal(xdog[:, :, 0], expected_with_pad(img, 100, _xdog))
    lineart = out(cp.run_preprocessor("lineart_standard", pil(img), resolution=100))
    assert np.array_equal(lineart[:, :, 0], expected_with_pad(img, 100, _lineart))
    assert not np.array_equal(lineart[:, :, 0], _lineart(img))


def test_lineart_standard_finds_dark_lines_on_white() -> None:
    img = np.full((128, 128, 3), 255, np.uint8)
    img[60:63, 10:118] = 0  # a black line
    result = out(cp.run_preprocessor("lineart_standard", pil(img), resolution=128))
    assert result[61, 20:100].min() > 100  # the line is bright
    assert result[:40].max() == 0 and result[90:].max() == 0  # the white background is black
    assert np.array_equal(result[:, :, 0], result[:, :, 2])
    assert not out(cp.run_preprocessor("lineart_standard", pil(np.full((128, 128, 3), 200, np.uint8)))).any()


def test_color_grid() -> None:
    img = scene(512, 512)
    result = out(cp.run_preprocessor("t2ia_color_grid", pil(img), resolution=512))
    assert result.shape == (512, 512, 3)
    grid = cv2.resize(img, (8, 8), interpolation=cv2.INTER_CUBIC)
    for i in range(8):
        for j in range(8):
            block = result[i * 64 : (i + 1) * 64, j * 64 : (j + 1) * 64]
            assert (block == grid[i, j]).all()
    small = out(cp.run_preprocessor("color", pil(scene(256, 384)), resolution=128))
    assert small.shape == (128, 192, 3)
    assert len(np.unique(small.reshape(-1, 3), axis=0)) <= 2 * 3
    with pytest.raises(ValidationError, match="64x64"):  # a pixel-perfect resolution under one cell
        cp.run_preprocessor("color", pil(scene(100, 200)), resolution=32, pixel_perfect=True)


def test_shuffle_is_seeded_and_pinned_to_512() -> None:
    img = scene(256, 384)
    first = out(cp.run_preprocessor("shuffle", pil(img), resolution=256, seed=42))
    again = out(cp.run_preprocessor("shuffle", pil(img), resolution=256, seed=42))
    other = out(cp.run_preprocessor("shuffle", pil(img), resolution=256, seed=43))
    assert first.shape == (512, 768, 3)  # its hidden resolution slider resets 256 to 512
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    resized = cv2.resize(img, (768, 512), interpolation=cv2.INTER_CUBIC)
    assert not np.array_equal(first, resized)  # really shuffled
    flat = np.full((256, 256, 3), 77, np.uint8)
    assert (out(cp.run_preprocessor("shuffle", pil(flat), seed=1)) == 77).all()


def test_shuffle_equals_the_extension_seeding_numpys_global_generator() -> None:
    """The extension seeds numpy's global generator, then draws smooth noise for x, then for y
    (256-pixel cells, cubic, min-max normalised) and remaps; the same seed gives the same map."""
    img = scene(300, 520)  # resized to 512x887

    def noise_disk(h: int, w: int) -> np.ndarray:
        f = 256
        coarse = np.random.uniform(low=0, high=1, size=(h // f + 2, w // f + 2, 1))
        noise = cv2.resize(coarse, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f : f + h, f : f + w]
        noise -= noise.min()
        noise /= noise.max()
        return noise[:, :, None]

    state = np.random.get_state()
    try:
        np.random.seed(cp.preprocessor_seed(7, 3))
        resized = expected_with_pad(img, 512, lambda x: x)
        h, w = resized.shape[:2]
        x, y = noise_disk(h, w) * float(w - 1), noise_disk(h, w) * float(h - 1)
        expected = cv2.remap(resized, np.concatenate([x, y], axis=2).astype(np.float32), None, cv2.INTER_LINEAR)
    finally:
        np.random.set_state(state)
    result = out(cp.run_preprocessor("shuffle", pil(img), seed=cp.preprocessor_seed(7, 3)))
    assert result.shape == (512, 887, 3)
    assert np.array_equal(result, expected)


def test_tile_resample_sizes() -> None:
    img = scene(101, 151)
    same = out(cp.run_preprocessor("tile_resample", pil(img), threshold_a=-1))
    assert np.array_equal(same, img)
    assert np.array_equal(out(cp.run_preprocessor("tile_resample", pil(img), threshold_a=1.05)), img)
    half = out(cp.run_preprocessor("tile_resample", pil(img), threshold_a=2.0))
    assert half.shape == (50, 75, 3)
    assert np.array_equal(half, cv2.resize(img, (75, 50), interpolation=cv2.INTER_AREA))
    assert out(cp.run_preprocessor("tile_resample", pil(img), threshold_a=3.3)).shape == (30, 45, 3)


def test_recolor_luminance_and_intensity() -> None:
    img = scene(64, 96)
    lum = out(cp.run_preprocessor("recolor_luminance", pil(img), threshold_a=-1))
    # the extension converts its RGB arrays with OpenCV's BGR code; kept
    expected = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)[:, :, 0]
    assert lum.shape == img.shape and np.array_equal(lum, np.stack([expected] * 3, axis=2))
    gamma = out(cp.run_preprocessor("recolor_luminance", pil(img), threshold_a=2.0))
    expected_gamma = ((expected.astype(np.float32) / 255.0) ** 2.0 * 255.0).clip(0, 255).astype(np.uint8)
    assert np.array_equal(gamma[:, :, 0], expected_gamma)
    intensity = out(cp.run_preprocessor("recolor_intensity", pil(img)))
    assert np.array_equal(intensity[:, :, 1], img.max(axis=2))


def test_inpaint_modules_keep_image_and_mask() -> None:
    img = scene(96, 128)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:50, 30:90] = 255
    for name in ("inpaint", "inpaint_global_harmonious", "inpaint_only"):
        result = cp.run_preprocessor(name, pil(img), mask=pil(mask), resolution=512)
        assert np.array_equal(out(result), img)
        assert result.mask is not None and np.array_equal(np.asarray(result.mask), mask)
        display = np.asarray(result.display)
        assert result.display.mode == "RGBA"
        assert np.array_equal(display[:, :, 3], 255 - mask // 2)
    # an RGB mask: its first channel; no mask: nothing to repaint
    rgb_mask = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)], axis=2)
    from_rgb = cp.run_preprocessor("inpaint_only", pil(img), mask=pil(rgb_mask)).mask
    assert from_rgb is not None and np.array_equal(np.asarray(from_rgb), mask)
    unmasked = cp.run_preprocessor("inpaint_only", pil(img)).mask
    assert unmasked is not None and not np.asarray(unmasked).any()
    with pytest.raises(ValidationError, match="must match"):
        cp.run_preprocessor("inpaint_only", pil(img), mask=pil(np.zeros((10, 10), np.uint8)))
    # a mask given to a module that takes none is ignored
    assert cp.run_preprocessor("canny", pil(img), mask=pil(np.zeros((10, 10), np.uint8))).mask is None


def test_inpaint_control_hint() -> None:
    img = scene(32, 48)
    mask = np.zeros((32, 48), np.uint8)
    mask[:, :10] = 255
    mask[:, 10:20] = 128
    mask[:, 20:30] = 127
    hint = cp.inpaint_control_hint(pil(img), pil(mask))
    assert hint.dtype == np.float32 and hint.shape == (32, 48, 3)
    assert (hint[:, :20] == -1).all()
    assert np.allclose(hint[:, 20:], img[:, 20:].astype(np.float32) / 255.0)


# -- weighted preprocessors -------------------------------------------------------------------------


def test_weighted_without_weights_names_file_and_folder(tmp_path: Path) -> None:
    img = pil(scene())
    with pytest.raises(NotFoundError) as err:
        cp.run_preprocessor("depth_midas", img, annotator_dir=tmp_path)
    assert "dpt_hybrid-midas-501f0c75.pt" in err.value.message
    assert str(tmp_path / "midas") in err.value.message
    assert err.value.status_code == 404
    with pytest.raises(NotFoundError) as err:
        cp.run_preprocessor("openpose_full", img, annotator_dir=None)
    assert "openpose/body_pose_model.pth" in err.value.message
    assert "ControlNetAnnotators" in err.value.message
    with pytest.raises(NotFoundError, match=r"table5_pidinet\.pth"):
        cp.run_preprocessor("softedge_pidinet", img, annotator_dir=tmp_path)
    with pytest.raises(NotFoundError, match=r"sk_model\.pth"):
        cp.run_preprocessor("lineart_realistic", img, annotator_dir=tmp_path)
    # only the missing ones are named
    (tmp_path / "openpose").mkdir()
    (tmp_path / "openpose" / "body_pose_model.pth").write_bytes(b"x")
    with pytest.raises(NotFoundError) as err:
        cp.run_preprocessor("openpose", img, annotator_dir=tmp_path)
    assert "hand_pose_model.pth" in err.value.message and "body_pose_model.pth" not in err.value.message
    assert cp.missing_weights("openpose", tmp_path) == [
        tmp_path / "openpose" / "hand_pose_model.pth",
        tmp_path / "openpose" / "facenet.pth",
    ]


def test_every_weighted_one_is_refused_without_files(tmp_path: Path) -> None:
    img = pil(scene(64, 64))
    for name in cp.weighted_preprocessors():
        with pytest.raises((NotFoundError, cp.PreprocessorNotBuiltInError)):
            cp.run_preprocessor(name, img, annotator_dir=tmp_path)


@pytest.mark.skipif(cp.importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed")
def test_package_preprocessor_names_the_package() -> None:
    with pytest.raises(NotFoundError, match="mediapipe"):
        cp.run_preprocessor("mediapipe_face", pil(scene()))


def test_weights_present_without_runner_then_with_one(tmp_path: Path) -> None:
    # a weighted preprocessor with no built-in runner answers 501 with its files present
    erika = tmp_path / "manga_line" / "erika.pth"
    erika.parent.mkdir()
    erika.write_bytes(b"not really")
    img = pil(scene())
    with pytest.raises(cp.PreprocessorNotBuiltInError) as err:
        cp.run_preprocessor("lineart_anime_denoise", img, annotator_dir=tmp_path)
    assert err.value.status_code == 501
    # a registered runner wins over the built-in one (mlsd has one: the junk file is not read)
    weight = tmp_path / "mlsd" / "mlsd_large_512_fp32.pth"
    weight.parent.mkdir()
    weight.write_bytes(b"not really")
    seen: list[cp.PreprocessorCall] = []

    def runner(call: cp.PreprocessorCall) -> cp.PreprocessResult:
        seen.append(call)
        picture = Image.fromarray(255 - call.image)
        return cp.PreprocessResult(image=picture, display=picture)

    cp.register_runner("mlsd", runner)
    try:
        result = cp.run_preprocessor("mlsd", img, annotator_dir=tmp_path, threshold_a=-1, threshold_b=5.0)
    finally:
        cp.unregister_runner("mlsd")
    assert np.array_equal(out(result), 255 - scene())
    (call,) = seen
    assert call.weights == (weight,)
    assert (call.resolution, call.slider_1, call.slider_2) == (512, 0.1, 5.0)
    with pytest.raises(UserError) as unregistered:  # the built-in runner again: the junk file is refused
        cp.run_preprocessor("mlsd", img, annotator_dir=tmp_path)
    assert unregistered.value.status_code == 400 and "mlsd_large_512_fp32.pth" in str(unregistered.value)
    with pytest.raises(ValueError, match="built in"):
        cp.register_runner("canny", runner)
