"""ControlNet model files: the list the sd-webui-controlnet extension shows, and offline loading
into diffusers' `ControlNetModel`.

Registry (`ControlNetRegistry`): every `.safetensors`, `.pth`, `.pt`, `.ckpt` and `.bin` under the
given folders (recursively; the caller passes `models/ControlNet`, `--controlnet-dir`, the
extension's `extensions/sd-webui-controlnet/models`, ...), plus diffusers ControlNet folders
(`config.json` with `"_class_name": "ControlNetModel"` beside `diffusion_pytorch_model[.fp16]
.safetensors` or `.bin`; one entry named after the folder; sharded weights are not read). Entries
are named as the extension names them, `"<stem> [<old 8-hex hash>]"` (A1111's old hash of the
weights file: SHA-256 of the 64 KiB at offset 1 MiB), each folder's files sorted by file name, the
first folder's entry winning a repeated name; a file whose stem is exactly "None" is skipped.
Unlike the extension, suffixes match in any case and hidden (dot) files and folders are skipped.
Scanning reads only those 64 KiB (and a folder's config.json). `names()` is the dropdown
("None" first); `model_list()` is what the extension's `/controlnet/model_list` answers (one name
per lowercase stem). `find` follows the extension's
matching: the exact `"name [hash]"`, else the lowercase stem, else the shortest stem containing
the (lowercase) text; "None" (or nothing) means no model; anything else is a `NotFoundError`
(after one rescan, so a file dropped in since the last scan is found).

Loading (`load_controlnet`): tensors are read once (safetensors with a checked header; pickles
only through `checkpoint_io.read_state_dict`'s allow-list). Accepted key layouts:

* LDM (`cldm.ControlNet`): `control_model.`-prefixed (lllyasviel's `.pth`; the other tensors of a
  full cldm checkpoint are ignored) or bare (thibaud's SD 2.1 files, fp16 re-packs):
  `time_embed`, `label_emb` (SDXL), `input_blocks`, `zero_convs`, `input_hint_block`,
  `middle_block`, `middle_block_out`. They are renamed to diffusers' names here (SDXL included,
  which diffusers' own single-file converter does not detect).
* diffusers (`controlnet_cond_embedding.*`, `controlnet_down_blocks.*`, `down_blocks.*`, ...),
  in a single file or a diffusers folder.

The config is derived from the tensor shapes (levels, resblocks, transformer depths, context
width, linear or conv projections, hint encoder widths, SDXL's micro-conditioning input), with the
facts shapes cannot tell fixed per family as for the base UNet (`architecture`): SD 1.x uses 8
heads per block (2 for test models narrower than 320 channels), SD 2.x and SDXL 64-channel
heads. A diffusers folder's own `config.json` is used for its folder. The model is built with
empty weights and every tensor assigned strictly: a missing or unexpected tensor, or a wrong
shape, is a `ModelFileError`, never random weights. Nothing is fetched from a hub.

Family: SDXL when the micro-conditioning embedding is there, SD 2.x when the transformers use
linear projections or 1024-wide context, else SD 1.x. A ControlNet of another family than the
base model is refused ("an SDXL ControlNet on an SD 1.x model"). `global_pool_conditions`
(shuffle) is set when the file name contains "shuffle" (as the extension decides) or a folder's
config says so.

Refused with a clear message (their files are recognised, their application is not built):
control-LoRA (`lora_controlnet`), T2I-Adapters, IP-Adapters, ControlLLLite, SparseCtrl,
ControlNet-Union (`task_embedding`) and diff-ControlNets (`difference`).

Memory: `ControlNetCache` keeps loaded ControlNets per (file, device, dtype), registered with the
shared `MemoryBudget` (kind "controlnet", evictable when unpinned) and at most `cache_size` of
them; `using()` pins one while a generation runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import init_empty_weights

# From its module: under TYPE_CHECKING diffusers' package namespace resolves to dummy objects.
from diffusers.models.controlnets.controlnet import ControlNetModel

from modules.core.errors import ModelFileError, NotFoundError, UnknownModelError, UnsafeModelFileError
from modules.core.hashes import HashCache, old_model_hash
from modules.models import families as fam
from modules.models.architecture import HEAD_CHANNELS, SDXL_TIME_EMBED_DIM, sd1_unet_heads
from modules.models.checkpoint_io import read_state_dict, tensor_shapes
from modules.models.memory import MemoryBudget, module_nbytes

log = logging.getLogger(__name__)

CONTROLNET = "controlnet"  # the MemoryBudget kind
NONE = "None"
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
LDM_PREFIX = "control_model."
DIFFUSERS_CLASS = "ControlNetModel"
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
DEFAULT_CACHE_SIZE = 2
SortBy = Literal["name", "date", "path name"]
Layout = Literal["ldm", "diffusers"]
Shapes = Mapping[str, Sequence[int]]

BASE_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}
CONTROLNET_FAMILIES = {"sd1": fam.SD1, "sd2": fam.SD2, "sdxl": fam.SDXL}


# ======================================================================================= registry


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet of the list: a file, or a diffusers folder (`weights` is the file read)."""

    name: str  # "stem [hash8]", as the extension lists it
    stem: str
    path: Path
    weights: Path
    old_hash: str
    is_folder: bool = False

    @property
    def cache_key(self) -> str:
        """Where its full sha256 is kept in cache.json's "hashes" section."""
        return f"controlnet/{self.stem}"


