"""Composition root: builds Settings, Options, the model registry and ModelManager, the FastAPI
app, and serves it. The only module that wires things together; nothing runs at import time.

Importing this module is cheap (no torch, diffusers or Gradio): `main` starts the server on the
start-up gate (`modules.api.startup`) within a second or two and builds the rest on a thread; the
heavy imports live in the functions that need them."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.core.errors import SdWebuiError, SettingsError
from modules.core.settings import Settings, parse_settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from PIL import Image

    from modules.api.routes.server import ServerControl
    from modules.api.startup import StartupGate
    from modules.core.options import Options
    from modules.engine.facade import Engine
    from modules.models.upscalers import UpscalerRegistry
    from modules.services import Services

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_services(
    settings: Settings, repo_root: Path = REPO_ROOT, environ: Mapping[str, str] | None = None
) -> Services:
    # the heavy part of a start (torch, diffusers, transformers): imported here, not at module level
    import torch

    from modules.core.atomic import sweep_temp_files
    from modules.core.dir_config import DIR_CONFIG_KEYS
    from modules.core.hashes import HashCache
    from modules.core.options import Options, default_option_infos
    from modules.core.paths import Paths
    from modules.core.styles import StyleDatabase
    from modules.engine.controlnet_service import ControlNetService
    from modules.engine.extra_networks import ExtraNetworks
    from modules.engine.facade import Engine, wire_model_options
    from modules.engine.hooks import Hooks
    from modules.engine.interrogation import Interrogator
    from modules.engine.outputs import ImageSaver
    from modules.engine.service import GenerationService, image_saver_for
    from modules.engine.training.service import TrainingService
    from modules.engine.worker import Worker
    from modules.extensions.loading import ExtensionDir
    from modules.extensions.manager import ExtensionManager
    from modules.extensions.runtime import ScriptEnvironment
    from modules.extensions.setup import setup_scripts
    from modules.models.controlnet import ControlNetCache, ControlNetRegistry
    from modules.models.devices import policy_from_settings
    from modules.models.embeddings import EmbeddingDatabase
    from modules.models.face_restoration import FaceRestorers
    from modules.models.manager import ModelManager
    from modules.models.memory import MemoryBudget
    from modules.models.network_registry import NetworkRegistry
    from modules.models.registry import ModelRegistry
    from modules.models.taesd import TaesdDecoders
    from modules.models.upscalers import UpscalerRegistry
    from modules.services import Services

    paths = Paths.from_settings(settings, repo_root, environ)
    paths.ensure_dirs()
    # temp files of atomic writes a kill -9 left next to config.json, ui-config.json, styles, cache
    state_dirs = [paths.config_file.parent, paths.ui_config_file.parent, paths.cache_file.parent]
    for leftover in sweep_temp_files([*state_dirs, *(p.parent for p in paths.styles_files)]):
        log.info("removed %s (the temp file of a write that a killed process did not finish)", leftover)
    options = Options(default_option_infos(), paths.config_file)
    for warning in options.load():
        log.warning("%s", warning)
    if settings.freeze_settings or settings.freeze_settings_in_sections or settings.freeze_specific_settings:
        options.freeze(
            everything=settings.freeze_settings,
            sections=(settings.freeze_settings_in_sections or "").split(","),
            keys=(settings.freeze_specific_settings or "").split(","),
        )
    if settings.hide_ui_dir_config:
        options.lock(DIR_CONFIG_KEYS, "--hide-ui-dir-config")
    hash_cache = HashCache(paths.cache_file)
    registry = ModelRegistry(
        paths.checkpoint_dirs,
        paths.vae_dirs,
        hash_cache,
        extra_checkpoints=(settings.ckpt,) if settings.ckpt else (),
        hashing=not settings.no_hashing,
    )
    networks = NetworkRegistry(
        (paths.lora_dir, paths.lycoris_dir), (paths.hypernetwork_dir,), hash_cache, hashing=not settings.no_hashing
    )
    policy = policy_from_settings(settings)
    budget = MemoryBudget(lambda: int(options.get("sd_checkpoint_cache_bytes")))  # type: ignore[call-overload]
    models = ModelManager(
        registry,
        policy.placement,
        budget=budget,
        default_sd2_prediction=lambda: str(options.get("sd2_default_prediction")),
        forced_vae=settings.vae_path,
        memory_mode=policy.memory_mode,
    )
    worker = Worker(max_queue=settings.queue_limit)
    saver = image_saver_for(ImageSaver.from_settings(options, paths, settings))
    styles = StyleDatabase(list(paths.styles_files))
    taesd = TaesdDecoders(paths.vae_taesd_dir, budget=budget)
    upscalers = UpscalerRegistry.from_paths(paths, policy.placement, budget=budget)
    face_restorers = FaceRestorers(paths.gfpgan_dir, paths.codeformer_dir, budget=budget)
    hooks = Hooks()
    embeddings = EmbeddingDatabase((paths.embeddings_dir,), hash_cache, hashing=not settings.no_hashing)
    extra_networks = ExtraNetworks(networks, embeddings, budget=budget, option=options.get)
    generation = GenerationService(
        models,
        options,
        worker,
        saver=saver,
        styles=styles,
        taesd=taesd,
        face_restorer=face_restorers.for_options(options),
        upscale=model_upscale(upscalers, options),
        hooks=hooks,
        upcast_sampling=policy.upcast_sampling,
        nan_check=not settings.disable_nan_check,
        networks=extra_networks,
        fast_paths=policy.fast_paths,
    )
    controlnet = ControlNetService(
        ControlNetRegistry(paths.controlnet_dirs, hash_cache),
        ControlNetCache(budget),
        annotator_dir=paths.controlnet_annotator_dir,
    )
    generation.controlnet = controlnet
    training = TrainingService(
        worker=worker,
        models=models,
        generation=generation,
        embeddings=embeddings,
        networks=networks,
        paths=paths,
        options=options,
        selected_checkpoint=lambda: generation.selected_checkpoint(),
    )
    engine_kwargs: dict[str, Any] = dict(
        worker=worker,
        models=models,
        registry=registry,
        options=options,
        generation=generation,
        upscalers=upscalers,
        face_restorers=face_restorers,
        merge_dir=settings.ckpt_dir or paths.checkpoint_dir,
        training=training,
        interrogator=Interrogator.from_paths(
            paths,
            options,
            device=torch.device("cpu") if settings.cpu_for("interrogate") else policy.placement.device,
            dtype=policy.placement.dtype,
            budget=budget,
        ),
    )
    if settings.ray:
        # generation on Ray Serve replicas, each built by this same function (docs/scale-out.md)
        from modules.serve.cluster import ray_engine

        engine: Engine = ray_engine(settings, build_services, repo_root, environ, front_saver=saver, **engine_kwargs)
    else:
        engine = Engine(**engine_kwargs)
    wire_model_options(options, engine, models)
    extensions = ExtensionManager(settings, paths, options, environ=environ)
    if settings.update_all_extensions:
        extensions.update_all()
    services = Services(
        settings,
        paths,
        options,
        registry,
        policy,
        models,
        worker,
        engine,
        styles,
        upscalers,
        face_restorers,
        networks,
        extra_networks,
        extensions,
        controlnet=controlnet,
    )
    active = [ExtensionDir(ext.name, ext.path) for ext in extensions.active()]
    env = ScriptEnvironment(
        settings=settings,
        paths=paths,
        options=options,
        engine=engine,
        styles=styles,
        registry=registry,
        upscalers=upscalers,
        face_restorers=face_restorers,
        saver=ImageSaver.from_settings(options, paths, settings),
    )
    models.on_loaded.append(lambda info: services.scripts.callbacks.model_loaded(info) if services.scripts else None)
    services.scripts = setup_scripts(
        env,
        generation,
        active,
        on_error=lambda name, text: extensions.mark_error(name, text) if name else None,
    )
    # extensions' options exist whether or not the page is served (A1111 adds them while building
    # the UI, so API-only servers there lack them)
    services.scripts.callbacks.fire("ui_settings")
    return services


def model_upscale(
    upscalers: UpscalerRegistry, options: Options
) -> Callable[[Image.Image, str, tuple[int, int]], Image.Image]:
    """(image, upscaler name, exact size) -> image, for hires fix with a model upscaler."""
    from modules.engine import upscaling

    def run(image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        scale = max(size[0] / image.width, size[1] / image.height)
        tiles = upscaling.tile_settings(options)
        return upscaling.upscale(image, name, scale, registry=upscalers, tiles=tiles, size=size)

    return run


def create_app(services: Services) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from modules.api.body_limit import install_body_limit
    from modules.api.compression import install_compression
    from modules.api.mount import install_api
    from modules.api.security import install_security

    app = FastAPI(title="sd-webui", docs_url="/docs" if services.settings.api_enabled else None)
    app.state.services = services
    install_compression(app)  # innermost: what it compresses is the routes' own responses
    install_security(app, services)
    install_body_limit(app, services.settings.max_body_mb * 1024 * 1024)  # outermost: before auth reads anything
    if services.settings.api_enabled:
        install_api(app, services)

    @app.get("/internal/ping")
    def ping() -> dict[str, Any]:
        return {}

    @app.get("/health")
    def health() -> dict[str, Any]:
        status = services.engine.model_status()
        return {
            "status": "ok",
            "model": {
                "checkpoint": status.checkpoint,
                "loading": status.loading,
                "error": status.last_error,
                "cached": list(status.cached),
            },
            "device": str(services.policy.placement.device),
            "queue": {"current": services.engine.current_job_id(), "pending": services.engine.pending_count()},
        }

    if not services.settings.nowebui:
        from modules.ui.mount import mount_ui  # gradio is only imported when the UI is served

        mount_ui(app, services)
        _app_started(services, app)
        return app

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        status = services.engine.model_status()
        rows = (
            "".join(f"<li>{html.escape(c.title)}</li>" for c in services.registry.checkpoints())
            or "<li>none: put checkpoints in models/Stable-diffusion</li>"
        )
        current = html.escape(status.checkpoint) if status.checkpoint else "none"
        error = f"<p class='error'>{html.escape(status.last_error)}</p>" if status.last_error else ""
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>sd-webui</title></head><body>"
            f"<h1>sd-webui</h1><p>Active checkpoint: {current}</p>{error}"
            f"<h2>Checkpoints</h2><ul>{rows}</ul></body></html>"
        )

    _app_started(services, app)
    return app


def _app_started(services: Services, app: FastAPI) -> None:
    """Extensions' `on_app_started(demo, app)` (they add their REST routes there)."""
    if services.scripts is not None:
        demo = services.scripts.environment.extra.get("demo")
        services.scripts.callbacks.fire("app_started", demo, app)


