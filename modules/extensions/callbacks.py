"""A1111's `script_callbacks`: every callback an extension registers, by kind, and the engine
hooks that call them.

`CallbackRegistry.add(kind, callback, name=..., filename=...)` records a `ScriptCallback` (the
callback, its unique name `<extension>/<file>/<kind>[/<name>]`, the script file that registered
it); `fire(kind, *args)` calls them in order, as A1111 does: a callback that raises is logged
with its traceback and recorded in `errors`, never raised into the caller; `ui_tabs` collects
the lists the callbacks return, `list_optimizers` / `list_unets` hand every callback one list
and return it, `script_unloaded` and `before_ui` run in reverse order.

Who calls what:

- generation (wired here, on the engine's own `Hooks`, so plain jobs without scripts get them
  too): `before_image_saved` / `image_saved` around every image and grid the engine saves
  (`ImageSaveParams`; a changed `image` or `pnginfo["parameters"]` is what gets saved,
  `filename` is the saved file for `image_saved`), `cfg_denoiser` / `cfg_denoised` around every
  UNet call through the wrapper chain (only while such callbacks exist: no cost otherwise);
  `hooks_for(p)` adds the script's `p` for the save callbacks of a scripted generation.
- the facades: `modules.images.save_image` (the save callbacks) and `image_grid`.
- the composition root and the UI, through `fire`: `app_started`, `before_ui`, `ui_tabs`,
  `ui_train_tabs`, `ui_settings`, `before_component` / `after_component`, `infotext_pasted`,
  `before_token_counter`, `before_reload`, `script_unloaded`; `model_loaded` through
  `model_loaded(info)`, a listener for the model manager's `on_loaded`.
- never: the kinds in `NOT_CALLED` (the engine has no such point); registering one is accepted
  (extension code runs on) and logged once per kind with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.engine.hooks import Hooks, ProcessEvent, SaveEvent
from modules.engine.sampling import TextCond, UNetCall, UNetFn
from modules.extensions import runtime
from modules.extensions.model_views import ModelView
from modules.extensions.processing_api import p_from_request

log = logging.getLogger(__name__)

CALLBACK_KINDS: tuple[str, ...] = (
    "app_started",
    "model_loaded",
    "ui_tabs",
    "ui_train_tabs",
    "ui_settings",
    "before_image_saved",
    "image_saved",
    "extra_noise",
    "cfg_denoiser",
    "cfg_denoised",
    "cfg_after_cfg",
    "before_component",
    "after_component",
    "image_grid",
    "infotext_pasted",
    "script_unloaded",
    "before_ui",
    "list_optimizers",
    "list_unets",
    "before_token_counter",
    "before_reload",
)
"""A1111's callback kinds (`on_<kind>` registers one)."""

NOT_CALLED: dict[str, str] = {
    "extra_noise": "the engine adds img2img / hires noise without a callback point",
    "cfg_after_cfg": "the engine's CFG combine has no callback point after it",
    "list_optimizers": "cross-attention optimisations are not pluggable here",
    "list_unets": "alternative UNet implementations are not pluggable here",
}
"""Kinds this engine never calls, with the reason (logged once when one is registered)."""

_SAVE_KINDS = ("before_image_saved", "image_saved")
_CFG_KINDS = ("cfg_denoiser", "cfg_denoised")
_REVERSED = frozenset({"script_unloaded", "before_ui"})
_LIST_ARG = frozenset({"list_optimizers", "list_unets"})
_MAX_ERRORS = 200


# -- A1111's params classes ------------------------------------------------------------------


class ImageSaveParams:
    """`before_image_saved` / `image_saved`: `image` (PIL), `p`, `filename` (the saved file for
    `image_saved`; the target folder before saving), `pnginfo` (`{"parameters": infotext}`)."""

    def __init__(self, image: Any, p: Any, filename: str | None, pnginfo: dict[str, Any]) -> None:
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class ExtraNoiseParams:
    def __init__(self, noise: Any, x: Any, xi: Any) -> None:
        self.noise = noise
        self.x = x
        self.xi = xi