def _weights_of_folder(folder: Path) -> Path | None:
    """The weights file of a diffusers ControlNet folder, or None when it is not one."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("_class_name") != DIFFUSERS_CLASS:
        return None
    return next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)


def _scan(folder: Path, seen: set[str] | None = None) -> list[tuple[Path, Path, os.stat_result]]:
    """(entry path, weights file, stat) for every model under `folder`, recursively (symlinked
    folders too, each real folder once). A diffusers ControlNet folder is one entry and is not
    descended into; hidden names are skipped."""
    found: list[tuple[Path, Path, os.stat_result]] = []
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return found
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir():
                weights = _weights_of_folder(path)
                if weights is not None:
                    found.append((path, weights, weights.stat()))
                else:
                    found.extend(_scan(path, seen))
            elif entry.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
                found.append((path, path, entry.stat()))
        except OSError as exc:
            log.warning("ControlNet scan: skipping %s: %s", path, exc)
    return found


def _stem(path: Path, is_folder: bool) -> str:
    return path.name if is_folder else path.stem


class ControlNetRegistry:
    """The ControlNet models under `dirs`, named and matched as sd-webui-controlnet does.

    `sort_by` is the extension's `control_net_models_sort_models_by` ("name": file name,
    "date": newest first, "path name": full path); `name_filter` its
    `control_net_models_name_filter` (a case-insensitive substring of the file name). Thread-safe.
    """

    def __init__(
        self,
        dirs: Sequence[Path],
        hash_cache: HashCache,
        *,
        sort_by: SortBy = "name",
        name_filter: str = "",
    ) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.hash_cache = hash_cache
        self.sort_by = sort_by
        self.name_filter = name_filter
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, ControlNetInfo] | None = None
        self._by_stem: dict[str, str] = {}

    # -- listing ---------------------------------------------------------------------------

    def refresh(self) -> list[ControlNetInfo]:
        """Rescan the folders; returns the entries in list order (without "None")."""
        entries: OrderedDict[str, ControlNetInfo] = OrderedDict()
        for folder in self.dirs:
            for info in self._scan_folder(folder):
                entries.setdefault(info.name, info)  # an earlier folder wins
        by_stem: dict[str, str] = {}
        for info in entries.values():
            by_stem[info.stem.lower()] = info.name  # as the extension: the last one listed wins
        with self._lock:
            self._entries = entries
            self._by_stem = by_stem
        return list(entries.values())

    def _scan_folder(self, folder: Path) -> list[ControlNetInfo]:
        found = _scan(folder)
        wanted = self.name_filter.strip().lower()
        if wanted:
            found = [f for f in found if wanted in f[0].name.lower()]
        if self.sort_by == "date":
            found.sort(key=lambda f: -f[2].st_mtime)
        elif self.sort_by == "path name":
            found.sort(key=lambda f: str(f[0]))
        else:
            found.sort(key=lambda f: f[0].name)
        out: list[ControlNetInfo] = []
        for path, weights, _ in found:
            is_folder = path != weights
            stem = _stem(path, is_folder)
            if stem == NONE:
                continue
            old = old_model_hash(weights)
            out.append(ControlNetInfo(f"{stem} [{old}]", stem, path, weights, old, is_folder))
        return out

    def _snapshot(self) -> tuple[OrderedDict[str, ControlNetInfo], dict[str, str]]:
        with self._lock:
            entries, by_stem = self._entries, self._by_stem
        if entries is None:
            self.refresh()
            with self._lock:
                assert self._entries is not None
                entries, by_stem = self._entries, self._by_stem
        return entries, by_stem

    def infos(self) -> list[ControlNetInfo]:
        return list(self._snapshot()[0].values())

    def names(self) -> list[str]:
        """The extension's model dropdown: "None" first, then every entry's name."""
        return [NONE, *self._snapshot()[0]]

    def model_list(self) -> list[str]:
        """`GET /controlnet/model_list`, as the extension answers it: one name per lowercase
        stem (the entry listed last for a stem, in the order stems first appear), no "None"."""
        return list(self._snapshot()[1].values())

    # -- matching --------------------------------------------------------------------------

    def _match(self, name: str) -> ControlNetInfo | None:
        entries, by_stem = self._snapshot()
        if name in entries:
            return entries[name]
        search = name.lower()
        if search in by_stem:
            return entries[by_stem[search]]
        applicable = sorted((stem for stem in by_stem if search in stem), key=len)
        return entries[by_stem[applicable[0]]] if applicable else None

    def find(self, name: str | None) -> ControlNetInfo | None:
        """The entry `name` means (extension rules), None for "None"/empty; `NotFoundError`
        when nothing matches even after a rescan."""
        if name is None or not name.strip() or name == NONE or name.strip().lower() == "none":
            return None
        found = self._match(name)
        if found is None:
            self.refresh()
            found = self._match(name)
        if found is None:
            folders = ", ".join(str(d) for d in self.dirs) or "(no folders)"
            raise NotFoundError(f"ControlNet model not found: {name!r} (looked in {folders})")
        return found

    def sha256(self, info: ControlNetInfo) -> str:
        """The full SHA-256 of the weights file (computed once, kept in cache.json)."""
        return self.hash_cache.sha256("hashes", info.cache_key, info.weights)


# ======================================================================================= detection


@dataclass(frozen=True)
class ControlNetProbe:
    """What a ControlNet file is, from its tensor names and shapes alone."""

    layout: Layout
    family: fam.ModelFamily
    prefix: str  # "control_model." or "" (LDM files)


_OTHER_KINDS: tuple[tuple[Callable[[Sequence[str]], bool], str], ...] = (
    (
        lambda ks: "lora_controlnet" in ks,
        "a control-LoRA (Stability's control-lora); only full ControlNets are supported",
    ),
    (
        lambda ks: (
            any(k.startswith(("body.0.block1.", "body.0.in_conv.", "adapter.body.")) for k in ks)
            or "style_embedding" in ks
        ),
        "a T2I-Adapter; only ControlNets are supported",
    ),
    (
        lambda ks: any(k.startswith(("ip_adapter", "image_proj")) for k in ks),
        "an IP-Adapter; only ControlNets are supported",
    ),
    (lambda ks: any("lllite" in k for k in ks), "a ControlLLLite model; only ControlNets are supported"),
    (lambda ks: any(".motion_modules." in k for k in ks), "a SparseCtrl model; only ControlNets are supported"),
    (
        lambda ks: any(k.removeprefix(LDM_PREFIX).startswith("task_embedding") for k in ks),
        "a ControlNet-Union (ProMax) model, which is not supported",
    ),
    (
        lambda ks: "difference" in ks or LDM_PREFIX + "difference" in ks,
        "a diff-ControlNet (weights relative to a base UNet), which is not supported",
    ),
)


def probe_shapes(shapes: Shapes, source: str | Path = "<state dict>") -> ControlNetProbe:
    """Layout and family of a ControlNet state dict; `ModelFileError` for other control models
    and `UnknownModelError` for anything else."""
    keys = list(shapes)
    for matches, what in _OTHER_KINDS:
        if matches(keys):
            raise ModelFileError(f"{source}: this is {what}")
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return ControlNetProbe("diffusers", family_of(shapes, "diffusers"), "")
    for prefix in (LDM_PREFIX, ""):
        if prefix + "input_hint_block.0.weight" in shapes:
            bare = {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)}
            return ControlNetProbe("ldm", family_of(bare, "ldm"), prefix)
    raise UnknownModelError(f"{source}: not a ControlNet ({fam.describe_contents(shapes)})")


def probe_file(path: Path) -> ControlNetProbe:
    """`probe_shapes` of a file or diffusers folder (safetensors: the header only)."""
    weights = _weights_of_folder(path) if path.is_dir() else path
    if weights is None:
        raise ModelFileError(f"{path}: not a diffusers ControlNet folder (config.json + weights)")
    return probe_shapes(tensor_shapes(weights), path)


def family_of(shapes: Shapes, layout: Layout) -> fam.ModelFamily:
    """SDXL with the micro-conditioning embedding; SD 2.x with linear transformer projections or
    a 1024-wide context; else SD 1.x. `shapes` without the `control_model.` prefix."""
    sdxl_key = "label_emb.0.0.weight" if layout == "ldm" else "add_embedding.linear_1.weight"
    if sdxl_key in shapes:
        return fam.SDXL
    context, linear = _attention_facts(shapes)
    if linear or context == 1024:
        return fam.SD2
    return fam.SD1


def _attention_facts(shapes: Shapes) -> tuple[int | None, bool]:
    """(context width, linear projections) of the first cross-attention found."""
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight"):
            proj_in = key.split("transformer_blocks.")[0] + "proj_in.weight"
            linear = len(shapes.get(proj_in, ())) == 2
            return int(shape[1]), linear
    return None, False


def check_family(controlnet: fam.ModelFamily, base: fam.ModelFamily | None, source: str | Path) -> None:
    """`ModelFileError` when a ControlNet of one family is used on a base model of another."""
    if base is None or base.base == controlnet.base:
        return
    cn, model = BASE_LABELS[controlnet.base], BASE_LABELS[base.base]
    raise ModelFileError(f"{source}: an {cn} ControlNet on an {model} model: use a ControlNet made for {model}")


# ================================================================================ key conversion

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_RX = re.compile(r"^(" + "|".join(re.escape(k) for k in _RESNET_PARTS) + r")\.(weight|bias)$")
_INPUT_RX = re.compile(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE_RX = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_HINT_RX = re.compile(r"^input_hint_block\.(\d+)\.(weight|bias)$")
_ZERO_RX = re.compile(r"^zero_convs\.(\d+)\.0\.(weight|bias)$")
_FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "middle_block_out.0": "controlnet_mid_block",
}


def _resnet(rest: str) -> str | None:
    m = _RESNET_RX.match(rest)
    return f"{_RESNET_PARTS[m.group(1)]}.{m.group(2)}" if m else None


def ldm_key_map(keys: Iterable[str]) -> dict[str, str]:
    """LDM ControlNet key (no prefix) -> diffusers `ControlNetModel` key. Keys no rule knows map
    to themselves (and are then refused as unexpected)."""
    keys = list(keys)
    inputs = sorted({int(m.group(1)) for k in keys if (m := _INPUT_RX.match(k))})
    downsamplers = sorted({int(m.group(1)) for k in keys if (m := _INPUT_RX.match(k)) and m.group(3).startswith("op.")})
    # resblocks per level: the input blocks before the first downsampler (all of them if none)
    per_level = (downsamplers[0] - 1) if downsamplers else max([i for i in inputs if i > 0], default=0)
    per_level = max(per_level, 1)
    middle_attention = any(
        k.startswith("middle_block.1.") and _resnet(k[len("middle_block.1.") :]) is None for k in keys
    )
    hints = sorted({int(m.group(1)) for k in keys if (m := _HINT_RX.match(k))})

    out: dict[str, str] = {}
    for key in keys:
        stem, _, part = key.rpartition(".")
        new: str | None = None
        if stem in _FIXED:
            new = f"{_FIXED[stem]}.{part}"
        elif m := _INPUT_RX.match(key):
            index, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            level, slot = divmod(index - 1, per_level + 1)
            if index > 0 and sub == 0 and rest.startswith("op."):
                new = f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
            elif index > 0 and sub == 0 and (res := _resnet(rest)) is not None:
                new = f"down_blocks.{level}.resnets.{slot}.{res}"
            elif index > 0 and sub == 1:
                new = f"down_blocks.{level}.attentions.{slot}.{rest}"
        elif m := _MIDDLE_RX.match(key):
            index, rest = int(m.group(1)), m.group(2)
            if middle_attention and index == 1:
                new = f"mid_block.attentions.0.{rest}"
            elif (res := _resnet(rest)) is not None:
                slot = index // 2 if middle_attention else index
                new = f"mid_block.resnets.{slot}.{res}"
        elif m := _ZERO_RX.match(key):
            new = f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"
        elif (m := _HINT_RX.match(key)) and hints:
            index = int(m.group(1))
            if index == hints[0]:
                new = f"controlnet_cond_embedding.conv_in.{m.group(2)}"
            elif index == hints[-1]:
                new = f"controlnet_cond_embedding.conv_out.{m.group(2)}"
            else:
                new = f"controlnet_cond_embedding.blocks.{hints.index(index) - 1}.{m.group(2)}"
        out[key] = new if new is not None else key
    return out


def to_diffusers_keys(tensors: Mapping[str, Any], probe: ControlNetProbe, source: str | Path) -> dict[str, Any]:
    """The state dict (or shapes) in diffusers' names. LDM files with the `control_model.` prefix
    keep only the prefixed entries (a full cldm checkpoint also holds the SD model)."""
    if probe.layout == "diffusers":
        return dict(tensors)
    bare = {k[len(probe.prefix) :]: v for k, v in tensors.items() if k.startswith(probe.prefix)}
    if probe.prefix and len(bare) != len(tensors):
        log.info("%s: using the %d control_model.* tensors of %d", source, len(bare), len(tensors))
    mapping = ldm_key_map(bare)
    converted: dict[str, Any] = {}
    for old, new in mapping.items():
        if new in converted:
            raise ModelFileError(f"{source}: two tensors map to {new!r}: the file is not a ControlNet")
        converted[new] = bare[old]
    return converted


# ========================================================================================= config


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := rx.match(key))})


def _need(shapes: Shapes, key: str, source: str | Path) -> Sequence[int]:
    try:
        return shapes[key]
    except KeyError:
        raise ModelFileError(f"{source}: expected tensor {key!r} is missing: the file is incomplete") from None


def controlnet_config(
    shapes: Shapes, family: fam.ModelFamily, *, global_pool: bool = False, source: str | Path = "<state dict>"
) -> dict[str, Any]:
    """A `ControlNetModel` config from diffusers-named tensor shapes."""
    conv_in = _need(shapes, "conv_in.weight", source)
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    levels = _indices(shapes, r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$")
    if not levels or levels != list(range(len(levels))):
        raise ModelFileError(f"{source}: ControlNet down blocks have an unexpected structure")
    per_level = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\.conv1\.weight$"))
    block_out = [int(_need(shapes, f"down_blocks.{b}.resnets.0.conv2.weight", source)[0]) for b in levels]
    attention = [f"down_blocks.{b}.attentions.0.proj_in.weight" in shapes for b in levels]
    depths = [
        len(_indices(shapes, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.attn1\.")) for b in levels
    ]
    mid_attention = "mid_block.attentions.0.proj_in.weight" in shapes
    mid_depth = len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.attn1\."))
    context, linear = _attention_facts(shapes)

    layers = [d if a else 1 for d, a in zip(depths, attention, strict=True)]
    if mid_attention:
        if attention[-1] and layers[-1] != mid_depth:
            raise ModelFileError(
                f"{source}: middle block depth {mid_depth} differs from its last level's ({layers[-1]}), "
                "which diffusers cannot build"
            )
        layers[-1] = mid_depth
    heads: int | list[int] = (
        sd1_unet_heads(model_channels) if family.base == "sd1" else [max(1, c // HEAD_CHANNELS) for c in block_out]
    )

    hint_in = _need(shapes, "controlnet_cond_embedding.conv_in.weight", source)
    hint_blocks = _indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight$")
    hint_out = [int(hint_in[0])] + [
        int(shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0]) for i in hint_blocks if i % 2 == 1
    ]

    config: dict[str, Any] = {
        "in_channels": in_channels,
        "conditioning_channels": int(hint_in[1]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_attention else "UNetMidBlock2D",
        "block_out_channels": block_out,
        "layers_per_block": per_level,
        "cross_attention_dim": context if context is not None else block_out[-1],
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": layers,
        "norm_num_groups": 32,
        "conditioning_embedding_out_channels": hint_out,
        "global_pool_conditions": global_pool,
    }
    add = shapes.get("add_embedding.linear_1.weight")
    if add is not None:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=int(add[1]),
        )
    return config


# ========================================================================================= loading


@dataclass
class LoadedControlNet:
    """A ControlNet ready to run: diffusers' model (eval, no grad) on its device and dtype."""

    model: ControlNetModel
    family: fam.ModelFamily
    global_pool: bool  # shuffle: residuals averaged over the image (global_pool_conditions)
    source: Path
    layout: Layout

    @property
    def is_shuffle(self) -> bool:
        return self.global_pool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def nbytes(self) -> int:
        return module_nbytes(self.model)


