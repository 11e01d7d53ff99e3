"""Image interrogators, loaded from A1111's model folders (nothing is ever downloaded):

- `deepbooru`: DeepDanbooru tagger (`models/torch_deepdanbooru/model-resnet_custom_v3.pt`, the tag
  list inside the file), our own torch module sized from the tensor shapes;
- `blip`: BLIP captioner (A1111's `models/BLIP/model_base_caption_capfilt_large.pth`, original BLIP
  keys mapped onto transformers' `BlipForConditionalGeneration`, or a transformers BLIP folder);
- `clip_ranking`: CLIP image/text model that ranks the interrogate category lists (OpenAI's
  `ViT-L-14.pt` TorchScript archive in `models/CLIP`, read without running it, built by open_clip;
  or a transformers CLIP folder).

The engine's `modules.engine.interrogation.Interrogator` composes them (A1111's "clip" and
"deepdanbooru" interrogations, captions for training folders)."""

from __future__ import annotations

import json
from pathlib import Path


def folder_model_type(folder: Path) -> str | None:
    """The `model_type` in a transformers folder's `config.json` (None when there is no readable
    one): how BLIP and CLIP folders are told apart from other folders."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("model_type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None
