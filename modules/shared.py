"""A1111's `modules.shared` for extension code (a facade: internal packages never import it).

Views over the running app (the installed `ScriptEnvironment`), read at each access:

- `opts`: the app's `Options` with A1111's surface: attribute get/set, `opts.data`,
  `opts.data_labels`, `opts.add_option(key, OptionInfo(...))` (a real option: listed by
  `GET /sdapi/v1/options`, settable by `POST /options`, saved in config.json),
  `opts.onchange(key, fn)`, `opts.set(...)`, `opts.save()`; `options_templates.update(...)` adds
  options too. Options whose default is not a bool/int/float/str/list are kept for extension code
  only (logged: they are not in the API).
- `state`: the running job (A1111's `shared.state` fields over the worker's `JobContext`).
- `cmd_opts`: the command-line flags (`Settings`, paths as strings, extensions' `preload.py` flags).
- `sd_model` (a description of the loaded checkpoint, `modules.extensions.model_views`),
  `sd_upscalers`, `face_restorers`, `prompt_styles`, `hypernetworks`, `device`, the paths.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, ClassVar

from modules import paths_internal
from modules.core.atomic import atomic_write_json
from modules.core.errors import SdWebuiError
from modules.core.option_defaults import SECTIONS
from modules.core.option_info import OptionInfo as CoreOptionInfo
from modules.core.options import Options
from modules.extensions import runtime
from modules.extensions.model_views import ModelView
from modules.paths_internal import (  # noqa: F401  (A1111 names)
    default_sd_model_file,
    script_path,
    sd_configs_path,
    sd_default_config,
    sd_model_file,
)

log = logging.getLogger(__name__)

# -- A1111's option descriptions ------------------------------------------------------------


class OptionInfo:
    """A1111's `shared.OptionInfo`: a setting's default, label, Gradio component and section."""

    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Callable[[], Any] | None = None,
        section: Any = None,
        refresh: Any = None,
        comment_before: str = "",
        comment_after: str = "",
        infotext: str | None = None,
        restrict_api: bool = False,
        category_id: str | None = None,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label: str, url: str) -> OptionInfo:
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label: str, js_func: str) -> OptionInfo:
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html: str) -> OptionInfo:
        self.comment_after += html
        return self

    def needs_restart(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class OptionHTML(OptionInfo):
    """A text block among the settings (nothing is stored)."""

    def __init__(self, text: str) -> None:
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def options_section(section_identifier: tuple[str, ...], options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    """Put every option of `options_dict` into section `(id, label[, category])`."""
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


class _Categories:
    def __init__(self) -> None:
        self.mapping: dict[str, str] = {}

    def register_category(self, category_id: str, label: str) -> str:
        self.mapping.setdefault(category_id, label)
        return category_id


categories = _Categories()

_TAGS = re.compile(r"<[^>]+>")


def _section_of(info: OptionInfo) -> str:
    section = info.section
    if isinstance(section, list | tuple) and section and section[0]:
        if len(section) > 1 and section[1]:
            SECTIONS.setdefault(str(section[0]), str(section[1]))  # the Settings tab's label for it
        return str(section[0])
    SECTIONS.setdefault("uncategorized", "Uncategorized")
    return "uncategorized"


def _component_args(info: OptionInfo) -> dict[str, Any]:
    args = info.component_args
    try:
        args = args() if callable(args) else args
    except Exception as exc:  # an extension's lambda that fails: the option works without its hints
        log.warning("option %r: component_args failed: %s", info.label, exc)
        return {}
    return dict(args) if isinstance(args, Mapping) else {}


def _choice_values(choices: Any) -> list[Any]:
    out: list[Any] = []
    for choice in choices or []:
        out.append(choice[1] if isinstance(choice, list | tuple) and len(choice) == 2 else choice)
    return out


def _core_info(key: str, info: OptionInfo, current: Callable[[], Any]) -> CoreOptionInfo | None:
    """Our OptionInfo for A1111's, or None when its default has no type an option can have."""
    default = info.default
    if isinstance(default, bool):
        kind: type = bool
    elif isinstance(default, int):
        kind = int
    elif isinstance(default, float):
        kind = float
    elif isinstance(default, str):
        kind = str
    elif isinstance(default, list | tuple):
        kind, default = list, list(default)
    else:
        return None
    args = _component_args(info)
    minimum, maximum, step = args.get("minimum"), args.get("maximum"), args.get("step")
    if kind is int and any(isinstance(v, float) and not float(v).is_integer() for v in (minimum, maximum, step)):
        kind, default = float, float(default)
    in_range = (
        kind in (int, float)
        and isinstance(minimum, int | float)
        and isinstance(maximum, int | float)
        and minimum <= default <= maximum
    )
    choices = None
    if "choices" in args and kind in (str, int, float, list):

        def choices() -> list[Any]:  # the component's choices now, and the value set now (kept valid)
            now = _choice_values(_component_args(info).get("choices"))
            value = current()
            for item in value if isinstance(value, list) else [value]:
                if item not in now:
                    now.append(item)
            return now

    comment = _TAGS.sub("", f"{info.comment_before} {info.comment_after}").strip()
    return CoreOptionInfo(
        key=key,
        default=default,
        label=info.label or key,
        section=_section_of(info),
        type=kind,
        choices=choices,
        minimum=float(minimum) if in_range else None,  # type: ignore[arg-type]
        maximum=float(maximum) if in_range else None,  # type: ignore[arg-type]
        step=float(step) if in_range and isinstance(step, int | float) else None,
        restrict_api=bool(info.restrict_api),
        requires_restart="(requires restart)" in info.comment_after,
        comment=comment,
    )


