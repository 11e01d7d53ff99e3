"""DeepDanbooru tagger: A1111's `model-resnet_custom_v3.pt` (a torch state dict of convolutions
`n_Conv_0` ... `n_Conv_178` plus the tag list under the key `"tags"`).

The network is a bottleneck ResNet converted from TensorFlow: an NHWC float image in [0, 1]
(512 x 512), a 7x7 stride-2 stem with max-pooling, six stages of bottleneck blocks (1x1, 3x3,
1x1 convolutions with a residual add; the first block of a stage has a 1x1 projection shortcut,
and all but the first stage halve the size), a 1x1 convolution to one channel per tag, global
average pooling and a sigmoid. TensorFlow's "same" padding is explicit: zeros for convolutions,
-inf before the max-pool, right/bottom only where the stride is 2.

Which convolution index sits where in that graph is fixed by the file format (`BLOCK_LAYOUT`);
every channel count and kernel size is read from the tensor shapes, so a small file of the same
key layout loads through the same code."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules.core.errors import ModelFileError
from modules.models.checkpoint_io import read_structured

DEEPBOORU_FILE = "model-resnet_custom_v3.pt"
INPUT_SIZE = 512

# Stages of the file's network: (blocks, stride of the first block, whether the first block's
# projection shortcut comes after its three main convolutions in the numbering).
_STAGES: tuple[tuple[int, int, bool], ...] = (
    (3, 1, False),
    (8, 2, False),
    (20, 2, False),
    (20, 2, True),
    (3, 2, False),
    (3, 2, False),
)
STEM = 0


@dataclass(frozen=True)
class Block:
    main: tuple[int, int, int]  # conv indices: 1x1 reduce, 3x3 (carries the stride), 1x1 expand
    shortcut: int | None  # 1x1 projection conv index, None for an identity shortcut
    stride: int


def _layout() -> tuple[tuple[Block, ...], int]:
    blocks: list[Block] = []
    index = STEM + 1
    for count, stride, shortcut_last in _STAGES:
        for number in range(count):
            if number == 0 and shortcut_last:
                blocks.append(Block((index, index + 1, index + 2), index + 3, stride))
                index += 4
            elif number == 0:
                blocks.append(Block((index + 1, index + 2, index + 3), index, stride))
                index += 4
            else:
                blocks.append(Block((index, index + 1, index + 2), None, 1))
                index += 3
    return tuple(blocks), index


BLOCK_LAYOUT, HEAD = _layout()  # HEAD: the last conv index (178), one output channel per tag


def _conv_name(index: int) -> str:
    return f"n_Conv_{index}"


def _same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) for an input size divisible by the stride."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


class DeepDanbooruNet(nn.Module):
    """The tagger network, sized from a state dict's shapes. forward: (N, H, W, 3) floats in
    [0, 1] -> (N, tags) probabilities."""

    def __init__(self, shapes: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        self.strides: dict[int, int] = {STEM: 2}
        for block in BLOCK_LAYOUT:
            self.strides[block.main[1]] = block.stride
            if block.shortcut is not None:
                self.strides[block.shortcut] = block.stride
        for index in range(HEAD + 1):
            name = _conv_name(index)
            weight = shapes.get(f"{name}.weight")
            if weight is None or len(weight) != 4:
                raise ModelFileError(f"DeepDanbooru model: missing or malformed tensor {name}.weight")
            out_ch, in_ch, kh, kw = (int(v) for v in weight)
            stride = self.strides.get(index, 1)
            bias = f"{name}.bias" in shapes
            self.add_module(name, nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, bias=bias))

    def conv(self, index: int) -> nn.Conv2d:
        module = getattr(self, _conv_name(index))
        assert isinstance(module, nn.Conv2d)
        return module

    def _padded_conv(self, index: int, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv(index)
        kernel, stride = conv.kernel_size[0], self.strides.get(index, 1)
        if kernel > 1:
            before, after = _same_padding(kernel, stride)
            x = F.pad(x, [before, after, before, after], value=0.0)
        return conv(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2)
        x = F.relu(self._padded_conv(STEM, x))
        before, after = _same_padding(3, 2)
        x = F.pad(x, [before, after, before, after], value=float("-inf"))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in BLOCK_LAYOUT:
            shortcut = x if block.shortcut is None else self.conv(block.shortcut)(x)
            h = F.relu(self.conv(block.main[0])(x))
            h = F.relu(self._padded_conv(block.main[1], h))
            h = self.conv(block.main[2])(h)
            x = F.relu(h + shortcut)
        x = self.conv(HEAD)(x)
        x = F.avg_pool2d(x, kernel_size=x.shape[-2:]).flatten(1)
        return torch.sigmoid(x)


@dataclass
class DeepDanbooru:
    """A loaded tagger: the network (CPU, eval, float32 until moved) and its tags in output order."""

    net: DeepDanbooruNet
    tags: tuple[str, ...]
    path: Path

    def scores(self, pixels: torch.Tensor) -> list[tuple[str, float]]:
        """(tag, probability) for every tag, in the file's order, for one (1, H, W, 3) image."""
        param = next(self.net.parameters())
        with torch.inference_mode():
            probs = self.net(pixels.to(param.device, param.dtype))[0].float().cpu().tolist()
        return list(zip(self.tags, probs, strict=False))


