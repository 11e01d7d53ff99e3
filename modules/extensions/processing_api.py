"""A1111's `p` objects, `Processed` and `process_images`, over our engine.

`StableDiffusionProcessingTxt2Img` / `...Img2Img` carry A1111's field names (the same names as
our core requests, by design), so a script reads and writes `p.steps`, `p.prompt`,
`p.all_prompts`, `p.init_images`, `p.extra_generation_params` ... as it does in A1111.
`process_images(p)` runs the always-on scripts around one generation: `before_process`, the
prompts and seeds worked out (`p.all_prompts`, `p.all_seeds` ...), `process`, then the engine
with per-batch hooks (`before_process_batch` / `process_batch`, `before_hr`,
`postprocess_batch` / `postprocess_batch_list`, `postprocess_image`), and `postprocess` with the
`Processed` result. Called inside a scripted job it processes there (a selectable script may call
it many times in one job); called anywhere else it runs as a job of its own and waits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from modules.core.errors import ValidationError
from modules.core.infotext import build_infotext, parse_infotext
from modules.core.requests import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from modules.core.results import Result
from modules.engine import noise as noise_mod
from modules.engine.hooks import Hooks
from modules.engine.token_merging import job_ratios
from modules.extensions import runtime

log = logging.getLogger(__name__)

# fields of the core requests that are not the `p` object's business (the runner handles scripts)
_NOT_FROM_P = frozenset({"script_name", "script_args", "alwayson_scripts", "force_task_id", "mask"})
_TUPLE_FIELDS = frozenset({"styles", "init_images", "all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"})
_DICT_FIELDS = frozenset({"override_settings", "extra_generation_params"})


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


class StableDiffusionProcessing:
    """A1111's `p`: every field a script may read or write. Unknown keyword arguments are kept as
    attributes (A1111 has many internal fields); those that change nothing here are reported when
    the generation runs (`p.ignored_fields`)."""

    _request_class: type[GenerationRequest] = GenerationRequest
    # the request fields (set in __init__ from the request class's defaults; declared for typing)
    prompt: Any
    negative_prompt: Any
    styles: list[str]
    seed: Any
    subseed: Any
    subseed_strength: float
    seed_resize_from_h: int
    seed_resize_from_w: int
    sampler_name: str | None
    sampler_index: str | None
    scheduler: str | None
    batch_size: int
    n_iter: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    restore_faces: bool | None
    tiling: bool | None
    do_not_save_samples: bool
    do_not_save_grid: bool
    eta: float | None
    denoising_strength: float | None
    s_min_uncond: float | None
    s_churn: float | None
    s_tmax: float | None
    s_tmin: float | None
    s_noise: float | None
    override_settings: dict[str, Any]
    override_settings_restore_afterwards: bool
    refiner_checkpoint: str | None
    refiner_switch_at: float | None
    disable_extra_networks: bool
    comments: Any
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    extra_generation_params: dict[str, Any]
    mask_blur_x: int
    mask_blur_y: int
    # A1111 fields the engine does not use, with why (a script setting one gets a warning)
    _UNUSED: Mapping[str, str] = {
        "ddim_discretize": "DDIM discretization choices are not implemented here",
        "sampler_noise_scheduler_override": "sampler overrides by function are not supported",
        "do_not_reload_embeddings": "embeddings are checked for changes before each job",
    }

    def __init__(self, **kwargs: Any) -> None:
        for name, value in _defaults(self._request_class).items():
            if name in _NOT_FROM_P:
                continue
            setattr(self, name, list(value) if name in _TUPLE_FIELDS else value)
        self.sd_model: Any = None
        self.outpath_samples: str | None = None
        self.outpath_grids: str | None = None
        self.prompt_for_display: str | None = None
        self.scripts: Any = None  # the ScriptRunner when scripts run
        self.script_args: list[Any] = []
        self.is_api = False
        self.user: str | None = None
        self.iteration = 0
        self.batch_index = 0
        self.is_hr_pass = False
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.main_prompt = ""
        self.main_negative_prompt = ""
        self.sampler: Any = None
        self.c: Any = None
        self.uc: Any = None
        self.overlay_images: list[Any] | None = None
        self.seed_enable_extras = True
        self.ddim_discretize: str | None = None
        self.sampler_noise_scheduler_override: Any = None
        self.do_not_reload_embeddings = False
        self.cached_c: list[Any] = [None, None]
        self.cached_uc: list[Any] = [None, None]
        self.extra_network_data: dict[str, Any] = {}
        self.ignored_fields: list[str] = []
        for name, value in kwargs.items():
            if name == "mask":  # A1111's constructor takes `mask`, the object keeps `image_mask`
                name = "image_mask"
            setattr(self, name, value)
        if self.styles is None:
            self.styles = []
        if self.extra_generation_params is None:
            self.extra_generation_params = {}
        if self.override_settings is None:
            self.override_settings = {}
        if getattr(self, "sampler_index", None) is not None and not self.sampler_name:
            self.sampler_name = self.sampler_index

    # A1111 names that are properties there
    @property
    def mask_blur(self) -> int | None:
        return getattr(self, "_mask_blur", None)

    @mask_blur.setter
    def mask_blur(self, value: int | None) -> None:
        self._mask_blur = value
        if value is not None:
            self.mask_blur_x = value
            self.mask_blur_y = value

    # -- prompts and seeds (A1111's setup_prompts and seed rules) ----------------------------

    def setup_prompts(self) -> None:
        """`all_prompts` / `all_negative_prompts` from `prompt` (a string or a list), styles applied
        (A1111's order: a list prompt gives one image per entry)."""
        prompt: Any = self.prompt
        negative: Any = self.negative_prompt or ""
        if isinstance(prompt, list):
            all_prompts = list(prompt)
        elif isinstance(negative, list):
            all_prompts = [prompt] * len(negative)
        else:
            all_prompts = [prompt] * (self.batch_size * self.n_iter)
        all_negatives = list(negative) if isinstance(negative, list) else [negative] * len(all_prompts)
        if len(all_prompts) != len(all_negatives):
            raise ValidationError(
                f"Received a different number of prompts ({len(all_prompts)}) "
                f"and negative prompts ({len(all_negatives)})"
            )
        env = runtime.maybe_environment()
        styles = list(self.styles or [])
        if env is not None and env.styles is not None and styles:
            known = {s.name for s in env.styles.styles()}
            present = [name for name in styles if name in known]
            styled = [env.styles.apply(p_, n_, present) for p_, n_ in zip(all_prompts, all_negatives, strict=True)]
            all_prompts = [p_ for p_, _ in styled]
            all_negatives = [n_ for _, n_ in styled]
        self.all_prompts = all_prompts
        self.all_negative_prompts = all_negatives
        self.main_prompt = all_prompts[0] if all_prompts else ""
        self.main_negative_prompt = all_negatives[0] if all_negatives else ""

    def setup_seeds(self) -> None:
        """`all_seeds` / `all_subseeds` (A1111: seed + i, the same seed for every image when a
        variation strength is set; a list seed is taken as given)."""
        count = len(self.all_prompts) if self.all_prompts else self.batch_size * self.n_iter
        seed: Any = self.seed
        subseed: Any = self.subseed
        if isinstance(seed, list):
            self.all_seeds = [int(s) for s in seed]
        else:
            fixed = noise_mod.resolve_seed(seed)
            self.all_seeds = [fixed + (i if not self.subseed_strength else 0) for i in range(count)]
        if isinstance(subseed, list):
            self.all_subseeds = [int(s) for s in subseed]
        else:
            fixed_sub = noise_mod.resolve_seed(subseed)
            self.all_subseeds = [fixed_sub + i for i in range(count)]

    # -- to the engine -----------------------------------------------------------------------

    def to_request(self) -> GenerationRequest:
        """The core request this `p` describes (prompts and seeds per image as `p.all_*` hold them)."""
        cls = self._request_class
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in _NOT_FROM_P or not hasattr(self, f.name):
                continue
            value = getattr(self, f.name)
            if f.name in _TUPLE_FIELDS:
                value = tuple(value or ())
            elif f.name in _DICT_FIELDS:
                value = dict(value or {})
            values[f.name] = value
        prompt: Any = self.prompt
        negative: Any = self.negative_prompt
        values["prompt"] = self.prompt_for_display or (
            prompt[0] if isinstance(prompt, list) and prompt else prompt if isinstance(prompt, str) else ""
        )
        values["negative_prompt"] = negative[0] if isinstance(negative, list) and negative else negative or ""
        if "mask_blur" in values:  # `p.mask_blur` sets both axes; the per-axis values are what is sent
            values["mask_blur"] = None
        values["seed"] = self.all_seeds[0] if self.all_seeds else (self.seed if isinstance(self.seed, int) else -1)
        subseed0 = self.all_subseeds[0] if self.all_subseeds else self.subseed
        values["subseed"] = subseed0 if isinstance(subseed0, int) else -1
        total = self.batch_size * self.n_iter
        for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
            values[name] = tuple(values.get(name, ())[:total])
        if not values.get("sampler_name"):
            values["sampler_name"] = None
        if cls is Img2ImgRequest:
            values["mask"] = getattr(self, "image_mask", None)
        unused = self._UNUSED.items()
        self.ignored_fields = [f"p.{k}: {why}" for k, why in unused if getattr(self, k, None) not in (None, False)]
        return cls(**values)

    def close(self) -> None:
        """A1111 frees cached conditioning here; nothing is cached on `p` in this engine."""

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        """The ToMe ratio this job runs with (its `override_settings`, else the settings), as the
        engine picks it (`token_merging_ratio`, `_img2img`, `_hr`)."""
        env = runtime.maybe_environment()
        overrides = self.override_settings or {}

        def get(key: str, default: float) -> float:
            if key in overrides:
                return float(overrides[key])
            if env is None or key not in env.options:
                return default
            value = env.options.get(key)
            return float(value) if isinstance(value, int | float) else default

        first, hr = job_ratios(
            get,
            img2img=isinstance(self, StableDiffusionProcessingImg2Img),
            overridden="token_merging_ratio" in overrides,
        )
        return hr if for_hr else first


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    _request_class = Txt2ImgRequest


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    _request_class = Img2ImgRequest

    def __init__(self, **kwargs: Any) -> None:
        self.image_mask: Any = None
        super().__init__(**kwargs)


def p_from_request(request: GenerationRequest) -> StableDiffusionProcessing:
    """A `p` with the request's values (the runner's starting point for one scripted job)."""
    cls: type[StableDiffusionProcessing] = (
        StableDiffusionProcessingImg2Img if isinstance(request, Img2ImgRequest) else StableDiffusionProcessingTxt2Img
    )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(request):
        if f.name in _NOT_FROM_P:
            continue
        value = getattr(request, f.name)
        if f.name in _TUPLE_FIELDS:
            value = list(value)
        elif f.name in _DICT_FIELDS:
            value = dict(value)
        values[f.name] = value
    p = cls(**values)
    if isinstance(request, Img2ImgRequest):
        p.image_mask = request.mask  # type: ignore[attr-defined]
        if request.mask_blur is not None:
            p.mask_blur = request.mask_blur
    p.script_args = list(request.script_args)
    p.do_not_save_samples = request.do_not_save_samples
    p.do_not_save_grid = request.do_not_save_grid
    return p


# -- Processed -------------------------------------------------------------------------------


class Processed:
    """A1111's result object: images (a grid may lead, `index_of_first_image`), infotexts for
    each image, the per-image prompts and seeds, and the request's values."""

    def __init__(
        self,
        p: StableDiffusionProcessing,
        images_list: Sequence[Any],
        seed: int = -1,
        info: str = "",
        subseed: int | None = None,
        all_prompts: Sequence[str] | None = None,
        all_negative_prompts: Sequence[str] | None = None,
        all_seeds: Sequence[int] | None = None,
        all_subseeds: Sequence[int] | None = None,
        index_of_first_image: int = 0,
        infotexts: Sequence[str] | None = None,
        comments: str = "",
        extra_images_list: Sequence[Any] = (),
    ) -> None:
        self.images = list(images_list)
        self.extra_images = list(extra_images_list)
        self.prompt = p.prompt if isinstance(p.prompt, str) else (p.prompt[0] if p.prompt else "")
        self.negative_prompt = (
            p.negative_prompt if isinstance(p.negative_prompt, str) else (p.negative_prompt or [""])[0]
        )
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = comments
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.scheduler = getattr(p, "scheduler", None)
        self.cfg_scale = p.cfg_scale
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = None
        self.sd_model_name: str | None = None
        self.sd_model_hash: str | None = None
        self.sd_vae_name: str | None = None
        self.sd_vae_hash: str | None = None
        self.seed_resize_from_w = p.seed_resize_from_w
        self.seed_resize_from_h = p.seed_resize_from_h
        self.denoising_strength = p.denoising_strength
        self.extra_generation_params = dict(p.extra_generation_params or {})
        self.index_of_first_image = index_of_first_image
        self.styles = list(p.styles or [])
        self.job_timestamp = ""
        self.clip_skip = 1
        self.eta = p.eta
        self.s_churn = p.s_churn
        self.s_tmin = p.s_tmin
        self.s_tmax = p.s_tmax
        self.s_noise = p.s_noise
        self.is_using_inpainting_conditioning = False
        self.version = ""
        self.token_merging_ratio = p.get_token_merging_ratio()
        self.token_merging_ratio_hr = p.get_token_merging_ratio(for_hr=True)
        self.all_prompts = list(all_prompts if all_prompts is not None else (p.all_prompts or [self.prompt]))
        self.all_negative_prompts = list(
            all_negative_prompts if all_negative_prompts is not None else (p.all_negative_prompts or [""])
        )
        self.all_seeds = list(all_seeds if all_seeds is not None else (p.all_seeds or [seed]))
        self.all_subseeds = list(all_subseeds if all_subseeds is not None else (p.all_subseeds or [subseed or -1]))
        self.infotexts = list(infotexts if infotexts is not None else [info] * len(self.images))
        # ours: what the engine said (warnings) and the results this was made from
        self.warnings: list[str] = []
        self.results: list[Result] = []

    @classmethod
    def from_result(cls, p: StableDiffusionProcessing, result: Result, grid: Any = None) -> Processed:
        images = list(result.images)
        infotexts = list(result.infotexts)
        first = 0
        if grid is not None:
            images.insert(0, grid)
            infotexts.insert(0, infotexts[0] if infotexts else "")
            first = 1
        processed = cls(
            p,
            images,
            seed=result.seeds[0] if result.seeds else -1,
            info=result.infotexts[0] if result.infotexts else "",
            subseed=result.subseeds[0] if result.subseeds else None,
            all_prompts=result.prompts,
            all_negative_prompts=result.negative_prompts,
            all_seeds=result.seeds,
            all_subseeds=result.subseeds,
            index_of_first_image=first,
            infotexts=infotexts,
        )
        if result.prompts:
            processed.prompt = result.prompts[0]
            processed.negative_prompt = result.negative_prompts[0]
        params = result.params[0] if result.params else {}
        processed.sd_model_name = result.model.name
        processed.sd_model_hash = result.model.shorthash
        processed.sd_vae_name = result.model.vae_name
        processed.sd_vae_hash = result.model.vae_hash
        processed.face_restoration_model = params.get("Face restoration")
        processed.sampler_name = str(params.get("Sampler", processed.sampler_name))
        processed.job_timestamp = result.job_timestamp
        processed.clip_skip = int(params.get("Clip skip", 1))
        processed.is_using_inpainting_conditioning = "Conditional mask weight" in params
        processed.version = result.version
        processed.width, processed.height = result.width or p.width, result.height or p.height
        processed.warnings = list(result.warnings)
        processed.results = [result]
        return processed

    def js(self) -> str:
        return json.dumps(
            {
                "prompt": self.all_prompts[0] if self.all_prompts else self.prompt,
                "all_prompts": self.all_prompts,
                "negative_prompt": self.all_negative_prompts[0] if self.all_negative_prompts else self.negative_prompt,
                "all_negative_prompts": self.all_negative_prompts,
                "seed": self.seed,
                "all_seeds": self.all_seeds,
                "subseed": self.subseed,
                "all_subseeds": self.all_subseeds,
                "subseed_strength": self.subseed_strength,
                "width": self.width,
                "height": self.height,
                "sampler_name": self.sampler_name,
                "cfg_scale": self.cfg_scale,
                "steps": self.steps,
                "batch_size": self.batch_size,
                "restore_faces": self.restore_faces,
                "face_restoration_model": self.face_restoration_model,
                "sd_model_name": self.sd_model_name,
                "sd_model_hash": self.sd_model_hash,
                "sd_vae_name": self.sd_vae_name,
                "sd_vae_hash": self.sd_vae_hash,
                "seed_resize_from_w": self.seed_resize_from_w,
                "seed_resize_from_h": self.seed_resize_from_h,
                "denoising_strength": self.denoising_strength,
                "extra_generation_params": self.extra_generation_params,
                "index_of_first_image": self.index_of_first_image,
                "infotexts": self.infotexts,
                "styles": self.styles,
                "job_timestamp": self.job_timestamp,
                "clip_skip": self.clip_skip,
                "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning,
                "version": self.version,
            },
            ensure_ascii=False,
        )

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        return self.infotexts[index] if 0 <= index < len(self.infotexts) else self.info

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio

    def to_result(self) -> Result:
        """The job's Result: every image in order (a script's grids lead: `leading_images`), the
        generated images' prompts, seeds and infotext parameters."""
        first = self.index_of_first_image
        params: list[dict[str, Any]] = []
        for result in self.results:
            params.extend(result.params)
        generated = len(self.images) - first
        if len(params) != generated:  # a script assembled its own images: read their infotexts
            params = [_params_of(text) for text in self.infotexts[first:]]
        base = self.results[-1] if self.results else Result()
        warnings: list[str] = []
        for result in self.results:
            warnings.extend(w for w in result.warnings if w not in warnings)
        warnings.extend(w for w in self.warnings if w not in warnings)
        # the per-image lists as the script left them (A1111's Processed keeps an X/Y/Z plot's
        # cells' values even when only the grid is returned)
        return Result(
            images=list(self.images),
            infotexts=list(self.infotexts),
            seeds=list(self.all_seeds) or [self.seed] * generated,
            subseeds=list(self.all_subseeds),
            prompts=list(self.all_prompts),
            negative_prompts=list(self.all_negative_prompts),
            width=self.width,
            height=self.height,
            params=params,
            interrupted=any(r.interrupted for r in self.results),
            warnings=warnings,
            elapsed=sum(r.elapsed for r in self.results),
            job_timestamp=self.job_timestamp or base.job_timestamp,
            paths=[path for r in self.results for path in r.paths],
            model=base.model,
            version=self.version or base.version,
            leading_images=first,
        )


def _params_of(infotext: str) -> dict[str, Any]:
    """The params of an infotext (prompts left out)."""
    if not infotext:
        return {}
    parsed = parse_infotext(infotext)
    return {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt")}


def fix_seed(p: StableDiffusionProcessing) -> None:
    """A1111's `fix_seed`: -1 seeds become the random values they will run with."""
    p.seed = noise_mod.resolve_seed(p.seed) if not isinstance(p.seed, list) else p.seed
    p.subseed = noise_mod.resolve_seed(p.subseed) if not isinstance(p.subseed, list) else p.subseed


def get_fixed_seed(seed: Any) -> int:
    if seed in ("", None):
        seed = -1
    return noise_mod.resolve_seed(int(seed))


def create_infotext(
    p: StableDiffusionProcessing,
    all_prompts: Sequence[str],
    all_seeds: Sequence[int],
    all_subseeds: Sequence[int],
    comments: Any = None,
    iteration: int = 0,
    position_in_batch: int = 0,
    use_main_prompt: bool = False,
    index: int | None = None,
    all_negative_prompts: Sequence[str] | None = None,
) -> str:
    """An infotext for image `index` from `p`'s values (the engine writes the full one for the
    images it makes; this is for scripts that assemble their own)."""
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    prompt = p.main_prompt if use_main_prompt else (all_prompts[index] if index < len(all_prompts) else "")
    negatives = all_negative_prompts if all_negative_prompts is not None else p.all_negative_prompts
    negative = negatives[index] if negatives and index < len(negatives) else ""
    params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": getattr(p, "scheduler", None),
        "CFG scale": float(p.cfg_scale),
        "Seed": all_seeds[index] if index < len(all_seeds) else p.seed,
        "Size": f"{p.width}x{p.height}",
    }
    if p.subseed_strength:
        params["Variation seed"] = all_subseeds[index] if index < len(all_subseeds) else p.subseed
        params["Variation seed strength"] = p.subseed_strength
    if getattr(p, "denoising_strength", None) is not None and isinstance(p, StableDiffusionProcessingImg2Img):
        params["Denoising strength"] = p.denoising_strength
    params.update(p.extra_generation_params or {})
    return build_infotext(prompt, negative, {k: v for k, v in params.items() if v is not None})


# -- process_images --------------------------------------------------------------------------


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Generate what `p` describes, with the always-on scripts (see the module docstring)."""
    job = runtime.current_job()
    if job is not None:
        return _process_in_job(p, job)
    env = runtime.environment()
    if env.engine is None:
        raise RuntimeError("process_images: no engine in the script environment")
    engine = env.engine

    def work(ctx: Any) -> Processed:
        job = runtime.ScriptJob(ctx, lambda r, h: engine.process(r, ctx, hooks=h), p.to_request(), p.is_api)
        with runtime.running(job):
            return _process_in_job(p, job)

    result: Processed = engine.submit_call(work, "script").result()
    return result


def _process_in_job(p: StableDiffusionProcessing, job: runtime.ScriptJob) -> Processed:
    from modules.extensions.runner import ScriptRunner  # the runner imports this module

    runner = p.scripts if isinstance(p.scripts, ScriptRunner) else None
    if runner is not None:
        runner.before_process(p)
    p.setup_prompts()
    p.setup_seeds()
    if runner is not None:
        runner.process(p)
    request = p.to_request()
    hooks = runner.hooks_for(p) if runner is not None else Hooks()
    env = runtime.maybe_environment()
    if env is not None and env.callbacks is not None:
        hooks = hooks.combined(env.callbacks.hooks_for(p))
    result = job.process(request, hooks)
    result.warnings.extend(w for w in p.ignored_fields if w not in result.warnings)
    grid = result.grid
    if grid is None and len(result.images) > 1 and not p.do_not_save_grid and env is not None:
        grid = _grid_for(env, result, p)
    processed = Processed.from_result(p, result, grid)
    if runner is not None:
        runner.postprocess(p, processed)
    return processed


def _grid_for(env: runtime.ScriptEnvironment, result: Result, p: StableDiffusionProcessing) -> Any:
    """A1111 returns a batch's grid first when `return_grid` is on and grids are not turned off."""
    if env.saver is None or not bool(env.options.get("return_grid")):
        return None
    return env.saver.grid(result.images, p.batch_size)
