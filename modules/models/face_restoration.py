"""Face restoration (GFPGAN, CodeFormer) for Extras and for "Restore faces" in generation.

Weights: the first model file in `models/GFPGAN` / `models/Codeformer` (`Paths.gfpgan_dir`,
`Paths.codeformer_dir`), read through `checkpoint_io.read_state_dict` (safetensors, or pickles
through the allow-list; never plain pickle) and built by spandrel's architecture classes. We use
a *local* `spandrel.ArchRegistry` holding only GFPGAN (spandrel) and CodeFormer
(spandrel_extra_arches), so spandrel's global `MAIN_REGISTRY` is never mutated. Nothing is
downloaded: no file is a `FaceRestorerUnavailableError` (a 404-style UserError).

Pipeline for one image: detect faces (OpenCV's bundled Haar cascade by default; any
`FaceDetector` can be passed) -> for each box a similarity transform to a 512x512 crop (square
around the box, with margin) -> the network (input and output in [-1, 1], as both were trained)
-> warped back with a feathered mask -> blended with the original by `visibility`. Pixels outside
every face's warped crop are left exactly as they were.

spandrel and cv2 are imported inside functions: importing this module has no side effects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from modules.core.errors import ModelFileError, NotFoundError
from modules.models.checkpoint_io import MODEL_SUFFIXES, read_state_dict
from modules.models.memory import FACE_RESTORER, MemoryBudget, module_nbytes

if TYPE_CHECKING:
    from spandrel import ArchRegistry

log = logging.getLogger(__name__)

FACE_SIZE = 512
GFPGAN = "GFPGAN"
CODEFORMER = "CodeFormer"
RESTORER_NAMES = (CODEFORMER, GFPGAN)

FaceBox = tuple[int, int, int, int]
"""A face's box in image pixels: (x0, y0, x1, y1), x1/y1 exclusive."""

FaceDetector = Callable[[np.ndarray], list[FaceBox]]
"""RGB uint8 array (H, W, 3) -> face boxes."""

FaceNet = Callable[[torch.Tensor], torch.Tensor]
"""(1, 3, 512, 512) float in [0, 1] -> the same shape, restored, in [0, 1]."""


class FaceRestorerUnavailableError(NotFoundError):
    """No weights for the requested face restorer (nothing is ever downloaded)."""


# -- detection -------------------------------------------------------------------------------


class HaarFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade (ships with opencv; works offline).

    Less accurate than RetinaFace, and gives no landmarks: the crop is aligned from the box."""

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_fraction: float = 0.05) -> None:
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_fraction = min_size_fraction
        self._cascade: Any = None
        self._lock = threading.Lock()

    def _classifier(self) -> Any:
        with self._lock:
            if self._cascade is None:
                import cv2

                # opencv-python ships cv2.data at runtime but its stubs omit it
                path = str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
                cascade = cv2.CascadeClassifier(path)
                if cascade.empty():
                    raise ModelFileError(f"cannot load OpenCV's face cascade from {path}")
                self._cascade = cascade
            return self._cascade

    def __call__(self, rgb: np.ndarray) -> list[FaceBox]:
        import cv2

        gray = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
        height, width = gray.shape
        min_side = max(16, int(min(height, width) * self.min_size_fraction))
        found = self._classifier().detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        boxes = [(int(x), int(y), int(x + w), int(y + h)) for (x, y, w, h) in found]
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


# -- the geometric part (pure numpy / cv2) ----------------------------------------------------


def crop_transform(box: FaceBox, *, margin: float = 1.6, size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity transform (scale + translation) from image pixels to the `size` crop: a
    square around the box's centre, `margin` times the box's larger side (detector boxes are
    tight; the restorers were trained on FFHQ-style crops with hair and chin in view)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * margin
    if side <= 0:
        raise ValueError(f"empty face box {box}")
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    scale = size / side
    return np.array([[scale, 0.0, size / 2.0 - scale * cx], [0.0, scale, size / 2.0 - scale * cy]], dtype=np.float64)


def feather_mask(size: int = FACE_SIZE, *, border: float = 0.1) -> np.ndarray:
    """Float mask (size, size) in [0, 1]: 1 in the middle, falling smoothly to exactly 0 at the
    edges over `border` of the side."""
    ramp = max(1, int(size * border))
    line = np.ones(size, dtype=np.float32)
    t = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
    smooth = t * t * (3 - 2 * t)
    line[:ramp] = smooth
    line[-ramp:] = smooth[::-1]
    line[0] = line[-1] = 0.0
    return np.outer(line, line)


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def _from_tensor(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().float().clamp(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy()
    return array * 255.0


def restore_faces(
    image: Image.Image,
    net: FaceNet,
    detector: FaceDetector,
    *,
    visibility: float = 1.0,
    size: int = FACE_SIZE,
) -> Image.Image:
    """Every detected face restored by `net`, pasted back with a feathered mask, blended with
    the original by `visibility` (0 = unchanged). Alpha, if any, is kept as it was."""
    import cv2

    visibility = float(min(max(visibility, 0.0), 1.0))
    if visibility <= 0.0:
        return image
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    boxes = detector(rgb)
    if not boxes:
        return image
    original = rgb.astype(np.float32)
    result = original.copy()
    mask_crop = feather_mask(size)
    for box in boxes:
        forward = crop_transform(box, size=size)
        crop = cv2.warpAffine(rgb, forward, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        restored = _from_tensor(net(_to_tensor(crop)))
        inverse = cv2.invertAffineTransform(forward)
        back = cv2.warpAffine(
            restored.astype(np.float32),
            inverse,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        mask = cv2.warpAffine(mask_crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
        mask = (mask * visibility)[..., None]
        result = np.where(mask > 0, result * (1 - mask) + back * mask, result)
    out_rgb = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    out_rgb = np.where(result == original, rgb, out_rgb)  # untouched pixels: bit-exact
    out = Image.fromarray(out_rgb, "RGB")
    if alpha is not None:
        out.putalpha(alpha)
        if image.mode == "LA":
            out = out.convert("LA")
    elif image.mode == "L":
        out = out.convert("L")
    out.info.update(image.info)
    return out


# -- networks --------------------------------------------------------------------------------


def _face_registry() -> ArchRegistry:
    """A private registry with just the face architectures (GFPGAN from spandrel, CodeFormer
    from spandrel_extra_arches): `spandrel_extra_arches.install()` is never called, so the
    global registry stays as spandrel ships it."""
    from spandrel import ArchRegistry, ArchSupport
    from spandrel.architectures.GFPGAN import GFPGANArch
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch

    registry = ArchRegistry()
    registry.add(ArchSupport.from_architecture(GFPGANArch()), ArchSupport.from_architecture(CodeFormerArch()))
    return registry


def read_face_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a face model file (`checkpoint_io` unwraps BasicSR's `params_ema` / `params`)."""
    return read_state_dict(path)


def load_face_model(path: Path, *, expect: str | None = None) -> Any:
    """A spandrel `ImageModelDescriptor` (purpose FaceSR) for a GFPGAN or CodeFormer file, on CPU,
    in eval mode. ModelFileError when the file is not one of them (or not `expect`)."""
    from spandrel import UnsupportedModelError

    state_dict = read_face_state_dict(path)
    try:
        descriptor = _face_registry().load(state_dict)
    except UnsupportedModelError:
        raise ModelFileError(f"{path}: not a GFPGAN or CodeFormer model") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot load face restoration model: {exc}") from exc
    if expect is not None and descriptor.architecture.id != expect:
        raise ModelFileError(f"{path}: is a {descriptor.architecture.id} model, expected {expect}")
    descriptor.model.eval()
    return descriptor


def face_net_for(descriptor: Any, *, codeformer_weight: float = 0.5, device: torch.device | None = None) -> FaceNet:
    """Wrap a loaded descriptor as a `FaceNet`. Both networks take and give [-1, 1]; CodeFormer
    takes its fidelity weight `w` as the `weight` argument of `forward` (0 = maximum effect,
    1 = closest to the input), which spandrel's generic `__call__` does not pass, so the model
    is called directly."""
    model = descriptor.model
    is_codeformer = descriptor.architecture.id == CODEFORMER
    target = device or torch.device("cpu")
    dtype = next(model.parameters()).dtype

    def run(tensor: torch.Tensor) -> torch.Tensor:
        x = (tensor.to(target, dtype) * 2.0 - 1.0).contiguous()
        with torch.inference_mode():
            out = model(x, weight=float(codeformer_weight))[0] if is_codeformer else model(x)[0]
        return ((out.float() + 1.0) / 2.0).clamp(0, 1).cpu()

    return run


