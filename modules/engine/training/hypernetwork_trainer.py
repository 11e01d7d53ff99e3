"""Hypernetwork training with A1111's semantics (its Train tab's "Train Hypernetwork").

The hypernetwork file (A1111's `.pt`, read through our safe reader) is rebuilt as modules on the
model's device in float32 and attached to every attention's key/value inputs with the same hooks
generation uses (`hypernetworks_applied`, strength 1), so the training forward and the preview
images both run through the weights being trained; dropout is on while training and off for the
previews (A1111 switches the modules to eval for them). The text encoders run without gradient.
The optimizer is AdamW with torch's defaults (A1111 builds it as `AdamW(params, lr)`); the rest of
the run — schedule strings, batching, accumulation, clipping, latent sampling, `use_weight`,
copies in `<log>/<date>/<name>/hypernetworks`, previews, `hypernetwork_loss.csv`, `.optim`
resume, interrupt — is the loop the embedding trainer defines (`run_a1111_training`).

Saving keeps every metadata key of the file as it was (layer structure, activation, init,
dropout, `optional_info`, ...) and updates `step`, `name`, `sd_checkpoint` and
`sd_checkpoint_name`, as A1111's `save_hypernetwork` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modules.core.atomic import atomic_write_bytes
from modules.core.errors import ModelFileError, UserError
from modules.core.training import TrainHypernetworkRequest, TrainResult
from modules.engine.training.creation import hypernetwork_file_data, torch_bytes
from modules.engine.training.diffusion import TrainingView
from modules.engine.training.embedding_trainer import (
    Trainable,
    option_value,
    run_a1111_training,
    weights_checksum,
)
from modules.engine.training.session import TrainingRun
from modules.models.checkpoint_io import read_structured
from modules.models.hypernetworks import Hypernetwork, hypernetworks_applied, read_hypernetwork


def find_hypernetwork_file(name: str, hypernetworks_dir: Path) -> Path:
    """`<name>.pt` in the hypernetworks folder or a subfolder (A1111 keys them by file stem)."""
    root = Path(hypernetworks_dir)
    direct = root / f"{name}.pt"
    if direct.is_file():
        return direct
    if root.is_dir():
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            if f"{name}.pt" in files:
                return Path(folder) / f"{name}.pt"
    raise UserError(
        f"hypernetwork {name!r} not found in {root} (create it first, or refresh the list)", status_code=404
    )


def _metadata(path: Path) -> dict[str, Any]:
    data = read_structured(path)
    if not isinstance(data, Mapping):
        raise ModelFileError(f"{path}: not a hypernetwork")
    return {k: v for k, v in data.items() if not (isinstance(k, int) and not isinstance(k, bool))}


def train_hypernetwork(
    request: TrainHypernetworkRequest,
    run: TrainingRun,
    *,
    hypernetworks_dir: Path,
    log_root: Path,
    options: Any = None,
    template_dirs: Sequence[Path] | None = None,
    checkpoint_hash: str | None = None,
    repeat_noise: bool = False,
) -> TrainResult:
    """Train the hypernetwork `request.hypernetwork_name` (A1111's `train_hypernetwork`).
    `checkpoint_hash`: the model's short hash, stored as `sd_checkpoint`."""
    name = (request.hypernetwork_name or "").strip()
    if not name:
        raise UserError("choose a hypernetwork to train")
    path = find_hypernetwork_file(name, hypernetworks_dir)
    try:
        network: Hypernetwork = read_hypernetwork(path)
        metadata = _metadata(path)
    except ModelFileError as exc:
        raise UserError(f"hypernetwork {name!r} cannot be trained: {exc}") from exc
    model = run.model
    view = TrainingView(model, clip_skip=int(option_value(options, "CLIP_stop_at_last_layers", 1) or 1))
    widths = {int(getattr(model.unet.config, "cross_attention_dim", 0) or 0)}
    widths |= {int(c) for c in getattr(model.unet.config, "block_out_channels", ())}
    if not widths & set(network.layers):
        raise UserError(
            f"hypernetwork {name!r} has modules for widths {sorted(network.layers)}, none of which this "
            f"{model.family.label} model uses ({sorted(widths)})"
        )
    modules = list(network.modules())
    for module in modules:
        module.to(device=view.device, dtype=torch.float32)
    params: list[torch.Tensor] = [p for module in modules for p in module.parameters()]
    checkpoint_name = Path(model.source).stem if getattr(model, "source", None) else None

    def train_mode(mode: bool) -> None:
        for module in modules:
            module.train(mode)
            module.requires_grad_(mode)

    def write(target: Path, step: int) -> None:
        network.step = step
        extra = dict(metadata)
        extra.update(
            {"step": step, "name": name, "sd_checkpoint": checkpoint_hash, "sd_checkpoint_name": checkpoint_name}
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, torch_bytes(hypernetwork_file_data(network.layers, extra)))

    target = Trainable(
        kind="hypernetwork",
        name=name,
        filename=path,
        params=params,
        start_step=int(network.step or 0),
        encode=lambda captions: view.encode_text(captions, grad=False),
        write=write,
        checksum=lambda: weights_checksum(params),
        attach=lambda: hypernetworks_applied(model.unet, [(network, 1.0)]),
        train_mode=train_mode,
        weight_decay=0.01,  # torch's AdamW default, which A1111 keeps
        csv_name="hypernetwork_loss.csv",
        copies_folder="hypernetworks",
        settings={
            "model_hash": checkpoint_hash,
            "layer_structure": list(network.layout.layer_structure),
            "activation_func": network.layout.activation_func,
            "weight_init": metadata.get("weight_initialization"),
            "add_layer_norm": network.layout.is_layer_norm,
            "use_dropout": metadata.get("use_dropout"),
        },
    )
    try:
        return run_a1111_training(
            request,
            run,
            target,
            view=view,
            save_every=int(request.save_hypernetwork_every or 0),
            log_root=log_root,
            options=options,
            template_dirs=template_dirs,
            repeat_noise=repeat_noise,
        )
    finally:
        train_mode(False)