def _a1111_info(info: CoreOptionInfo) -> OptionInfo:
    """A1111's view of one of our options (for `opts.data_labels`)."""
    args: dict[str, Any] = {}
    if info.choices is not None:
        args["choices"] = info.choice_list()
    for name in ("minimum", "maximum", "step"):
        if getattr(info, name) is not None:
            args[name] = getattr(info, name)
    out = OptionInfo(
        info.default_value(),
        info.label,
        component_args=args or None,
        section=(info.section, SECTIONS.get(info.section, info.section)),
        restrict_api=info.restrict_api,
    )
    if info.requires_restart:
        out.needs_restart()
    return out


# -- opts ------------------------------------------------------------------------------------


def _options() -> Options:
    return runtime.environment().options


class _OptionsData(MutableMapping[str, Any]):
    """A1111's `opts.data`: every option's value (set, else default) and unknown stored keys."""

    def __getitem__(self, key: str) -> Any:
        local = opts._local_values
        if key in local:
            return local[key]
        options = _options()
        if key not in options and key not in options.stored():
            raise KeyError(key)
        return options.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(opts, key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("options cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter([*_options().as_dict(), *opts._local_values])

    def __len__(self) -> int:
        return len(_options().as_dict()) + len(opts._local_values)

    def __contains__(self, key: object) -> bool:
        options = _options()
        return key in opts._local_values or key in options or key in options.stored()


class _Options:
    """`shared.opts`: the app's options with A1111's surface."""

    typemap: ClassVar[dict[type, type]] = {int: float}
    _own = frozenset({"_local_values", "_labels", "_unsubscribe", "_lock"})

    def __init__(self) -> None:
        object.__setattr__(self, "_local_values", {})  # options kept for extension code only
        object.__setattr__(self, "_labels", {})  # A1111 OptionInfo of options extensions added
        object.__setattr__(self, "_unsubscribe", {})
        object.__setattr__(self, "_lock", threading.RLock())

    _local_values: dict[str, Any]
    _labels: dict[str, OptionInfo]
    _unsubscribe: dict[str, Callable[[], None]]
    _lock: threading.RLock

    # attribute access
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._local_values:
            return self._local_values[name]
        options = _options()
        if name in options or name in options.stored():
            return options.get(name)
        raise AttributeError(f"shared.opts has no option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            object.__setattr__(self, name, value)
            return
        if name in self._local_values:
            self._local_values[name] = value
            return
        options = _options()
        if name in options:
            options.set(name, value)
            return
        object.__setattr__(self, name, value)

    @property
    def data(self) -> _OptionsData:
        return _OptionsData()

    @property
    def data_labels(self) -> dict[str, OptionInfo]:
        out = {key: _a1111_info(info) for key, info in _options().infos().items()}
        out.update(self._labels)
        return out

    def add_option(self, key: str, info: OptionInfo) -> None:
        """Register an extension's option (A1111's `opts.add_option`)."""
        with self._lock:
            self._labels[key] = info
            if info.do_not_save:  # OptionHTML: text for the Settings page, not a value
                return
            options = _options()
            core = _core_info(key, info, lambda: options.get(key))
            if core is None:
                if key not in self._local_values:
                    self._local_values[key] = info.default
                    log.warning(
                        "option %r (default %r) is kept for extension code only: an option here holds a "
                        "bool, number, text or list, so it is not in /sdapi/v1/options or config.json",
                        key,
                        info.default,
                    )
                return
            options.add_option(core)
            stored = options.stored()
            if key in stored:  # a value from config.json: checked now that the option is known
                try:
                    core.coerce(stored[key], check_dynamic_choices=False)
                except SdWebuiError as exc:
                    log.warning("option %s: the stored value is not valid (%s); using the default", key, exc)
                    options.set_readonly(key, core.default_value())
            if info.onchange is not None:
                self._subscribe(key, info.onchange)

    def _subscribe(self, key: str, func: Callable[[], Any]) -> None:
        old = self._unsubscribe.pop(key, None)
        if old is not None:
            old()  # A1111 keeps one onchange per option
        self._unsubscribe[key] = _options().on_change(key, lambda _key, _value: func())

    def onchange(self, key: str, func: Callable[[], Any], call: bool = True) -> None:
        """Call `func()` whenever `key` changes (and now, with `call`)."""
        if key in self._labels:
            self._labels[key].onchange = func
        self._subscribe(key, func)
        if call:
            func()

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Set `key`; True when it changed (False when refused: the reason is logged)."""
        if key in self._local_values:
            changed = self._local_values[key] != value
            self._local_values[key] = value
            return changed
        options = _options()
        try:
            if is_api and options.info(key).restrict_api:
                return False
            if not run_callbacks:
                return options.set_readonly(key, value)
            return options.set(key, value)
        except SdWebuiError as exc:
            log.warning("opts.set(%r): %s", key, exc)
            return False

    def get_default(self, key: str) -> Any:
        if key in self._labels:
            return self._labels[key].default
        options = _options()
        return options.info(key).default_value() if key in options else None

    def save(self, filename: str | os.PathLike[str] | None = None) -> None:
        options = _options()
        if filename is None or (options.path is not None and Path(filename) == options.path):
            options.save()
        else:
            atomic_write_json(Path(filename), options.stored(), indent=4)

    def same_type(self, x: Any, y: Any) -> bool:
        if x is None or y is None:
            return True
        return self.typemap.get(type(x), type(x)) == self.typemap.get(type(y), type(y))

    def cast_value(self, key: str, value: Any) -> Any:
        if value is None:
            return None
        default = self.get_default(key)
        if default is None:
            default = getattr(self, key, None)
        if default is None:
            return None
        if isinstance(default, bool) and value == "False":
            return False
        return type(default)(value)

    def dumpjson(self) -> str:
        return json.dumps({**_options().as_dict(), **self._local_values})

    def reorder(self) -> None:
        """A1111 sorts its settings by category; the Settings tab orders sections itself."""


opts = _Options()


class _Templates(dict[str, OptionInfo]):
    """A1111's `shared.options_templates`: options put here are registered (`opts.add_option`)."""

    def __setitem__(self, key: str, info: OptionInfo) -> None:
        super().__setitem__(key, info)
        opts.add_option(key, info)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, info in dict(*args, **kwargs).items():
            self[key] = info


options_templates = _Templates()
restricted_opts: set[str] = set()

# -- state -----------------------------------------------------------------------------------

_CTX_FIELDS = {
    "skipped": "skipped",
    "interrupted": "interrupted",
    "stopping_generation": "stopping_generation",
    "job": "description",
    "job_no": "job_no",
    "job_count": "job_count",
    "job_timestamp": "job_timestamp",
    "sampling_step": "sampling_step",
    "sampling_steps": "sampling_steps",
    "textinfo": "textinfo",
}
_IDLE: dict[str, Any] = {
    "skipped": False,
    "interrupted": False,
    "stopping_generation": False,
    "job": "",
    "job_no": 0,
    "job_count": 0,
    "job_timestamp": "0",
    "sampling_step": 0,
    "sampling_steps": 0,
    "textinfo": None,
}


class _State:
    """`shared.state`: the job running now. On the worker thread inside a scripted job its fields
    are that job's `JobContext` (reads and writes); elsewhere they read the engine's running job
    (`interrupt()` / `skip()` act on it) and, with no job, this object's own values."""

    _own = frozenset(
        {
            "_values",
            "processing_has_refined_job_count",
            "current_latent",
            "current_image_sampling_step",
            "id_live_preview",
            "time_start",
            "server_start",
            "server_command",
            "_assigned_image",
        }
    )

    def __init__(self) -> None:
        object.__setattr__(self, "_values", dict(_IDLE))
        self.processing_has_refined_job_count = False
        self.current_latent: Any = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.time_start: float | None = None
        self.server_start = time.time()
        self.server_command: str | None = None
        self._assigned_image: Any = None

    _values: dict[str, Any]

    @staticmethod
    def _ctx() -> Any:
        job = runtime.current_job()
        return job.ctx if job is not None else None

    @staticmethod
    def _engine() -> Any:
        env = runtime.maybe_environment()
        return env.engine if env is not None else None

    def __getattr__(self, name: str) -> Any:
        if name not in _CTX_FIELDS:
            raise AttributeError(f"shared.state has no field {name!r}")
        ctx = self._ctx()
        if ctx is not None:
            return getattr(ctx, _CTX_FIELDS[name])
        engine = self._engine()
        if engine is not None and engine.current_job_id() is not None:
            progress = engine.progress(with_preview=False)
            if name == "textinfo":
                return progress.get("textinfo")
            return progress.get("state", {}).get(name, _IDLE[name])
        return self._values[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own or name not in _CTX_FIELDS:
            object.__setattr__(self, name, value)
            return
        ctx = self._ctx()
        if ctx is not None:
            setattr(ctx, _CTX_FIELDS[name], value)
            return
        engine = self._engine()
        if engine is not None and engine.current_job_id() is not None and value:
            if name == "interrupted":
                engine.interrupt()
                return
            if name == "skipped":
                engine.skip()
                return
            if name == "stopping_generation":
                engine.stop_generating()
                return
        self._values[name] = value

    @property
    def need_restart(self) -> bool:
        return self.server_command == "restart"

    @need_restart.setter
    def need_restart(self, value: bool) -> None:
        if value:
            self.server_command = "restart"

    @property
    def current_image(self) -> Any:
        if self._assigned_image is not None and self._ctx() is None:
            return self._assigned_image
        engine = self._engine()
        if engine is not None and engine.current_job_id() is not None:
            return engine.progress(with_preview=True).get("current_image")
        return self._assigned_image

    @current_image.setter
    def current_image(self, image: Any) -> None:
        self._assigned_image = image

    def interrupt(self) -> None:
        self.interrupted = True
        log.info("Received interrupt request")

    def skip(self) -> None:
        self.skipped = True
        log.info("Received skip request")

    def stop_generating(self) -> None:
        self.stopping_generation = True

    def request_restart(self) -> None:
        self.interrupt()
        self.server_command = "restart"

    def nextjob(self) -> None:
        self.job_no = int(self.__getattr__("job_no")) + 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def begin(self, job: str = "(unknown)") -> None:
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_latent = None
        self._assigned_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0
        self.time_start = None

    def dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CTX_FIELDS if name != "textinfo"}

    def set_current_image(self) -> None:
        """A1111 decodes a live preview here; the engine makes its own previews."""

    def do_set_current_image(self) -> None:
        """See `set_current_image`."""

    def assign_current_image(self, image: Any) -> None:
        self._assigned_image = image
        self.id_live_preview += 1


state = _State()

# -- cmd_opts --------------------------------------------------------------------------------


def _flag_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_flag_value(v) for v in value]
    return value


class _CmdOpts:
    """`shared.cmd_opts`: the flags (A1111's argparse names), paths as strings, the flags of the
    extensions' `preload.py` too. Assigned attributes are kept on this object."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        settings = runtime.environment().settings
        if name == "disable_extension_access":
            exposed = settings.listen or settings.share or bool(settings.server_name)
            return exposed and not settings.enable_insecure_extension_access
        if name in {f.name for f in dataclasses.fields(settings)} and name not in ("warnings", "extension_flags"):
            return _flag_value(getattr(settings, name))
        flags = settings.extension_flags
        if name in flags:
            return flags[name]
        raise AttributeError(f"shared.cmd_opts has no flag {name!r}")

    def __contains__(self, name: str) -> bool:
        return hasattr(self, name)


cmd_opts = _CmdOpts()

# -- the app's other parts -------------------------------------------------------------------


class _Scaler:
    """A1111's `Upscaler` as `UpscalerData.scaler`: `upscale(img, scale, selected_model)`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def upscale(self, img: Any, scale: float, selected_model: Any = None) -> Any:
        from modules.engine import upscaling

        env = runtime.environment()
        return upscaling.upscale(
            img, self.name, scale, registry=env.upscalers, tiles=upscaling.tile_settings(env.options)
        )


class UpscalerData:
    """One of `shared.sd_upscalers`: `name`, `data_path`, `scale`, `scaler.upscale(...)`."""

    def __init__(self, info: Any) -> None:
        self.name: str = info.name
        self.data_path: str | None = info.model_path
        self.local_data_path = self.data_path
        self.model_name: str | None = info.model_name
        self.scale: float = info.scale
        self.scaler = _Scaler(info.name)
        self.model = None

    def __repr__(self) -> str:
        return f"<UpscalerData {self.name}>"


class FaceRestoration:
    """One of `shared.face_restorers`: `name()` and `restore(np_image)`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def restore(self, np_image: Any) -> Any:
        import numpy as np
        from PIL import Image

        env = runtime.environment()
        restored = env.face_restorers.get(self._name).restore(Image.fromarray(np_image))
        return np.asarray(restored)


class PromptStyleDatabase:
    """`shared.prompt_styles`: A1111's `StyleDatabase` surface over the app's styles."""

    def _db(self) -> Any:
        db = runtime.environment().styles
        if db is None:
            raise RuntimeError("no styles database in this app")
        return db

    @property
    def styles(self) -> dict[str, Any]:
        return {s.name: s for s in self._db().styles()}

    def reload(self) -> None:
        self._db().reload()

    def get_style_prompts(self, styles: list[str]) -> list[str]:
        known = self.styles
        return [known[name].prompt for name in styles if name in known]

    def get_negative_style_prompts(self, styles: list[str]) -> list[str]:
        known = self.styles
        return [known[name].negative_prompt for name in styles if name in known]

    def apply_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        known = [name for name in styles if name in self.styles]
        return str(self._db().apply(prompt, "", known)[0])

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        known = [name for name in styles if name in self.styles]
        return str(self._db().apply("", prompt, known)[1])

    def save_styles(self, path: str | None = None) -> None:
        self._db().save_all()


prompt_styles = PromptStyleDatabase()


class TotalTQDM:
    """A1111's console progress bar over all jobs: there is none here (no-op)."""

    def reset(self) -> None: ...

    def update(self) -> None: ...

    def updateTotal(self, new_total: int) -> None: ...  # A1111's name

    def clear(self) -> None: ...


total_tqdm = TotalTQDM()

# plain values of A1111's module
interrogator: Any = None
clip_model: Any = None
mem_mon: Any = None
weight_load_location: str | None = None
xformers_available = False
batch_cond_uncond = True
parallel_processing_allowed = True
loaded_hypernetworks: list[Any] = []
settings_components: dict[str, Any] = {}
tab_names: list[str] = []
progress_print_out = sys.stdout
hf_endpoint = os.getenv("HF_ENDPOINT", "https://huggingface.co")
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}

# -- A1111's util helpers that `shared` re-exports ------------------------------------------


def natural_sort_key(s: str, regex: re.Pattern[str] = re.compile("([0-9]+)")) -> list[Any]:
    return [int(text) if text.isdigit() else text.lower() for text in regex.split(s)]


def listfiles(dirname: str) -> list[str]:
    names = sorted((x for x in os.listdir(dirname) if not x.startswith(".")), key=natural_sort_key)
    return [os.path.join(dirname, x) for x in names if os.path.isfile(os.path.join(dirname, x))]


def walk_files(path: str, allowed_extensions: Any = None) -> Iterator[str]:
    """Every file below `path` (hidden folders too: A1111's default), natural order."""
    if not os.path.exists(path):
        return
    allowed = {e.lower() for e in allowed_extensions} if allowed_extensions is not None else None
    for root, _dirs, files in sorted(os.walk(path, followlinks=True), key=lambda item: natural_sort_key(item[0])):
        for filename in sorted(files, key=natural_sort_key):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            yield os.path.join(root, filename)


def html_path(filename: str) -> str:
    return os.path.join(script_path, "html", filename)


def html(filename: str) -> str:
    try:
        with open(html_path(filename), encoding="utf8") as file:
            return file.read()
    except OSError:
        return ""


def ldm_print(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs)


def list_checkpoint_tiles(use_short: bool = False) -> list[str]:
    from modules import sd_models

    return sd_models.checkpoint_tiles(use_short)


def refresh_checkpoints() -> None:
    from modules import sd_models

    sd_models.list_models()


def list_samplers() -> list[Any]:
    from modules import sd_samplers

    return list(sd_samplers.all_samplers)


def reload_hypernetworks() -> None:
    """The hypernetworks folder is read on each access of `shared.hypernetworks`."""


def reload_gradio_theme(theme_name: str | None = None) -> None:
    log.info("reload_gradio_theme: the theme is set by the UI at start (the gradio_theme option)")


def _hypernetworks() -> dict[str, str]:
    folder = Path(paths_internal.app_paths().hypernetwork_dir)
    found: dict[str, str] = {}
    for filename in walk_files(str(folder), allowed_extensions=[".pt", ".safetensors"]):
        found[os.path.splitext(os.path.basename(filename))[0]] = filename
    return found


def _device() -> Any:
    from modules import devices

    return devices.device


def __getattr__(name: str) -> Any:
    """The values that follow the running app."""
    if name == "sd_model":
        env = runtime.maybe_environment()
        return ModelView.current(env) if env is not None else None
    if name == "sd_upscalers":
        env = runtime.maybe_environment()
        if env is None or env.upscalers is None:
            return []
        return [UpscalerData(info) for info in env.upscalers.infos()]
    if name == "face_restorers":
        env = runtime.maybe_environment()
        if env is None or env.face_restorers is None:
            return []
        return [FaceRestoration(n) for n in env.face_restorers.available()]
    if name == "demo":  # the page's gr.Blocks, when the UI puts it in the environment's `extra`
        env = runtime.maybe_environment()
        return env.extra.get("demo") if env is not None else None
    if name == "hypernetworks":
        return _hypernetworks()
    if name == "device":
        return _device()
    if name in ("models_path", "data_path", "extensions_dir", "extensions_builtin_dir"):
        return getattr(paths_internal, name)
    if name == "config_filename":
        return str(paths_internal.app_paths().config_file)
    if name == "styles_filename":
        return [str(p) for p in paths_internal.app_paths().styles_files]
    if name == "hide_dirs":
        env = runtime.maybe_environment()
        return {"visible": not (env is not None and env.settings.hide_ui_dir_config)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
