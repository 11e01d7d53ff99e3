"""ControlNet preprocessors ("modules" in sd-webui-controlnet's words), built in.

What is here:

- the whole list the extension registers (`catalog.SPECS`): internal names and UI labels (the
  aliases of `/controlnet/module_list?alias_names=true`), tags, list order, slider configs
  (`preprocessor_details()` is the extension's `module_detail`), control types;
- every preprocessor that needs no downloaded weights, run with numpy/OpenCV (`ops`): none,
  invert, canny, blur_gaussian, scribble_xdog, shuffle, threshold, tile_resample, tile_colorfix,
  tile_colorfix+sharp, lineart_standard, color (t2ia_color_grid), recolor_luminance,
  recolor_intensity, inpaint (inpaint_global_harmonious), inpaint_only, and the reference modes
  (reference_only, reference_adain, reference_adain+attn) whose "preprocessor" output is the image
  itself (the reference work happens in the UNet's attention/norm layers at sampling time);
- the weighted ones (openpose, depth_midas, lineart_realistic, softedge_hed, mlsd, normal_bae, ...)
  are listed with the annotator files they read. Nothing is ever downloaded: asked for without
  its files, one raises `NotFoundError` naming each missing file and the folder to put it in. With
  the files present it runs through a runner registered with `register_runner`, else through the
  built-in one (`runners.BUILT_IN`, on controlnet_aux's networks: openpose*, depth_midas,
  normal_midas, normal_bae, softedge_hed/hedsafe, scribble_hed, softedge_pidinet/pidisafe,
  scribble_pidinet, t2ia_sketch_pidi, lineart_realistic/coarse/anime, mlsd, softedge_teed,
  softedge_anyline); the rest answer `PreprocessorNotBuiltInError` (a 501) saying why
  (`runners.NOT_BUILT_IN`). A file that cannot be read or does not fit its network raises
  `runners.AnnotatorFileError` (a `ModelFileError`, 400) naming it; `unload_annotators()` frees the
  cached networks.

Annotator folder: `models/ControlNetAnnotators` (`default_annotator_dir`), laid out as the
extension's `extensions/sd-webui-controlnet/annotator/downloads`: `<folder>/<kind>/<file>`, e.g.
`models/ControlNetAnnotators/midas/dpt_hybrid-midas-501f0c75.pt`, so an existing download folder can
be copied or pointed at as is.

Parameters follow the extension's unit rules: `resolution`, `threshold_a` and `threshold_b` go to
the preprocessor's resolution slider, slider 1 and slider 2; None, -1 or anything outside the
slider's range means the slider's default (shuffle's hidden resolution slider fixes it at 512). A
pixel-perfect resolution is used as given (`pixel_perfect=True`), as the extension sets it after
that check.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from modules.core.controlnet import tag_filters
from modules.core.errors import NotFoundError, UserError, ValidationError
from modules.models.controlnet_preprocessors import ops, runners
from modules.models.controlnet_preprocessors.catalog import (
    CATALOG,
    HIDDEN,
    RESOLUTION,
    SPECS,
    PreprocessorSpec,
    Slider,
    WeightFile,
)
from modules.models.controlnet_preprocessors.runners import AnnotatorFileError, unload_annotators

__all__ = [
    "ANNOTATOR_FOLDER_NAME",
    "EXTENSION_ANNOTATOR_FOLDER",
    "HIDDEN",
    "RESIZE_MODES",
    "RESOLUTION",
    "SPECS",
    "AnnotatorFileError",
    "PreprocessResult",
    "PreprocessorCall",
    "PreprocessorNotBuiltInError",
    "PreprocessorSpec",
    "Runner",
    "Slider",
    "WeightFile",
    "check_runnable",
    "control_type_filters",
    "control_type_preprocessors",
    "control_type_tags",
    "default_annotator_dir",
    "default_control_type_preprocessor",
    "effective_parameters",
    "find_preprocessor",
    "get_preprocessor",
    "inpaint_control_hint",
    "missing_weights",
    "module_list",
    "pixel_perfect_resolution",
    "preprocessor_details",
    "preprocessor_seed",
    "register_runner",
    "run_preprocessor",
    "unload_annotators",
    "unregister_runner",
    "weight_free_preprocessors",
    "weighted_preprocessors",
]

ANNOTATOR_FOLDER_NAME = "ControlNetAnnotators"
"""The annotator folder under the models folder."""
EXTENSION_ANNOTATOR_FOLDER = Path("extensions") / "sd-webui-controlnet" / "annotator" / "downloads"
"""Where the extension keeps them (same layout inside), relative to the webui folder."""

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")


def default_annotator_dir(models_dir: Path) -> Path:
    return models_dir / ANNOTATOR_FOLDER_NAME


class PreprocessorNotBuiltInError(UserError):
    """A preprocessor whose weights are present but which has no runner here (HTTP 501)."""

    status_code = 501


@dataclass(frozen=True)
class PreprocessResult:
    """A preprocessor's output.

    `image` is the detected map (RGB) that goes on to the ControlNet; `display` what the extension
    shows as preview (the same image, except for inpaint modules: RGBA with the area to repaint
    half transparent); `mask` the inpaint mask (L, 255 = repaint; inpaint modules only; the
    ControlNet input is `inpaint_control_hint(image, mask)`); `extra` whatever else a runner gives
    (an openpose runner's pose JSON, an embedding)."""

    image: Image.Image
    display: Image.Image
    mask: Image.Image | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PreprocessorCall:
    """What a preprocessor runs on: the image as an RGB (H, W, 3) uint8 array, the mask (H, W)
    uint8 (zeros when none was given), the effective parameters, the weight files (in the spec's
    order; all exist) and the random generator (seeded when a seed was given)."""

    spec: PreprocessorSpec
    image: np.ndarray
    mask: np.ndarray
    resolution: int
    slider_1: float
    slider_2: float
    weights: tuple[Path, ...]
    rng: np.random.RandomState


Runner = Callable[[PreprocessorCall], PreprocessResult]
"""Runs a weighted preprocessor (register with `register_runner`)."""


# -- lookups -----------------------------------------------------------------------------------------


def find_preprocessor(name: str) -> PreprocessorSpec | None:
    """By UI label first, then by internal name (as the extension's `get_preprocessor`)."""
    return CATALOG.find(name)


def get_preprocessor(name: str) -> PreprocessorSpec:
    spec = CATALOG.find(name)
    if spec is None:
        raise NotFoundError(f"ControlNet preprocessor not found: {name!r}")
    return spec


def module_list(alias_names: bool = False) -> list[str]:
    """`/controlnet/module_list`'s `module_list`: internal names (labels with `alias_names`),
    "none" first, then by priority and label, descending."""
    return [s.label if alias_names else s.name for s in CATALOG.sorted()]


def preprocessor_details(alias_names: bool = False) -> dict[str, dict[str, object]]:
    """`/controlnet/module_list`'s `module_detail`: {name: {"model_free", "sliders": [{"name",
    "value", "min", "max", "step"}, ...]}} with the visible sliders (resolution first)."""
    return {s.label if alias_names else s.name: s.detail() for s in CATALOG.sorted()}


def weight_free_preprocessors() -> list[str]:
    """Internal names of the preprocessors that run here without any file, in list order."""
    return [s.name for s in CATALOG.sorted() if s.name in _FREE]


def weighted_preprocessors() -> list[str]:
    """Internal names of the others (annotator weights, a package, or not built in), in list order."""
    return [s.name for s in CATALOG.sorted() if s.name not in _FREE]


# -- control types (the extension's tags) ---------------------------------------------------------


def control_type_tags() -> list[str]:
    """The control types: "All", then every tag, sorted."""
    return ["All", *sorted({tag for spec in SPECS for tag in spec.tags})]


def control_type_filters(tag: str) -> set[str]:
    """Lowercase substrings a ControlNet model name is matched against for a control type (the tag,
    its aliases, and "union" for the types a union model handles)."""
    return tag_filters(tag)  # one table: the core's (the API's control types read it too)


def control_type_preprocessors(tag: str) -> list[str]:
    """Labels of a control type's preprocessors in list order ("none" included; all for "All")."""
    specs = CATALOG.sorted()
    if tag.lower() == "all":
        return [s.label for s in specs]
    return [s.label for s in specs if tag in s.tags or s.label == "none"]


def default_control_type_preprocessor(tag: str) -> str:
    """The preprocessor a control type selects: the first after "none" (just "none" if alone)."""
    if tag.lower() == "all":
        return "none"
    labels = control_type_preprocessors(tag)
    return labels[0] if len(labels) == 1 else labels[1]


# -- parameters --------------------------------------------------------------------------------------


def effective_parameters(
    name: str,
    resolution: float | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    *,
    pixel_perfect: bool = False,
) -> tuple[int, float, float]:
    """(resolution, slider 1, slider 2) the preprocessor runs with: values outside a slider's range
    (the API's -1 included) or None become its default; with `pixel_perfect` a given resolution is
    kept as is."""
    spec = get_preprocessor(name)
    if pixel_perfect and resolution is not None and resolution > 0:
        res = int(resolution)
    else:
        res = int(spec.resolution.accept(resolution))
    return res, spec.slider_1.accept(threshold_a), spec.slider_2.accept(threshold_b)


def pixel_perfect_resolution(
    image_size: tuple[int, int], target_width: int, target_height: int, resize_mode: str
) -> int:
    """The extension's pixel-perfect resolution for an image of `image_size` (width, height) and a
    generation of target_width x target_height: the image's short side once scaled to cover the
    target, or to fit inside it for "Resize and Fill"."""
    if resize_mode not in RESIZE_MODES:
        raise ValidationError(f"unknown resize mode {resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    width, height = image_size
    return ops.pixel_perfect_resolution(
        height, width, target_height, target_width, outer_fit=resize_mode == "Resize and Fill"
    )


def preprocessor_seed(seed: int, subseed: int) -> int:
    """The numpy seed the extension derives from a generation's (resolved) seed and subseed:
    (max(seed, 0) + max(subseed, 0)) & 0xFFFFFFFF; what makes shuffle repeatable."""
    return (max(int(seed), 0) + max(int(subseed), 0)) & 0xFFFFFFFF


# -- images ------------------------------------------------------------------------------------------


def _rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3); transparent images composited over white (the extension's HWC3)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return ops.hwc3(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _mask_array(mask: Image.Image | None, height: int, width: int) -> np.ndarray:
    """(H, W) uint8: the mask's first channel (the extension's convention), zeros when None."""
    if mask is None:
        return np.zeros((height, width), dtype=np.uint8)
    values = np.asarray(mask if mask.mode in ("L", "RGB", "RGBA", "LA") else mask.convert("L"))
    values = values if values.ndim == 2 else values[:, :, 0]
    if values.shape != (height, width):
        raise ValidationError(
            f"ControlNet mask is {values.shape[1]}x{values.shape[0]}, the image {width}x{height}: they must match"
        )
    return np.ascontiguousarray(values, dtype=np.uint8)


def inpaint_control_hint(image: Image.Image, mask: Image.Image) -> np.ndarray:
    """The ControlNet inpaint input for an image and its mask: (H, W, 3) float32, the RGB in [0, 1]
    and -1 where the mask is above 127."""
    rgb = _rgb_array(image)
    return ops.inpaint_control_hint(rgb, _mask_array(mask, rgb.shape[0], rgb.shape[1]))


# -- the built-in (weight-free) ones -----------------------------------------------------------------


def _map(array: np.ndarray) -> PreprocessResult:
    picture = Image.fromarray(ops.hwc3(np.ascontiguousarray(array)))
    return PreprocessResult(image=picture, display=picture)


def _inpaint(call: PreprocessorCall) -> PreprocessResult:
    return PreprocessResult(
        image=Image.fromarray(call.image),
        display=Image.fromarray(ops.inpaint_display(call.image, call.mask)),
        mask=Image.fromarray(call.mask),
    )


def _simple(fn: Callable[[PreprocessorCall], np.ndarray]) -> Runner:
    return lambda call: _map(fn(call))


_FREE: Mapping[str, Runner] = {
    "none": _simple(lambda c: ops.identity(c.image)),
    "invert": _simple(lambda c: ops.invert(c.image)),
    "canny": _simple(lambda c: ops.canny(c.image, c.resolution, c.slider_1, c.slider_2)),
    "blur_gaussian": _simple(lambda c: ops.blur_gaussian(c.image, c.resolution, c.slider_1)),
    "scribble_xdog": _simple(lambda c: ops.scribble_xdog(c.image, c.resolution, c.slider_1)),
    "shuffle": _simple(lambda c: ops.shuffle(c.image, c.resolution, c.rng)),
    "threshold": _simple(lambda c: ops.threshold(c.image, c.resolution, c.slider_1)),
    "tile_resample": _simple(lambda c: ops.tile_resample(c.image, c.slider_1)),
    # the colour fix (and sharpening) is applied at sampling time; the map is the image itself
    "tile_colorfix": _simple(lambda c: ops.identity(c.image)),
    "tile_colorfix+sharp": _simple(lambda c: ops.identity(c.image)),
    "lineart_standard": _simple(lambda c: ops.lineart_standard(c.image, c.resolution)),
    "color": _simple(lambda c: ops.color_grid(c.image, c.resolution)),
    "recolor_luminance": _simple(lambda c: ops.recolor_luminance(c.image, c.slider_1)),
    "recolor_intensity": _simple(lambda c: ops.recolor_intensity(c.image, c.slider_1)),
    "inpaint": _inpaint,
    "inpaint_only": _inpaint,
    # the reference modes need no ControlNet model: the image itself feeds the UNet's attention
    "reference_only": _simple(lambda c: ops.identity(c.image)),
    "reference_adain": _simple(lambda c: ops.identity(c.image)),
    "reference_adain+attn": _simple(lambda c: ops.identity(c.image)),
}

_runners: dict[str, Runner] = {}


def register_runner(name: str, runner: Runner) -> None:
    """Plug in a weighted preprocessor (by label or internal name). It is called only once every
    weight file the catalog lists for it exists."""
    spec = get_preprocessor(name)
    if spec.name in _FREE:
        raise ValueError(f"{spec.name} is built in")
    _runners[spec.name] = runner


def unregister_runner(name: str) -> None:
    _runners.pop(get_preprocessor(name).name, None)


def _not_built_in(spec: PreprocessorSpec) -> PreprocessorNotBuiltInError:
    why = runners.NOT_BUILT_IN.get(spec.name) or spec.note
    return PreprocessorNotBuiltInError(
        f"ControlNet preprocessor {spec.label} is not built in to this webui"
        + (f": {why}" if why else "")
        + "; its files are present but nothing here can run it"
    )


def check_runnable(name: str) -> None:
    """Raise `PreprocessorNotBuiltInError` (501) when nothing here can run the preprocessor (what
    `run_preprocessor` would raise once its files are found), so a request can be refused before it
    is queued."""
    spec = get_preprocessor(name)
    if spec.name in _FREE or spec.name in _runners or spec.name in runners.BUILT_IN:
        return
    raise _not_built_in(spec)


def missing_weights(name: str, annotator_dir: Path | None) -> list[Path]:
    """The weight files of a preprocessor that are not in `annotator_dir` (all of them, relative to
    the folder, when there is none)."""
    spec = get_preprocessor(name)
    if annotator_dir is None:
        return [Path(w.kind) / w.filename for w in spec.weights]
    return [w.path(annotator_dir) for w in spec.weights if not w.path(annotator_dir).exists()]


def _check_requirements(spec: PreprocessorSpec, annotator_dir: Path | None) -> tuple[Path, ...]:
    if spec.package is not None and importlib.util.find_spec(spec.package) is None:
        raise NotFoundError(
            f"ControlNet preprocessor {spec.label} needs the Python package {spec.package!r}, which is not installed"
        )
    if annotator_dir is None:
        if spec.weights:
            files = ", ".join(f"{w.kind}/{w.filename}" for w in spec.weights)
            raise NotFoundError(
                f"ControlNet preprocessor {spec.label} needs {files} in the annotator folder "
                f"(models/{ANNOTATOR_FOLDER_NAME}), and no annotator folder is set; nothing is downloaded"
            )
        return ()
    missing = [w for w in spec.weights if not w.path(annotator_dir).exists()]
    if missing:
        files = ", ".join(w.filename for w in missing)
        where = ", ".join(sorted({str(annotator_dir / w.kind) for w in missing}))
        raise NotFoundError(
            f"ControlNet preprocessor {spec.label} needs {files}: put it in {where} (nothing is downloaded)"
        )
    return tuple(w.path(annotator_dir) for w in spec.weights)


def run_preprocessor(
    name: str,
    image: Image.Image,
    *,
    resolution: float | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    annotator_dir: Path | None = None,
    mask: Image.Image | None = None,
    seed: int | None = None,
    pixel_perfect: bool = False,
) -> PreprocessResult:
    """Run a preprocessor (label or internal name) on an image.

    `mask` (same size; first channel, 255 = repaint) is read by the modules that accept one (the
    inpaint ones here) and is zeros when not given, as in the extension; others ignore it. `seed`
    seeds the random generator (shuffle; see `preprocessor_seed`); None draws a fresh one.

    Raises `NotFoundError` for an unknown name or missing weights / package,
    `PreprocessorNotBuiltInError` for a weighted one with its files but no runner,
    `AnnotatorFileError` for an annotator file that cannot be read or does not fit its network,
    `ValidationError` for a mask of another size."""
    spec = get_preprocessor(name)
    res, slider_1, slider_2 = effective_parameters(
        spec.name, resolution, threshold_a, threshold_b, pixel_perfect=pixel_perfect
    )
    runner = _FREE.get(spec.name)
    weights: tuple[Path, ...] = ()
    if runner is None:
        weights = _check_requirements(spec, annotator_dir)
        runner = _runners.get(spec.name) or runners.BUILT_IN.get(spec.name)
        if runner is None:
            raise _not_built_in(spec)
    rgb = _rgb_array(image)
    call = PreprocessorCall(
        spec=spec,
        image=rgb,
        mask=_mask_array(mask if spec.accepts_mask else None, rgb.shape[0], rgb.shape[1]),
        resolution=res,
        slider_1=slider_1,
        slider_2=slider_2,
        weights=weights,
        rng=np.random.RandomState(None if seed is None else int(seed) & 0xFFFFFFFF),
    )
    return runner(call)
