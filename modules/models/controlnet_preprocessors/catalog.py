"""Every preprocessor sd-webui-controlnet registers, as data: internal name, UI label (the
"alias" of `module_list?alias_names=true`), tags (control types), sorting priority, the four
sliders (resolution, threshold_a, threshold_b, a third one the API never sets), whether a ControlNet
model is needed, and the annotator weights it reads.

Facts from the extension's `scripts/supported_preprocessor.py` (slider defaults: a hidden slider
is 0..1 step 0.01 value 0.5, the resolution slider 64..2048 step 8 value 512),
`scripts/preprocessor/*.py` and `scripts/preprocessor/legacy/preprocessor_compiled.py` (the legacy
table; the legacy wrapper never replaces the resolution slider, so every legacy preprocessor shows
the default one, and legacy sliders without a step have 0.01), and the annotators' download paths
(`annotator/*/__init__.py`: `<annotator folder>/<kind>/<file>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

Number = int | float


@dataclass(frozen=True)
class Slider:
    """One slider of a preprocessor, as the extension's `PreprocessorParameter` (`name` is its
    label)."""

    name: str = "EMPTY_LABEL"
    value: Number = 0.5
    min: Number = 0.0
    max: Number = 1.0
    step: Number = 0.01
    visible: bool = True

    def api_json(self) -> dict[str, str | Number]:
        """The slider as `module_detail` lists it."""
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}

    def accept(self, value: float | None) -> float:
        """The value a unit ends up with: the extension resets anything outside [min, max] (its
        -1 "default" included) to the slider's default; None means the default too."""
        if value is None or value < self.min or value > self.max:
            return float(self.value)
        return float(value)


HIDDEN = Slider(visible=False)
RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class WeightFile:
    """An annotator weight file: `<annotator folder>/<kind>/<filename>`, the extension's layout."""

    kind: str
    filename: str

    def path(self, annotator_dir: Path) -> Path:
        return annotator_dir / self.kind / self.filename


@dataclass(frozen=True)
class PreprocessorSpec:
    """A preprocessor as the extension registers it."""

    name: str
    label: str = ""
    """The UI name (the extension's alias); the internal name when not given."""
    tags: tuple[str, ...] = ()
    priority: int = 0
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN
    slider_2: Slider = HIDDEN
    slider_3: Slider = HIDDEN
    model_free: bool = False
    """The extension's `do_not_need_model`: runs without a ControlNet model (reference, revision)."""
    returns_image: bool = True
    """False for the ones that give embeddings (CLIP vision, insightface), not a map."""
    accepts_mask: bool = False
    requires_mask: bool = False
    weights: tuple[WeightFile, ...] = ()
    """Annotator files it reads; empty for the ones built in here (numpy/OpenCV only)."""
    package: str | None = None
    """A Python package it needs besides weights (mediapipe_face)."""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def sliders(self) -> tuple[Slider, ...]:
        return tuple(s for s in (self.resolution, self.slider_1, self.slider_2, self.slider_3) if s.visible)

    def detail(self) -> dict[str, object]:
        """The extension's `module_detail` entry."""
        return {"model_free": self.model_free, "sliders": [s.api_json() for s in self.sliders]}

    @property
    def sort_key(self) -> str:
        """The extension sorts by this string, descending ("none" always first)."""
        return str(self.priority).zfill(8) + self.label


# -- weight files (kind = subfolder of the annotator folder) ----------------------------------------