def load_initial_model(services: Services, progress: Callable[[str], None] | None = None) -> None:
    """A1111's order: the `--ckpt` file, else the saved `sd_model_checkpoint`, else the first found.
    Each try is a model job on the worker; this waits for them (run it on a background thread).
    `progress` hears the name of each checkpoint tried (the starting page shows it)."""
    from modules.core.jobs import SwitchModel

    tell = progress or (lambda name: None)
    if services.settings.ckpt is not None:
        wanted: str | None = str(services.settings.ckpt)
    else:
        wanted = str(services.options.get("sd_model_checkpoint") or "") or None
    found = services.registry.checkpoints()
    first = found[0].title if found else None
    if wanted is None and first is None:
        dirs = ", ".join(str(d) for d in services.registry.checkpoint_dirs)
        log.warning("no model loaded at start: no checkpoints found: put .safetensors or .ckpt files in %s", dirs)
        return
    try:
        tell(str(wanted or first))
        services.engine.run_sync(SwitchModel(checkpoint=wanted or first))
        return
    except SdWebuiError as exc:
        failure = exc
    if wanted and first and first != wanted:
        log.warning("could not load %s (%s); trying the first checkpoint found", wanted, failure)
        try:
            tell(first)
            services.engine.run_sync(SwitchModel(checkpoint=first))
            return
        except SdWebuiError as again:
            failure = again
    log.warning("no model loaded at start: %s", failure)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Parse the flags, start serving at once on the start-up gate (ping, health, a starting page,
    503 + Retry-After for the API), and build the services, the API and the UI on a thread that
    hands the app to the gate when it is ready (`modules.api.startup`); then load the first model.
    The early path imports no torch, diffusers or Gradio."""
    try:
        first = parse_settings(argv, environ, known_only=True)  # where the extensions are
        # Extensions' preload(parser) need the heavy script loader: with any, their flags are
        # parsed on the start-up thread (a bad flag stops the server there, exit code 2).
        deferred = _has_extension_preloads(first, environ)
        settings = first if deferred else parse_settings(argv, environ)
    except SettingsError as exc:
        print(f"error: {exc}")
        return 2
    logging.basicConfig(level=settings.loglevel or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from modules.api.exposure import startup_security  # stdlib only: keeps the start fast

    if (refused := startup_security(settings)) is not None:  # --listen without logins; secrets out of logs
        return refused
    if not deferred:
        for warning in settings.warnings:
            log.warning("%s", warning)

    import uvicorn

    from modules.api.startup import StartupGate, StartupState

    gate = StartupGate(settings, StartupState(hold_page=not settings.skip_load_model_at_start))
    config = uvicorn.Config(
        gate,
        host=settings.bind_host,
        port=settings.effective_port,
        timeout_keep_alive=settings.timeout_keep_alive,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        root_path=settings.subpath or "",
        log_level=(settings.loglevel or "info").lower(),
    )
    from modules.api.lifecycle import GracefulServer

    # SIGTERM/SIGINT/stop: queued jobs fail at once (503), the running one is interrupted, the
    # worker is joined; READY=1 to systemd once listening (modules.api.lifecycle)
    server = GracefulServer(config, lambda: launch.services.engine if launch.services is not None else None)
    launch = _Launch(argv, environ, settings, deferred, gate, server)
    if settings.ray and not launch.build():  # Ray starts from the main thread: build first, as before
        return launch.exit_code
    threading.Thread(target=launch.run, name="start-up", daemon=True).start()
    log.info("serving on http://%s:%d", settings.bind_host, settings.effective_port)
    interrupted = False
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it stopped on (after the drain)
        interrupted = True
    finally:
        if launch.services is not None:
            launch.services.worker.shutdown()
    if interrupted:  # end by SIGINT, as uvicorn means to (clean for systemd), without a traceback
        import os
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return launch.exit_code or (launch.control.exit_code if launch.control is not None else 0)


HOLD_ENV = "SDW_TEST_HOLD_STARTUP"
"""Tests only: the start-up thread waits for the file this names before building the services, so
a test sees the gate's early answers without racing the build."""


