"""Gradio 3.41-style arguments for extension code, over Gradio 6, without patching gradio.

Extensions written for A1111 call `gr.Button(variant="tool")`, `gr.Image(source="upload",
tool="sketch")`, `component.style(...)`, `gr.Dropdown.update(...)`, `gr.Box()`, `gr.Variable()`,
`button.click(..., _js="...")`, all gone from Gradio 6 (where they raise `TypeError`).

`compat_gradio` is a module object whose attributes are gradio's, except the component and layout
classes: those are subclasses of gradio's own (so `isinstance(x, gr.Button)` holds both ways) that

- translate 3.41's constructor arguments (`source` -> `sources`, `variant="tool"` -> a small
  secondary button with class `tool`, `show_copy_button` -> `buttons=["copy"]`, File `type="file"`
  -> `"filepath"`) and drop the ones Gradio 6 has no equivalent for (each logged once);
- have `.style(...)` (the arguments Gradio 6 still has are set, the rest dropped) and the class
  method `update(...)` (= `gr.update`);
- take `_js=` (-> `js=`), `show_progress=True/False` and `api_name=False` in their events;
- tell the page they are the gradio component they extend (block name, config, class id), also
  for an extension's own subclass of them, and write no `.pyi` stub next to the extension (which
  Gradio's component metaclass does for every subclass).

`gr.Box` is a Group and `gr.Variable` a State. `adapt_module(module)` rebinds an extension module's
globals (and those of its helper modules in the extension's folder) that are the real `gradio`
module, or gradio classes imported by name, to the compat ones. Classes an extension defines at
import time on top of gradio's own classes are left as they are.

Gradio is imported on first use only (this module is used when extensions load).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ALIASES = {"Box": "Group", "Variable": "State"}
"""Gradio 3.41 names that are gone, and the Gradio 6 class that stands in for each."""

STYLE_RENAMES = {"grid": "columns"}
"""`.style()` keywords of 3.41 whose Gradio 6 constructor argument has another name."""

BUTTON_VARIANTS = ("primary", "secondary", "stop", "huggingface")
LAYOUT_VARIANTS = ("default", "panel", "compact")

_reported: set[tuple[str, str]] = set()
_compat_classes: dict[type, type] = {}
_metaclass: list[type] = []  # made on first use (it needs gradio)


def _gradio() -> types.ModuleType:
    return importlib.import_module("gradio")


def _note_dropped(owner: str, name: str, where: str = "argument") -> None:
    if (owner, name) in _reported:
        return
    _reported.add((owner, name))
    log.info("gradio compat: %s %s %r has no Gradio 6 equivalent; ignored", owner, where, name)


def gradio_base(cls: type) -> type:
    """The first class of `cls`'s MRO that is gradio's own."""
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", "") or ""
        if module == "gradio" or module.startswith("gradio."):
            return klass
    return cls


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]


def translate_kwargs(base: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """3.41 constructor keywords for gradio class `base` as Gradio 6 takes them."""
    params = _init_parameters(base)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = dict(kwargs)
    name = base.__name__
    if "source" in out and "source" not in params:
        source = out.pop("source")
        if "sources" in params and source in ("upload", "webcam", "clipboard", "microphone"):
            out.setdefault("sources", [source])
        elif source is not None:
            _note_dropped(name, f"source={source!r}")
    if out.get("show_copy_button") and "show_copy_button" not in params and "buttons" in params:
        out.pop("show_copy_button")
        out["buttons"] = [*(out.get("buttons") or []), "copy"]
    variant = out.get("variant")
    if "variant" in out and "variant" in params:
        if issubclass(base, _gradio().Button):
            if variant == "tool":
                out["variant"] = "secondary"
                out.setdefault("size", "sm")
                out.setdefault("scale", 0)
                out["min_width"] = out.get("min_width") or 40
                classes = out.get("elem_classes") or []
                out["elem_classes"] = [*([classes] if isinstance(classes, str) else classes), "tool"]
            elif variant not in BUTTON_VARIANTS:
                out["variant"] = "secondary"
        elif variant not in LAYOUT_VARIANTS:
            out["variant"] = "default"
    if "type" in out and issubclass(base, (_gradio().File, _gradio().UploadButton)):
        out["type"] = {"file": "filepath", "bytes": "binary"}.get(out["type"], out["type"])
    if "size" in out and issubclass(base, _gradio().Button) and out["size"] not in ("sm", "md", "lg"):
        out["size"] = "sm"
    if not takes_any:
        for key in [k for k in out if k not in params]:
            _note_dropped(name, key)
            del out[key]
    return out


def translate_event_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """3.41 event listener keywords as Gradio 6 takes them."""
    out = dict(kwargs)
    if "_js" in out:
        js = out.pop("_js")
        out.setdefault("js", js)
    progress = out.get("show_progress")
    if isinstance(progress, bool):
        out["show_progress"] = "full" if progress else "hidden"
    if out.get("api_name") is False:
        out["api_name"] = None
        out.setdefault("api_visibility", "undocumented")
    for key in ("_preprocess", "_postprocess"):
        if key in out:
            out[key[1:]] = out.pop(key)
    return out


class _CompatMethods:
    """What every compat class adds to its gradio base (mixed in first)."""

    def style(self, *args: Any, **kwargs: Any) -> Any:
        """3.41's `.style(...)`: the keywords Gradio 6 still takes are set, the rest dropped."""
        base = gradio_base(type(self))
        params = _init_parameters(base)
        for key, value in kwargs.items():
            name = STYLE_RENAMES.get(key, key)
            if name == "columns" and isinstance(value, list | tuple):
                value = value[0] if value else None
            if name in params and name not in ("value", "label", "render"):
                setattr(self, name, value)
            else:
                _note_dropped(base.__name__, key, "style()")
        return self

    @classmethod
    def update(cls, *args: Any, **kwargs: Any) -> Any:
        """3.41's `Component.update(...)`: Gradio 6's `gr.update`."""
        return _gradio().update(*args, **kwargs)

    def get_block_name(self) -> str:
        return _base_block_name(type(self), "get_block_name", self)

    def get_block_class(self) -> str:
        return _base_block_name(type(self), "get_block_class", self)

    @classmethod
    def get_component_class_id(cls) -> str:
        base: Any = gradio_base(cls)
        return str(base.get_component_class_id())