_OPENPOSE = (
    WeightFile("openpose", "body_pose_model.pth"),
    WeightFile("openpose", "hand_pose_model.pth"),
    WeightFile("openpose", "facenet.pth"),
)
_DW = (WeightFile("openpose", "yolox_l.onnx"), WeightFile("openpose", "dw-ll_ucoco_384.onnx"))
_ANIMAL = (
    WeightFile("openpose", "yolox_l.onnx"),
    WeightFile("openpose", "rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"),
)
_MIDAS = (WeightFile("midas", "dpt_hybrid-midas-501f0c75.pt"),)
_HED = (WeightFile("hed", "ControlNetHED.pth"),)
_PIDINET = (WeightFile("pidinet", "table5_pidinet.pth"),)
_DENSEPOSE = (WeightFile("densepose", "densepose_r50_fpn_dl.torchscript"),)
_LERES = (WeightFile("leres", "res101.pth"),)
_CLIP_H = (WeightFile("clip_vision", "clip_h.pth"),)
_CLIP_G = (WeightFile("clip_vision", "clip_g.pth"),)
_ANTELOPEV2 = tuple(
    WeightFile("insightface/models/antelopev2", f)
    for f in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx")
)
_BUFFALO_L = tuple(
    WeightFile("insightface/models/buffalo_l", f)
    for f in ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")
)
_FACEXLIB = (
    WeightFile("facexlib", "detection_Resnet50_Final.pth"),
    WeightFile("facexlib", "parsing_bisenet.pth"),
)

_STYLE_FIDELITY = Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0, 0.01)
_NOISE_AUG = Slider("Noise Augmentation", 0.0, 0.0, 1.0)
_VARIATION = Slider("Variation", 8.0, 3.0, 32.0, 1.0)
_GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)
_SAFE_STEPS = Slider("Safe Steps", 2, 0, 10, 1)
_REMOVE_NEAR = Slider("Remove Near %", 0, 0, 100, 0.1)
_REMOVE_BG = Slider("Remove Background %", 0, 0, 100, 0.1)
_NO_RESOLUTION = HIDDEN