def load_deepbooru(path: Path) -> DeepDanbooru:
    """Read a DeepDanbooru file (pickles through the checked allow-list, or safetensors without
    tags). ModelFileError when its tensors do not form the network or the tags do not match."""
    obj = read_structured(path)
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path}: not a DeepDanbooru state dict")
    tags_value = obj.get("tags", [])
    if not isinstance(tags_value, list | tuple) or not all(isinstance(t, str) for t in tags_value):
        raise ModelFileError(f"{path}: the 'tags' entry is not a list of strings")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    try:
        net = DeepDanbooruNet({k: tuple(v.shape) for k, v in tensors.items()})
        net.load_state_dict(tensors, strict=True)
    except (RuntimeError, ModelFileError) as exc:
        raise ModelFileError(f"{path}: not a DeepDanbooru model ({exc})") from exc
    n_out = net.conv(HEAD).out_channels
    if len(tags_value) != n_out:
        raise ModelFileError(f"{path}: {len(tags_value)} tags for {n_out} outputs")
    net.eval().requires_grad_(False)
    return DeepDanbooru(net=net, tags=tuple(tags_value), path=path)


_SPECIAL = re.compile(r"([\\()])")


@dataclass(frozen=True)
class TagOptions:
    """A1111's deepbooru options."""

    threshold: float = 0.5  # interrogate_deepbooru_score_threshold
    sort_alpha: bool = True  # deepbooru_sort_alpha
    use_spaces: bool = True  # deepbooru_use_spaces
    escape: bool = True  # deepbooru_escape
    filter_tags: str = ""  # deepbooru_filter_tags
    return_ranks: bool = False  # interrogate_return_ranks


def format_tags(scores: Iterable[tuple[str, float]], options: TagOptions) -> str:
    """A1111's tag line: tags scoring at least the threshold (never `rating:*`), sorted by name or
    by falling score, minus the filtered tags (compared with underscores), with spaces for
    underscores, brackets and backslashes escaped, `(tag:0.123)` ranks; joined by ", "."""
    kept = {tag: p for tag, p in scores if p >= options.threshold and not tag.startswith("rating:")}
    if options.sort_alpha:
        ordered = sorted(kept)
    else:
        ordered = [tag for tag, _ in sorted(kept.items(), key=lambda item: -item[1])]
    dropped = {t.strip().replace(" ", "_") for t in options.filter_tags.split(",")}
    out: list[str] = []
    for tag in ordered:
        if tag in dropped:
            continue
        text = tag.replace("_", " ") if options.use_spaces else tag
        if options.escape:
            text = _SPECIAL.sub(r"\\\1", text)
        if options.return_ranks:
            text = f"({text}:{kept[tag]:.3f})"
        out.append(text)
    return ", ".join(out)


def find_deepbooru_file(folders: Iterable[Path]) -> Path | None:
    """A1111's file in the first folder that has it (also one level down, where a user may have
    unpacked a release folder)."""
    for folder in folders:
        for candidate in (folder / DEEPBOORU_FILE, *sorted(folder.glob(f"*/{DEEPBOORU_FILE}"))):
            if candidate.is_file():
                return candidate
    return None


def pixels_for(rgb: Any) -> torch.Tensor:
    """A (H, W, 3) uint8 array as the (1, H, W, 3) float input in [0, 1]."""
    return torch.as_tensor(rgb, dtype=torch.float32).unsqueeze(0) / 255.0