def find_model_file(folder: Path) -> Path | None:
    """The first model file (sorted by name) in a folder, recursively; None if there is none."""
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    return files[0] if files else None


@dataclass
class FaceRestorer:
    """One restorer, matching the engine's `FaceRestorer` protocol (`name`, `restore`)."""

    name: str
    net: FaceNet
    detector: FaceDetector
    visibility: float = 1.0

    def restore(self, image: Image.Image) -> Image.Image:
        return restore_faces(image, self.net, self.detector, visibility=self.visibility)


class FaceRestorers:
    """Finds, loads (lazily, thread-safe) and hands out the face restorers. Loaded networks are
    registered with the shared `MemoryBudget` (kind "face-restorer"; an unbounded one of its own
    without `budget`) and loaded again after it evicts them.

    `get(name, ...)` raises FaceRestorerUnavailableError when there are no weights;
    `for_options(options)` is the callable GenerationService takes (None when unavailable)."""

    def __init__(
        self,
        gfpgan_dir: Path,
        codeformer_dir: Path,
        *,
        detector: FaceDetector | None = None,
        device: torch.device | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.folders = {GFPGAN: Path(gfpgan_dir), CODEFORMER: Path(codeformer_dir)}
        self.detector: FaceDetector = detector or HaarFaceDetector()
        self.device = device or torch.device("cpu")
        self.budget = budget if budget is not None else MemoryBudget()
        self._loaded: dict[str, tuple[Path, Any]] = {}
        self._lock = threading.RLock()

    def canonical(self, name: str) -> str:
        for known in RESTORER_NAMES:
            if known.lower() == name.strip().lower():
                return known
        raise NotFoundError(f"face restorer {name!r} not found; choose one of {', '.join(RESTORER_NAMES)}")

    def available(self) -> list[str]:
        return [name for name in RESTORER_NAMES if find_model_file(self.folders[name]) is not None]

    def _descriptor(self, name: str) -> Any:
        folder = self.folders[name]
        path = find_model_file(folder)
        if path is None:
            raise FaceRestorerUnavailableError(
                f"{name}: no model file in {folder}. Put the {name} weights (.pth or .safetensors) there; "
                "nothing is downloaded."
            )
        key = f"{FACE_RESTORER}:{name}"
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None and cached[0] == path:
                self.budget.touch(key)
                return cached[1]
            descriptor = load_face_model(path, expect=name)
            descriptor.model.to(self.device)
            self._loaded[name] = (path, descriptor)
            log.info("loaded face restorer %s from %s", name, path)
        self.budget.add(key, FACE_RESTORER, module_nbytes(descriptor.model), lambda: self._drop(name))
        return descriptor

    def _drop(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def get(self, name: str, *, visibility: float = 1.0, codeformer_weight: float = 0.5) -> FaceRestorer:
        canonical = self.canonical(name)
        descriptor = self._descriptor(canonical)
        net = face_net_for(descriptor, codeformer_weight=codeformer_weight, device=self.device)
        return FaceRestorer(name=canonical, net=net, detector=self.detector, visibility=visibility)

    def unload(self) -> None:
        with self._lock:
            names = list(self._loaded)
            self._loaded.clear()
        for name in names:
            self.budget.remove(f"{FACE_RESTORER}:{name}")

    def for_options(self, options: Any) -> Callable[[], FaceRestorer | None]:
        """For `GenerationService(face_restorer=...)`: the restorer named by the option
        `face_restoration_model` (CodeFormer with `code_former_weight`), None without weights."""

        def get(key: str, default: Any) -> Any:
            return options.get(key) if key in options else default

        def restorer() -> FaceRestorer | None:
            name = str(get("face_restoration_model", CODEFORMER) or CODEFORMER)
            weight = float(get("code_former_weight", 0.5))
            try:
                return self.get(name, codeformer_weight=weight)
            except (FaceRestorerUnavailableError, NotFoundError) as exc:
                log.warning("face restoration unavailable: %s", exc)
                return None

        return restorer
