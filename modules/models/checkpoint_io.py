"""Reading tensors from model files without trusting them.

- `.safetensors`: the header is checked by `core.safetensors_header` (bounded size, valid JSON,
  offsets inside the file) before safetensors memory-maps the file.
- `.ckpt` / `.pt` / `.pth` / `.bin` (pickles): never plain pickle. Zip archives must hold only the
  members `torch.save` writes; the pickle goes through `torch.load(weights_only=True)` with a small
  allow-list of what real SD checkpoints contain (a PyTorch Lightning `ModelCheckpoint` callback
  and numpy scalars). Anything else is refused before any of it runs, naming the forbidden globals.
- `read_structured`: the whole object of a small pickled file (textual-inversion embeddings,
  hypernetworks): dicts, lists, tuples, strings, numbers and tensors, through the same checks.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from modules.core.errors import ModelFileError, UnsafeModelFileError
from modules.core.safetensors_header import read_safetensors_header

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

_ZIP_MEMBER = re.compile(
    r"^[^/]+/(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|"
    r"\.data/serialization_id|data/\d+)$"
)


class ModelCheckpoint:
    """Stand-in for `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`, which many SD
    1.x `.ckpt` files carry in their `callbacks`. Its state is kept as plain data and ignored."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"


def _allowed_globals() -> list[Any]:
    """What real SD checkpoints pickle besides tensors. Old files name numpy's scalar helpers
    under `numpy.core.multiarray` (numpy 2 moved them to `numpy._core`), so both names map to the
    same functions."""
    import codecs

    from numpy._core import multiarray

    allowed: list[Any] = [ModelCheckpoint, np.dtype, np.ndarray, codecs.encode]
    for name in ("scalar", "_reconstruct"):
        func = getattr(multiarray, name)
        allowed += [func, (func, f"numpy.core.multiarray.{name}")]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32")]
    return allowed


def _allowed_names() -> set[str]:
    names = set()
    for entry in _allowed_globals():
        names.add(entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}")
    return names


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a model file. Cheap for safetensors (header only)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return {name: tuple(info.shape) for name, info in read_safetensors_header(path).tensors.items()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model file, memory-mapped where the format allows. Nested
    `state_dict` / `model` wrappers of pickled checkpoints are unwrapped."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if suffix in SAFETENSORS_SUFFIXES:
        read_safetensors_header(path)  # validates before safetensors trusts the header
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"{path}: cannot read safetensors file: {exc}") from exc
    if suffix in PICKLE_SUFFIXES:
        return _tensors_only(_load_pickle(path), path)
    raise ModelFileError(f"{path}: unsupported model file type {path.suffix!r}")


def _load_pickle(path: Path, extra_globals: Sequence[Any] = ()) -> Any:
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_members(path)
    else:
        _refuse_broken_zip(path)
    try:
        with torch.serialization.safe_globals([*_allowed_globals(), *extra_globals]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:
        extra_names = [entry[1] for entry in extra_globals if isinstance(entry, tuple)]
        forbidden = _forbidden_globals(path, extra_names) if is_zip else []
        if forbidden or "weights_only" in str(exc) or "Unsupported global" in str(exc):
            detail = f" (forbidden: {', '.join(forbidden)})" if forbidden else ""
            raise UnsafeModelFileError(
                f"{path}: refused to load: the pickle asks for code outside the allow-list{detail}. "
                "Nothing from it was run. Convert the file to .safetensors with a trusted tool."
            ) from exc
        raise ModelFileError(f"{path}: cannot read checkpoint: {exc}") from exc
    log.info("loaded pickle checkpoint %s (sha256 %s)", path, _sha256_prefix(path))
    return obj


def _refuse_broken_zip(path: Path) -> None:
    """A file that starts as a zip archive (what `torch.save` writes) but has no readable central
    directory: cut short (an interrupted download or copy) or damaged. torch's own error for it
    is an OS error or a miniz message that does not say so."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc}") from exc
    if head == b"PK\x03\x04":
        raise ModelFileError(
            f"{path}: truncated or damaged: a zip archive without its central directory "
            f"({path.stat().st_size} bytes; an incomplete download or copy?)"
        )
    if not head:
        raise ModelFileError(f"{path}: empty file")


def _check_zip_members(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    bad = [n for n in names if not _ZIP_MEMBER.match(n)]
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if bad or len(pickles) != 1:
        shown = ", ".join(bad[:5]) or f"{len(pickles)} data.pkl members"
        raise UnsafeModelFileError(f"{path}: refused to load: unexpected archive members ({shown})")


def _forbidden_globals(path: Path, extra_names: Sequence[str] = ()) -> list[str]:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a corrupt archive: the caller reports the original error
        return []
    allowed = _allowed_names() | set(extra_names)
    return [g for g in unsafe if g not in allowed]


def _sha256_prefix(path: Path, limit: int = 1 << 20) -> str:
    """Hash of the first MiB: enough to identify the file in logs without reading gigabytes."""
    with path.open("rb") as fh:
        return hashlib.sha256(fh.read(limit)).hexdigest()[:16] + "(first MiB)"


# Wrappers around the tensors: Lightning/LDM ("state_dict"), some trainers ("model"), and
# BasicSR's GFPGAN / CodeFormer / Real-ESRGAN releases ("params_ema", preferred, or "params").
_WRAPPERS = ("state_dict", "params_ema", "params", "model")


def _tensors_only(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path}: not a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{path}: contains no tensors")
    return tensors


# --------------------------------------------------------------------------- structured files

_PARAMETER_DICT_NAME = "torch.nn.modules.container.ParameterDict"


class _ParameterDictState:
    """Stand-in for `torch.nn.ParameterDict`, which textual-inversion `.pt` files written by torch
    1.11 pickle as their `string_to_param`. The unpickler only fills its `__dict__` (the module's
    plain state: `_parameters` and hook dicts); `read_structured` keeps `_parameters` alone."""


def read_structured(path: Path) -> Any:
    """The whole object stored in a model file, for formats that keep more than a flat state dict
    (A1111 textual-inversion `.pt`, hypernetwork `.pt` with int keys and tuples of state dicts).

    Pickles go through the same archive check and `torch.load(weights_only=True)` allow-list as
    `read_state_dict` (plus a stand-in for torch 1.11's pickled `ParameterDict`, turned into a
    plain dict of its parameters); nothing else is ever constructed or called. `.safetensors`
    files give their dict of tensors. Tensors are on the CPU.
    Raises `UnsafeModelFileError` for forbidden globals, `ModelFileError` for anything unreadable.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if suffix in SAFETENSORS_SUFFIXES:
        return read_state_dict(path)
    if suffix not in PICKLE_SUFFIXES:
        raise ModelFileError(f"{path}: unsupported model file type {path.suffix!r}")
    obj = _load_pickle(path, [(_ParameterDictState, _PARAMETER_DICT_NAME)])
    return _plain(obj)


def _plain(obj: Any, depth: int = 0) -> Any:
    """Containers rebuilt as dict/list/tuple (OrderedDict stays a dict), the ParameterDict
    stand-in as the dict of its parameters; tensors and scalars unchanged."""
    if depth > 64:
        raise ModelFileError("nested too deeply")
    if isinstance(obj, _ParameterDictState):
        params = vars(obj).get("_parameters", {})
        if not isinstance(params, Mapping):
            return {}
        return {str(k): v.detach() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
    if isinstance(obj, torch.nn.Parameter):
        return obj.detach()
    if isinstance(obj, (dict, OrderedDict)):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v, depth + 1) for v in obj)
    return obj