# In the extension's registration order (scripts/preprocessor/__init__.py imports, then the legacy
# table's order).
SPECS: tuple[PreprocessorSpec, ...] = (
    # teed.py
    PreprocessorSpec(
        "softedge_teed", tags=("SoftEdge",), slider_1=_SAFE_STEPS, weights=(WeightFile("TEED", "7_model.pth"),)
    ),
    PreprocessorSpec(
        "softedge_anyline",
        tags=("SoftEdge",),
        resolution=Slider("Resolution", 1280, 64, 2048, 8),
        slider_1=_SAFE_STEPS,
        weights=(WeightFile("TEED", "MTEED.pth"),),
    ),
    # pulid.py
    PreprocessorSpec(
        "facexlib",
        resolution=_NO_RESOLUTION,
        weights=_FACEXLIB,
        note="facexlib's weight files (the extension lets facexlib fetch them to its own folder)",
    ),
    PreprocessorSpec(
        "ip-adapter_pulid",
        tags=("IP-Adapter",),
        resolution=_NO_RESOLUTION,
        returns_image=False,
        weights=_FACEXLIB + _ANTELOPEV2,
        note="also needs the EVA02-CLIP-L-14-336 preprocessor of a separate extension",
    ),
    # inpaint.py, lama_inpaint.py
    PreprocessorSpec(
        "inpaint",
        "inpaint_global_harmonious",
        tags=("Inpaint",),
        resolution=_NO_RESOLUTION,
        accepts_mask=True,
        requires_mask=True,
    ),
    PreprocessorSpec(
        "inpaint_only",
        tags=("Inpaint",),
        priority=100,
        resolution=_NO_RESOLUTION,
        accepts_mask=True,
        requires_mask=True,
    ),
    PreprocessorSpec(
        "inpaint_only+lama",
        tags=("Inpaint",),
        resolution=_NO_RESOLUTION,
        accepts_mask=True,
        requires_mask=True,
        weights=(WeightFile("lama", "ControlNetLama.pth"),),
    ),
    # ip_adapter_auto.py
    PreprocessorSpec(
        "ip-adapter-auto",
        tags=("IP-Adapter",),
        priority=1000,
        returns_image=False,
        note="picks the IP-Adapter preprocessor from the unit's model name",
    ),
    # normal_dsine.py
    PreprocessorSpec(
        "normal_dsine",
        tags=("NormalMap",),
        slider_1=Slider("Fov", 60, 0, 360, 0.1),
        slider_2=Slider("Iterations", 5, 1, 20, 1),
        weights=(WeightFile("normal_dsine", "dsine.pt"),),
    ),
    # model_free_preprocessors.py
    PreprocessorSpec("none", tags=("InstructP2P",), priority=10),
    PreprocessorSpec(
        "canny",
        tags=("Canny",),
        priority=100,
        slider_1=Slider("Low Threshold", 100, 1, 255, 1),
        slider_2=Slider("High Threshold", 200, 1, 255, 1),
    ),
    PreprocessorSpec(
        "invert",
        "invert (from white bg & black line)",
        tags=("Canny", "Lineart", "Scribble", "MLSD"),
        priority=20,
        resolution=_NO_RESOLUTION,
    ),
    PreprocessorSpec("blur_gaussian", tags=("Tile",), slider_1=Slider("Sigma", 9.0, 0.01, 64.0)),
    PreprocessorSpec("scribble_xdog", tags=("Scribble", "SparseCtrl"), slider_1=Slider("XDoG Threshold", 32, 1, 64)),
    # resolution fixed to 512: a hidden slider (0..1) resets every resolution to its 512
    PreprocessorSpec("shuffle", tags=("Shuffle",), resolution=Slider(value=512, visible=False)),
    # legacy table
    PreprocessorSpec("animal_openpose", tags=("OpenPose",), weights=_ANIMAL),
    PreprocessorSpec("densepose", "densepose (pruple bg & purple torso)", tags=("OpenPose",), weights=_DENSEPOSE),
    PreprocessorSpec(
        "densepose_parula", "densepose_parula (black bg & blue torso)", tags=("OpenPose",), weights=_DENSEPOSE
    ),
    PreprocessorSpec(
        "depth_anything",
        tags=("Depth",),
        weights=(WeightFile("depth_anything", "depth_anything_vitl14.pth"),),
    ),
    PreprocessorSpec(
        "depth_anything_v2",
        tags=("Depth",),
        weights=(WeightFile("depth_anything_v2", "depth_anything_v2_vitl.safetensors"),),
    ),
    PreprocessorSpec(
        "depth_hand_refiner",
        tags=("Depth",),
        weights=(WeightFile("hand_refiner", "models--hr16--ControlNet-HandRefiner-pruned"),),
        package="hand_refiner",
        note="a Hugging Face cache folder of hr16/ControlNet-HandRefiner-pruned (hand_refiner package)",
    ),
    PreprocessorSpec("depth_leres", tags=("Depth",), slider_1=_REMOVE_NEAR, slider_2=_REMOVE_BG, weights=_LERES),
    PreprocessorSpec(
        "depth_leres++",
        tags=("Depth",),
        slider_1=_REMOVE_NEAR,
        slider_2=_REMOVE_BG,
        weights=(*_LERES, WeightFile("leres", "latest_net_G.pth")),
    ),
    PreprocessorSpec("depth", "depth_midas", tags=("Depth",), priority=100, weights=_MIDAS),
    PreprocessorSpec("depth_zoe", tags=("Depth",), weights=(WeightFile("zoedepth", "ZoeD_M12_N.pt"),)),
    PreprocessorSpec("dw_openpose_full", tags=("OpenPose",), weights=_DW),
    PreprocessorSpec(
        "instant_id_face_embedding",
        tags=("Instant-ID",),
        returns_image=False,
        weights=_ANTELOPEV2,
        package="insightface",
    ),
    PreprocessorSpec("instant_id_face_keypoints", tags=("Instant-ID",), weights=_ANTELOPEV2, package="insightface"),
    PreprocessorSpec(
        "ip-adapter_clip_sd15",
        "ip-adapter_clip_h",
        tags=("IP-Adapter",),
        priority=100,
        returns_image=False,
        accepts_mask=True,
        weights=_CLIP_H,
    ),
    PreprocessorSpec(
        "ip-adapter_clip_sdxl",
        "ip-adapter_clip_g",
        tags=("IP-Adapter",),
        returns_image=False,
        accepts_mask=True,
        weights=_CLIP_G,
    ),
    PreprocessorSpec(
        "ip-adapter_clip_sdxl_plus_vith",
        tags=("IP-Adapter",),
        returns_image=False,
        accepts_mask=True,
        weights=_CLIP_H,
    ),
    PreprocessorSpec(
        "ip-adapter_face_id", tags=("IP-Adapter",), returns_image=False, weights=_BUFFALO_L, package="insightface"
    ),
    PreprocessorSpec(
        "ip-adapter_face_id_plus",
        tags=("IP-Adapter",),
        returns_image=False,
        weights=_BUFFALO_L + _CLIP_H,
        package="insightface",
    ),
    PreprocessorSpec("lineart_anime", tags=("Lineart",), weights=(WeightFile("lineart_anime", "netG.pth"),)),
    PreprocessorSpec("lineart_anime_denoise", tags=("Lineart",), weights=(WeightFile("manga_line", "erika.pth"),)),
    PreprocessorSpec("lineart_coarse", tags=("Lineart",), weights=(WeightFile("lineart", "sk_model2.pth"),)),
    PreprocessorSpec(
        "lineart", "lineart_realistic", tags=("Lineart",), weights=(WeightFile("lineart", "sk_model.pth"),)
    ),
    PreprocessorSpec(
        "lineart_standard", "lineart_standard (from white bg & black line)", tags=("Lineart",), priority=100
    ),
    PreprocessorSpec(
        "mediapipe_face",
        slider_1=Slider("Max Faces", 1, 1, 10, 1),
        slider_2=Slider("Min Face Confidence", 0.5, 0.01, 1.0, 0.01),
        package="mediapipe",
    ),
    PreprocessorSpec(
        "mlsd",
        tags=("MLSD",),
        priority=100,
        slider_1=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
        slider_2=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01),
        weights=(WeightFile("mlsd", "mlsd_large_512_fp32.pth"),),
    ),
    PreprocessorSpec(
        "normal_bae", tags=("NormalMap",), priority=100, weights=(WeightFile("normal_bae", "scannet.pt"),)
    ),
    PreprocessorSpec(
        "normal_map",
        "normal_midas",
        tags=("NormalMap",),
        slider_1=Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01),
        weights=_MIDAS,
    ),
    PreprocessorSpec("openpose", tags=("OpenPose",), weights=_OPENPOSE),
    PreprocessorSpec("openpose_face", tags=("OpenPose",), weights=_OPENPOSE),
    PreprocessorSpec("openpose_faceonly", tags=("OpenPose",), weights=_OPENPOSE),
    PreprocessorSpec("openpose_full", tags=("OpenPose",), priority=100, weights=_OPENPOSE),
    PreprocessorSpec("openpose_hand", tags=("OpenPose",), weights=_OPENPOSE),
    PreprocessorSpec("recolor_intensity", tags=("Recolor",), slider_1=_GAMMA),
    PreprocessorSpec("recolor_luminance", tags=("Recolor",), priority=100, slider_1=_GAMMA),
    PreprocessorSpec("reference_adain", tags=("Reference",), slider_1=_STYLE_FIDELITY, model_free=True),
    PreprocessorSpec("reference_adain+attn", tags=("Reference",), slider_1=_STYLE_FIDELITY, model_free=True),
    PreprocessorSpec("reference_only", tags=("Reference",), priority=100, slider_1=_STYLE_FIDELITY, model_free=True),
    PreprocessorSpec(
        "revision_clipvision",
        tags=("Revision",),
        priority=100,
        slider_1=_NOISE_AUG,
        model_free=True,
        returns_image=False,
        weights=_CLIP_G,
    ),
    PreprocessorSpec(
        "revision_ignore_prompt",
        tags=("Revision",),
        slider_1=_NOISE_AUG,
        model_free=True,
        returns_image=False,
        weights=_CLIP_G,
    ),
    PreprocessorSpec("scribble_hed", tags=("Scribble", "SparseCtrl"), weights=_HED),
    PreprocessorSpec(
        "pidinet_scribble", "scribble_pidinet", tags=("Scribble", "SparseCtrl"), priority=100, weights=_PIDINET
    ),
    PreprocessorSpec(
        "anime_face_segment",
        "seg_anime_face",
        tags=("Segmentation",),
        weights=(WeightFile("anime_face_segment", "UNet.pth"),),
    ),
    PreprocessorSpec(
        "oneformer_ade20k",
        "seg_ofade20k",
        tags=("Segmentation",),
        priority=100,
        weights=(WeightFile("oneformer", "250_16_swin_l_oneformer_ade20k_160k.pth"),),
    ),
    PreprocessorSpec(
        "oneformer_coco",
        "seg_ofcoco",
        tags=("Segmentation",),
        weights=(WeightFile("oneformer", "150_16_swin_l_oneformer_coco_100ep.pth"),),
    ),
    PreprocessorSpec(
        "segmentation",
        "seg_ufade20k",
        tags=("Segmentation",),
        weights=(WeightFile("uniformer", "upernet_global_small.pth"),),
    ),
    PreprocessorSpec("hed", "softedge_hed", tags=("SoftEdge",), weights=_HED),
    PreprocessorSpec("hed_safe", "softedge_hedsafe", tags=("SoftEdge",), weights=_HED),
    PreprocessorSpec("pidinet", "softedge_pidinet", tags=("SoftEdge",), priority=100, weights=_PIDINET),
    PreprocessorSpec("pidinet_safe", "softedge_pidisafe", tags=("SoftEdge",), weights=_PIDINET),
    PreprocessorSpec("color", "t2ia_color_grid", tags=("T2I-Adapter",)),
    PreprocessorSpec("pidinet_sketch", "t2ia_sketch_pidi", tags=("T2I-Adapter",), weights=_PIDINET),
    PreprocessorSpec(
        "clip_vision",
        "t2ia_style_clipvision",
        tags=("T2I-Adapter",),
        returns_image=False,
        weights=(WeightFile("clip_vision", "clip_vitl.pth"),),
    ),
    PreprocessorSpec("threshold", slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    PreprocessorSpec("tile_colorfix", tags=("Tile",), slider_1=_VARIATION),
    PreprocessorSpec(
        "tile_colorfix+sharp", tags=("Tile",), slider_1=_VARIATION, slider_2=Slider("Sharpness", 1.0, 0.0, 2.0, 0.01)
    ),
    PreprocessorSpec(
        "tile_resample", tags=("Tile",), priority=100, slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)
    ),
    # mobile_sam.py
    PreprocessorSpec("mobile_sam", tags=("Segmentation",), weights=(WeightFile("mobile_sam", "mobile_sam.pt"),)),
)


