"""Hooks: typed lifecycle events around processing and the UNet wrapper chain.

Features that plug into generation (extension scripts, ControlNet, the refiner, training
previews) register here instead of editing the loop or patching libraries:

- events, fired on the worker thread in this order for every job:
  `before_process` once; per batch `before_batch`, `before_hires` (hires fix only), then
  `after_batch` with the decoded images (a listener may replace `event.images`, even with
  another number of images: the job's result follows);
  per image `postprocess_image` (a listener may replace `event.image`); when the image is saved,
  `before_image_saved` (a listener may change `event.image` / `event.infotext`) and
  `after_image_saved` (with `event.path`);
- `unet_wrappers`: a chain around every UNet call (`modules.engine.sampling.UNetCall`); the first
  registered is the outermost;
- `on_step`: after every finished sampling step (`modules.engine.sampling.StepInfo`).

An `Engine` has one `Hooks` for everything it runs (extensions register there); a single call
of `GenerationService.process` may add its own on top (`Hooks.combined`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from modules.core.requests import GenerationRequest
from modules.engine.sampling import StepInfo, UNetWrapper

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass
class ProcessEvent:
    """Before anything runs for a request (the model is leased, seeds are resolved)."""

    request: GenerationRequest
    seeds: list[int]
    subseeds: list[int]
    model_family: str


@dataclass
class BatchEvent:
    """One batch of a request: `before_batch` (images empty) and `after_batch` (decoded images)."""

    request: GenerationRequest
    batch_number: int  # 0-based, of `n_iter`
    indices: list[int]  # positions of the batch's images in the whole job
    seeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    images: list[Any] = field(default_factory=list)


@dataclass
class HiresEvent:
    """A batch is about to get its hires-fix pass (A1111's `before_hr`)."""

    request: GenerationRequest
    seeds: list[int]
    prompts: list[str]
    width: int  # the hires pass's output size
    height: int


@dataclass
class ImageEvent:
    """One finished image before its infotext is built and it is saved; set `image` to replace it."""

    request: GenerationRequest
    index: int
    image: Any
    params: dict[str, Any]


@dataclass
class SaveEvent:
    """An image about to be saved (`path` None) or just saved (`path` set)."""

    request: GenerationRequest | None  # None for extras and other outputs without a request
    index: int
    image: Any
    infotext: str
    kind: str  # "txt2img", "img2img", "txt2img-grid", ...
    path: Path | None = None


class Event(Generic[E]):
    """An ordered list of listeners for one kind of event. `add` returns the remover."""

    def __init__(self, name: str, listeners: Sequence[Callable[[E], None]] = ()) -> None:
        self.name = name
        self._listeners: list[Callable[[E], None]] = list(listeners)

    def add(self, listener: Callable[[E], None]) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def __len__(self) -> int:
        return len(self._listeners)

    def __iter__(self) -> Iterator[Callable[[E], None]]:
        return iter(list(self._listeners))

    def fire(self, event: E) -> E:
        """Call every listener with `event` (listeners may change its mutable fields); a listener's
        exception propagates: a broken hook fails the job loudly instead of being skipped."""
        for listener in list(self._listeners):
            listener(event)
        return event


class Hooks:
    """Every seam of generation in one object."""

    def __init__(self) -> None:
        self.before_process: Event[ProcessEvent] = Event("before_process")
        self.before_batch: Event[BatchEvent] = Event("before_batch")
        self.after_batch: Event[BatchEvent] = Event("after_batch")
        self.before_hires: Event[HiresEvent] = Event("before_hires")
        self.postprocess_image: Event[ImageEvent] = Event("postprocess_image")
        self.before_image_saved: Event[SaveEvent] = Event("before_image_saved")
        self.after_image_saved: Event[SaveEvent] = Event("after_image_saved")
        self.on_step: Event[StepInfo] = Event("on_step")
        self._wrappers: list[UNetWrapper] = []

    # -- the UNet wrapper chain --------------------------------------------------------------

    def add_unet_wrapper(self, wrapper: UNetWrapper) -> Callable[[], None]:
        """Wrap every UNet call: `wrapper(call, next) -> output`, where `next(call)` runs the rest
        of the chain and the UNet. Returns the remover."""
        self._wrappers.append(wrapper)

        def remove() -> None:
            if wrapper in self._wrappers:
                self._wrappers.remove(wrapper)

        return remove

    @property
    def unet_wrappers(self) -> tuple[UNetWrapper, ...]:
        return tuple(self._wrappers)

    def step_callback(self) -> Callable[[StepInfo], None] | None:
        """The per-step callback for the sampling loop, or None when nobody listens (no cost)."""
        if not len(self.on_step):
            return None
        # `fire` hands the event back; the loop ignores what its callback returns
        return cast("Callable[[StepInfo], None]", self.on_step.fire)

    # -- combining ---------------------------------------------------------------------------

    def combined(self, other: Hooks | None) -> Hooks:
        """A new Hooks with this one's listeners and wrappers first, then `other`'s."""
        if other is None:
            return self
        merged = Hooks()
        for name in (
            "before_process",
            "before_batch",
            "after_batch",
            "before_hires",
            "postprocess_image",
            "before_image_saved",
            "after_image_saved",
            "on_step",
        ):
            mine: Event[Any] = getattr(self, name)
            theirs: Event[Any] = getattr(other, name)
            setattr(merged, name, Event(name, [*mine, *theirs]))
        merged._wrappers = [*self._wrappers, *other._wrappers]
        return merged