def is_shuffle_name(path: Path) -> bool:
    """The extension's rule: a shuffle ControlNet is one whose file name says "shuffle"."""
    return "shuffle" in path.stem.lower() or (path.is_dir() and "shuffle" in path.name.lower())


_FOLDER_CONFIG_KEYS = frozenset(
    {
        "attention_head_dim",
        "num_attention_heads",
        "upcast_attention",
        "global_pool_conditions",
        "controlnet_conditioning_channel_order",
        "flip_sin_to_cos",
        "freq_shift",
        "downsample_padding",
        "mid_block_scale_factor",
        "act_fn",
        "norm_eps",
        "norm_num_groups",
        "resnet_time_scale_shift",
        "only_cross_attention",
        "addition_embed_type_num_heads",
    }
)


def _folder_config(folder: Path) -> dict[str, Any]:
    """The settings a folder's config.json adds to the shapes (heads, upcast, shuffle, ...);
    refuses folders that carry code."""
    code = next(iter(folder.rglob("*.py")), None)
    if code is not None:
        raise UnsafeModelFileError(f"{folder}: refused: the folder contains code ({code.name}); nothing was run")
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{folder}/config.json: unreadable: {exc}") from exc
    if not isinstance(data, dict) or data.get("_class_name") != DIFFUSERS_CLASS:
        raise ModelFileError(f"{folder}/config.json: not a {DIFFUSERS_CLASS} config")
    return {k: v for k, v in data.items() if k in _FOLDER_CONFIG_KEYS and v is not None}


