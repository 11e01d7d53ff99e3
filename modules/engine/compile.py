"""`torch.compile` of the UNet and the VAE decoder: opt-in, with shape buckets and the cost reported.

Options (ours; A1111 has none): `torch_compile` (the UNet), `torch_compile_vae` (the VAE's decoder),
`torch_compile_mode` ("default", "reduce-overhead", "max-autotune-no-cudagraphs") and
`torch_compile_backend` ("inductor"; "aot_eager" traces without generating code, which the tests
use on the CPU). `--torch-compile` turns both on whatever the options say.

Each module is compiled once per (module, mode, backend) with `dynamic=False`: every new input
shape is a separate static graph. `TorchCompiler` keys those graphs by (batch, height, width,
dtype, text tokens) for the UNet and (batch, height, width, dtype) for the decoder; the first call
with a new key is where the compile happens, and its time is counted as compile time. A key after
the first of a module is a recompile. At most `MAX_SHAPES` keys per module are compiled (torch's
own recompile limit is 8): later shapes run eagerly, and the report says so. The job's
`CompileReport` becomes the infotext entry "Compile" ("12.3 s, recompiles: 1") and a log line.

The UNet is wrapped for the job's `SamplingJob.unet` (the model object is untouched); the decoder
is swapped into the VAE for the length of the job and put back after (`compiled_vae`). A
module's compiled forms are kept on the module, so they are paid once and go when the model goes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager", "eager")
MAX_SHAPES = 8


@dataclass(frozen=True)
class CompileSettings:
    unet: bool = False
    vae: bool = False
    mode: str = "default"
    backend: str = "inductor"

    @property
    def any(self) -> bool:
        return self.unet or self.vae

    @classmethod
    def from_options(
        cls, get: Callable[[str], Any], overrides: Mapping[str, Any], *, forced: bool = False
    ) -> CompileSettings:
        def value(key: str, default: Any) -> Any:
            if key in overrides:
                return overrides[key]
            try:
                got = get(key)
            except Exception:  # an option this build does not define
                return default
            return default if got is None else got

        mode = str(value("torch_compile_mode", "default"))
        backend = str(value("torch_compile_backend", "inductor"))
        if mode not in MODES:
            log.warning("torch_compile_mode %r is not one of %s: using 'default'", mode, ", ".join(MODES))
            mode = "default"
        if backend not in BACKENDS:
            log.warning("torch_compile_backend %r is not one of %s: using 'inductor'", backend, ", ".join(BACKENDS))
            backend = "inductor"
        return cls(
            unet=forced or bool(value("torch_compile", False)),
            vae=forced or bool(value("torch_compile_vae", False)),
            mode=mode,
            backend=backend,
        )


@dataclass
class CompileReport:
    """What compiling cost in one job."""

    seconds: float = 0.0
    compiles: int = 0  # new shape keys compiled in this job
    recompiles: int = 0  # of those, the ones after a module's first
    eager_shapes: int = 0  # shapes past MAX_SHAPES that ran eagerly
    notes: list[str] = field(default_factory=list)

    def infotext(self) -> str | None:
        if not self.compiles and not self.eager_shapes:
            return None
        text = f"{self.seconds:.1f} s, recompiles: {self.recompiles}"
        return text + (f", eager shapes: {self.eager_shapes}" if self.eager_shapes else "")


def _kwargs(settings: CompileSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"backend": settings.backend, "dynamic": False, "fullgraph": False}
    if settings.backend == "inductor":
        kwargs["mode"] = settings.mode
    return kwargs


class _Compiled:
    """One module compiled with one setting, and the shape keys it has seen."""

    def __init__(self, module: torch.nn.Module, settings: CompileSettings) -> None:
        self.module = module
        self.fn: Callable[..., Any] = torch.compile(module, **_kwargs(settings))
        self.keys: list[tuple[Any, ...]] = []

    def call(self, key: tuple[Any, ...], report: CompileReport, *args: Any, **kwargs: Any) -> Any:
        if key in self.keys:
            return self.fn(*args, **kwargs)
        if len(self.keys) >= MAX_SHAPES:
            report.eager_shapes += 1
            note = f"torch.compile: more than {MAX_SHAPES} shapes for one model; shape {key} runs eagerly"
            if note not in report.notes:
                report.notes.append(note)
                log.warning(note)
            return self.module(*args, **kwargs)
        started = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        elapsed = time.perf_counter() - started
        report.seconds += elapsed
        report.compiles += 1
        if self.keys:
            report.recompiles += 1
        self.keys.append(key)
        log.info("torch.compile: %s for shape %s in %.1f s", type(self.module).__name__, key, elapsed)
        return out


class CompiledUNet(torch.nn.Module):
    """Stands in for the UNet in a `SamplingJob`: same call, same `dtype`, compiled per shape key.
    (A transient wrapper: the UNet is not registered in it.)"""

    _compiled: _Compiled
    _report: CompileReport

    def __init__(self, compiled: _Compiled, report: CompileReport) -> None:
        super().__init__()
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_report", report)

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self._compiled.module.dtype)

    @property
    def inner(self) -> torch.nn.Module:
        return self._compiled.module

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        text = kwargs.get("encoder_hidden_states")
        tokens = tuple(text.shape[1:]) if isinstance(text, torch.Tensor) else ()
        key = (x.shape[0], x.shape[-2], x.shape[-1], x.dtype, tokens, tuple(sorted(kwargs)))
        return self._compiled.call(key, self._report, x, t, **kwargs)


class _CompiledDecoder(torch.nn.Module):
    """The VAE's `decoder` while a job runs compiled: keyed by the latent's shape. The original
    decoder stays a submodule (`inner`), so that moving the VAE moves its weights."""

    _compiled: _Compiled
    _report: CompileReport

    def __init__(self, inner: torch.nn.Module, compiled: _Compiled, report: CompileReport) -> None:
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_report", report)

    def forward(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        key = (z.shape[0], z.shape[-2], z.shape[-1], z.dtype)
        return self._compiled.call(key, self._report, z, *args, **kwargs)


_ATTR = "_sdwebui_compiled"  # on a compiled module: {(what, mode, backend): _Compiled}


def _entry(module: torch.nn.Module, what: str, settings: CompileSettings) -> _Compiled:
    """The module's compiled form for `settings`, made once and kept on the module itself (so it
    lives as long as the model does, and goes with it)."""
    with _LOCK:
        entries: dict[tuple[str, str, str], _Compiled] | None = getattr(module, _ATTR, None)
        if entries is None:
            entries = {}
            object.__setattr__(module, _ATTR, entries)  # a plain attribute, not a submodule
        key = (what, settings.mode, settings.backend)
        if key not in entries:
            entries[key] = _Compiled(module, settings)
        return entries[key]


_LOCK = threading.Lock()


def compiled_unet(unet: torch.nn.Module, settings: CompileSettings, report: CompileReport) -> CompiledUNet:
    """What a `SamplingJob` calls instead of `unet` (compiled once per module and setting)."""
    return CompiledUNet(_entry(unet, "unet", settings), report)


@contextlib.contextmanager
def compiled_vae(vae: Any, settings: CompileSettings, report: CompileReport) -> Iterator[None]:
    """Inside the block the VAE decodes through a compiled decoder; after it, through its own."""
    original = vae.decoder
    if not settings.vae or isinstance(original, _CompiledDecoder):
        yield
        return
    vae.decoder = _CompiledDecoder(original, _entry(original, "vae", settings), report)
    try:
        yield
    finally:
        vae.decoder = original
