"""The CLIP model that ranks the interrogate category lists, from local files only.

- OpenAI's `ViT-L-14.pt` (the file `clip.load("ViT-L/14", download_root=...)` keeps, A1111's
  `--clip-models-path`, default `models/CLIP`): a TorchScript archive. It is never run or loaded
  with `torch.jit.load` (whose deserialisation executes the archive's code): its `data.pkl` is
  read by a restricted unpickler that only rebuilds tensors, plain containers and inert
  stand-ins for the scripted module objects, and the tensors under their module paths form the
  state dict. `ViT-L-14.safetensors` (same keys) is read as it is. open_clip builds the model from
  that state dict (sizes from shapes, QuickGELU as OpenAI trained it).
- a transformers CLIP folder in `models/CLIP/<name>/` (`config.json` of model_type "clip").

Texts are tokenized with CLIP's BPE from the open-clip-torch wheel (77 tokens, truncated);
images are prepared as OpenAI's preprocessing: shortest side resized to the model's input size
(bicubic), centre crop, CLIP's mean/std.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modules.core.errors import ModelFileError, UnsafeModelFileError
from modules.models.checkpoint_io import read_state_dict
from modules.models.interrogators import folder_model_type
from modules.models.interrogators.blip import CLIP_MEAN, CLIP_STD

CLIP_MODEL_NAME = "ViT-L-14"
CLIP_FILES = (f"{CLIP_MODEL_NAME}.pt", f"{CLIP_MODEL_NAME}.safetensors")
CONTEXT_LENGTH = 77
TEXT_BATCH = 256

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a scripted module object of a TorchScript archive: keeps its state."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: Sequence[int], stride: Sequence[int], *_: Any
) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by module path (`visual.conv1.weight`, ...), read
    without executing anything from it. UnsafeModelFileError for anything but tensors, plain
    containers and scripted module objects."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: not a TorchScript archive: {exc}") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ModelFileError(f"{path}: not a TorchScript archive (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]

        def storage(pid: Any) -> torch.Tensor:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise UnsafeModelFileError(f"{path}: refused: unexpected persistent id")
            _, kind, key, _location, numel = pid
            if not isinstance(kind, _StorageType) or not isinstance(key, str) or not key.isdigit():
                raise UnsafeModelFileError(f"{path}: refused: unexpected storage reference")
            data = archive.read(f"{prefix}data/{key}")
            flat = torch.frombuffer(bytearray(data), dtype=kind.dtype) if data else torch.empty(0, dtype=kind.dtype)
            if flat.numel() < int(numel):
                raise ModelFileError(f"{path}: storage {key} is truncated")
            return flat

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return _rebuild_tensor
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _StorageType(_STORAGE_DTYPES[name])
                if module.startswith("__torch__."):
                    return _ScriptObject
                raise UnsafeModelFileError(
                    f"{path}: refused to load: the archive asks for {module}.{name}; nothing from it was run"
                )

            def persistent_load(self, pid: Any) -> Any:
                return storage(pid)

        try:
            root = Restricted(io.BytesIO(archive.read(pickles[0]))).load()
        except (UnsafeModelFileError, ModelFileError):
            raise
        except Exception as exc:
            raise ModelFileError(f"{path}: cannot read the TorchScript archive: {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors, 0)
    if not tensors:
        raise ModelFileError(f"{path}: contains no tensors")
    return tensors


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
    if depth > 64:
        raise ModelFileError("TorchScript archive nested too deeply")
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{name}.", out, depth + 1)


def read_openai_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An OpenAI-layout CLIP state dict from `ViT-L-14.pt` (TorchScript or a plain checked
    pickle) or `.safetensors`. Tensors that are not weights (attention masks, the archive's
    `input_resolution` / `context_length` / `vocab_size`) are left out."""
    if path.suffix.lower() == ".pt" and zipfile.is_zipfile(path) and _is_torchscript(path):
        tensors = read_torchscript_tensors(path)
    else:
        tensors = read_state_dict(path)
    drop = {"input_resolution", "context_length", "vocab_size"}
    return {k: v for k, v in tensors.items() if k not in drop and not k.endswith("attn_mask")}


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