def _assign(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    expected = set(model.state_dict())
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise ModelFileError(
            f"{source}: tensors do not fit a ControlNet: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
        )
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise ModelFileError(f"{source}: tensors do not fit a ControlNet: {exc}") from exc


def load_controlnet(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    base_family: fam.ModelFamily | None = None,
) -> LoadedControlNet:
    """Load a ControlNet file or diffusers ControlNet folder offline (see the module docstring).

    Raises `ModelFileError` (unreadable, unsafe, incomplete, another kind of control model, a
    family other than `base_family`'s) or `UnknownModelError` (not a ControlNet)."""
    path = Path(path)
    folder_settings: dict[str, Any] = {}
    if path.is_dir():
        weights = _weights_of_folder(path)
        if weights is None:
            raise ModelFileError(f"{path}: not a diffusers ControlNet folder (config.json + weights)")
        folder_settings = _folder_config(path)
    else:
        weights = path
    state_dict = read_state_dict(weights)
    probe = probe_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, path)
    check_family(probe.family, base_family, path)
    tensors = to_diffusers_keys(state_dict, probe, path)
    del state_dict
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    global_pool = is_shuffle_name(path) or bool(folder_settings.get("global_pool_conditions", False))
    config = controlnet_config(shapes, probe.family, global_pool=global_pool, source=path)
    config.update({k: v for k, v in folder_settings.items() if k != "global_pool_conditions"})
    try:
        with init_empty_weights():
            model = ControlNetModel.from_config(config)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: cannot build a ControlNet from its shapes: {exc}") from exc
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    _assign(model, cast, path)
    model.eval().requires_grad_(False)
    module: torch.nn.Module = model  # as a plain nn.Module: diffusers' `to` wrapper confuses type checkers
    module.to(device=torch.device(device))
    log.info("loaded ControlNet %s (%s, %s keys)", path.name, probe.family.label, probe.layout)
    return LoadedControlNet(model, probe.family, global_pool, path, probe.layout)


