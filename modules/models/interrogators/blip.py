"""BLIP captioner, from local files only.

Two forms are read, both into transformers' `BlipForConditionalGeneration`:

- A1111's `models/BLIP/model_base_caption_capfilt_large.pth`: the original BLIP checkpoint (its
  `model` dict: `visual_encoder.*` ViT and `text_decoder.*` BERT LM head). The ViT keys are
  renamed to transformers' names (`blocks.N.attn.qkv` -> `encoder.layers.N.self_attn.qkv` ...);
  the BERT keys are the same in both. Sizes come from the tensor shapes (heads: width / 64, as
  BLIP's ViT-B and BERT-base). Its BERT tokenizer is `bert-base-uncased` plus BLIP's `[DEC]`
  (bos) and `[ENC]` tokens, read from a local folder: `models/BLIP/bert-base-uncased/`
  (`vocab.txt`, e.g. copied from an A1111 install's HF cache), else the Hugging Face cache
  itself with `local_files_only=True` (where A1111's BLIP put it).
- a transformers BLIP captioning folder in `models/BLIP/<name>/` (`config.json` of model_type
  "blip", the weights, and its own tokenizer files), e.g. `Salesforce/blip-image-captioning-large`
  saved locally.

Captions are made as BLIP does: the image resized to the model's size (bicubic), CLIP's mean/std,
the text prompt "a picture of " (its `[CLS]` replaced by `[DEC]`), beam search without sampling;
the caption is the text generated after the prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modules.core.errors import ModelFileError
from modules.models.checkpoint_io import read_state_dict
from modules.models.interrogators import folder_model_type

log = logging.getLogger(__name__)

BLIP_FILE = "model_base_caption_capfilt_large.pth"
BERT_FOLDER = "bert-base-uncased"
BLIP_PROMPT = "a picture of "
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_VISION_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.norm\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision_model.encoder.layers.\1.self_attn.qkv."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.", r"vision_model.encoder.layers.\1.mlp.\2."),
)


def original_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original BLIP caption checkpoint's tensors under transformers' names. Keys of other
    parts (e.g. a retrieval head) are left out."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("text_decoder."):
            out[key] = tensor
            continue
        for pattern, replacement in _VISION_RENAMES:
            new, count = re.subn(pattern, replacement, key)
            if count:
                out[new] = tensor
                break
    return out


def _count(prefix_pattern: str, keys: list[str]) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(prefix_pattern, k))}
    return max(found) + 1 if found else 0


def config_from_shapes(sd: Mapping[str, torch.Tensor], tokenizer: Any) -> Any:
    """A `BlipConfig` for the tensors of `original_to_transformers` (sizes from shapes)."""
    from transformers import BlipConfig

    keys = list(sd)
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        positions = sd["vision_model.embeddings.position_embedding"].shape[1]
        v_width = int(patch.shape[0])
        words = sd["text_decoder.bert.embeddings.word_embeddings.weight"]
        t_width = int(words.shape[1])
        vision = {
            "hidden_size": v_width,
            "intermediate_size": int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            "num_hidden_layers": _count(r"^vision_model\.encoder\.layers\.(\d+)\.", keys),
            "num_attention_heads": max(1, v_width // 64),
            "patch_size": int(patch.shape[-1]),
            "image_size": round((positions - 1) ** 0.5) * int(patch.shape[-1]),
            "layer_norm_eps": 1e-6,  # BLIP's ViT
        }
        text = {
            "vocab_size": int(words.shape[0]),
            "hidden_size": t_width,
            "encoder_hidden_size": int(sd["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"].shape[1]),
            "intermediate_size": int(sd["text_decoder.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "num_hidden_layers": _count(r"^text_decoder\.bert\.encoder\.layer\.(\d+)\.", keys),
            "num_attention_heads": max(1, t_width // 64),
            "max_position_embeddings": int(sd["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0]),
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    except KeyError as exc:
        raise ModelFileError(f"not a BLIP caption model: missing tensor {exc}") from None
    return BlipConfig(vision_config=vision, text_config=text)


@dataclass
class BlipCaptioner:
    """A loaded BLIP caption model with its tokenizer (CPU, float32, eval until moved)."""

    model: Any  # transformers BlipForConditionalGeneration
    tokenizer: Any
    image_size: int
    source: Path

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.model.to(device=device, dtype=dtype)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        data = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
        x = data.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0)

    def caption(self, image: Image.Image, *, num_beams: int, min_length: int, max_length: int) -> str:
        param = next(self.model.parameters())
        pixels = self.pixels(image).to(param.device, param.dtype)
        prompt = self.tokenizer(BLIP_PROMPT, return_tensors="pt").input_ids.to(param.device)
        with torch.inference_mode():
            out = self.model.generate(
                pixels,
                input_ids=prompt,
                num_beams=max(1, int(num_beams)),
                min_length=int(min_length),
                max_length=int(max_length),
                do_sample=False,
                repetition_penalty=1.0,
            )
        generated = out[0][prompt.shape[1] - 1 :]  # the prompt without its trailing [SEP] comes back first
        return str(self.tokenizer.decode(generated, skip_special_tokens=True)).strip()


def bert_tokenizer(blip_dir: Path) -> Any:
    """BLIP's tokenizer for the original checkpoint: `bert-base-uncased` from local files
    (`<blip_dir>/bert-base-uncased/`, else the Hugging Face cache, never the hub) plus `[DEC]`
    as bos and `[ENC]`. ModelFileError naming both places when neither has it."""
    from transformers import BertTokenizer

    folder = blip_dir / BERT_FOLDER
    try:
        if (folder / "vocab.txt").is_file():
            tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        else:
            tokenizer = BertTokenizer.from_pretrained(BERT_FOLDER, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"BLIP needs the bert-base-uncased tokenizer: put its vocab.txt in {folder} (nothing is downloaded)"
        ) from exc
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def has_bert_tokenizer(blip_dir: Path) -> bool:
    """Whether `bert_tokenizer` can find its files (without loading them)."""
    if (blip_dir / BERT_FOLDER / "vocab.txt").is_file():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(BERT_FOLDER, "vocab.txt")
    except Exception:  # an unusable cache is a missing tokenizer
        return False
    return isinstance(found, str)


def load_blip_file(path: Path, blip_dir: Path) -> BlipCaptioner:
    """A1111's original BLIP caption checkpoint."""
    from transformers import BlipForConditionalGeneration

    tensors = original_to_transformers(read_state_dict(path))
    tokenizer = bert_tokenizer(blip_dir)
    config = config_from_shapes(tensors, tokenizer)
    if config.text_config.vocab_size != len(tokenizer):
        raise ModelFileError(
            f"{path}: the text decoder has {config.text_config.vocab_size} tokens, the tokenizer "
            f"{len(tokenizer)}: not the bert-base-uncased vocabulary BLIP was trained with"
        )
    model = BlipForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ModelFileError(f"{path}: not a BLIP caption model (missing {', '.join(missing[:5])})")
    if unexpected:
        log.info("%s: %d tensors not used by the caption model", path, len(unexpected))
    model.eval().requires_grad_(False)
    return BlipCaptioner(model=model, tokenizer=tokenizer, image_size=int(config.vision_config.image_size), source=path)