@dataclass(frozen=True)
class Catalog:
    """Lookups over `SPECS` by label (first, as the extension) or internal name."""

    specs: tuple[PreprocessorSpec, ...]
    by_label: Mapping[str, PreprocessorSpec] = field(init=False)
    by_name: Mapping[str, PreprocessorSpec] = field(init=False)

    def __post_init__(self) -> None:
        by_label: dict[str, PreprocessorSpec] = {}
        by_name: dict[str, PreprocessorSpec] = {}
        for spec in self.specs:
            if spec.label in by_label or spec.name in by_name:
                raise ValueError(f"preprocessor {spec.name} ({spec.label}) registered twice")
            by_label[spec.label] = spec
            by_name[spec.name] = spec
        object.__setattr__(self, "by_label", by_label)
        object.__setattr__(self, "by_name", by_name)

    def find(self, name: str) -> PreprocessorSpec | None:
        return self.by_label.get(name) or self.by_name.get(name)

    def sorted(self) -> list[PreprocessorSpec]:
        """ "none" first, then by priority and label, descending (the extension's list order)."""
        rest = sorted((s for s in self.specs if s.label != "none"), key=lambda s: s.sort_key, reverse=True)
        return [self.by_label["none"], *rest]


CATALOG = Catalog(SPECS)