def _base_block_name(cls: type, method: str, instance: Any) -> str:
    """What gradio's own class would answer for `method` (its own override, or its name)."""
    from gradio.blocks import Block

    base = gradio_base(cls)
    own = getattr(base, method)
    if own is not getattr(Block, method):
        return str(own(instance))
    named = base.__base__ if hasattr(base, "is_template") else base
    return str(getattr(named, "__name__", "block")).lower()


def _merged_signature(base_init: Callable[..., Any], own_init: Callable[..., Any]) -> inspect.Signature:
    """A signature naming the subclass's own parameters and its base's (all keyword-only after
    `self`): Gradio reads a component's config from the names of its `__init__` parameters."""
    own = inspect.signature(own_init).parameters
    base = inspect.signature(base_init).parameters
    names: dict[str, inspect.Parameter] = {}
    for params in (own, base):
        for param in params.values():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if param.name == "self" or param.name in names:
                continue
            names[param.name] = param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self_param, *names.values()])


def _meta() -> type:
    """The metaclass of the compat classes (and of extension classes built on them): Gradio's
    `ComponentMeta` without its `.pyi` writing and without wrapping the subclass `__init__`
    (Gradio's wrapper drops positional arguments of an `__init__(self, *args, **kwargs)`; the
    gradio base's own `__init__` keeps its wrapper)."""
    if _metaclass:
        return _metaclass[0]
    from abc import ABCMeta

    from gradio.component_meta import ComponentMeta
    from gradio.events import EventListener

    class CompatMeta(ComponentMeta):
        def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any], **kw: Any) -> Any:
            if "EVENTS" in attrs:  # as ComponentMeta does it
                events = []
                for event in attrs["EVENTS"]:
                    trigger = (event if isinstance(event, EventListener) else EventListener(event_name=event)).copy()
                    events.append(trigger)
                    trigger.set_doc(component=name)
                    attrs[str(event)] = trigger.listener
                attrs["EVENTS"] = events
            cls: Any = ABCMeta.__new__(mcs, name, bases, attrs, **kw)
            own_init = attrs.get("__init__")
            if own_init is not None and not getattr(own_init, "_sdw_compat", False):
                parent_init = super(cls, cls).__init__
                with contextlib.suppress(TypeError, ValueError):  # a signature inspect cannot read
                    own_init.__signature__ = _merged_signature(parent_init, own_init)
            return cls

    _metaclass.append(CompatMeta)
    return CompatMeta