# =========================================================================================== cache


Loader = Callable[..., LoadedControlNet]


class ControlNetCache:
    """Loaded ControlNets kept for reuse, per (file, device, dtype), in the shared memory budget
    (kind "controlnet") and at most `cache_size` of them. Thread-safe."""

    def __init__(
        self,
        budget: MemoryBudget | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        loader: Loader = load_controlnet,
    ) -> None:
        self.budget = budget if budget is not None else MemoryBudget()
        self.cache_size = max(1, cache_size)
        self._loader = loader
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, LoadedControlNet] = OrderedDict()

    @staticmethod
    def key(info: ControlNetInfo, device: torch.device | str, dtype: torch.dtype) -> str:
        return f"{CONTROLNET}:{info.path}:{info.old_hash}:{torch.device(device)}:{dtype}"

    def get(
        self,
        info: ControlNetInfo,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        base_family: fam.ModelFamily | None = None,
    ) -> LoadedControlNet:
        """The loaded ControlNet of `info` (from the cache when held); a family other than
        `base_family`'s is a `ModelFileError`, held or not."""
        key = self.key(info, device, dtype)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            check_family(cached.family, base_family, info.path)
            self.budget.touch(key)
            return cached
        loaded = self._loader(info.path, dtype=dtype, device=torch.device(device), base_family=base_family)
        with self._lock:
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            over = list(self._cache)[: max(0, len(self._cache) - self.cache_size)]
        self.budget.add(key, CONTROLNET, loaded.nbytes(), lambda: self._drop(key))  # outside the lock
        for old in over:
            self.budget.evict(old)
        return loaded

    @contextmanager
    def using(
        self,
        info: ControlNetInfo,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        base_family: fam.ModelFamily | None = None,
    ) -> Iterator[LoadedControlNet]:
        """`get`, with the ControlNet pinned in the memory budget until the block ends."""
        loaded = self.get(info, device, dtype, base_family=base_family)
        with self.budget.pinned(self.key(info, device, dtype)):
            yield loaded

    def held(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def _drop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def unload(self) -> None:
        """Drop every held ControlNet (pinned ones stay with whoever uses them)."""
        with self._lock:
            keys = list(self._cache)
            self._cache.clear()
        for key in keys:
            self.budget.remove(key)


__all__ = [
    "CONTROLNET",
    "NONE",
    "ControlNetCache",
    "ControlNetInfo",
    "ControlNetProbe",
    "ControlNetRegistry",
    "LoadedControlNet",
    "check_family",
    "controlnet_config",
    "family_of",
    "is_shuffle_name",
    "ldm_key_map",
    "load_controlnet",
    "probe_file",
    "probe_shapes",
    "to_diffusers_keys",
]