def is_blip_folder(folder: Path) -> bool:
    return folder_model_type(folder) == "blip"


def load_blip_folder(folder: Path) -> BlipCaptioner:
    """A transformers BLIP captioning folder, from its files only."""
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    try:
        model = BlipForConditionalGeneration.from_pretrained(str(folder), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{folder}: cannot load the BLIP folder: {exc}") from exc
    model.eval().requires_grad_(False)
    config: Any = model.config
    size = int(config.vision_config.image_size)
    return BlipCaptioner(model=model, tokenizer=tokenizer, image_size=size, source=folder)


@dataclass(frozen=True)
class BlipSource:
    path: Path
    is_folder: bool


def find_blip(blip_dir: Path) -> BlipSource | None:
    """A1111's checkpoint when its tokenizer is present too, else the first transformers BLIP
    folder (by name); None when there is neither."""
    file = blip_dir / BLIP_FILE
    if file.is_file() and has_bert_tokenizer(blip_dir):
        return BlipSource(file, False)
    if blip_dir.is_dir():
        for folder in sorted(p for p in blip_dir.iterdir() if p.is_dir()):
            if is_blip_folder(folder):
                return BlipSource(folder, True)
    return None


def missing_blip(blip_dir: Path) -> str | None:
    """What to put where when no BLIP model is usable; None when one is."""
    if find_blip(blip_dir) is not None:
        return None
    if (blip_dir / BLIP_FILE).is_file():
        return (
            f"BLIP: {BLIP_FILE} is in {blip_dir} but its bert-base-uncased tokenizer is not: put vocab.txt "
            f"in {blip_dir / BERT_FOLDER} (nothing is downloaded)"
        )
    return (
        f"BLIP: put {BLIP_FILE} (with bert-base-uncased/vocab.txt beside it) or a transformers BLIP "
        f"captioning folder in {blip_dir} (nothing is downloaded)"
    )


def load_blip(source: BlipSource, blip_dir: Path) -> BlipCaptioner:
    return load_blip_folder(source.path) if source.is_folder else load_blip_file(source.path, blip_dir)
