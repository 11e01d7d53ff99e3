"""Generation on the worker: validation before queueing, then one request processed inside a
model lease.

`GenerationService.submit(request)` validates on the caller's thread (bad sampler or size = user
error right away), then queues a job on the single worker. On the worker, `process(request, ctx)`
(public: code that runs many generations in one job calls it directly) leases the model the
request asks for (its `override_settings` checkpoint / VAE, else the selected ones), runs the
processor with the hooks, restores faces, builds A1111 infotexts and saves outputs. The Result
records the model it ran with. The adapters do not use this class: they go through
`modules.engine.facade.Engine`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from PIL import Image

from modules import __version__
from modules.core.errors import NotFoundError, ValidationError
from modules.core.extra_networks import batch_networks, with_default_network
from modules.core.fields import infotext_for_option
from modules.core.filenames import FilenameContext
from modules.core.infotext import build_infotext, order_params
from modules.core.options import Options
from modules.core.requests import GenerationRequest, Img2ImgRequest, Limits, Txt2ImgRequest, validate_request
from modules.core.results import ModelUsed, Result
from modules.core.styles import StyleDatabase
from modules.engine import samplers as smp
from modules.engine.compile import CompileReport, CompileSettings, compiled_unet, compiled_vae
from modules.engine.controlnet_service import ControlNetService
from modules.engine.extra_networks import ExtraNetworks, JobNetworks, NetworkSet
from modules.engine.hooks import Hooks, ImageEvent, ProcessEvent, SaveEvent
from modules.engine.outputs import ImageSaver
from modules.engine.processing import (
    ModelAccess,
    Processor,
    options_to_settings,
    run_img2img,
    run_txt2img,
    seamless_tiling,
)
from modules.engine.token_merging import job_ratios, token_merging
from modules.engine.worker import Job, JobContext, Worker
from modules.models import fp8
from modules.models.fast_paths import FastPaths, attention_context, prepare_model
from modules.models.loader import StableDiffusionModel
from modules.models.manager import ModelManager
from modules.models.registry import CheckpointInfo
from modules.models.spec import ModelSpec
from modules.models.taesd import TaesdDecoders
from modules.models.taesd import decoder_names as taesd_decoder_names
from modules.models.vae_tiling import vae_tiling

log = logging.getLogger(__name__)

MODEL_OVERRIDES = ("sd_model_checkpoint", "sd_vae")
VERSION = f"sd-webui-{__version__}"

Saver = Callable[[Result, GenerationRequest, Hooks], None]
ModelUpscale = Callable[[Image.Image, str, tuple[int, int]], Image.Image]


class ScriptHost(Protocol):
    """Scripts around generation (A1111's script runner; `modules.extensions.runner` implements it).

    The engine knows nothing of scripts beyond this: a request a host `wants` (a selected script,
    or always-on scripts for its tab) runs as `host.run(request, ctx, process)` on the worker, where
    `process(request, hooks)` prepares and processes one generation inside the job (a script may
    call it many times); everything else runs as before."""

    def names(self, request: GenerationRequest) -> list[str]:
        """Titles of the scripts a request can name in `alwayson_scripts` (any case)."""
        ...

    def check(self, request: GenerationRequest) -> list[str]:
        """Raise a user error for an unknown `script_name` or always-on script; return warnings."""
        ...

    def wants(self, request: GenerationRequest) -> bool: ...

    def run(
        self, request: GenerationRequest, ctx: JobContext, process: Callable[[GenerationRequest, Hooks | None], Result]
    ) -> Result: ...


class FaceRestorer(Protocol):
    """What the Extras face restorers (GFPGAN, CodeFormer) provide to the engine."""

    name: str

    def restore(self, image: Image.Image) -> Image.Image: ...


def image_saver_for(saver: ImageSaver) -> Saver:
    """Save every image of a result (and the grid, and params.txt) with A1111's rules, firing the
    save hooks around each image."""

    def save(result: Result, request: GenerationRequest, hooks: Hooks) -> None:
        kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        used = result.model
        for i, image in enumerate(result.images):
            params = result.params[i] if i < len(result.params) else {}
            ctx = FilenameContext(
                seed=result.seeds[i],
                seed_first=result.seeds[0],
                seed_last=result.seeds[-1],
                steps=request.steps,
                cfg=request.cfg_scale,
                width=image.width,
                height=image.height,
                styles=request.styles,
                sampler=str(params.get("Sampler", "")),
                scheduler=str(params.get("Schedule type", "")),
                model_hash=used.shorthash,
                model_name=used.name,
                prompt=result.prompts[i],
                prompt_no_styles=request.prompt,
                negative_prompt=result.negative_prompts[i],
                batch_number=i % request.batch_size,
                batch_size=request.batch_size,
                generation_number=i,
                n_iter=request.n_iter,
                clip_skip=int(params.get(_CLIP_SKIP, 1)),
                denoising=request.denoising_strength,
                job_timestamp=result.job_timestamp,
            )
            event = hooks.before_image_saved.fire(SaveEvent(request, i, image, result.infotexts[i], kind))
            saved = saver.save_sample(event.image, kind, ctx, infotext=event.infotext)
            result.paths.append(saved.path)
            event.path = saved.path
            hooks.after_image_saved.fire(event)
        if result.infotexts:
            saver.write_params(result.infotexts[0])
        if len(result.images) > 1 and not request.do_not_save_grid and saver.should_save_grid(len(result.images)):
            grid = saver.grid(result.images, request.batch_size)
            ctx = FilenameContext(seed=result.seeds[0], prompt=result.prompts[0], job_timestamp=result.job_timestamp)
            result.grid = grid
            grid_kind = f"{kind}-grid"
            event = hooks.before_image_saved.fire(SaveEvent(request, -1, grid, result.infotexts[0], grid_kind))
            result.grid_path = saver.save_grid(event.image, kind, ctx, infotext=event.infotext).path
            event.path = result.grid_path
            hooks.after_image_saved.fire(event)

    return save


def _fmt(value: float) -> str:
    """A number as A1111 writes a float parameter: Python's `str(float)` ("7.0" for a request that
    sent 7, "0.75")."""
    return str(float(value))


def _written_as(option: str) -> str:
    """The infotext key an option is written under, from the one field table in core."""
    key = infotext_for_option(option)
    if key is None:
        raise KeyError(f"{option} has no infotext key in modules.core.fields")
    return key


_CLIP_SKIP = _written_as("CLIP_stop_at_last_layers")
_RNG = _written_as("randn_source")
_ENSD = _written_as("eta_noise_seed_delta")
_EMPHASIS = _written_as("emphasis")
_MASK_WEIGHT = _written_as("inpainting_mask_weight")


def _effective_eta(request: GenerationRequest, sampler: smp.SamplerInfo, settings: Any) -> float:
    """The eta a sampler runs with: the request's, else the `eta_ancestral` / `eta_ddim` option."""
    if request.eta is not None:
        return float(request.eta)
    o = settings.sampler
    return float(o.eta_ddim if sampler.kind == "timesteps" else o.eta_ancestral)