class _Launch:
    """The start-up thread: build the services and the app, hand the app to the gate, load the
    first model. Its outcome (`services`, `control`, `exit_code`) is read by `main`."""

    def __init__(
        self,
        argv: Sequence[str],
        environ: Mapping[str, str],
        settings: Settings,
        deferred: bool,
        gate: StartupGate,
        server: uvicorn.Server,
    ) -> None:
        self.argv, self.environ, self.settings, self.deferred = argv, environ, settings, deferred
        self.gate, self.server = gate, server
        self.services: Services | None = None
        self.app: FastAPI | None = None
        self.control: ServerControl | None = None
        self.exit_code = 0

    def run(self) -> None:
        if self.app is None and not self.build():
            self.server.should_exit = True
            return
        assert self.app is not None and self.services is not None
        if not self.gate.open(self.app):
            return  # the server stopped first
        log.info("start-up: the API and the UI are served")
        # After the app, as before: loading while the UI is built made both slower on a shared CPU
        # (bench/bench_cold_start.py, full SD1.5: /options 1.5x later, the model no sooner).
        if not self.settings.skip_load_model_at_start:
            self._load_model(self.services)

    def build(self) -> bool:
        """Services, checkpoints list, app. False (and `exit_code`) on failure."""
        state = self.gate.state
        try:
            hold = self.environ.get(HOLD_ENV)
            while hold and not Path(hold).exists():
                time.sleep(0.05)
            settings = self.settings
            if self.deferred:
                state.set_phase("reading the extensions' flags")
                from modules.extensions.setup import extension_preloads

                preloads = extension_preloads(settings, REPO_ROOT, self.environ)
                settings = parse_settings(self.argv, self.environ, preloads=preloads)
                for warning in settings.warnings:
                    log.warning("%s", warning)
            state.set_phase("importing libraries and building the services")
            services = build_services(settings, REPO_ROOT, self.environ)
            self.services = services
            state.set_phase("listing checkpoints")
            services.registry.refresh()
            state.set_phase("building the UI" if not settings.nowebui else "building the API")
            app = create_app(services)
            from modules.api.routes.server import ServerControl

            # Restart (exit code 3) only means something when a supervisor starts us again:
            # webui.sh's loop (it exports SDW_ROOT) or systemd (INVOCATION_ID).
            restartable = bool(self.environ.get("SDW_ROOT") or self.environ.get("INVOCATION_ID"))
            control = ServerControl(restartable=restartable)
            app.state.server_control = control
            if services.extensions is not None and control.restartable:
                services.extensions.restart_server = control.restart  # the Extensions tab's "Apply and restart"
            control.attach(self.server)
            self.control, self.app = control, app
            return True
        except SettingsError as exc:  # a bad extension flag, --ray without Ray installed
            print(f"error: {exc}")
            self.exit_code = 2
        except Exception as exc:
            log.exception("start-up failed")
            self.exit_code = 1
            state.failed(f"start-up failed: {type(exc).__name__}: {exc}")
        return False

    def _load_model(self, services: Services) -> None:
        state = self.gate.state
        try:
            load_initial_model(services, lambda name: state.set_phase(f"loading model {name}"))
        finally:
            state.release_page()


def _has_extension_preloads(settings: Settings, environ: Mapping[str, str]) -> bool:
    """Whether an enabled extension has a `preload.py` (its flags join ours). Cheap: no script
    loader, no torch (`modules.extensions.setup.extension_preloads` does the real work)."""
    from modules.core.options import Options, default_option_infos
    from modules.core.paths import Paths
    from modules.extensions.manager import ExtensionManager

    paths = Paths.from_settings(settings, REPO_ROOT, environ)
    options = Options(default_option_infos(), paths.config_file)
    options.load()
    manager = ExtensionManager(settings, paths, options, environ=environ)
    return any((ext.path / "preload.py").is_file() for ext in manager.active())
