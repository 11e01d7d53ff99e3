"""img2img's Batch sub-tab: which images (and masks) to process (`batch_plan`: uploads, or server
folders inside the data dir or the outputs folder), one request per image as one job after
another (`run_batch`; Interrupt stops the batch), results written next to their input names, and
the gallery limited by `img2img_batch_show_results_limit`."""

from __future__ import annotations

import dataclasses
import html
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.core.atomic import atomic_write_bytes
from modules.core.requests import Img2ImgRequest
from modules.core.results import Result
from modules.engine.image_metadata import encode_image
from modules.services import Services
from modules.ui.common import (
    follow,
    gallery_items,
    info_html,
    open_image,
    progress_html,
    refresh_period,
    result_of,
    submit,
)
from modules.ui.img2img_editor import to_rgb
from modules.ui.img2img_request import request_for_image
from modules.ui.server_folders import IMAGE_SUFFIXES, folder_images, server_dir, shown_folder

BATCH_UPLOAD, BATCH_FROM_DIR = "upload", "from dir"  # the `#img2img_batch_source` tabs


@dataclass(frozen=True)
class BatchItem:
    """One input image of a batch and its mask file (from the mask directory), if any."""

    path: Path
    mask_path: Path | None = None


@dataclass(frozen=True)
class BatchPlan:
    items: tuple[BatchItem, ...]
    output_dir: Path | None = None  # None: the normal outputs folder


def _upload_path(item: Any) -> Path:
    path = getattr(item, "path", None) or (item.get("path") if isinstance(item, dict) else item)
    return Path(str(path))


def batch_plan(
    services: Services,
    *,
    batch_source: str,
    batch_files: Sequence[Any] | None,
    batch_input_dir: str,
    batch_output_dir: str,
    batch_inpaint_mask_dir: str,
) -> BatchPlan:
    """The Batch sub-tab's inputs as a list of images (and masks) to process. Server folders must be
    inside the data dir or the outputs folder (`server_dir`); no images is an error. With a mask
    directory each image takes the mask with its file stem (or the only mask there is)."""
    if batch_source != BATCH_FROM_DIR:
        files = [_upload_path(f) for f in batch_files or () if f is not None]
        if not files:
            raise gr.Error("Please upload the images to process")
        return BatchPlan(tuple(BatchItem(p) for p in files))
    input_dir = server_dir(services.paths, batch_input_dir, "Input directory")
    images = folder_images(services.paths, input_dir, "Input directory")
    if not images:
        raise gr.Error(f"Input directory has no images ({', '.join(IMAGE_SUFFIXES)})")
    output_dir = server_dir(services.paths, batch_output_dir, "Output directory") if batch_output_dir.strip() else None
    masks: dict[str, Path] = {}
    single_mask: Path | None = None
    if batch_inpaint_mask_dir.strip():
        mask_dir = server_dir(services.paths, batch_inpaint_mask_dir, "Inpaint batch mask directory")
        found = folder_images(services.paths, mask_dir, "Inpaint batch mask directory")
        if not found:
            raise gr.Error("Inpaint batch mask directory has no images")
        single_mask = found[0] if len(found) == 1 else None
        masks = {p.stem: p for p in found}
    items = []
    for path in images:
        mask = single_mask or masks.get(path.stem)
        if masks and mask is None:
            raise gr.Error(
                f"No mask for {html.escape(path.name)} in the inpaint batch mask directory (same name needed)"
            )
        items.append(BatchItem(path, mask))
    return BatchPlan(tuple(items), output_dir)


def save_batch_outputs(result: Result, stem: str, folder: Path) -> list[Path]:
    """The batch results of one input as PNGs with their infotext (`parameters`), named after the
    input (`stem.png`, or `stem-1.png`... when it made several), each written atomically."""
    written = []
    for i, image in enumerate(result.images):
        infotext = result.infotexts[i] if i < len(result.infotexts) else None
        path = folder / (f"{stem}.png" if len(result.images) == 1 else f"{stem}-{i + 1}.png")
        atomic_write_bytes(path, encode_image(image, "png", infotext=infotext))
        written.append(path)
    return written


def batch_progress_html(index: int, total: int, progress: Mapping[str, Any]) -> str:
    return f"<div class='sdw-batch-progress'>image {index}/{total}</div>" + progress_html(dict(progress))


def merge_results(results: Sequence[Result]) -> Result:
    """The batch's results as one (the gallery and its generation info)."""
    merged = Result()
    for result in results:
        for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts", "params", "warnings"):
            getattr(merged, name).extend(getattr(result, name))
        merged.elapsed += result.elapsed
        merged.interrupted = merged.interrupted or result.interrupted
    if results:
        merged.width, merged.height = results[-1].width, results[-1].height
        merged.job_timestamp = results[-1].job_timestamp
    return merged


def limit_results(result: Result, limit: int) -> Result:
    """The first `limit` images (and their infotexts, seeds...); all of them when `limit` is -1."""
    if limit < 0 or len(result.images) <= limit:
        return result
    cut = {
        name: getattr(result, name)[:limit]
        for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts", "params")
    }
    return dataclasses.replace(result, **cut)


def run_batch(
    services: Services, values: Mapping[str, Any], plan: BatchPlan, stop: threading.Event | None = None
) -> Iterator[tuple[Any, ...]]:
    """Each image as its own request, one job after another (Interrupt stops the batch, also
    when it comes between two jobs: `stop`); yields (progress, gallery, info html, generation
    info, last seed) like the single-image run."""
    total = len(plan.items)
    results: list[Result] = []
    first: Img2ImgRequest | None = None
    period = refresh_period(services)
    written = 0
    for index, item in enumerate(plan.items, start=1):
        image = to_rgb(open_image(item.path))
        mask = to_rgb(open_image(item.mask_path)).convert("L") if item.mask_path is not None else None
        request = dataclasses.replace(
            request_for_image(values, image, mask),
            do_not_save_grid=True,
            do_not_save_samples=plan.output_dir is not None,
        )
        first = first or request
        job = submit(services, request)

        def render(data: dict[str, Any], index: int = index) -> str:
            return batch_progress_html(index, total, data)

        yield render(job.progress()), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        for shown, preview in follow(job, render, period):
            yield shown, preview, gr.skip(), gr.skip(), gr.skip()
        result = result_of(job)
        if plan.output_dir is not None:
            written += len(save_batch_outputs(result, item.path.stem, plan.output_dir))
        results.append(result)
        if result.interrupted or job.interrupted or (stop is not None and stop.is_set()):
            break
    merged = merge_results(results)
    limit = services.options.get("img2img_batch_show_results_limit")
    shown_result = limit_results(merged, int(limit) if isinstance(limit, int | float) else -1)
    assert first is not None
    images, info = gallery_items(first, shown_result)
    where = ""
    if plan.output_dir is not None:
        where = f"; {written} files written to {html.escape(shown_folder(services.paths, plan.output_dir))}"
    summary = f"<p class='sdw-batch-summary'>Processed {len(results)}/{total} images{where}.</p>"
    yield "", images, summary + info_html(merged), info, (merged.seeds[0] if merged.seeds else -1)