def _event_method(base: type, event: str) -> Callable[..., Any]:
    listener = getattr(base, event)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return listener(self, *args, **translate_event_kwargs(kwargs))

    method.__dict__.update(getattr(listener, "__dict__", {}))
    method.__name__ = event
    method.__doc__ = listener.__doc__
    return method


def compat_class(base: type, name: str | None = None) -> type:
    """The compat subclass of gradio class `base` (made once)."""
    existing = _compat_classes.get(base)
    if existing is not None and name is None:
        return existing
    signature = inspect.signature(base.__init__)  # type: ignore[misc]
    holder: dict[str, Any] = {}

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(holder["cls"], self).__init__(*args, **translate_kwargs(base, kwargs))

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__._sdw_compat = True  # type: ignore[attr-defined]
    attrs: dict[str, Any] = {
        "__init__": __init__,
        "__module__": __name__,
        "__qualname__": name or base.__name__,
        "__doc__": base.__doc__,
    }
    for event in getattr(base, "EVENTS", []) or []:
        attrs[str(event)] = _event_method(base, str(event))
    cls: type = _meta()(name or base.__name__, (_CompatMethods, base), attrs)
    holder["cls"] = cls
    if name is None:
        _compat_classes[base] = cls
    return cls


def is_translated(value: Any) -> bool:
    """Whether `value` is a gradio class the compat module replaces (a component or layout;
    not `gr.Blocks` and its kind)."""
    if not isinstance(value, type):
        return False
    module = getattr(value, "__module__", "") or ""
    if not (module == "gradio" or module.startswith("gradio.")):
        return False
    from gradio.blocks import Block, Blocks

    return issubclass(value, Block) and not issubclass(value, Blocks)


class CompatGradio(types.ModuleType):
    """`gradio` with 3.41-style component and layout classes (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__version__":
            raise AttributeError(name)
        gradio = _gradio()
        real = ALIASES.get(name, name)
        value = getattr(gradio, real)  # AttributeError as gradio gives it
        if is_translated(value):
            value = compat_class(value) if real == name else compat_class(value, name)
        setattr(self, name, value)
        return value


compat_gradio = CompatGradio("gradio", __doc__)
compat_gradio.__dict__["__sdw_compat__"] = True


def compat_for(value: Any) -> Any:
    """The compat stand-in for a global of extension code, or `value` itself."""
    gradio = sys.modules.get("gradio")
    if gradio is None:
        return value
    if value is gradio:
        return compat_gradio
    if is_translated(value):
        name = str(value.__name__)
        if getattr(gradio, name, None) is value:
            return getattr(compat_gradio, name)
    return value


def _extension_root(module: types.ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    if not file:
        return None
    parent = Path(file).resolve().parent
    return parent.parent if parent.name == "scripts" else parent


def adapt_module(module: types.ModuleType) -> None:
    """Rebind `module`'s globals that are gradio (or gradio classes imported by name) to the compat
    ones, and the same in the modules of the extension's folder it imports. Our own modules
    (`modules.*`) are left alone. Does nothing while gradio is not imported."""
    if "gradio" not in sys.modules or module.__name__.startswith("modules."):
        return
    root = _extension_root(module)
    seen: set[int] = set()
    pending = [module]
    if root is not None:  # every module of the extension's folder imported so far, however reached
        pending += [m for m in list(sys.modules.values()) if isinstance(m, types.ModuleType) and _inside(m, root)]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        namespace = vars(current)
        for key, value in list(namespace.items()):
            if key.startswith("__"):
                continue
            replacement = compat_for(value)
            if replacement is not value:
                namespace[key] = replacement
            elif isinstance(value, types.ModuleType) and root is not None and _inside(value, root):
                pending.append(value)


def _inside(module: types.ModuleType, root: Path) -> bool:
    file = getattr(module, "__file__", None)
    if not file or module.__name__.startswith("modules."):
        return False
    try:
        return Path(file).resolve().is_relative_to(root)
    except OSError:
        return False