class CFGDenoiserParams:
    """`cfg_denoiser`, before each UNet call: `x` (the latent input, before the sampler's input
    scaling, as A1111), `image_cond`, `sigma` (per row; the timestep for DDIM/PLMS/UniPC),
    `sampling_step` / `total_sampling_steps` (the job's), `text_cond` / `text_uncond` (the rows'
    hidden states; for SDXL `{"crossattn": ..., "vector": ...}`). Changes to `x`, `image_cond`,
    `text_cond` and `text_uncond` (in place or replaced) are used for the call."""

    def __init__(
        self,
        x: Any,
        image_cond: Any,
        sigma: Any,
        sampling_step: int,
        total_sampling_steps: int,
        text_cond: Any,
        text_uncond: Any,
        denoiser: Any = None,
    ) -> None:
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """`cfg_denoised`, after each UNet call: `x` is the call's output (replace it to change it)."""

    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int, inner_model: Any) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params: Any) -> None:
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs: Any, cols: int, rows: int) -> None:
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list[str]
    is_positive: bool = True


@dataclass
class ScriptCallback:
    """One registered callback (A1111's): the script file that registered it, the callback, its
    unique name."""

    script: str
    callback: Any
    name: str = "unnamed"


@dataclass(frozen=True)
class CallbackError:
    kind: str
    name: str
    script: str
    text: str


# -- the registry ----------------------------------------------------------------------------


