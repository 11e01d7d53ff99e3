"""💾 Save and 🗃️ Zip under the txt2img / img2img galleries (a1111.md, options `outdir_save`,
`save_selected_only`, `save_write_log_csv`, `grid_zip_filename_pattern`).

💾 writes the selected image (or every image, with `save_selected_only` off) into `outdir_save`
(default `log/images`) with its infotext, following the file-name options like any saved image,
and appends a row to `log.csv` there; 🗃️ writes those images into one zip. Either way the files
are offered for download below the buttons.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from modules.core.atomic import atomic_write_bytes, atomic_write_text
from modules.core.filenames import FilenameContext, apply_pattern
from modules.core.infotext import parse_infotext
from modules.engine.outputs import ImageSaver
from modules.services import Services
from modules.ui.common import default_gallery_index, open_image, parse_generation_info

LOG_COLUMNS = (
    "prompt",
    "seed",
    "width",
    "height",
    "sampler",
    "cfgs",
    "steps",
    "filename",
    "negative_prompt",
    "sd_model_name",
    "sd_model_hash",
)
_LOG_LOCK = threading.Lock()


def _int(value: object) -> int | None:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


def filename_context(infotext: str) -> FilenameContext:
    """What the file-name pattern tokens refer to, read back from an image's infotext."""
    params = parse_infotext(infotext) if infotext else {}
    return FilenameContext(
        seed=_int(params.get("Seed")),
        steps=_int(params.get("Steps")),
        cfg=_float(params.get("CFG scale")),
        sampler=str(params["Sampler"]) if "Sampler" in params else None,
        scheduler=str(params["Schedule type"]) if "Schedule type" in params else None,
        model_hash=str(params["Model hash"]) if "Model hash" in params else None,
        model_name=str(params["Model"]) if "Model" in params else None,
        prompt=str(params.get("Prompt", "")),
        negative_prompt=str(params.get("Negative prompt", "")),
        denoising=_float(params.get("Denoising strength")),
    )


def chosen_items(
    gallery: Sequence[Any], index: int | None, info: dict[str, Any], *, selected_only: bool
) -> list[tuple[int, str]]:
    """(gallery index, infotext) of the images to save: the selected one (else the first image
    after a leading grid) when `selected_only`, else every image after the grid."""
    first = default_gallery_index(len(gallery), info)
    infotexts = [str(t) for t in info.get("infotexts") or []]
    if selected_only:
        picked = [index if index is not None and 0 <= index < len(gallery) else first]
    else:
        picked = list(range(first, len(gallery)))
    return [(i, infotexts[i] if i < len(infotexts) else "") for i in picked]


def _append_log(folder: Path, rows: list[dict[str, object]]) -> None:
    """Add rows to `log.csv` (header when new); the file is replaced atomically."""
    path = folder / "log.csv"
    with _LOG_LOCK:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(LOG_COLUMNS), lineterminator="\n")
        if not old:
            writer.writeheader()
        for row in rows:
            writer.writerow(row)
        atomic_write_text(path, old + buffer.getvalue())


def save_images(
    services: Services, gallery: Sequence[Any] | None, index: int | None, info_json: str, *, make_zip: bool
) -> list[str]:
    """Save the chosen gallery images (and the zip); the written files' paths."""
    if not gallery:
        raise gr.Error("There is no image to save: generate one first")
    info = parse_generation_info(info_json)
    saver = ImageSaver.from_settings(services.options, services.paths, services.settings)
    folder = saver.outdir("outdir_save")
    selected_only = bool(services.options.get("save_selected_only")) and not make_zip
    items = chosen_items(gallery, index, info, selected_only=selected_only)
    saved: list[Path] = []
    rows: list[dict[str, object]] = []
    for i, infotext in items:
        image = open_image(gallery[i])
        ctx = filename_context(infotext)
        result = saver.save_image(image, folder, ctx, infotext=infotext or None, save_to_dirs=False)
        saved.append(result.path)
        rows.append(
            {
                "prompt": ctx.prompt,
                "seed": ctx.seed,
                "width": image.width,
                "height": image.height,
                "sampler": ctx.sampler,
                "cfgs": ctx.cfg,
                "steps": ctx.steps,
                "filename": result.path.name,
                "negative_prompt": ctx.negative_prompt,
                "sd_model_name": ctx.model_name,
                "sd_model_hash": ctx.model_hash,
            }
        )
    if services.options.get("save_write_log_csv"):
        _append_log(folder, rows)
    if not make_zip:
        return [str(p) for p in saved]
    first_ctx = filename_context(items[0][1]) if items else FilenameContext()
    pattern = str(services.options.get("grid_zip_filename_pattern") or "") or "[datetime]_[[model_name]]_[seed]"
    name = apply_pattern(pattern, first_ctx, max_length=128) or datetime.now().strftime("%Y%m%d%H%M%S")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in saved:
            archive.write(path, arcname=path.name)
    zip_path = folder / f"{name}.zip"
    atomic_write_bytes(zip_path, buffer.getvalue())
    return [str(zip_path)]


class DownloadCopies:
    """Copies of saved files for the download box, each call's in a fresh temp folder: Gradio
    serves only files under the working directory, the temp dir or its own cache, and the data
    dir may be anywhere. Gradio copies a returned file into its cache as the event ends, so a
    folder is removed by a later call once it is `keep_s` old (nothing is left behind but the
    folders of the last `keep_s`)."""

    def __init__(self, keep_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._keep_s = keep_s
        self._clock = clock
        self._folders: list[tuple[float, Path]] = []
        self._lock = threading.Lock()

    def __call__(self, paths: Sequence[str]) -> list[str]:
        self._prune()
        folder = Path(tempfile.mkdtemp(prefix="sd-webui-download-"))
        with self._lock:
            self._folders.append((self._clock(), folder))
        copies = []
        for path in paths:
            target = folder / Path(path).name
            shutil.copyfile(path, target)
            copies.append(str(target))
        return copies

    def _prune(self) -> None:
        now = self._clock()
        with self._lock:
            old = [folder for made, folder in self._folders if now - made >= self._keep_s]
            self._folders = [(made, folder) for made, folder in self._folders if now - made < self._keep_s]
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
