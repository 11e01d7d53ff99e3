"""The script runner: A1111's `ScriptRunner` over our engine (it is the engine's `ScriptHost`).

Scripts come from `modules.extensions.loading` as classes; each tab (txt2img, img2img) gets its own
instances, as in A1111. A tab's arguments are one list: index 0 is the selected script's number in
the Script dropdown (0 = None), then every always-on script's arguments, then every selectable
script's (`args_from` / `args_to`). The values come from the controls a script's `ui()` returns:
in the page from the user, through the API from `script_args` (the selected script's slice) and
`alwayson_scripts` (`{"name": {"args": [...]}}`, or args as a dict by index or control label), over
the controls' default values.

A scripted job (`run`) makes a `p` from the request, runs the always-on `setup`, then the selected
script's `run(p, *args)` (or `process_images(p)`), all on the worker inside one job. An always-on
script method that raises is logged and reported in the result's warnings (A1111 goes on too); a
selectable script that raises fails the job.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.core.errors import NotFoundError, ValidationError
from modules.core.requests import GenerationRequest, Img2ImgRequest
from modules.core.results import Result
from modules.engine.hooks import BatchEvent, HiresEvent, Hooks, ImageEvent
from modules.engine.worker import JobContext
from modules.extensions import runtime
from modules.extensions.processing_api import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    p_from_request,
    process_images,
)
from modules.extensions.script_base import (
    AlwaysVisible,
    PostprocessBatchListArgs,
    PostprocessImageArgs,
    Script,
    overridden_uncalled,
)

log = logging.getLogger(__name__)

# A1111's built-in UI sections are always-on scripts there (`alwayson_scripts` may name them);
# here they are request fields, so their args are not read: a warning says which field to use
BUILTIN_UI_SCRIPTS: dict[str, str] = {
    "sampler": "sampler_name, scheduler and steps",
    "seed": "seed, subseed, subseed_strength and seed_resize_from_w/h",
    "refiner": "refiner_checkpoint and refiner_switch_at",
    "comments": "comments",
}


@dataclass
class ScriptClass:
    """A script class found in a file, with where it came from."""

    cls: type[Script]
    path: Path
    basedir: Path
    extension: str | None = None  # the extension's folder name; None for built-in scripts


@dataclass
class ArgInfo:
    """One control of a script's `ui()`: what `/script-info` shows and the default value."""

    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None
    component: Any = None