class CallbackRegistry:
    """Every registered callback by kind, and the engine hooks that call them."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[ScriptCallback]] = {kind: [] for kind in CALLBACK_KINDS}
        self._lock = threading.RLock()
        self.errors: list[CallbackError] = []
        self._reported: set[tuple[str, str]] = set()
        self._warned_kinds: set[str] = set()
        self._notes: set[str] = set()
        self._hooks: Hooks | None = None  # the engine's, once attached
        self._removers: dict[str, list[Callable[[], None]]] = {}
        self._local = threading.local()

    # -- registering -------------------------------------------------------------------------

    def add(self, kind: str, callback: Any, *, name: str | None = None, filename: str | None = None) -> ScriptCallback:
        """Register `callback` for `kind`; `filename` is the script that registers it."""
        if kind not in self._callbacks:
            raise ValueError(f"unknown callback kind {kind!r}; one of {', '.join(CALLBACK_KINDS)}")
        if not callable(callback):
            raise TypeError(f"on_{kind}: {callback!r} is not callable")
        script = filename or "unknown file"
        base = f"{_extension_name(script)}/{os.path.basename(script)}/{kind}"
        if name is not None:
            base += f"/{name}"
        with self._lock:
            existing = {c.name for c in self._callbacks[kind]}
            unique = base
            for index in range(1, 1000):
                if unique not in existing:
                    break
                unique = f"{base}-{index}"
            entry = ScriptCallback(script, callback, unique)
            self._callbacks[kind].append(entry)
        if kind in NOT_CALLED and kind not in self._warned_kinds:
            self._warned_kinds.add(kind)
            log.warning(
                "callback %s (on_%s) is registered but not called by this engine: %s", unique, kind, NOT_CALLED[kind]
            )
        self._sync_engine_hooks()
        return entry

    def remove_script(self, filename: str) -> int:
        """Remove every callback `filename` registered (A1111's `remove_current_script_callbacks`)."""
        return self._remove(lambda c: c.script == filename)

    def remove_function(self, callback: Any) -> int:
        """Remove every registration of `callback` (A1111's `remove_callbacks_for_function`)."""
        return self._remove(lambda c: c.callback == callback)

    def clear(self) -> None:
        self._remove(lambda _c: True)

    def _remove(self, match: Callable[[ScriptCallback], bool]) -> int:
        removed = 0
        with self._lock:
            for entries in self._callbacks.values():
                gone = [c for c in entries if match(c)]
                for c in gone:
                    entries.remove(c)
                removed += len(gone)
        self._sync_engine_hooks()
        return removed

    def callbacks(self, kind: str) -> list[ScriptCallback]:
        """The callbacks of `kind`, in calling order."""
        with self._lock:
            entries = list(self._callbacks[kind])
        return entries[::-1] if kind in _REVERSED else entries

    def has(self, kind: str) -> bool:
        return bool(self._callbacks[kind])

    @property
    def callback_map(self) -> dict[str, list[ScriptCallback]]:
        """A1111's `script_callbacks.callback_map` (`callbacks_<kind>` -> the live list)."""
        return {
            ("callbacks_on_reload" if k == "before_reload" else f"callbacks_{k}"): v for k, v in self._callbacks.items()
        }

    # -- calling -----------------------------------------------------------------------------

    def fire(self, kind: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call every callback of `kind`; returns their results (`ui_tabs`: the tabs they return,
        all in one list; `list_optimizers` / `list_unets`: the list they filled). A callback that
        raises is logged and recorded in `errors`; the others still run."""
        if kind not in self._callbacks:
            raise ValueError(f"unknown callback kind {kind!r}")
        if kind in _LIST_ARG and not args:
            collected: list[Any] = []
            for entry in self.callbacks(kind):
                self._call(kind, entry, collected)
            return collected
        results: list[Any] = []
        for entry in self.callbacks(kind):
            ok, value = self._call(kind, entry, *args, **kwargs)
            if not ok:
                continue
            if kind == "ui_tabs":
                results.extend(value or [])
            else:
                results.append(value)
        return results

    def _call(self, kind: str, entry: ScriptCallback, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        try:
            return True, entry.callback(*args, **kwargs)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            key = (kind, entry.name)
            if key not in self._reported:  # once with the traceback; a per-step callback would flood
                self._reported.add(key)
                log.error(
                    "Error executing callback %s_callback for %s\n%s",
                    kind,
                    entry.script,
                    "".join(traceback.format_exception(exc)),
                )
            else:
                log.debug("callback %s failed again: %s", entry.name, text)
            with self._lock:
                if len(self.errors) < _MAX_ERRORS:
                    self.errors.append(CallbackError(kind, entry.name, entry.script, text))
            job = runtime.current_job()
            warning = f"callback {entry.name} failed: {text}"
            if job is not None and warning not in job.warnings:
                job.warnings.append(warning)
            return False, None

    def model_loaded(self, _info: Any = None) -> None:
        """A listener for the model manager's `on_loaded`: `model_loaded` callbacks get the loaded
        model's view (`shared.sd_model`)."""
        if not self.has("model_loaded"):
            return
        env = runtime.maybe_environment()
        view = ModelView.current(env) if env is not None else None
        self.fire("model_loaded", view)

    # -- engine hooks ------------------------------------------------------------------------

    def attach(self, hooks: Hooks) -> None:
        """Call the generation callbacks from `hooks` (the engine's own: every generation job)."""
        if self._hooks is hooks:
            return
        self.detach()
        self._hooks = hooks
        self._sync_engine_hooks()

    def detach(self) -> None:
        for removers in self._removers.values():
            for remove in removers:
                remove()
        self._removers.clear()
        self._hooks = None

    def _ensure_attached(self) -> None:
        if self._hooks is not None:
            return
        env = runtime.maybe_environment()
        if env is not None and env.callbacks is self and env.engine is not None:
            self.attach(env.engine.hooks)

    def _sync_engine_hooks(self) -> None:
        """Listeners on the engine's hooks exactly while callbacks need them."""
        self._ensure_attached()
        hooks = self._hooks
        if hooks is None:
            return
        with self._lock:
            for group, kinds in (("save", _SAVE_KINDS), ("cfg", _CFG_KINDS)):
                wanted = any(self._callbacks[k] for k in kinds)
                present = group in self._removers
                if wanted and not present:
                    self._removers[group] = self._install(hooks, group)
                elif present and not wanted:
                    for remove in self._removers.pop(group):
                        remove()

    def _install(self, hooks: Hooks, group: str) -> list[Callable[[], None]]:
        if group == "save":
            return [
                hooks.before_process.add(self._forget_p),
                hooks.before_image_saved.add(self._before_image_saved),
                hooks.after_image_saved.add(self._after_image_saved),
            ]
        return [hooks.add_unet_wrapper(self._unet_wrapper)]

    def hooks_for(self, p: Any) -> Hooks:
        """The hooks for one generation of a script's `p`: the save callbacks get this `p`. (The
        callbacks themselves are called from the engine's hooks; a registry not attached to an
        engine puts them here.)"""
        self._ensure_attached()
        hooks = Hooks()
        if self._hooks is None:
            for group, kinds in (("save", _SAVE_KINDS), ("cfg", _CFG_KINDS)):
                if any(self._callbacks[k] for k in kinds):
                    self._install(hooks, group)
        if any(self._callbacks[k] for k in _SAVE_KINDS):

            def remember(_event: ProcessEvent) -> None:
                self._local.p = p

            hooks.before_process.add(remember)
        return hooks

    # -- save callbacks ----------------------------------------------------------------------

    def _forget_p(self, _event: ProcessEvent) -> None:
        self._local.p = None
        self._local.params = {}

    def _p_for(self, event: SaveEvent) -> Any:
        p = getattr(self._local, "p", None)
        if p is not None or event.request is None:
            return p
        p = p_from_request(event.request)
        self._local.p = p
        return p

    def _params_store(self) -> dict[int, ImageSaveParams]:
        store: dict[int, ImageSaveParams] | None = getattr(self._local, "params", None)
        if store is None:
            store = self._local.params = {}
        return store

    def _before_image_saved(self, event: SaveEvent) -> None:
        if not self.has("before_image_saved") and not self.has("image_saved"):
            return
        folder = self._target_folder(event)
        params = ImageSaveParams(event.image, self._p_for(event), folder, {"parameters": event.infotext})
        self._params_store()[id(event)] = params
        if not self.has("before_image_saved"):
            return
        self.fire("before_image_saved", params)
        event.image = params.image
        text = params.pnginfo.get("parameters")
        event.infotext = "" if text is None else str(text)
        if params.filename != folder:
            self._note(
                "filename",
                "before_image_saved: a changed params.filename is not used (the saver names files when it writes them)",
            )

    def _after_image_saved(self, event: SaveEvent) -> None:
        params = self._params_store().pop(id(event), None)
        if not self.has("image_saved"):
            return
        if params is None:
            params = ImageSaveParams(event.image, self._p_for(event), None, {"parameters": event.infotext})
        params.image = event.image
        params.filename = str(event.path) if event.path is not None else None
        self.fire("image_saved", params)

    @staticmethod
    def _target_folder(event: SaveEvent) -> str | None:
        env = runtime.maybe_environment()
        if env is None or env.saver is None:
            return None
        kind = event.kind.removesuffix("-grid")
        try:
            folder = env.saver.grids_dir(kind) if event.kind.endswith("-grid") else env.saver.samples_dir(kind)
        except ValueError:
            return None
        return str(folder)

    # -- cfg callbacks -----------------------------------------------------------------------

    def _unet_wrapper(self, call: UNetCall, next_call: UNetFn) -> torch.Tensor:
        denoiser = self.has("cfg_denoiser")
        denoised = self.has("cfg_denoised")
        if not denoiser and not denoised:
            return next_call(call)
        step, total = _job_steps(call)
        if denoiser:
            call = self._cfg_denoiser(call, step, total)
        out = next_call(call)
        if denoised:
            params = CFGDenoisedParams(out, step, total, None)
            self.fire("cfg_denoised", params)
            out = params.x
        return out

    def _cfg_denoiser(self, call: UNetCall, step: int, total: int) -> UNetCall:
        rows = call.x.shape[0]
        # A1111 hands the latent before the sampler's input scaling (x * c_in, c_in = 1/sqrt(sigma^2+1))
        c_in = None if call.sigma is None else 1.0 / (call.sigma**2 + 1.0) ** 0.5
        x = call.x if c_in is None else call.x / c_in
        before = _Unchanged(x)
        if call.sigma is None:
            sigma = call.timestep
        else:
            sigma = torch.full((rows,), float(call.sigma), device=call.x.device, dtype=torch.float32)
        n_cond = _cond_rows(call)
        cond = _text_rows(call.text, 0, n_cond) if n_cond else None
        uncond = _text_rows(call.text, n_cond, rows) if n_cond < rows else None
        given = (_parts(cond), _parts(uncond))
        params = CFGDenoiserParams(x, call.image_cond, sigma, step, total, cond, uncond, None)
        self.fire("cfg_denoiser", params)
        changes: dict[str, Any] = {}
        if not before.holds(params.x):
            changes["x"] = params.x if c_in is None else params.x * c_in
        if params.image_cond is not call.image_cond:
            changes["image_cond"] = params.image_cond
        # in-place changes of the text rows reach the call already (they are views of its rows)
        now = (_parts(params.text_cond), _parts(params.text_uncond))
        if any(
            a is not b
            for pair_given, pair_now in zip(given, now, strict=True)
            for a, b in zip(pair_given, pair_now, strict=True)
        ):
            changes["text"] = _join_text(params.text_cond, params.text_uncond, call.text)
        return dataclasses.replace(call, **changes) if changes else call

    # -- notes -------------------------------------------------------------------------------

    def _note(self, key: str, text: str) -> None:
        if key not in self._notes:
            self._notes.add(key)
            log.warning("%s", text)


def _extension_name(script: str) -> str:
    """The extension a script file belongs to (its folder under `extensions/`), else "base"."""
    env = runtime.maybe_environment()
    if env is not None:
        path = Path(script)
        for root in (env.paths.extensions_dir, env.paths.extensions_builtin_dir):
            try:
                rel = path.resolve().relative_to(Path(root).resolve())
            except (ValueError, OSError):
                continue
            if rel.parts:
                return rel.parts[0]
    return "base"


def _job_steps(call: UNetCall) -> tuple[int, int]:
    """(sampling_step, sampling_steps) of the running job, as A1111's `state` has them."""
    job = runtime.current_job()
    if job is not None:
        return job.ctx.sampling_step, job.ctx.sampling_steps
    env = runtime.maybe_environment()
    if env is not None and env.engine is not None:
        state = env.engine.progress(with_preview=False).get("state", {})
        if state.get("sampling_steps"):
            return int(state.get("sampling_step", 0)), int(state["sampling_steps"])
    return call.step, call.steps


def _cond_rows(call: UNetCall) -> int:
    """How many leading rows of the call are positive-prompt rows (the rest: negative)."""
    rows = call.x.shape[0]
    if call.part in ("cond", "image"):
        return rows
    if call.part in ("uncond", "none"):
        return 0
    batch = max(call.owners) + 1 if call.owners else 0  # "cond+uncond": one negative row per image last
    return max(rows - batch, 0)


def _text_rows(text: TextCond, start: int, end: int) -> Any:
    hidden = text.hidden[start:end]
    if text.pooled is None:
        return hidden
    return {"crossattn": hidden, "vector": text.pooled[start:end]}


def _parts(piece: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if piece is None:
        return None, None
    if isinstance(piece, dict):
        return piece.get("crossattn"), piece.get("vector")
    return piece, None


class _Unchanged:
    """Whether a tensor handed to a callback is still the same tensor with the same values (by
    its version counter; by a copy for tensors that have none)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        try:
            self.version: int | None = tensor._version
            self.copy: torch.Tensor | None = None
        except RuntimeError:  # inference-mode tensors track no version
            self.version = None
            self.copy = tensor.clone()

    def holds(self, now: Any) -> bool:
        if now is not self.tensor:
            return False
        if self.version is not None:
            return bool(now._version == self.version)
        return self.copy is not None and bool(torch.equal(now, self.copy))


def _join_text(cond: Any, uncond: Any, before: TextCond) -> TextCond:
    hidden = [h for h in (_parts(cond)[0], _parts(uncond)[0]) if h is not None]
    pooled = [v for v in (_parts(cond)[1], _parts(uncond)[1]) if v is not None]
    return TextCond(
        torch.cat(hidden) if hidden else before.hidden,
        torch.cat(pooled) if pooled and before.pooled is not None else before.pooled,
    )
