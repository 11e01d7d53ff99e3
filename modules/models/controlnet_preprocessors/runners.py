"""Built-in runners of the weighted ControlNet preprocessors, on the networks of `controlnet_aux`
(Apache-2.0, the Hugging Face port of lllyasviel's annotators; it reads the same files the
sd-webui-controlnet extension downloads from lllyasviel/Annotators).

Nothing is downloaded: each network is built from controlnet_aux's model classes and its state dict
is read from the annotator file through `checkpoint_io.read_state_dict` (safetensors, or pickles
through the allow-listed `torch.load(weights_only=True)`); controlnet_aux's `from_pretrained` (which
can reach `hf_hub_download`) is never called.

Resolution and output follow the extension (`scripts/preprocessor/legacy/processor.py`, facts
only): the image is scaled so its short side is the preprocessor resolution and padded to
multiples of 64 by repeating the edge (`ops.resize_with_pad`), the network runs on that padded
image (controlnet_aux's detectors are called with a detect resolution equal to the padded image's
short side, so their own resizing leaves it as is), and the padding is cropped off the result:
an RGB uint8 map at the preprocessor resolution.

controlnet_aux is imported lazily, inside the runners. Loaded networks are kept in a small cache
(the last `CACHE_SIZE`, keyed by file paths and modification times) on CUDA when available, else
on the CPU; `unload_annotators()` releases them.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from modules.core.errors import ModelFileError, NotFoundError
from modules.models.controlnet_preprocessors import ops

if TYPE_CHECKING:
    import torch

    from modules.models.controlnet_preprocessors import PreprocessorCall, PreprocessResult

log = logging.getLogger(__name__)

PACKAGE = "controlnet_aux"
CACHE_SIZE = 2

Array = np.ndarray


class AnnotatorFileError(ModelFileError):
    """An annotator file that cannot be read or does not fit the network it is for (HTTP 400)."""


# -- package, device, cache ---------------------------------------------------------------------------


def _aux(module: str = "") -> ModuleType:
    """Import controlnet_aux (or one of its submodules) quietly: its import warns about timm
    registry overwrites."""
    import importlib

    name = f"{PACKAGE}.{module}" if module else PACKAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as exc:
        raise NotFoundError(
            f"the built-in ControlNet preprocessors need the Python package controlnet_aux==0.0.10 "
            f"(and scikit-image), which cannot be imported: {exc}"
        ) from exc


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_cache: OrderedDict[tuple[object, ...], Any] = OrderedDict()
_lock = threading.RLock()


def _key(kind: str, paths: tuple[Path, ...]) -> tuple[object, ...]:
    parts: list[object] = [kind]
    for path in paths:
        stat = path.stat()
        parts += [str(path.resolve()), stat.st_mtime_ns, stat.st_size]
    return tuple(parts)


def _cached(kind: str, paths: tuple[Path, ...], build: Callable[[], Any]) -> Any:
    """The network `build` makes for these files: from the cache when the files are unchanged."""
    key = _key(kind, paths)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
        _cache[key] = model
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def unload_annotators() -> int:
    """Drop every cached annotator network (and free CUDA memory); returns how many were held."""
    with _lock:
        count = len(_cache)
        _cache.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return count


def cached_annotators() -> int:
    with _lock:
        return len(_cache)


# -- loading --------------------------------------------------------------------------------------


def _state_dict(path: Path, strip: str = "") -> dict[str, torch.Tensor]:
    from modules.models.checkpoint_io import read_state_dict

    try:
        tensors = read_state_dict(path)
    except ModelFileError as exc:
        raise AnnotatorFileError(f"ControlNet annotator file {path.name} cannot be read: {exc}") from exc
    if strip:
        tensors = {k.removeprefix(strip): v for k, v in tensors.items()}
    return tensors


def _load(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Load `tensors` into `module` (strictly), put it in eval mode on the device."""
    try:
        module.load_state_dict(dict(tensors), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise AnnotatorFileError(
            f"ControlNet annotator file {path} does not fit the {type(module).__name__} network it is for "
            f"(wrong or corrupt file?): {first}"
        ) from exc
    return module.float().eval().to(_device())


def _with_prefix_of(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The openpose files name their tensors without the block prefix the network adds
    (`model0.conv1_1.weight` is stored as `conv1_1.weight`)."""
    out = {}
    for name in module.state_dict():
        stored = name.split(".", 1)[1]
        if stored not in tensors:
            raise AnnotatorFileError(
                f"ControlNet annotator file {path} does not fit the {type(module).__name__} network it is for "
                f"(wrong or corrupt file?): no tensor {stored!r}"
            )
        out[name] = tensors[stored]
    return out


# -- networks -----------------------------------------------------------------------------------------


def _hed(path: Path) -> Any:
    aux = _aux("hed")
    return aux.HEDdetector(_load(aux.ControlNetHED_Apache2(), _state_dict(path), path))


def _pidinet(path: Path) -> Any:
    aux = _aux("pidi")
    model = _aux("pidi.model").pidinet()
    return aux.PidiNetDetector(_load(model, _state_dict(path, "module."), path))


def _lineart(path: Path) -> Any:
    aux = _aux("lineart")
    model = _load(aux.Generator(3, 1, 3), _state_dict(path), path)
    return aux.LineartDetector(model, model)


def _lineart_anime(path: Path) -> Any:
    import torch

    aux = _aux("lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = aux.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    return aux.LineartAnimeDetector(_load(net, _state_dict(path, "module."), path))


def _mlsd(path: Path) -> Any:
    net = _aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()
    return _aux("mlsd").MLSDdetector(_load(net, _state_dict(path), path))


def _ted(path: Path) -> Any:
    return _load(_aux("teed.ted").TED(), _state_dict(path), path)


def _midas(path: Path) -> Any:
    dpt = _aux("midas.midas.dpt_depth").DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    return _load(dpt, _state_dict(path), path)


def _normal_bae(path: Path) -> Any:
    aux = _aux("normalbae")
    args = SimpleNamespace(
        mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4, importance_ratio=0.7
    )
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # its encoder prints while it is built
        net = aux.NNET(args)
    return aux.NormalBaeDetector(_load(net, _state_dict(path, "module."), path))


def _openpose(body: Path, hand: Path, face: Path) -> Any:
    aux = _aux("open_pose")
    body_model = _aux("open_pose.model").bodypose_model()
    hand_model = _aux("open_pose.model").handpose_model()
    face_mod = _aux("open_pose.face")
    body_est = object.__new__(aux.Body)
    body_est.model = _load(body_model, _with_prefix_of(body_model, _state_dict(body), body), body)
    hand_est = object.__new__(aux.Hand)
    hand_est.model = _load(hand_model, _with_prefix_of(hand_model, _state_dict(hand), hand), hand)
    face_est = object.__new__(aux.Face)
    face_est.inference_size = face_mod.params["inference_img_size"]
    face_est.sigma = face_mod.params["gaussian_sigma"]
    face_est.threshold = face_mod.params["heatmap_peak_thresh"]
    face_est.model = _load(face_mod.FaceNet(), _state_dict(face), face)
    return aux.OpenposeDetector(body_est, hand_est, face_est)


# -- plumbing -----------------------------------------------------------------------------------------


def _result(array: Array, extra: Mapping[str, object] | None = None) -> PreprocessResult:
    from modules.models.controlnet_preprocessors import PreprocessResult

    picture = Image.fromarray(ops.hwc3(np.ascontiguousarray(array, dtype=np.uint8)))
    return PreprocessResult(image=picture, display=picture, extra=dict(extra or {}))


def _padded(call: PreprocessorCall) -> tuple[Array, Callable[[Array], Array], int]:
    """The image at the preprocessor resolution, padded to multiples of 64, the crop back, and the
    padded image's short side (the detect resolution that makes controlnet_aux keep the size)."""
    padded, remove_pad = ops.resize_with_pad(call.image, call.resolution)
    return padded, remove_pad, min(padded.shape[:2])


def _inference() -> Any:
    import torch

    return torch.inference_mode()


def _scribble(edges: Array) -> Array:
    """The extension's scribble post-processing of a soft-edge map: thin (NMS at 127, sigma 3),
    blur (sigma 3), binarise at > 4."""
    import cv2

    util = _aux("util")
    out = util.nms(ops.hwc3(edges), 127, 3.0)
    out = cv2.GaussianBlur(out, (0, 0), 3.0)
    out[out > 4] = 255
    out[out < 255] = 0
    return np.asarray(out)


def _hed_runner(*, safe: bool = False, scribble: bool = False) -> Callable[[PreprocessorCall], PreprocessResult]:
    def run(call: PreprocessorCall) -> PreprocessResult:
        detector = _cached("hed", call.weights, lambda: _hed(call.weights[0]))
        padded, remove_pad, size = _padded(call)
        with _inference():
            edges = detector(padded, detect_resolution=size, image_resolution=size, safe=safe, output_type="np")
        edges = remove_pad(edges)
        return _result(_scribble(edges) if scribble else edges)

    return run


def _pidinet_runner(
    *, safe: bool = False, scribble: bool = False, apply_filter: bool = False
) -> Callable[[PreprocessorCall], PreprocessResult]:
    def run(call: PreprocessorCall) -> PreprocessResult:
        detector = _cached("pidinet", call.weights, lambda: _pidinet(call.weights[0]))
        padded, remove_pad, size = _padded(call)
        with _inference():
            edges = detector(
                padded,
                detect_resolution=size,
                image_resolution=size,
                safe=safe,
                apply_filter=apply_filter,
                output_type="np",
            )
        edges = remove_pad(edges)
        return _result(_scribble(edges) if scribble else edges)

    return run


def _lineart_runner(call: PreprocessorCall) -> PreprocessResult:
    detector = _cached("lineart", call.weights, lambda: _lineart(call.weights[0]))
    padded, remove_pad, size = _padded(call)
    with _inference():
        # the network draws dark lines on white; controlnet_aux returns them inverted (white lines on
        # black), which is the extension's output too
        lines = detector(padded, detect_resolution=size, image_resolution=size, output_type="np")
    return _result(remove_pad(lines))


def _lineart_anime_runner(call: PreprocessorCall) -> PreprocessResult:
    detector = _cached("lineart_anime", call.weights, lambda: _lineart_anime(call.weights[0]))
    padded, remove_pad, size = _padded(call)
    with _inference():
        lines = detector(padded, detect_resolution=size, image_resolution=size, output_type="np")
    return _result(remove_pad(lines))


def _mlsd_runner(call: PreprocessorCall) -> PreprocessResult:
    detector = _cached("mlsd", call.weights, lambda: _mlsd(call.weights[0]))
    padded, remove_pad, size = _padded(call)
    with _inference():
        lines = detector(
            padded,
            thr_v=call.slider_1,
            thr_d=call.slider_2,
            detect_resolution=size,
            image_resolution=size,
            output_type="np",
        )
    return _result(remove_pad(lines))


def _teed_edges(call: PreprocessorCall, padded: Array, size: int) -> Array:
    net = _cached("teed", call.weights, lambda: _ted(call.weights[0]))
    detector = _aux("teed").TEEDdetector(net)
    with _inference():
        return np.asarray(detector(padded, detect_resolution=size, safe_steps=int(call.slider_1), output_type="np"))


def _teed_runner(call: PreprocessorCall) -> PreprocessResult:
    padded, remove_pad, size = _padded(call)
    return _result(remove_pad(ops.hwc3(_teed_edges(call, padded, size))))


def _anyline_runner(call: PreprocessorCall) -> PreprocessResult:
    """MTEED's soft edges with the standard line art's faintest strokes (values 0..1, specks under
    36 pixels removed) laid over them, as the extension's softedge_anyline."""
    import cv2

    padded, remove_pad, size = _padded(call)
    edges = ops.hwc3(_teed_edges(call, padded, size))
    lines = ops.lineart_standard(padded, call.resolution)
    if lines.shape[:2] != edges.shape[:2]:
        lines = cv2.resize(lines, (edges.shape[1], edges.shape[0]), interpolation=cv2.INTER_NEAREST)
    first = lines[:, :, 0]
    faint = np.where(first <= 1, first, 0).astype(np.uint8)
    morphology = _aux_skimage_morphology()
    try:  # scikit-image >= 0.26: max_size removes objects of at most that size (min_size: under it)
        keep = morphology.remove_small_objects(faint.astype(bool), max_size=35, connectivity=1)
    except TypeError:
        keep = morphology.remove_small_objects(faint.astype(bool), min_size=36, connectivity=1)
    top = np.repeat((faint * keep)[:, :, None], 3, axis=2).astype(np.uint8)
    # where a faint stroke is kept: 1 - (1 - top) * (1 - base), in uint8 as the extension
    blended = (np.uint8(1) - (np.uint8(1) - top) * (np.uint8(1) - edges)).astype(np.uint8)
    combined = np.where(top.astype(bool), blended, edges)
    return _result(remove_pad(combined))


def _aux_skimage_morphology() -> ModuleType:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from skimage import morphology
    except ImportError as exc:
        raise NotFoundError(f"softedge_anyline needs the Python package scikit-image: {exc}") from exc
    return morphology


def _midas_runner(*, normal: bool) -> Callable[[PreprocessorCall], PreprocessResult]:
    def run(call: PreprocessorCall) -> PreprocessResult:
        import torch

        model = _cached("midas", call.weights, lambda: _midas(call.weights[0]))
        padded, remove_pad, _ = _padded(call)
        with _inference():
            x = torch.from_numpy(padded).float().to(_device()) / 127.5 - 1.0
            depth = model(x.permute(2, 0, 1)[None])[0].float()
            span = depth - depth.min()
            scaled = (span / span.max()).cpu().numpy()
        if not normal:
            return _result(remove_pad((scaled * 255.0).clip(0, 255).astype(np.uint8)))
        return _result(remove_pad(_depth_normal(depth.cpu().numpy(), scaled, call.slider_1)))

    return run


def _depth_normal(depth: Array, scaled: Array, background: float, a: float = np.pi * 2.0) -> Array:
    """The extension's normal map from a MiDaS depth: Sobel gradients (x, y) and a constant z = 2 pi,
    gradients zeroed where the scaled depth is under the background threshold, normalised, mapped
    to 0..255 as (x, y, z) in RGB."""
    import cv2

    gx = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    gz = np.ones_like(gx) * a
    gx[scaled < background] = 0
    gy[scaled < background] = 0
    vec = np.stack([gx, gy, gz], axis=2)
    vec /= np.sum(vec**2.0, axis=2, keepdims=True) ** 0.5
    return (vec * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


def _normal_bae_runner(call: PreprocessorCall) -> PreprocessResult:
    detector = _cached("normal_bae", call.weights, lambda: _normal_bae(call.weights[0]))
    padded, remove_pad, size = _padded(call)
    with _inference():
        normal = detector(padded, detect_resolution=size, image_resolution=size, output_type="np")
    return _result(remove_pad(normal))


def _pose_json(poses: list[Any], height: int, width: int) -> dict[str, object]:
    """The extension's pose JSON (OpenPose's output format): per person the body, face and hand
    keypoints as flat [x, y, 1] triples (x, y relative to the canvas; [0, 0, 0] for a missing one;
    None for a part not detected), and the canvas size (the padded detection image)."""

    def flat(points: list[Any] | None) -> list[float] | None:
        if not points:
            return None
        out: list[float] = []
        for p in points:
            out += [float(p.x), float(p.y), 1.0] if p is not None else [0.0, 0.0, 0.0]
        return out

    people = [
        {
            "pose_keypoints_2d": flat(pose.body.keypoints),
            "face_keypoints_2d": flat(pose.face),
            "hand_left_keypoints_2d": flat(pose.left_hand),
            "hand_right_keypoints_2d": flat(pose.right_hand),
        }
        for pose in poses
    ]
    return {"people": people, "canvas_height": height, "canvas_width": width}


def _openpose_runner(*, body: bool, hand: bool, face: bool) -> Callable[[PreprocessorCall], PreprocessResult]:
    def run(call: PreprocessorCall) -> PreprocessResult:
        detector = _cached("openpose", call.weights, lambda: _openpose(*call.weights))
        padded, remove_pad, _ = _padded(call)
        height, width = padded.shape[:2]
        with _inference():
            poses = detector.detect_poses(padded, include_hand=hand, include_face=face)
        canvas = _aux("open_pose").draw_poses(poses, height, width, draw_body=body, draw_hand=hand, draw_face=face)
        return _result(remove_pad(ops.hwc3(canvas)), {"poses": _pose_json(poses, height, width)})

    return run


BUILT_IN: Mapping[str, Callable[[PreprocessorCall], PreprocessResult]] = {
    "openpose": _openpose_runner(body=True, hand=False, face=False),
    "openpose_hand": _openpose_runner(body=True, hand=True, face=False),
    "openpose_face": _openpose_runner(body=True, hand=False, face=True),
    "openpose_faceonly": _openpose_runner(body=False, hand=False, face=True),
    "openpose_full": _openpose_runner(body=True, hand=True, face=True),
    "depth": _midas_runner(normal=False),
    "normal_map": _midas_runner(normal=True),
    "hed": _hed_runner(),
    "hed_safe": _hed_runner(safe=True),
    "scribble_hed": _hed_runner(scribble=True),
    "pidinet": _pidinet_runner(),
    "pidinet_safe": _pidinet_runner(safe=True),
    "pidinet_scribble": _pidinet_runner(scribble=True),
    "pidinet_sketch": _pidinet_runner(apply_filter=True),
    "lineart": _lineart_runner,
    "lineart_coarse": _lineart_runner,
    "lineart_anime": _lineart_anime_runner,
    "mlsd": _mlsd_runner,
    "normal_bae": _normal_bae_runner,
    "softedge_teed": _teed_runner,
    "softedge_anyline": _anyline_runner,
}
"""Internal name -> runner; `run_preprocessor` uses these when nothing was registered."""

NOT_BUILT_IN: Mapping[str, str] = {
    "lineart_anime_denoise": "its network (manga_line) is not in controlnet_aux",
    "depth_anything": "Depth Anything is not in controlnet_aux 0.0.10",
    "depth_anything_v2": "Depth Anything V2 is not in controlnet_aux 0.0.10",
    "depth_hand_refiner": "it needs the hand_refiner package (MeshGraphormer)",
    "depth_leres": "controlnet_aux's LeReS reads its options from the process command line",
    "depth_leres++": "controlnet_aux's LeReS boost reads its options from the process command line",
    "depth_zoe": "ZoeDepth (a BEiT-L network) is not wired up to local files here yet",
    "dw_openpose_full": "DWPose runs ONNX models (onnxruntime), not installed here",
    "animal_openpose": "animal pose runs ONNX models (onnxruntime), not installed here",
    "densepose": "DensePose runs a TorchScript model that is not in controlnet_aux",
    "densepose_parula": "DensePose runs a TorchScript model that is not in controlnet_aux",
    "mobile_sam": "segment-anything's automatic mask generator is not wired up here",
    "anime_face_segment": "its network is not in controlnet_aux",
    "oneformer_ade20k": "OneFormer (detectron2) is not in controlnet_aux",
    "oneformer_coco": "OneFormer (detectron2) is not in controlnet_aux",
    "segmentation": "UniFormer (mmcv) is not in controlnet_aux",
    "inpaint_only+lama": "LaMa is not in controlnet_aux",
    "mediapipe_face": "it needs the mediapipe package",
    "normal_dsine": "DSINE is not in controlnet_aux 0.0.10",
    "clip_vision": "CLIP vision embeddings are computed by the IP-Adapter / style pipeline, not here",
    "revision_clipvision": "CLIP vision embeddings are computed by the revision pipeline, not here",
    "revision_ignore_prompt": "CLIP vision embeddings are computed by the revision pipeline, not here",
    "ip-adapter_clip_sd15": "CLIP vision embeddings are computed by the IP-Adapter pipeline, not here",
    "ip-adapter_clip_sdxl": "CLIP vision embeddings are computed by the IP-Adapter pipeline, not here",
    "ip-adapter_clip_sdxl_plus_vith": "CLIP vision embeddings are computed by the IP-Adapter pipeline, not here",
    "ip-adapter_face_id": "it needs insightface",
    "ip-adapter_face_id_plus": "it needs insightface",
    "ip-adapter_pulid": "it needs insightface and EVA02-CLIP",
    "ip-adapter-auto": "it picks an IP-Adapter preprocessor, none of which is built in",
    "instant_id_face_embedding": "it needs insightface",
    "instant_id_face_keypoints": "it needs insightface",
    "facexlib": "it needs facexlib",
}
"""Why a weighted preprocessor has no built-in runner (for the 501 message)."""