class GenerationService:
    def __init__(
        self,
        models: ModelManager,
        options: Options,
        worker: Worker,
        *,
        saver: Saver | None = None,
        face_restorer: Callable[[], FaceRestorer | None] | None = None,
        styles: StyleDatabase | None = None,
        taesd: TaesdDecoders | None = None,
        upscale: ModelUpscale | None = None,
        hooks: Hooks | None = None,
        selected_checkpoint: Callable[[], str | CheckpointInfo | None] = lambda: None,
        upcast_sampling: bool = False,
        nan_check: bool = True,
        networks: ExtraNetworks | None = None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        self.fast_paths = fast_paths  # the flags' GPU fast paths (attention kernels, channels_last, --torch-compile)
        self.styles = styles
        self.taesd = taesd
        self.upscale = upscale
        self.models = models
        self.options = options
        self.worker = worker
        self.saver = saver
        self.face_restorer = face_restorer or (lambda: None)
        self.hooks = hooks if hooks is not None else Hooks()
        self.selected_checkpoint = selected_checkpoint
        self.upcast_sampling = upcast_sampling  # --upcast-sampling, as the device policy allows
        self.nan_check = nan_check  # off with --disable-nan-check
        self.networks = networks  # LoRAs, hypernetworks, embeddings (None: a bare engine without them)
        self.scripts: ScriptHost | None = None  # set by the composition root when scripts are loaded
        self.controlnet: ControlNetService | None = None  # set by the composition root (ControlNet models)

    # -- on the caller's thread --------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        """Validate and apply styles before anything is queued: a bad sampler, size or setting is
        a user error right away. Returns the request to run and the warnings for the caller."""
        scripts = self.scripts.names(request) if self.scripts is not None else []
        request, warnings = validate_request(request, Limits.from_options(self.options), scripts)
        request, style_warnings = self._apply_styles(request)
        warnings += style_warnings
        request = self._with_default_networks(request)
        smp.resolve_sampler(request.effective_sampler, request.scheduler)  # 404 before queueing
        hires = isinstance(request, Txt2ImgRequest) and request.enable_hr
        if hires and request.hr_sampler_name and request.hr_sampler_name != "Use same sampler":  # type: ignore[attr-defined]
            smp.resolve_sampler(request.hr_sampler_name, request.hr_scheduler)  # type: ignore[attr-defined]
        # second checkpoints must exist before the job is queued (A1111: "Could not find checkpoint")
        hr_checkpoint = getattr(request, "hr_checkpoint_name", None) if hires else None
        for field_name, name in (
            ("hr_checkpoint_name", hr_checkpoint),
            ("refiner_checkpoint", request.refiner_checkpoint),
        ):
            if name and name not in ("None", "Use same checkpoint"):
                try:
                    self.models.registry.find_checkpoint(str(name))
                except NotFoundError as exc:
                    raise NotFoundError(f"{field_name}: could not find checkpoint with name {name}") from exc
        switch_at = request.refiner_switch_at
        refining = request.refiner_checkpoint not in (None, "", "None") and switch_at is not None
        if refining and not 0 <= float(switch_at) <= 1:  # type: ignore[arg-type]
            raise ValidationError("refiner_switch_at: must be between 0 and 1")
        if request.override_settings:  # unknown, bad, restricted or frozen: 4xx before queueing
            request = replace(request, override_settings=self.options.check_overrides(request.override_settings))
        warnings += [w for w in request.adapter_warnings if w not in warnings]
        if any(unit.enabled for unit in request.controlnet_units):
            if self.controlnet is None:
                raise ValidationError("ControlNet units were given, but ControlNet is not available here")
            warnings += self.controlnet.check(request)  # unknown model or module: 4xx before queueing
        return request, warnings

    def submit(self, request: GenerationRequest) -> Job[Result]:
        kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        host = self.scripts
        if host is None and request.script_name:
            raise ValidationError(f"Selectable script not found: {request.script_name!r}")  # A1111's 422
        # an unknown script (selectable or always-on) is a user error before queueing (A1111's 422)
        script_warnings = host.check(request) if host is not None else []
        if host is not None and host.wants(request):
            warnings = script_warnings
            self.prepare(request)  # so is a bad sampler or size; scripts get the request as sent

            def run_scripted(ctx: JobContext) -> Result:
                result = host.run(request, ctx, lambda r, hooks: self.prepare_and_process(r, ctx, hooks))
                result.warnings[:0] = [w for w in warnings if w not in result.warnings]
                for warning in result.warnings:
                    log.warning("%s %s: %s", kind, ctx.id, warning)
                return result

            return self.worker.submit(run_scripted, task_id=request.force_task_id, description=kind)

        request, warnings = self.prepare(request)
        warnings[:0] = script_warnings

        def run(ctx: JobContext) -> Result:
            result = self.process(request, ctx)
            result.warnings[:0] = warnings
            for warning in result.warnings:
                log.warning("%s %s: %s", kind, ctx.id, warning)
            return result

        return self.worker.submit(run, task_id=request.force_task_id, description=kind)

    def prepare_and_process(self, request: GenerationRequest, ctx: JobContext, hooks: Hooks | None = None) -> Result:
        """Prepare (validate, styles) and process one request inside the running job."""
        prepared, warnings = self.prepare(request)
        result = self.process(prepared, ctx, hooks=hooks)
        result.warnings[:0] = warnings
        return result

    def run_sync(self, request: GenerationRequest, timeout: float | None = None) -> Result:
        return self.submit(request).future.result(timeout)

    def _apply_styles(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        """A1111 applies styles server-side before anything else; unknown names are skipped (as
        A1111 does) but reported."""
        if not request.styles or request.all_prompts:  # prompts a script set are final
            return request, []
        known = {s.name for s in self.styles.styles()} if self.styles is not None else set()
        missing = [name for name in request.styles if name not in known]
        present = [name for name in request.styles if name in known]
        prompt, negative = request.prompt, request.negative_prompt
        if present and self.styles is not None:
            prompt, negative = self.styles.apply(prompt, negative, present)
        warnings = [f"style not found: {name!r}" for name in missing]
        return request.replace(prompt=prompt, negative_prompt=negative), warnings

    def _with_default_networks(self, request: GenerationRequest) -> GenerationRequest:
        """A1111's "Add network to prompt" options (`sd_lora`, `sd_hypernetwork`): the network's
        tag is appended to the prompt (so the infotext shows it) unless the prompt names it."""
        if self.networks is None or request.disable_extra_networks:
            return request
        multiplier = self._option("extra_networks_default_multiplier", 1.0)

        def added(prompt: str) -> str:
            for option, kind in (("sd_lora", "lora"), ("sd_hypernetwork", "hypernet")):
                name = request.override_settings.get(option, self._option(option, "None"))
                prompt = with_default_network(prompt, kind, str(name or "None"), float(multiplier))
            return prompt

        prompt = added(request.prompt)
        all_prompts = tuple(added(p) for p in request.all_prompts)
        if prompt == request.prompt and all_prompts == request.all_prompts:
            return request
        return request.replace(prompt=prompt, all_prompts=all_prompts)

    def _job_networks(self, request: GenerationRequest) -> JobNetworks:
        """The networks the request's prompts name (its first prompt's tags; the hires prompt's for
        the hires pass), loaded before the lease so their patches are part of it."""
        if request.disable_extra_networks:
            if self.networks is not None:
                self.networks.use_bundled()  # no LoRA in force: none of their embeddings either
            return JobNetworks(self.networks)
        if self.networks is None:  # a bare engine (tests, tools): say so rather than drop the tags
            tags = batch_networks([request.prompt_at(0)])
            notes = [f"extra network {t.text} not applied: this engine has no extra networks" for t in tags]
            return JobNetworks(None, NetworkSet(warnings=notes), NetworkSet())
        self.networks.embeddings.refresh_if_changed()  # a file dropped into the folder works (A1111)
        first = self.networks.resolve([request.prompt_at(0)])
        hires: NetworkSet = first
        hr_prompt = request.hr_prompt if isinstance(request, Txt2ImgRequest) and request.enable_hr else ""
        if hr_prompt and hr_prompt != request.prompt_at(0):
            hires = self.networks.resolve([hr_prompt])
        self.networks.use_bundled(first, hires)
        return JobNetworks(self.networks, first, hires)

    # -- on the worker -----------------------------------------------------------------------

    def process(self, request: GenerationRequest, ctx: JobContext, *, hooks: Hooks | None = None) -> Result:
        """Run one (prepared) request now, on the worker thread, inside a model lease; `hooks` are
        added to the service's own for this call. For code that runs many generations in one job
        (loopback, X/Y/Z plot, SD upscale): call it from inside a job."""
        if not self.worker.on_worker_thread():
            raise RuntimeError("GenerationService.process runs on the worker thread only; submit a job instead")
        # every option read on this thread meanwhile (saving, face restoration, scripts) sees them
        with self.options.overlaid(request.override_settings):
            result = self._process(request, ctx, hooks)
        if not request.override_settings_restore_afterwards and request.override_settings:
            self._keep_overrides(dict(request.override_settings))
        return result

    def _process(self, request: GenerationRequest, ctx: JobContext, hooks: Hooks | None) -> Result:
        # inside `overlaid`: `self.options.get` / `self._option` already answer the overrides
        hooks = self.hooks.combined(hooks)
        overrides = dict(request.override_settings)
        settings = replace(
            options_to_settings(self.options.get, overrides),
            upcast_sampling=self.upcast_sampling,
            nan_check=self.nan_check,
        )
        networks = self._job_networks(request)
        spec = replace(self.spec_for(request, settings.clip_skip), patches=networks.first.patches)
        controlnet = None
        if self.controlnet is not None and any(unit.enabled for unit in request.controlnet_units):
            local = Hooks()
            controlnet = self.controlnet.begin(local, request)  # its wrapper, filled once the seeds are known
            hooks = hooks.combined(local)
        with self.models.lease(spec) as model, contextlib.closing(networks):
            prepare_model(model, self.fast_paths)
            forced = self.fast_paths is not None and self.fast_paths.torch_compile
            compiling = CompileSettings.from_options(self.options.get, overrides, forced=forced)
            compile_report = CompileReport()
            if compiling.any and model.offloader is not None:
                compile_report.notes.append("torch.compile: not used with --medvram/--lowvram (parts move as they run)")
                compiling = CompileSettings()
            fp8_setting = str(self._option("fp8_storage", "Disable"))
            fp8_note = fp8.sync(model.unet, fp8_setting, is_sdxl=model.family.is_sdxl, device=model.device)
            if fp8_note is not None:
                compile_report.notes.append(fp8_note)
            elif compiling.unet and fp8.is_fp8(model.unet):
                compile_report.notes.append("torch.compile: the UNet is not compiled while it stores fp8 weights")
                compiling = replace(compiling, unet=False)
            used = self._model_used(model)
            preview_kind = str(self._option("show_progress_type", "Approx NN"))
            taesd = None
            if self.taesd is not None and preview_kind in ("TAESD", "Approx NN"):  # no VAE-approx NN: TAESD stands in
                taesd = self.taesd.get(model.family)
            preview_note = None
            if preview_kind == "TAESD" and taesd is None:
                names = " or ".join(taesd_decoder_names(model.family))
                preview_note = f"live previews: TAESD asked for, but models/VAE-taesd has no {names}: Approx cheap used"
            processor = Processor(
                model,
                request,
                settings,
                ctx,
                infotext_params=self._params_for(request, used),
                preview_taesd=taesd,
                preview_full=preview_kind == "Full",
                model_upscale=self.upscale,
                hooks=hooks,
                models=ModelAccess(
                    lease=lambda name, patches: self.models.lease(
                        ModelSpec(
                            checkpoint=name,
                            vae=spec.vae if name is None else None,  # the job's checkpoint keeps the job's VAE
                            clip_skip=settings.clip_skip,
                            patches=patches,
                        )
                    ),
                    title=self._active_short_title,
                ),
                networks=networks,
                unet_for=(lambda unet: compiled_unet(unet, compiling, compile_report)) if compiling.unet else None,
            )
            if preview_note is not None and settings.preview_every:
                processor.warnings.append(preview_note)
            seeds, subseeds = processor.seeds()
            tome_first, tome_hr = job_ratios(
                self._option,
                img2img=isinstance(request, Img2ImgRequest),
                overridden="token_merging_ratio" in overrides,
            )
            tome = (
                token_merging(model.unet, lambda: tome_hr if processor.in_hires_pass else tome_first, seed=seeds[0])
                if max(tome_first, tome_hr) > 0
                else contextlib.nullcontext()
            )
            if controlnet is not None:
                assert self.controlnet is not None
                self.controlnet.prepare(controlnet, request, model, seeds[0], subseeds[0])
            hooks.before_process.fire(ProcessEvent(request, list(seeds), list(subseeds), model.family.label))
            with (
                seamless_tiling(model, bool(request.tiling)),
                attention_context(self.fast_paths),
                compiled_vae(model.vae, compiling, compile_report),
                tome,
                vae_tiling(
                    model.vae,
                    bool(self._option("sd_vae_tiling", False)),
                    int(self._option("sd_vae_tiling_threshold", 1024)),
                ),
            ):
                if isinstance(request, Img2ImgRequest):
                    result = run_img2img(processor, request, ctx)
                else:
                    assert isinstance(request, Txt2ImgRequest)
                    result = run_txt2img(processor, request, ctx)
            result.warnings.extend(processor.warnings)
            self._note_compile(result, compile_report)
            hires = isinstance(request, Txt2ImgRequest) and request.enable_hr
            if max(tome_first, tome_hr) > 0:  # it is on the job's own UNet only
                for title in dict.fromkeys(processor.other_unets):
                    result.warnings.append(f"token merging: not applied to the pass that ran on {title}")
            for params in result.params:
                if fp8.is_fp8(model.unet):
                    params["FP8 weight"] = fp8_setting
                if tome_first:
                    params["Token merging ratio"] = tome_first
                if hires and tome_hr:
                    params["Token merging ratio hr"] = tome_hr
            if controlnet is not None:
                for params in result.params:
                    params.update(controlnet.params)
                result.extra_images.extend(controlnet.detected_maps)
            if request.restore_faces:
                self._restore_faces(result)
            for i, image in enumerate(result.images):
                event = hooks.postprocess_image.fire(ImageEvent(request, i, image, result.params[i]))
                result.images[i] = event.image
            result.infotexts = [
                build_infotext(result.prompts[i], result.negative_prompts[i], result.params[i])
                for i in range(len(result.images))
            ]
        result.model = used
        result.version = VERSION
        result.job_timestamp = ctx.job_timestamp
        if self.saver is not None and not request.do_not_save_samples:
            self.saver(result, request, hooks)
        return result

    @staticmethod
    def _note_compile(result: Result, report: CompileReport) -> None:
        """The compile cost as the infotext entry "Compile" (and a log line); notes (compile's and
        fp8's) as the result's warnings (which the job logs)."""
        result.warnings.extend(n for n in report.notes if n not in result.warnings)
        text = report.infotext()
        if text is None:
            return
        log.info("torch.compile in this job: %s (%d shape(s) compiled)", text, report.compiles)
        for params in result.params:
            params["Compile"] = text

    def spec_for(self, request: GenerationRequest, clip_skip: int) -> ModelSpec:
        """The model a request runs with: its `override_settings` checkpoint / VAE, else the
        selected checkpoint and the default VAE choice; `clip_skip` as the job resolved it. A
        per-request choice is part of the lease, never a change of the defaults."""
        overrides = request.override_settings
        checkpoint = overrides.get("sd_model_checkpoint") or self.selected_checkpoint()
        if checkpoint is not None and not isinstance(checkpoint, CheckpointInfo):
            checkpoint = str(checkpoint)
        vae = overrides.get("sd_vae")
        return ModelSpec(checkpoint=checkpoint or None, vae=None if vae is None else str(vae), clip_skip=clip_skip)

    def _model_used(self, model: StableDiffusionModel) -> ModelUsed:
        active = self.models.active
        info = active.info if active is not None else None
        vae = model.vae_source
        if info is None:
            return ModelUsed(vae_name=vae.name if vae else None, family=model.family.label)
        name = info.filename.name if info.is_folder else info.filename.name.rsplit(".", 1)[0]
        return ModelUsed(
            name=name,
            title=info.title,
            shorthash=info.shorthash,
            sha256=info.sha256,
            vae_name=vae.name if vae else None,
            family=model.family.label,
        )

    def _active_short_title(self) -> str:
        """A1111's `short_title` of the active checkpoint: "name [shorthash]" (the file stem)."""
        active = self.models.active
        if active is None:
            return ""
        info = active.info
        stem = info.filename.name if info.is_folder else info.filename.name.rsplit(".", 1)[0]
        return f"{stem} [{info.shorthash}]" if info.shorthash else stem

    def _keep_overrides(self, overrides: dict[str, Any]) -> None:
        """`override_settings_restore_afterwards: false`: the overrides stay as the settings (A1111).
        Checkpoint and VAE become the selected ones through the options' callbacks, which run
        inline here on the worker thread."""
        try:
            self.options.apply_update(overrides, ignore_unknown=True, allow_restricted=False)
        except Exception as exc:  # the job's result stands
            log.warning("could not keep override_settings after the job: %s", exc)

    def _option(self, key: str, default: Any) -> Any:
        return self.options.get(key) if key in self.options else default

    def _restore_faces(self, result: Result) -> None:
        restorer = self.face_restorer()
        if restorer is None:
            result.warnings.append("restore_faces: no face restoration model is available; images left as they are")
            return
        result.images = [restorer.restore(image) for image in result.images]
        for params in result.params:
            params["Face restoration"] = restorer.name
        result.params = [order_params(p) for p in result.params]

    def _params_for(
        self, request: GenerationRequest, used: ModelUsed
    ) -> Callable[[Processor, int, int], dict[str, Any]]:
        def params(processor: Processor, index: int, in_batch: int) -> dict[str, Any]:
            model = processor.model
            settings = processor.settings
            sampler, schedule = processor.sampler, processor.schedule
            seed = processor.result_seed(index)
            p: dict[str, Any] = {
                "Steps": request.steps,
                "Sampler": sampler.name,
                "Schedule type": schedule.label,
                "CFG scale": _fmt(request.cfg_scale),
                "Seed": seed,
                "Size": f"{request.width}x{request.height}",
                "Model hash": used.shorthash,
                "VAE": model.vae_source.name if model.vae_source else None,
                _CLIP_SKIP: settings.clip_skip if settings.clip_skip > 1 else None,
                _RNG: settings.rng_source if settings.rng_source != "GPU" else None,
                "Tiling": "True" if request.tiling else None,
                "Version": VERSION,
            }
            if used.name is not None:  # the file stem without folders
                p["Model"] = used.name
            if model.family.variant == "ip2p" and isinstance(request, Img2ImgRequest):
                p["Image CFG scale"] = _fmt(request.image_cfg_scale if request.image_cfg_scale is not None else 1.5)
            if request.subseed_strength:
                p["Variation seed"] = processor.result_subseed(index)
                p["Variation seed strength"] = _fmt(request.subseed_strength)
            if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
                p["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
            if settings.eta_noise_seed_delta and sampler.uses_ensd and _effective_eta(request, sampler, settings) != 0:
                p[_ENSD] = settings.eta_noise_seed_delta
            if isinstance(request, Img2ImgRequest):
                p["Denoising strength"] = _fmt(request.denoising_strength or 0.75)
                if request.mask is not None:
                    blur_x, _ = request.blur_xy
                    p["Mask blur"] = blur_x
                    if request.inpainting_mask_invert:
                        p["Mask mode"] = "Inpaint not masked"
                    if request.inpainting_fill != 1:
                        p["Masked content"] = ("fill", "original", "latent noise", "latent nothing")[
                            request.inpainting_fill
                        ]
                    if request.inpaint_full_res:
                        p["Inpaint area"] = "Only masked"
                        p["Masked area padding"] = request.inpaint_full_res_padding
                if model.family.variant == "inpaint":
                    p[_MASK_WEIGHT] = _fmt(settings.inpainting_mask_weight)
            if isinstance(request, Txt2ImgRequest) and request.enable_hr:
                p["Denoising strength"] = _fmt(
                    request.denoising_strength if request.denoising_strength is not None else 0.75
                )
                if request.hr_resize_x or request.hr_resize_y:
                    p["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
                else:
                    p["Hires upscale"] = _fmt(request.hr_scale)
                if request.hr_second_pass_steps:
                    p["Hires steps"] = request.hr_second_pass_steps
                p["Hires upscaler"] = request.hr_upscaler or "Latent"
                if request.hr_sampler_name and request.hr_sampler_name != sampler.name:
                    p["Hires sampler"] = request.hr_sampler_name
                if request.hr_prompt and request.hr_prompt != request.prompt:
                    p["Hires prompt"] = request.hr_prompt
                if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
                    p["Hires negative prompt"] = request.hr_negative_prompt
            if settings.emphasis != "Original":
                p[_EMPHASIS] = settings.emphasis
            p.update(processor.extra_params)
            p.update(request.extra_generation_params)  # scripts' keys (A1111's p.extra_generation_params)
            return order_params({k: v for k, v in p.items() if v is not None})

        return params