@dataclass
class TabScripts:
    """One tab's script instances and their argument layout."""

    is_img2img: bool
    scripts: list[Script] = field(default_factory=list)
    alwayson: list[Script] = field(default_factory=list)
    selectable: list[Script] = field(default_factory=list)
    args: list[ArgInfo] = field(default_factory=list)  # index 0 is the script selector
    laid_out: bool = False

    @property
    def tabname(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"


class ScriptRunner:
    """Both tabs' scripts; the engine's `ScriptHost`."""

    def __init__(
        self,
        classes: Sequence[ScriptClass],
        *,
        on_error: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.classes = list(classes)
        self.on_error = on_error or (lambda _ext, _text: None)
        self.load_warnings: list[str] = []
        self.txt2img = self._instantiate(False)
        self.img2img = self._instantiate(True)

    # -- building ----------------------------------------------------------------------------

    def _instantiate(self, is_img2img: bool) -> TabScripts:
        tab = TabScripts(is_img2img)
        for found in self.classes:
            try:
                script = found.cls()
                script.filename = str(found.path)
                script.is_img2img = is_img2img
                script.is_txt2img = not is_img2img
                script.tabname = tab.tabname
                script.basedir = str(found.basedir)  # type: ignore[attr-defined]
                visibility = script.show(is_img2img)
                if visibility is False or visibility is None:
                    continue
                script.name = str(script.title()).lower()
                script.alwayson = visibility is AlwaysVisible
            except Exception as exc:  # a broken script never takes the others down
                self._report(found.extension, f"{found.path.name}: {type(exc).__name__}: {exc}", exc)
                continue
            uncalled = overridden_uncalled(script)
            if uncalled and not is_img2img:
                self.load_warnings.append(
                    f"script {script.title()!r} ({found.path.name}) overrides {', '.join(uncalled)}, "
                    "which this engine never calls"
                )
                log.warning("%s", self.load_warnings[-1])
            tab.scripts.append(script)
            (tab.alwayson if script.alwayson else tab.selectable).append(script)
        return tab

    def _report(self, extension: str | None, text: str, exc: BaseException | None = None) -> None:
        if exc is not None:
            log.error("script error: %s\n%s", text, "".join(traceback.format_exception(exc)))
        else:
            log.error("script error: %s", text)
        self.on_error(extension, text)

    def tab(self, is_img2img: bool) -> TabScripts:
        return self.img2img if is_img2img else self.txt2img

    def tab_for(self, request: GenerationRequest) -> TabScripts:
        return self.tab(isinstance(request, Img2ImgRequest))

    def layout(self, tab: TabScripts, build: Callable[[Script], Any] | None = None) -> TabScripts:
        """Give every script its `args_from` / `args_to` and read its controls' defaults. `build`
        makes one script's controls (the page does it inside its own layout); without it they are
        made in a throwaway Blocks (API-only servers, `/script-info`)."""
        if tab.laid_out and build is None:
            return tab
        tab.args = [ArgInfo(label="Script", value=0)]
        if build is None:
            import gradio as gr  # only to read the controls' defaults

            with gr.Blocks():
                self._layout_scripts(tab, lambda s: s.ui(tab.is_img2img))
        else:
            self._layout_scripts(tab, build)
        tab.laid_out = True
        return tab

    def _layout_scripts(self, tab: TabScripts, build: Callable[[Script], Any]) -> None:
        for script in [*tab.alwayson, *tab.selectable]:
            start = len(tab.args)
            try:
                controls = build(script)
            except Exception as exc:
                self._report(_extension_of(script, self.classes), f"{script.title()}: ui(): {exc}", exc)
                controls = None
            controls = [] if controls is None else list(controls)
            script.controls = controls
            tab.args.extend(arg_info(c) for c in controls)
            script.args_from, script.args_to = start, len(tab.args)

    # -- what the API lists ------------------------------------------------------------------

    def titles(self, is_img2img: bool) -> list[str]:
        """`/sdapi/v1/scripts`: the lower-cased titles of the tab's scripts (A1111 lists all)."""
        return [s.name for s in self.tab(is_img2img).scripts if s.name]

    def selectable_titles(self, is_img2img: bool) -> list[str]:
        return [s.title() for s in self.tab(is_img2img).selectable]

    def script_info(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for tab in (self.txt2img, self.img2img):
            self.layout(tab)
            for script in tab.scripts:
                args = tab.args[script.args_from or 0 : script.args_to or 0]
                out.append(
                    {
                        "name": script.name,
                        "is_alwayson": script.alwayson,
                        "is_img2img": tab.is_img2img,
                        "args": [_arg_json(a) for a in args],
                    }
                )
        return out

    # -- the engine's ScriptHost -------------------------------------------------------------

    def names(self, request: GenerationRequest) -> list[str]:
        return [s.title() for s in self.tab_for(request).alwayson] + list(BUILTIN_UI_SCRIPTS)

    def wants(self, request: GenerationRequest) -> bool:
        tab = self.tab_for(request)
        return bool(request.script_name) or any(not s.setup_for_ui_only for s in tab.alwayson)

    def check(self, request: GenerationRequest) -> list[str]:
        tab = self.tab_for(request)
        warnings: list[str] = []
        if request.script_name:
            self.find_selectable(tab, request.script_name)
        for name in request.alwayson_scripts or {}:
            key = str(name).lower()
            if key in BUILTIN_UI_SCRIPTS and not self._find_alwayson(tab, key):
                warnings.append(
                    f"alwayson_scripts: {name!r} is a built-in section here; its args were not read "
                    f"(use the request fields {BUILTIN_UI_SCRIPTS[key]})"
                )
                continue
            if self._find_alwayson(tab, key) is None:
                raise ValidationError(f"always on script {name} not found")
        return warnings

    def find_selectable(self, tab: TabScripts, name: str) -> Script:
        key = name.lower()
        for script in tab.selectable:
            if script.name == key:
                return script
        # A1111 answers 422 for a selectable script it does not have
        raise ValidationError(f"Selectable script not found: {name!r}")

    def _find_alwayson(self, tab: TabScripts, key: str) -> Script | None:
        for script in tab.alwayson:
            if script.name == key:
                return script
        return None

    def script_args_for(self, request: GenerationRequest) -> list[Any]:
        """The tab's full argument list for an API request (A1111's `init_script_args`)."""
        tab = self.layout(self.tab_for(request))
        args = [a.value for a in tab.args]
        args[0] = 0
        if request.script_name:
            script = self.find_selectable(tab, request.script_name)
            start, end = script.args_from or 0, script.args_to or 0
            given = list(request.script_args)
            args[start : start + min(len(given), end - start)] = given[: end - start]
            args[0] = tab.selectable.index(script) + 1
        for name, entry in (request.alwayson_scripts or {}).items():
            found = self._find_alwayson(tab, str(name).lower())
            if found is None:
                continue
            raw = entry.get("args") if isinstance(entry, dict) else entry
            start, end = found.args_from or 0, found.args_to or 0
            if isinstance(raw, dict):
                labels = [a.label for a in tab.args[start:end]]
                for key, value in raw.items():
                    if str(key).isdigit() and int(key) < end - start:
                        args[start + int(key)] = value
                    elif key in labels:
                        args[start + labels.index(key)] = value
                    else:
                        raise ValidationError(f"alwayson_scripts: {name}: no argument {key!r}")
            elif isinstance(raw, list | tuple):
                for i, value in enumerate(list(raw)[: end - start]):
                    args[start + i] = value
        return args

    def run(
        self,
        request: GenerationRequest,
        ctx: JobContext,
        process: Callable[[GenerationRequest, Hooks | None], Result],
        *,
        script_args: list[Any] | None = None,
    ) -> Result:
        """One scripted job. `script_args` is the full list when the page sends it; the API's is
        built from the request."""
        tab = self.tab_for(request)
        args = list(script_args) if script_args is not None else self.script_args_for(request)
        p = p_from_request(request)
        p.scripts = self
        p.script_args = args
        p.is_api = script_args is None
        job = runtime.ScriptJob(ctx, process, request, is_api=p.is_api)
        with runtime.running(job):
            self._call_alwayson(tab, "setup", p)
            selected = _selected(tab, args)
            processed: Processed | None = None
            if selected is not None:
                processed = selected.run(p, *args[selected.args_from or 0 : selected.args_to or 0])
            if processed is None:
                processed = process_images(p)
        result = processed.to_result()
        result.warnings.extend(w for w in job.warnings if w not in result.warnings)
        return result

    # -- always-on scripts around one process_images ----------------------------------------

    def _call_alwayson(
        self, tab: TabScripts, method: str, p: StableDiffusionProcessing, *extra: Any, **kw: Any
    ) -> None:
        args = list(p.script_args or [])
        for script in tab.alwayson:
            if script.setup_for_ui_only:
                continue
            try:
                getattr(script, method)(p, *extra, *args[script.args_from or 0 : script.args_to or 0], **kw)
            except Exception as exc:
                text = f"script {script.title()!r} failed in {method}: {type(exc).__name__}: {exc}"
                log.error("%s\n%s", text, "".join(traceback.format_exception(exc)))
                job = runtime.current_job()
                if job is not None and text not in job.warnings:
                    job.warnings.append(text)

    def _tab_of(self, p: StableDiffusionProcessing) -> TabScripts:
        return self.tab(isinstance(p, StableDiffusionProcessingImg2Img))

    def before_process(self, p: StableDiffusionProcessing) -> None:
        self._call_alwayson(self._tab_of(p), "before_process", p)

    def process(self, p: StableDiffusionProcessing) -> None:
        self._call_alwayson(self._tab_of(p), "process", p)

    def postprocess(self, p: StableDiffusionProcessing, processed: Processed) -> None:
        self._call_alwayson(self._tab_of(p), "postprocess", p, processed)

    def hooks_for(self, p: StableDiffusionProcessing) -> Hooks:
        """The engine hooks that call the tab's always-on scripts for one generation of `p`."""
        tab = self._tab_of(p)
        hooks = Hooks()
        if not [s for s in tab.alwayson if not s.setup_for_ui_only]:
            return hooks

        def before_batch(event: BatchEvent) -> None:
            p.iteration = event.batch_number
            p.prompts, p.negative_prompts = list(event.prompts), list(event.negative_prompts)
            p.seeds = list(event.seeds)
            p.subseeds = [p.all_subseeds[i] for i in event.indices if i < len(p.all_subseeds)]
            p.is_hr_pass = False
            kw = {"batch_number": event.batch_number, "prompts": p.prompts, "seeds": p.seeds, "subseeds": p.subseeds}
            self._call_alwayson(tab, "before_process_batch", p, **kw)
            self._call_alwayson(tab, "process_batch", p, **kw)
            self._call_alwayson(tab, "process_before_every_sampling", p, **kw)

        def before_hires(event: HiresEvent) -> None:
            p.is_hr_pass = True
            self._call_alwayson(tab, "before_hr", p)
            kw = {"batch_number": p.iteration, "prompts": p.prompts, "seeds": p.seeds, "subseeds": p.subseeds}
            self._call_alwayson(tab, "process_before_every_sampling", p, **kw)

        def after_batch(event: BatchEvent) -> None:
            event.images = _postprocess_batch(self, tab, p, event)
            pp = PostprocessBatchListArgs(list(event.images))
            self._call_alwayson(tab, "postprocess_batch_list", p, pp, batch_number=event.batch_number)
            if pp.images != event.images:
                event.images = list(pp.images)
                event.prompts, event.negative_prompts = list(p.prompts), list(p.negative_prompts)
                event.seeds = list(p.seeds)

        def postprocess_image(event: ImageEvent) -> None:
            pp = PostprocessImageArgs(event.image)
            p.batch_index = event.index % max(p.batch_size, 1)
            self._call_alwayson(tab, "postprocess_image", p, pp)
            self._call_alwayson(tab, "postprocess_image_after_composite", p, pp)
            event.image = pp.image

        hooks.before_batch.add(before_batch)
        hooks.before_hires.add(before_hires)
        hooks.after_batch.add(after_batch)
        hooks.postprocess_image.add(postprocess_image)
        return hooks


def _postprocess_batch(
    runner: ScriptRunner, tab: TabScripts, p: StableDiffusionProcessing, event: BatchEvent
) -> list[Any]:
    """A1111's `postprocess_batch` gets the batch as a float tensor in 0..1 (N, C, H, W); values a
    script changes in it are kept. Only made when a script overrides the method."""
    if not any(type(s).postprocess_batch is not Script.postprocess_batch for s in tab.alwayson):
        return list(event.images)
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in event.images]
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    before = tensor.clone()
    runner._call_alwayson(tab, "postprocess_batch", p, images=tensor, batch_number=event.batch_number)
    if torch.equal(before, tensor):
        return list(event.images)
    out = (tensor.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
    return [Image.fromarray(a) for a in out]


def _selected(tab: TabScripts, args: Sequence[Any]) -> Script | None:
    index = args[0] if args else 0
    if isinstance(index, str):  # the page's dropdown may hand the title
        for script in tab.selectable:
            if script.title() == index or script.name == index.lower():
                return script
        return None
    if not index:
        return None
    if not 0 < int(index) <= len(tab.selectable):
        raise NotFoundError(f"no script number {index}")
    return tab.selectable[int(index) - 1]


def _extension_of(script: Script, classes: Iterable[ScriptClass]) -> str | None:
    for found in classes:
        if isinstance(script, found.cls):
            return found.extension
    return None


def arg_info(component: Any) -> ArgInfo:
    """What `/script-info` says of one control (A1111's ScriptArg fields)."""
    choices = getattr(component, "choices", None)
    if choices is not None:
        choices = [c[0] if isinstance(c, list | tuple) else c for c in choices]
        choices = [str(c) for c in choices]
    value = getattr(component, "value", None)
    if callable(value):
        value = None
    return ArgInfo(
        label=getattr(component, "label", None),
        value=value,
        minimum=getattr(component, "minimum", None),
        maximum=getattr(component, "maximum", None),
        step=getattr(component, "step", None),
        choices=choices,
        component=component,
    )


def _arg_json(arg: ArgInfo) -> dict[str, Any]:
    value = arg.value
    try:
        import json

        json.dumps(value)
    except (TypeError, ValueError):
        value = None
    return {
        "label": arg.label,
        "value": value,
        "minimum": arg.minimum,
        "maximum": arg.maximum,
        "step": arg.step,
        "choices": arg.choices,
    }
