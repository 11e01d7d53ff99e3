"""Image interrogation: A1111's "clip" (BLIP caption + CLIP ranking of the category lists) and
"deepdanbooru" (tags), and captions for a folder of training images.

`Interrogator` finds the weights in A1111's folders (never downloads), loads each model lazily
on first use, and after each use leaves it on the device (`interrogate_keep_models_in_memory`)
or moves it back to RAM (A1111's default). Models kept in RAM are registered with the shared
`MemoryBudget` (kind "interrogator"), which may drop them. It uses the device, so it runs inside
a worker job: `submit_interrogation(engine, image, model)` checks the request on the caller's
thread (unknown model: 404 "Model not found"; missing weights: 404 naming the file and folder)
and queues the job; `Interrogator.caption_function` / `caption_folder` are what the Train tab's
preprocessing calls inside its own job.

The "clip" result is A1111's: the BLIP caption, then for each category file of the `interrogate`
folder (`artists.txt`, `flavors.txt`, `mediums.txt`, `movements.txt`; `name.topN.txt` takes the
N best; files sorted by name; `interrogate_clip_skip_categories` left out; the first
`interrogate_clip_dict_limit` lines) ", <match>" (", (<match>:<score>)" with
`interrogate_return_ranks`). Without a category folder the result is the caption alone.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from modules.core.atomic import atomic_write_text
from modules.core.errors import NotFoundError, UserError
from modules.core.paths import Paths
from modules.engine.images import resize_image
from modules.engine.training.preprocess import open_image, source_images
from modules.engine.worker import JobContext
from modules.models.interrogators import blip as blip_files
from modules.models.interrogators import clip_ranking
from modules.models.interrogators import deepbooru as deepbooru_files
from modules.models.memory import MemoryBudget, module_nbytes

log = logging.getLogger(__name__)

T = TypeVar("T")

CLIP = "clip"
DEEPDANBOORU = "deepdanbooru"
MODELS = (CLIP, DEEPDANBOORU)  # A1111's /sdapi/v1/interrogate model names
INTERROGATOR = "interrogator"  # memory budget kind
CATEGORY_FOLDER = "interrogate"
RESIZE_FILL = 2  # A1111's "Resize and fill", as DeepDanbooru's input is made
_TOPN = re.compile(r"\.top(\d+)$")

_DEFAULTS: dict[str, object] = {
    "interrogate_keep_models_in_memory": False,
    "interrogate_return_ranks": False,
    "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500,
    "interrogate_clip_skip_categories": [],
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True,
    "deepbooru_escape": True,
    "deepbooru_filter_tags": "",
}


class InterrogatorWeightsMissing(NotFoundError):
    """The weights an interrogation needs are not in the model folders (nothing is downloaded)."""


class OptionSource(Protocol):
    def get(self, key: str) -> object: ...


class CallSubmitter(Protocol):
    """What `submit_interrogation` needs of the engine facade."""

    def submit_call(self, fn: Callable[[JobContext], Any], description: str = ...) -> Any: ...


@dataclass(frozen=True)
class Category:
    name: str
    topn: int
    items: tuple[str, ...]


def category_files(folders: Sequence[Path]) -> list[Path]:
    """The `*.txt` files of the first category folder that exists, sorted by name."""
    for folder in folders:
        if folder.is_dir():
            return sorted(p for p in folder.glob("*.txt") if p.is_file())
    return []


def category_types(folders: Sequence[Path]) -> list[str]:
    """The category names (file stems): the choices of `interrogate_clip_skip_categories`."""
    return [p.stem for p in category_files(folders)]


def load_categories(folders: Sequence[Path], skip: Sequence[str] = ()) -> list[Category]:
    out: list[Category] = []
    for path in category_files(folders):
        if path.stem in skip:
            continue
        match = _TOPN.search(path.stem)
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        out.append(Category(path.stem, int(match.group(1)) if match else 1, tuple(x for x in lines if x)))
    return out


@dataclass(frozen=True)
class CaptionReport:
    """What `caption_folder` did."""

    written: tuple[Path, ...]
    kept: tuple[Path, ...]  # caption files that existed and were not overwritten
    skipped: tuple[tuple[str, str], ...]  # (image file name, reason)
    stopped: bool = False

    def summary(self) -> str:
        text = f"Captioning {'stopped' if self.stopped else 'finished'}: {len(self.written)} captions written"
        if self.kept:
            text += f", {len(self.kept)} existing kept"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{n} ({why})" for n, why in self.skipped)
        return text + "."


@dataclass
class _Slot:
    """One lazily loaded model."""

    key: str
    model: Any = None
    source: Path | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)


class Interrogator:
    """BLIP, CLIP and DeepDanbooru from the model folders, loaded on first use (thread-safe)."""

    def __init__(
        self,
        *,
        blip_dir: Path,
        clip_dir: Path,
        deepbooru_dirs: Sequence[Path],
        category_dirs: Sequence[Path],
        options: OptionSource | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.blip_dir = Path(blip_dir)
        self.clip_dir = Path(clip_dir)
        self.deepbooru_dirs = tuple(Path(p) for p in deepbooru_dirs)
        self.category_dirs = tuple(Path(p) for p in category_dirs)
        self.options = options
        self.device = device or torch.device("cpu")
        self.dtype = dtype or torch.float32
        if self.device.type == "cpu":
            self.dtype = torch.float32
        self.budget = budget if budget is not None else MemoryBudget()
        self._blip = _Slot(f"{INTERROGATOR}:blip")
        self._clip = _Slot(f"{INTERROGATOR}:clip")
        self._deepbooru = _Slot(f"{INTERROGATOR}:deepbooru")

    @classmethod
    def from_paths(
        cls,
        paths: Paths,
        options: OptionSource | None = None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        budget: MemoryBudget | None = None,
    ) -> Interrogator:
        """A1111's folders: `models/BLIP`, `--clip-models-path` (default `models/CLIP`),
        `models/torch_deepdanbooru` (then `models/deepbooru`), the `interrogate` category folder
        in the data dir (then the install dir)."""
        models = paths.models_dir
        return cls(
            blip_dir=models / "BLIP",
            clip_dir=paths.clip_dir,
            deepbooru_dirs=(models / "torch_deepdanbooru", models / "deepbooru"),
            category_dirs=tuple(dict.fromkeys((paths.data_dir / CATEGORY_FOLDER, paths.repo_root / CATEGORY_FOLDER))),
            options=options,
            device=device,
            dtype=dtype,
            budget=budget,
        )

    # -- options -----------------------------------------------------------------------------

    def _opt(self, key: str) -> Any:
        if self.options is not None:
            try:
                return self.options.get(key)
            except (KeyError, NotFoundError):
                pass
        return _DEFAULTS[key]

    def tag_options(self, *, force_disable_ranks: bool = False) -> deepbooru_files.TagOptions:
        return deepbooru_files.TagOptions(
            threshold=float(self._opt("interrogate_deepbooru_score_threshold")),
            sort_alpha=bool(self._opt("deepbooru_sort_alpha")),
            use_spaces=bool(self._opt("deepbooru_use_spaces")),
            escape=bool(self._opt("deepbooru_escape")),
            filter_tags=str(self._opt("deepbooru_filter_tags") or ""),
            return_ranks=bool(self._opt("interrogate_return_ranks")) and not force_disable_ranks,
        )

    def categories(self) -> list[Category]:
        skip = self._opt("interrogate_clip_skip_categories") or []
        return load_categories(self.category_dirs, [str(s) for s in skip])

    def category_types(self) -> list[str]:
        return category_types(self.category_dirs)

    # -- what is there -----------------------------------------------------------------------

    def check_model(self, model: str) -> str:
        """A1111's model name, or 404 "Model not found"."""
        if model not in MODELS:
            raise NotFoundError("Model not found")
        return model

    def missing(self, what: str) -> str | None:
        """None when `what` ("clip", "blip", "deepdanbooru" / "deepbooru") can run, else the note
        that names the files to put where. "clip" needs CLIP only when there are categories."""
        if what in ("deepdanbooru", "deepbooru"):
            if deepbooru_files.find_deepbooru_file(self.deepbooru_dirs) is None:
                folder = self.deepbooru_dirs[0] if self.deepbooru_dirs else Path("models/torch_deepdanbooru")
                return f"DeepBooru: put {deepbooru_files.DEEPBOORU_FILE} in {folder} (nothing is downloaded)"
            return None
        if what == "blip":
            return blip_files.missing_blip(self.blip_dir)
        if what == CLIP:
            notes = [blip_files.missing_blip(self.blip_dir)]
            if self.categories():
                notes.append(clip_ranking.missing_clip(self.clip_dir))
            found = [n for n in notes if n]
            return "; ".join(found) if found else None
        raise NotFoundError("Model not found")

    def require(self, what: str) -> None:
        note = self.missing(what)
        if note is not None:
            raise InterrogatorWeightsMissing(note)

    # -- loading -----------------------------------------------------------------------------

    def _drop(self, slot: _Slot) -> None:
        with slot.lock:
            slot.model = None
            slot.source = None

    @contextmanager
    def _use(self, slot: _Slot, find: Callable[[], Any], load: Callable[[Any], Any]) -> Iterator[Any]:
        """The slot's model on the device for the block (loaded first if needed, or again if the
        files changed), then kept there or moved to RAM as the option says."""
        with slot.lock:
            source = find()
            if source is None:
                raise InterrogatorWeightsMissing(f"{slot.key}: weights not found")
            path = source.path if isinstance(source, blip_files.BlipSource) else source
            if slot.model is None or slot.source != path:
                if slot.model is not None:
                    self.budget.remove(slot.key)
                slot.model = load(source)
                slot.source = path
                log.info("interrogate: loaded %s from %s", slot.key.split(":")[-1], path)
            model = slot.model
            nbytes = module_nbytes(_module_of(model))
            self.budget.add(slot.key, INTERROGATOR, nbytes, lambda: self._drop(slot), pinned=True)
            try:
                model.to(self.device, self.dtype)
                yield model
            finally:
                if not self._opt("interrogate_keep_models_in_memory") and self.device.type != "cpu":
                    model.to(torch.device("cpu"), self.dtype)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                self.budget.unpin(slot.key)

    def _use_blip(self) -> Any:
        return self._use(
            self._blip,
            lambda: blip_files.find_blip(self.blip_dir),
            lambda source: _Movable(blip_files.load_blip(source, self.blip_dir)),
        )

    def _use_clip(self) -> Any:
        return self._use(
            self._clip,
            lambda: clip_ranking.find_clip(self.clip_dir),
            lambda path: _Movable(clip_ranking.load_clip(path)),
        )

    def _use_deepbooru(self) -> Any:
        return self._use(
            self._deepbooru,
            lambda: deepbooru_files.find_deepbooru_file(self.deepbooru_dirs),
            lambda path: _Movable(deepbooru_files.load_deepbooru(path)),
        )

    def unload(self) -> None:
        """Forget every loaded model."""
        for slot in (self._blip, self._clip, self._deepbooru):
            self.budget.remove(slot.key)
            self._drop(slot)

    def loaded(self) -> tuple[str, ...]:
        return tuple(s.key.split(":")[-1] for s in (self._blip, self._clip, self._deepbooru) if s.model is not None)

    # -- interrogating (call on the worker thread) --------------------------------------------

    def blip_caption(self, image: Image.Image) -> str:
        """BLIP's caption alone (A1111's `generate_caption`)."""
        self.require("blip")
        with self._use_blip() as movable:
            captioner: blip_files.BlipCaptioner = movable.inner
            return captioner.caption(
                image.convert("RGB"),
                num_beams=int(self._opt("interrogate_clip_num_beams")),
                min_length=int(self._opt("interrogate_clip_min_length")),
                max_length=int(self._opt("interrogate_clip_max_length")),
            )

    def clip_interrogate(self, image: Image.Image, ctx: JobContext | None = None) -> str:
        """A1111's "clip" interrogation: the BLIP caption, then the best matches of each category."""
        self.require(CLIP)
        rgb = image.convert("RGB")
        result = self.blip_caption(rgb)
        categories = self.categories()
        if not categories:
            where = ", ".join(str(d) for d in self.category_dirs) or "no folder"
            log.info("interrogate: no category lists (%s); the result is the BLIP caption", where)
            return result
        limit = int(self._opt("interrogate_clip_dict_limit") or 0)
        ranks = bool(self._opt("interrogate_return_ranks"))
        with self._use_clip() as movable:
            ranker: clip_ranking.ClipRanker = movable.inner
            features = ranker.image_features(rgb)
            for category in categories:
                if ctx is not None:
                    ctx.check()
                items = category.items[:limit] if limit else category.items
                for match, score in ranker.rank(features, items, category.topn):
                    result += f", ({match}:{score / 100:.3f})" if ranks else f", {match}"
        return result

    def deepbooru_tags(self, image: Image.Image, *, force_disable_ranks: bool = False) -> str:
        """A1111's DeepBooru tag line for `image` (512 x 512, resized and filled)."""
        self.require("deepdanbooru")
        pic = resize_image(RESIZE_FILL, image.convert("RGB"), deepbooru_files.INPUT_SIZE, deepbooru_files.INPUT_SIZE)
        pixels = deepbooru_files.pixels_for(np.array(pic.convert("RGB"), dtype=np.uint8))
        with self._use_deepbooru() as movable:
            tagger: deepbooru_files.DeepDanbooru = movable.inner
            scores = tagger.scores(pixels)
        return deepbooru_files.format_tags(scores, self.tag_options(force_disable_ranks=force_disable_ranks))

    def interrogate(self, image: Image.Image, model: str, ctx: JobContext | None = None) -> str:
        """`model` "clip" or "deepdanbooru" on `image`, now, on this thread."""
        name = self.check_model(model)
        if ctx is not None:
            ctx.textinfo = f"Interrogating ({'CLIP' if name == CLIP else 'DeepBooru'})"
        if name == CLIP:
            return self.clip_interrogate(image, ctx)
        return self.deepbooru_tags(image)

    def job(self, image: Image.Image, model: str) -> Callable[[JobContext], str]:
        """The worker job for one interrogation."""
        name = self.check_model(model)
        self.require(name)

        def run(ctx: JobContext) -> str:
            return self.interrogate(image, name, ctx)

        return run

    # -- captions for training ---------------------------------------------------------------

    def caption(self, image: Image.Image, *, blip: bool, deepbooru: bool) -> str:
        """A1111's preprocessing caption: BLIP's caption, then ", " and the DeepBooru tags."""
        text = self.blip_caption(image) if blip else ""
        if deepbooru:
            tags = self.deepbooru_tags(image)
            text = f"{text}, {tags}" if text else tags
        return text

    def caption_function(self, *, blip: bool, deepbooru: bool) -> Callable[[Image.Image], str] | None:
        """`caption(image)` for preprocessing (checked now: missing weights raise here, before any
        job); None when neither is asked for."""
        if not (blip or deepbooru):
            return None
        if blip:
            self.require("blip")
        if deepbooru:
            self.require("deepdanbooru")

        def caption(image: Image.Image) -> str:
            return self.caption(image, blip=blip, deepbooru=deepbooru)

        return caption

    def caption_folder(
        self,
        src: Path,
        dst: Path | None = None,
        *,
        use_blip: bool = False,
        use_deepbooru: bool = False,
        overwrite: bool = False,
        model: str | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> CaptionReport:
        """Write `<stem>.txt` for each image of `src` into `dst` (default: beside the images),
        atomically: BLIP and/or DeepBooru (A1111's preprocessing caption), or `model`'s full
        interrogation ("clip" / "deepdanbooru", img2img's Batch 📎 / 📦). Existing captions are
        kept unless `overwrite`. Unreadable images are reported and skipped."""
        make: Callable[[Image.Image], str] | None
        if model is not None:
            name = self.check_model(model)
            self.require(name)
            make = functools.partial(self.interrogate, model=name)
        else:
            make = self.caption_function(blip=use_blip, deepbooru=use_deepbooru)
        if make is None:
            raise UserError("Choose BLIP and/or DeepBooru to caption with")
        src = Path(src)
        if not src.is_dir():
            raise UserError(f"{src}: not a folder")
        out_dir = Path(dst) if dst is not None else src
        images = source_images(src)
        written: list[Path] = []
        kept: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for number, path in enumerate(images):
            if should_stop is not None and should_stop():
                return CaptionReport(tuple(written), tuple(kept), tuple(skipped), stopped=True)
            if on_progress is not None:
                on_progress(number, len(images))
            target = out_dir / f"{path.stem}.txt"
            if target.exists() and not overwrite:
                kept.append(target)
                continue
            try:
                image = open_image(path)
            except ValueError as exc:
                skipped.append((path.name, str(exc)))
                continue
            atomic_write_text(target, make(image))
            written.append(target)
        if on_progress is not None:
            on_progress(len(images), len(images))
        return CaptionReport(tuple(written), tuple(kept), tuple(skipped))


@dataclass
class _Movable:
    """A loaded interrogator model with one `to(device, dtype)` and its torch module."""

    inner: Any

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        inner = self.inner
        if isinstance(inner, deepbooru_files.DeepDanbooru):
            inner.net.to(device=device, dtype=dtype)
        else:
            inner.to(device, dtype)


def _module_of(movable: _Movable) -> torch.nn.Module:
    inner = movable.inner
    module = inner.net if isinstance(inner, deepbooru_files.DeepDanbooru) else inner.model
    assert isinstance(module, torch.nn.Module)
    return module


# -- the job interface for the adapters --------------------------------------------------------


def interrogator_of(engine: object) -> Interrogator:
    """The engine's interrogator (`engine.interrogator`, set by the composition root)."""
    found = getattr(engine, "interrogator", None)
    if isinstance(found, Interrogator):
        return found
    raise UserError("Interrogation is not available in this app", status_code=503)


def submit_interrogation(engine: CallSubmitter, image: Image.Image, model: str) -> Any:
    """Check `model` and its weights now (404s), then queue the interrogation on the worker.
    Returns the engine's handle (`.future`, `.result()`); the result is the caption."""
    job = interrogator_of(engine).job(image, model)
    return engine.submit_call(job, description="interrogate")


def submit_folder_interrogation(
    engine: CallSubmitter, src: Path, dst: Path | None, model: str, *, overwrite: bool = True
) -> Any:
    """Check `model` and its weights now, then queue `caption_folder(src, dst, model=...)` on the
    worker (interrupt stops it between images). The result is the `CaptionReport`."""
    interrogator = interrogator_of(engine)
    name = interrogator.check_model(model)
    interrogator.require(name)

    def work(ctx: JobContext) -> CaptionReport:
        ctx.textinfo = "Interrogating a folder"
        return interrogator.caption_folder(
            src, dst, model=name, overwrite=overwrite, should_stop=lambda: bool(ctx.interrupted)
        )

    return engine.submit_call(work, description="interrogate")


# -- module-level helpers for callers that hold only the paths --------------------------------


def missing_weights(paths: Paths, what: str) -> str | None:
    """What to put where before `what` ("clip", "blip", "deepbooru") can run; None when it can."""
    return Interrogator.from_paths(paths).missing(what)


def caption_function(
    paths: Paths,
    *,
    blip: bool,
    deepbooru: bool,
    options: OptionSource | None = None,
    interrogator: Interrogator | None = None,
) -> Callable[[Image.Image], str] | None:
    """The preprocessing captioner (BLIP caption, then DeepBooru tags); `interrogator` (the
    engine's, so loaded models are shared) or one over `paths` and `options`."""
    source = interrogator or Interrogator.from_paths(paths, options)
    return source.caption_function(blip=blip, deepbooru=deepbooru)