class ClipRanker:
    """Image and text features of one CLIP model, L2-normalised, and A1111's ranking."""

    def __init__(
        self,
        model: torch.nn.Module,
        image_size: int,
        encode_image: Callable[[torch.Tensor], torch.Tensor],
        encode_text: Callable[[torch.Tensor], torch.Tensor],
        source: Path,
    ) -> None:
        from modules.models.clip_tokenizer import build_clip_tokenizer

        self.model = model
        self.image_size = image_size
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.source = source
        self.tokenizer = build_clip_tokenizer()

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.model.to(device=device, dtype=dtype)

    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def pixels(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        rgb = image.convert("RGB")
        short, long = sorted((rgb.width, rgb.height))
        other = int(size * long / short)  # torchvision's Resize(size): the short side to `size`
        w, h = (size, other) if rgb.width <= rgb.height else (other, size)
        resized = rgb.resize((w, h), Image.Resampling.BICUBIC)
        left, top = round((w - size) / 2.0), round((h - size) / 2.0)
        crop = resized.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8)
        x = data.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
        return x.unsqueeze(0)

    def image_features(self, image: Image.Image) -> torch.Tensor:
        param = self._param()
        with torch.inference_mode():
            features = self._encode_image(self.pixels(image).to(param.device, param.dtype)).float()
        return features / features.norm(dim=-1, keepdim=True)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        param = self._param()
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            batch = list(texts[start : start + TEXT_BATCH])
            tokens = self.tokenizer(
                batch, padding="max_length", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt"
            ).input_ids
            with torch.inference_mode():
                parts.append(self._encode_text(tokens.to(param.device)).float())
        features = torch.cat(parts)
        return features / features.norm(dim=-1, keepdim=True)

    def rank(self, image_features: torch.Tensor, texts: Sequence[str], top_count: int) -> list[tuple[str, float]]:
        """A1111's ranking: softmax over 100 x cosine similarity, the `top_count` best as
        (text, probability x 100)."""
        if not texts:
            return []
        text_features = self.text_features(texts).to(image_features.device)
        similarity = torch.zeros((1, len(texts)), device=image_features.device)
        for row in image_features:
            similarity += (100.0 * row.unsqueeze(0) @ text_features.T).softmax(dim=-1)
        similarity /= image_features.shape[0]
        probs, labels = similarity.cpu().topk(min(top_count, len(texts)), dim=-1)
        return [(texts[int(i)], float(p) * 100) for p, i in zip(probs[0], labels[0], strict=True)]


def load_openai_clip(path: Path) -> ClipRanker:
    from open_clip.model import build_model_from_openai_state_dict  # type: ignore[import-untyped]

    state_dict = read_openai_state_dict(path)
    try:
        model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None)
        # open_clip loads into fp16 weights; load again in fp32 so fp32 files keep their values
        model = model.float()
        model.load_state_dict(state_dict)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not an OpenAI CLIP model ({exc})") from exc
    model = model.eval().requires_grad_(False)
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    return ClipRanker(model, image_size, model.encode_image, model.encode_text, path)


def is_clip_folder(folder: Path) -> bool:
    return folder_model_type(folder) == "clip"


def load_clip_folder(folder: Path) -> ClipRanker:
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{folder}: cannot load the CLIP folder: {exc}") from exc
    model.eval().requires_grad_(False)

    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(tokens: torch.Tensor) -> torch.Tensor:
        return model.get_text_features(input_ids=tokens).pooler_output

    config: Any = model.config
    return ClipRanker(model, int(config.vision_config.image_size), encode_image, encode_text, folder)


def find_clip(clip_dir: Path) -> Path | None:
    """OpenAI's file (`ViT-L-14.pt`, `.safetensors`), else the first transformers CLIP folder."""
    for name in CLIP_FILES:
        if (clip_dir / name).is_file():
            return clip_dir / name
    if clip_dir.is_dir():
        for folder in sorted(p for p in clip_dir.iterdir() if p.is_dir()):
            if is_clip_folder(folder):
                return folder
    return None


def missing_clip(clip_dir: Path) -> str | None:
    if find_clip(clip_dir) is not None:
        return None
    return (
        f"CLIP: put {CLIP_FILES[0]} (OpenAI's ViT-L/14, e.g. from ~/.cache/clip of an A1111 install) or a "
        f"transformers CLIP folder in {clip_dir} (nothing is downloaded)"
    )


def load_clip(path: Path) -> ClipRanker:
    return load_clip_folder(path) if path.is_dir() else load_openai_clip(path)
