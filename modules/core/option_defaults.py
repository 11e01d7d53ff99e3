"""The built-in runtime options: A1111's `config.json` keys and defaults, plus a few of ours."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from modules.core.option_info import OptionInfo

SECTIONS: dict[str, str] = {
    "saving-images": "Saving images/grids",
    "saving-paths": "Paths for saving",
    "saving-to-dirs": "Saving to a directory",
    "upscaling": "Upscaling",
    "face-restoration": "Face restoration",
    "system": "System",
    "API": "API",
    "training": "Training",
    "sd": "Stable Diffusion",
    "sdxl": "Stable Diffusion XL",
    "vae": "VAE",
    "img2img": "img2img",
    "optimizations": "Optimizations",
    "compatibility": "Compatibility",
    "interrogate": "Interrogate",
    "extra_networks": "Extra Networks",
    "ui_prompt_editing": "Prompt editing",
    "ui_gallery": "Gallery",
    "ui_alternatives": "UI alternatives",
    "ui": "User interface",
    "infotext": "Infotext",
    "live-previews": "Live previews",
    "sampler-params": "Sampler parameters",
    "postprocessing": "Postprocessing",
    "hidden": "Hidden",
}
"""Section id -> label shown in the Settings tab."""

GIB = 1024**3

GRADIO_THEMES: tuple[str, ...] = (
    "Default",
    "gradio/base",
    "gradio/glass",
    "gradio/monochrome",
    "gradio/soft",
    "gradio/citrus",
    "gradio/ocean",
    "gradio/origin",
)
"""`gradio_theme` choices: A1111's "Default" and the hub names of themes Gradio ships built in."""

UI_COLOR_MODES: tuple[str, ...] = ("Auto (browser)", "Light", "Dark")
"""`ui_color_mode` choices (ours): light/dark page when no `--theme` flag is given."""


_LATER = "not implemented yet"
NOT_ACTED_ON: dict[str, tuple[str, ...]] = {
    f"{_LATER}: the web UI always saves generated images": ("samples_save",),
    f"{_LATER}: no extra copies (before face restoration / hires fix / color correction, masks, init "
    "images, interrupted images) are saved": (
        "save_images_before_face_restoration",
        "save_images_before_highres_fix",
        "save_images_before_color_correction",
        "save_mask",
        "save_mask_composite",
        "save_init_img",
        "outdir_init_images",
        "save_incomplete_images",
    ),
    f"{_LATER}: output file names always follow the filename pattern": (
        "use_original_name_batch",
        "use_upscaler_name_as_suffix",
    ),
    f"{_LATER}: the Save button always writes to its folder without subfolders": ("use_save_to_dirs_for_ui",),
    f"{_LATER}: [prompt_words] uses a fixed word count": ("directories_max_prompt_words",),
    f"{_LATER}: Gradio's own temporary folder is used": ("temp_dir", "clean_temp_dir_at_start"),
    f"{_LATER}: no notification sound": ("notification_audio", "notification_volume"),
    f"{_LATER}: model upscalers use their own tile size": (
        "ESRGAN_tile",
        "ESRGAN_tile_overlap",
        "DAT_tile",
        "DAT_tile_overlap",
    ),
    f"{_LATER}: img2img resizes with the resize mode only": ("upscaler_for_img2img",),
    f"{_LATER}: the Extras tab does not change 'Upscale by'": ("set_scale_by_when_changing_upscaler",),
    f"{_LATER}: restore_faces is off unless a request asks for it": ("face_restoration",),
    f"{_LATER}: face restoration models stay where they are": ("face_restoration_unload",),
    f"{_LATER}: the server does not open a browser": ("auto_launch_browser",),
    f"{_LATER}: console output is the log": (
        "enable_console_prompts",
        "show_warnings",
        "samples_log_stdout",
        "multiple_tqdm",
        "enable_upscale_progressbar",
    ),
    f"{_LATER}: no VRAM polling": ("memmon_poll_rate",),
    f"{_LATER}: model folders are always scanned the same way": ("list_hidden_files",),
    f"{_LATER}: .safetensors files are always memory-mapped": ("disable_mmap_load_safetensors",),
    f"{_LATER}: image URLs are refused for local addresses whatever this says": ("api_forbid_local_requests",),
    f"{_LATER}: training keeps the whole model on the device": ("unload_models_when_training",),
    "not used: training reads its images without a DataLoader": ("pin_memory",),
    "not used: A1111 v1.10 reads this option nowhere either (kohya folders' N_ prefix sets repeats)": (
        "training_image_repeats_per_epoch",
    ),
    "not used: training uses the same attention as generation (PyTorch SDPA)": ("training_xattention_optimizations",),
    f"{_LATER}: no TensorBoard logging (the Train tab plots the loss; a CSV is written)": (
        "training_enable_tensorboard",
    ),
    f"{_LATER}: the RAM cache is bounded by sd_checkpoint_cache_bytes": (
        "sd_checkpoints_limit",
        "sd_checkpoints_keep_in_cpu",
        "sd_checkpoint_cache",
        "sd_vae_checkpoint_cache",
    ),
    f"{_LATER}: the checkpoint's own UNet is used": ("sd_unet",),
    f"{_LATER}: sigmas are never quantised to training timesteps": ("enable_quantization",),
    "not used: A1111 v1.10's DDIM always uses uniform timesteps (this setting is from older versions)": (
        "ddim_discretize",
    ),
    f"{_LATER}: the model's own noise schedule is used (no zero terminal SNR rescale)": ("sd_noise_schedule",),
    f"{_LATER}: batches use per-image seeds as A1111's default does": ("enable_batch_seeds",),
    f"{_LATER}: attention runs in the model's precision with torch SDPA": (
        "upcast_attn",
        "cross_attention_optimization",
    ),
    f"{_LATER}: seamless tiling is on only when a request asks for it": ("tiling",),
    f"{_LATER}: the VAE choice is the sd_vae setting": ("sd_vae_overrides_per_model_preferences",),
    f"{_LATER}: the full VAE is always used (TAESD only for previews)": (
        "sd_vae_encode_method",
        "sd_vae_decode_method",
    ),
    f"{_LATER}: img2img has no color correction": ("img2img_color_correction",),
    f"{_LATER}: the inpaint mask brush has Gradio's default color": ("img2img_inpaint_mask_brush_color",),
    f"{_LATER}: results hold the generated images only": ("return_mask", "return_mask_composite"),
    f"{_LATER}: conditioning is computed per job, prompt and negative prompt unpadded": (
        "pad_cond_uncond",
        "pad_cond_uncond_v0",
        "persistent_cond_cache",
    ),
    f"{_LATER}: LoRAs patch fp8-stored weights in place (no fp16 copy is kept)": ("cache_fp16_weight",),
    f"{_LATER}: no switch back to old behaviour": (
        "use_old_emphasis_implementation",
        "use_old_hires_fix_width_height",
        "use_downcasted_alpha_bar",
    ),
    f"{_LATER}: the Extra Networks page does not read it": (
        "extra_networks_show_hidden_directories",
        "extra_networks_dir_button_function",
        "extra_networks_card_description_is_html",
        "extra_networks_tree_view_style",
    ),
    "embeddings are listed by /sdapi/v1/embeddings and the Textual Inversion tab, not printed": (
        "textual_inversion_print_at_load",
    ),
    "a LoRA that is not found is always a warning in the result and in the log": (
        "lora_not_found_warning_console",
        "lora_not_found_gradio_warning",
    ),
    f"{_LATER}: Ctrl+Up/Down use fixed steps and delimiters": (
        "keyedit_precision_attention",
        "keyedit_precision_extra",
        "keyedit_delimiters",
        "keyedit_move",
    ),
    f"{_LATER}: the web UI layout is fixed": (
        "disable_token_counters",
        "do_not_show_images",
        "js_modal_lightbox",
        "js_modal_lightbox_initially_zoomed",
        "js_modal_lightbox_gamepad",
        "gallery_height",
        "open_dir_button_choice",
        "compact_prompt_box",
        "samplers_in_dropdown",
        "dimensions_and_batch_together",
        "sd_checkpoint_dropdown_use_short",
        "txt2img_settings_accordion",
        "img2img_settings_accordion",
        "localization",
        "ui_tab_order",
        "hidden_tabs",
        "ui_reorder_list",
        "show_progress_in_title",
        "hide_samplers",
    ),
    f"{_LATER}: Interrupt stops at the next step": ("interrupt_after_current",),
    f"{_LATER}: infotext always has the model name and hash, the VAE name and the version, never the user": (
        "add_model_name_to_info",
        "add_model_hash_to_info",
        "add_vae_name_to_info",
        "add_vae_hash_to_info",
        "add_user_name_to_info",
        "add_version_to_infotext",
    ),
    f"{_LATER}: pasting never switches the checkpoint": ("disable_weights_auto_swap",),
    f"{_LATER}: pasting does not infer styles": ("infotext_styles",),
    f"{_LATER}: the progress bar and live previews always show, as PNG, the prompt's preview": (
        "show_progressbar",
        "live_previews_enable",
        "live_previews_image_format",
        "show_progress_grid",
        "live_preview_allow_lowvram_full",
        "live_preview_content",
        "live_preview_fast_interrupt",
        "js_live_preview_in_modal_lightbox",
        "prevent_screen_sleep_during_generation",
    ),
    f"{_LATER}: Extras runs its operations in the fixed order and the main tabs have none": (
        "postprocessing_enable_in_main_ui",
        "postprocessing_disable_in_extras",
        "upscaling_max_images_in_cache",
        "postprocessing_existing_caption_action",
    ),
    "config states are restored from the Extensions tab's Backup/Restore, not at start": ("restore_config_state_file",),
}
"""Options accepted and stored (clients send them, /options lists them) that nothing reads yet,
grouped by why. `_opt` marks them `implemented=False` with the reason as their `note`."""

_NOTES: dict[str, str] = {key: reason for reason, keys in NOT_ACTED_ON.items() for key in keys}


def _type_of(default: object) -> type:
    for candidate in (bool, int, float, str, list):
        if isinstance(default, candidate):
            return candidate
    raise TypeError(f"cannot infer an option type from {default!r}")


def _opt(key: str, default: object, label: str, section: str, **kw: Any) -> OptionInfo:
    if key in _NOTES:
        kw.update(implemented=False, note=_NOTES[key])
    return OptionInfo(key=key, default=default, label=label, section=section, type=_type_of(default), **kw)


def _saving_images() -> list[OptionInfo]:
    s = "saving-images"
    return [
        _opt("samples_save", True, "Always save all generated images", s),
        _opt("samples_format", "png", "File format for images", s),
        _opt("samples_filename_pattern", "", "Images filename pattern", s, restrict_api=True),
        _opt("save_images_add_number", True, "Add number to filename when saving", s),
        _opt(
            "save_images_replace_action",
            "Replace",
            "Saving an image to an existing file",
            s,
            choices=("Replace", "Add number suffix"),
        ),
        _opt("grid_save", True, "Always save all generated image grids", s),
        _opt("grid_format", "png", "File format for grids", s),
        _opt(
            "grid_extended_filename",
            False,
            "Add extended info (seed, prompt) to filename when saving grid",
            s,
        ),
        _opt("grid_only_if_multiple", True, "Do not save grids consisting of one picture", s),
        _opt("grid_prevent_empty_spots", False, "Prevent empty spots in grid (when set to autodetect)", s),
        _opt("grid_zip_filename_pattern", "", "Archive filename pattern", s, restrict_api=True),
        _opt(
            "n_rows",
            -1,
            "Grid row count; -1 for autodetect and 0 for same as batch size",
            s,
            minimum=-1,
            maximum=16,
        ),
        _opt("font", "", "Font for image grids that have text", s),
        _opt("grid_text_active_color", "#000000", "Text color for image grids", s),
        _opt("grid_text_inactive_color", "#999999", "Inactive text color for image grids", s),
        _opt("grid_background_color", "#ffffff", "Background color for image grids", s),
        _opt(
            "save_images_before_face_restoration",
            False,
            "Save a copy of image before doing face restoration",
            s,
        ),
        _opt("save_images_before_highres_fix", False, "Save a copy of image before applying highres fix", s),
        _opt("save_images_before_color_correction", False, "Save a copy of image before color correction", s),
        _opt("save_mask", False, "For inpainting, save a copy of the greyscale mask", s),
        _opt("save_mask_composite", False, "For inpainting, save a masked composite", s),
        _opt("jpeg_quality", 80, "Quality for saved jpeg and avif images", s, minimum=1, maximum=100, step=1),
        _opt("webp_lossless", False, "Use lossless compression for webp images", s),
        _opt("export_for_4chan", True, "Save copy of large images as JPG", s),
        _opt("img_downscale_threshold", 4.0, "File size limit (MB) for the above option", s),
        _opt("target_side_length", 4000.0, "Width/height limit for the above option, in pixels", s),
        _opt("img_max_size_mp", 200.0, "Maximum image size, in megapixels", s),
        _opt("use_original_name_batch", True, "Use original name for output filename during batch process", s),
        _opt("use_upscaler_name_as_suffix", False, "Use upscaler name as filename suffix in the extras tab", s),
        _opt("save_selected_only", True, "When using 'Save' button, only save a single selected image", s),
        _opt("save_write_log_csv", True, "Write log.csv when saving images using 'Save' button", s),
        _opt("save_init_img", False, "Save init images when using img2img", s),
        _opt("temp_dir", "", "Directory for temporary images; leave empty for default", s, restrict_api=True),
        _opt("clean_temp_dir_at_start", False, "Cleanup non-default temporary directory when starting", s),
        _opt("save_incomplete_images", False, "Save incomplete images", s),
        _opt("notification_audio", True, "Play notification sound after image generation", s),
        _opt("notification_volume", 100, "Notification sound volume", s, minimum=0, maximum=100, step=1),
    ]


def _saving_paths() -> list[OptionInfo]:
    s = "saving-paths"
    dirs = (
        ("outdir_samples", "", "Output directory for images; if empty, defaults to three directories below"),
        ("outdir_txt2img_samples", "outputs/txt2img-images", "Output directory for txt2img images"),
        ("outdir_img2img_samples", "outputs/img2img-images", "Output directory for img2img images"),
        ("outdir_extras_samples", "outputs/extras-images", "Output directory for images from extras tab"),
        ("outdir_grids", "", "Output directory for grids; if empty, defaults to two directories below"),
        ("outdir_txt2img_grids", "outputs/txt2img-grids", "Output directory for txt2img grids"),
        ("outdir_img2img_grids", "outputs/img2img-grids", "Output directory for img2img grids"),
        ("outdir_save", "log/images", "Directory for saving images using the Save button"),
        ("outdir_init_images", "outputs/init-images", "Directory for saving init images when using img2img"),
    )
    return [
        _opt(key, default, label, s, restrict_api=True, comment="relative paths are under the data dir")
        for key, default, label in dirs
    ]


def _saving_to_dirs() -> list[OptionInfo]:
    s = "saving-to-dirs"
    return [
        _opt("save_to_dirs", True, "Save images to a subdirectory", s),
        _opt("grid_save_to_dirs", True, "Save grids to a subdirectory", s),
        _opt("use_save_to_dirs_for_ui", False, "When using 'Save' button, save images to a subdirectory", s),
        _opt("directories_filename_pattern", "[date]", "Directory name pattern", s, restrict_api=True),
        _opt(
            "directories_max_prompt_words",
            8,
            "Max prompt words for [prompt_words] pattern",
            s,
            minimum=1,
            maximum=20,
        ),
    ]


def _upscaling_and_faces() -> list[OptionInfo]:
    up, fr = "upscaling", "face-restoration"
    return [
        _opt(
            "ESRGAN_tile",
            192,
            "Tile size for ESRGAN upscalers; 0 = no tiling",
            up,
            minimum=0,
            maximum=512,
            step=16,
        ),
        _opt(
            "ESRGAN_tile_overlap",
            8,
            "Tile overlap for ESRGAN upscalers, in pixels",
            up,
            minimum=0,
            maximum=48,
        ),
        _opt("DAT_tile", 192, "Tile size for DAT upscalers; 0 = no tiling", up, minimum=0, maximum=512, step=16),
        _opt("DAT_tile_overlap", 8, "Tile overlap for DAT upscalers, in pixels", up, minimum=0, maximum=48),
        _opt("upscaler_for_img2img", "None", "Upscaler for img2img", up),
        _opt("set_scale_by_when_changing_upscaler", False, "Set 'Upscale by' from the upscaler's scale", up),
        _opt("face_restoration", False, "Restore faces", fr),
        _opt("face_restoration_model", "CodeFormer", "Face restoration model", fr),
        _opt("code_former_weight", 0.5, "CodeFormer weight; 0 = maximum effect", fr, minimum=0.0, maximum=1.0),
        _opt(
            "face_restoration_unload",
            False,
            "Move face restoration model from VRAM into RAM after processing",
            fr,
        ),
    ]


def _system_and_api() -> list[OptionInfo]:
    s, api, tr = "system", "API", "training"
    return [
        _opt(
            "auto_launch_browser",
            "Local",
            "Automatically open webui in browser on startup",
            s,
            choices=("Disable", "Local", "Remote"),
        ),
        _opt("enable_console_prompts", False, "Print prompts to console when generating", s),
        _opt("show_warnings", False, "Show warnings in console", s, requires_restart=True),
        _opt(
            "memmon_poll_rate",
            8,
            "VRAM usage polls per second during generation; 0 = disable",
            s,
            minimum=0,
            maximum=40,
        ),
        _opt("samples_log_stdout", False, "Always print all generation info to standard output", s),
        _opt("multiple_tqdm", True, "Add a second progress bar to the console for the whole job", s),
        _opt("enable_upscale_progressbar", True, "Show a progress bar in the console for tiled upscaling", s),
        _opt("list_hidden_files", True, "Load models/files in hidden directories", s),
        _opt("disable_mmap_load_safetensors", False, "Disable memmapping for loading .safetensors files", s),
        _opt(
            "api_enable_requests",
            True,
            "Allow http:// and https:// URLs for input images in API",
            api,
            restrict_api=True,
        ),
        _opt("api_forbid_local_requests", True, "Forbid URLs to local resources", api, restrict_api=True),
        _opt("api_useragent", "", "User agent for requests", api, restrict_api=True),
        _opt(
            "api_max_images_per_request",
            64,
            "Most images one API request may send (init images, masks, ControlNet images, Extras batch)",
            api,
            minimum=1,
            restrict_api=True,
            comment="ours: more are refused (422) before the rest are decoded",
        ),
        _opt(
            "api_max_request_megapixels",
            400.0,
            "Most decoded pixels all images of one API request may hold together, in megapixels",
            api,
            minimum=1.0,
            restrict_api=True,
            comment="ours: each image's size is read from its header before its pixels are decoded; one "
            "image is also capped by img_max_size_mp",
        ),
        _opt("unload_models_when_training", False, "Move VAE and CLIP to RAM when training", tr),
        _opt("pin_memory", False, "Turn on pin_memory for DataLoader", tr),
        _opt("save_optimizer_state", False, "Save the optimizer state with embeddings/hypernetworks", tr),
        _opt(
            "save_training_settings_to_txt",
            True,
            "Save training settings to a text file on training start",
            tr,
        ),
        _opt("dataset_filename_word_regex", "", "Filename word regex", tr),
        _opt("dataset_filename_join_string", " ", "Filename join string", tr),
        _opt(
            "training_image_repeats_per_epoch",
            1,
            "Number of repeats for a single input image per epoch",
            tr,
            minimum=1,
            maximum=1000,
        ),
        _opt(
            "training_write_csv_every",
            500,
            "Save a csv with the loss every N steps; 0 = disable",
            tr,
            minimum=0,
        ),
        _opt("training_xattention_optimizations", False, "Use cross attention optimizations while training", tr),
        _opt("training_enable_tensorboard", False, "Enable tensorboard logging", tr),
        _opt(
            "training_generation_policy",
            "Wait behind the training run",
            "Generation requests during a training run",
            tr,
            choices=("Wait behind the training run", "Refuse while training"),
            comment="ours: a run holds the GPU; requests either queue behind it or are refused (HTTP 409)",
        ),
    ]


def _stable_diffusion() -> list[OptionInfo]:
    s, xl = "sd", "sdxl"
    return [
        _opt(
            "sd_model_checkpoint",
            "",
            "Stable Diffusion checkpoint",
            s,
            comment="title of the active checkpoint ('name.safetensors [shorthash]'); the model "
            "manager attaches the checkpoint list as choices and an alias-resolving validator",
        ),
        _opt(
            "sd_checkpoints_limit",
            1,
            "Maximum number of checkpoints loaded at the same time",
            s,
            minimum=1,
            maximum=10,
        ),
        _opt("sd_checkpoints_keep_in_cpu", True, "Only keep one model on device", s),
        _opt("sd_checkpoint_cache", 0, "Checkpoints to cache in RAM", s, minimum=0, maximum=10),
        _opt(
            "sd_checkpoint_cache_bytes",
            4 * GIB,
            "RAM budget for recently used checkpoints (bytes)",
            s,
            minimum=0,
            comment="ours: byte budget of the RAM cache of recently used checkpoints (the model "
            "manager evicts the least recently used ones beyond it); A1111's sd_checkpoint_cache "
            "count is not read",
        ),
        _opt(
            "sd_checkpoint_hash",
            "",
            "SHA256 of the current checkpoint",
            s,
            readonly=True,
            comment="set by the model manager; client values are ignored",
        ),
        _opt(
            "sd2_default_prediction",
            "v_prediction",
            "Prediction type for SD 2.x checkpoints without a .yaml",
            s,
            choices=("epsilon", "v_prediction"),
            comment="ours: SD 2.x files do not record their prediction type; the common SD 2.0/2.1 "
            "768 checkpoints are v-prediction, so that is the default when no <name>.yaml sits "
            "next to the checkpoint (512-base files need a yaml or this set to epsilon)",
        ),
        _opt(
            "max_pixels_times_batch",
            2048 * 2048 * 8,
            "Largest width x height x batch size one request may ask for (pixels)",
            s,
            minimum=64 * 64,
            comment="ours: requests above it are refused with a clear error instead of running out of memory",
        ),
        _opt(
            "max_image_side",
            8192,
            "Largest width or height a request may ask for: first pass, hires fix, upscales (pixels)",
            s,
            minimum=64,
            restrict_api=True,
            comment="ours: sizes above it (including the hires fix's and Extras' upscaled sizes) are refused "
            "before any work",
        ),
        _opt(
            "max_prompt_length",
            20_000,
            "Longest prompt or negative prompt a request may send (characters)",
            s,
            minimum=75,
            restrict_api=True,
            comment="ours: A1111 has no cap; a 1 MB prompt ties the worker up for many seconds",
        ),
        _opt("sd_unet", "Automatic", "SD Unet", s),
        _opt(
            "enable_quantization",
            False,
            "Enable quantization in K samplers for sharper and cleaner results",
            s,
        ),
        _opt(
            "emphasis",
            "Original",
            "Emphasis mode",
            s,
            choices=("Original", "No norm", "Ignore", "None"),
        ),
        _opt(
            "enable_batch_seeds",
            True,
            "Make K-diffusion samplers produce the same images in a batch as one",
            s,
        ),
        _opt(
            "comma_padding_backtrack",
            20,
            "Prompt word wrap length limit, in tokens",
            s,
            minimum=0,
            maximum=74,
        ),
        _opt("sdxl_clip_l_skip", False, "Clip skip SDXL", s),
        _opt("CLIP_stop_at_last_layers", 1, "Clip skip", s, minimum=1, maximum=12, step=1),
        _opt("upcast_attn", False, "Upcast cross attention layer to float32", s),
        _opt(
            "randn_source",
            "GPU",
            "Random number generator source",
            s,
            choices=("GPU", "CPU", "NV"),
        ),
        _opt("tiling", False, "Tiling", s),
        _opt(
            "hires_fix_refiner_pass",
            "second pass",
            "Hires fix: which pass to enable refiner for",
            s,
            choices=("first pass", "second pass", "both passes"),
        ),
        _opt("sdxl_crop_top", 0, "Crop top coordinate", xl),
        _opt("sdxl_crop_left", 0, "Crop left coordinate", xl),
        _opt("sdxl_refiner_low_aesthetic_score", 2.5, "SDXL low aesthetic score", xl),
        _opt("sdxl_refiner_high_aesthetic_score", 6.0, "SDXL high aesthetic score", xl),
    ]


def _vae_and_img2img() -> list[OptionInfo]:
    v, i = "vae", "img2img"
    return [
        _opt("sd_vae_checkpoint_cache", 0, "VAE checkpoints to cache in RAM", v, minimum=0, maximum=10),
        _opt(
            "sd_vae",
            "Automatic",
            "SD VAE",
            v,
            comment='"Automatic" (same-name VAE next to the checkpoint), "None", or a VAE file name',
        ),
        _opt("sd_vae_overrides_per_model_preferences", True, "Selected VAE overrides per-model preferences", v),
        _opt("auto_vae_precision_bfloat16", False, "Automatically convert VAE to bfloat16", v),
        _opt("auto_vae_precision", True, "Automatically revert VAE to 32-bit floats on NaNs", v),
        _opt(
            "sd_vae_encode_method",
            "Full",
            "VAE type for encode",
            v,
            choices=("Full", "TAESD"),
        ),
        _opt(
            "sd_vae_decode_method",
            "Full",
            "VAE type for decode",
            v,
            choices=("Full", "TAESD"),
        ),
        _opt("sd_vae_tiling", False, "Tiled VAE for large images (ours: overlapping tiles, less VRAM)", v),
        _opt(
            "sd_vae_tiling_threshold",
            1024,
            "Tiled VAE: images wider or taller than this go through the VAE in tiles of this size (px)",
            v,
            minimum=128,
            maximum=4096,
            step=64,
        ),
        _opt(
            "inpainting_mask_weight",
            1.0,
            "Inpainting conditioning mask strength",
            i,
            minimum=0.0,
            maximum=1.0,
        ),
        _opt(
            "initial_noise_multiplier",
            1.0,
            "Noise multiplier for img2img",
            i,
            minimum=0.0,
            maximum=1.5,
        ),
        _opt(
            "img2img_extra_noise",
            0.0,
            "Extra noise multiplier for img2img and hires fix",
            i,
            minimum=0.0,
            maximum=1.0,
        ),
        _opt(
            "img2img_color_correction",
            False,
            "Apply color correction to img2img results to match original",
            i,
        ),
        _opt("img2img_fix_steps", False, "With img2img, do exactly the amount of steps the slider specifies", i),
        _opt("img2img_background_color", "#ffffff", "With img2img, fill transparent parts with this color", i),
        _opt("img2img_sketch_default_brush_color", "#ffffff", "Sketch initial brush color", i),
        _opt("img2img_inpaint_mask_brush_color", "#ffffff", "Inpaint mask brush color", i),
        _opt("img2img_inpaint_sketch_default_brush_color", "#ffffff", "Inpaint sketch initial brush color", i),
        _opt("return_mask", False, "For inpainting, include the greyscale mask in results", i),
        _opt("return_mask_composite", False, "For inpainting, include masked composite in results", i),
        _opt(
            "img2img_batch_show_results_limit",
            32,
            "Show the first N batch img2img results in UI",
            i,
            minimum=-1,
        ),
        _opt("overlay_inpaint", True, "Overlay original for inpaint", i),
    ]


def _optimizations_and_compat() -> list[OptionInfo]:
    o, c = "optimizations", "compatibility"
    return [
        _opt("cross_attention_optimization", "Automatic", "Cross attention optimization", o),
        _opt(
            "s_min_uncond",
            0.0,
            "Negative Guidance minimum sigma",
            o,
            minimum=0.0,
            maximum=15.0,
        ),
        _opt("s_min_uncond_all", False, "Negative Guidance minimum sigma all steps", o),
        _opt(
            "token_merging_ratio",
            0.0,
            "Token merging ratio",
            o,
            minimum=0.0,
            maximum=0.9,
        ),
        _opt("token_merging_ratio_img2img", 0.0, "Token merging ratio for img2img", o, minimum=0.0, maximum=0.9),
        _opt(
            "token_merging_ratio_hr",
            0.0,
            "Token merging ratio for high-res pass",
            o,
            minimum=0.0,
            maximum=0.9,
        ),
        _opt("pad_cond_uncond", False, "Pad prompt/negative prompt to be same length", o),
        _opt("pad_cond_uncond_v0", False, "Pad prompt/negative prompt (v0)", o),
        _opt("persistent_cond_cache", True, "Persistent cond cache", o),
        _opt("batch_cond_uncond", True, "Batch cond/uncond", o),
        _opt(
            "fp8_storage",
            "Disable",
            "FP8 weight",
            o,
            choices=("Disable", "Enable for SDXL", "Enable"),
        ),
        _opt("cache_fp16_weight", False, "Cache FP16 weight for LoRA", o),
        _opt("torch_compile", False, "torch.compile the UNet (the first image of each size compiles it)", o),
        _opt("torch_compile_vae", False, "torch.compile the VAE decoder", o),
        _opt(
            "torch_compile_mode",
            "default",
            "torch.compile mode",
            o,
            choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        ),
        _opt(
            "torch_compile_backend",
            "inductor",
            "torch.compile backend",
            o,
            choices=("inductor", "aot_eager", "eager"),
        ),
        _opt("auto_backcompat", True, "Automatic backward compatibility for pasted infotexts", c),
        _opt("use_old_emphasis_implementation", False, "Use old emphasis implementation", c),
        _opt("use_old_karras_scheduler_sigmas", False, "Use old karras scheduler sigmas (0.1 to 10)", c),
        _opt(
            "no_dpmpp_sde_batch_determinism",
            False,
            "Do not make DPM++ SDE deterministic across batch sizes",
            c,
        ),
        _opt("use_old_hires_fix_width_height", False, "Hires fix width/height sets the final resolution", c),
        _opt(
            "hires_fix_use_firstpass_conds",
            False,
            "For hires fix, calculate conds of second pass with first pass extra networks",
            c,
        ),
        _opt(
            "use_old_scheduling",
            False,
            "Use old prompt editing timelines",
            c,
        ),
        _opt(
            "use_downcasted_alpha_bar",
            False,
            "Downcast model alphas_cumprod to fp16 before sampling",
            c,
        ),
        _opt(
            "refiner_switch_by_sample_steps",
            False,
            "Switch to refiner by sampling steps instead of model timesteps",
            c,
        ),
    ]


def _interrogate() -> list[OptionInfo]:
    i = "interrogate"
    return [
        _opt("interrogate_keep_models_in_memory", False, "Keep models in VRAM", i),
        _opt("interrogate_return_ranks", False, "Include ranks of model tags matches in results", i),
        _opt("interrogate_clip_num_beams", 1, "BLIP: num_beams", i, minimum=1, maximum=16),
        _opt("interrogate_clip_min_length", 24, "BLIP: minimum description length", i, minimum=1, maximum=128),
        _opt("interrogate_clip_max_length", 48, "BLIP: maximum description length", i, minimum=1, maximum=256),
        _opt("interrogate_clip_dict_limit", 1500, "CLIP: maximum number of lines in text file", i, minimum=0),
        _opt("interrogate_clip_skip_categories", [], "CLIP: skip inquire categories", i),
        _opt(
            "interrogate_deepbooru_score_threshold",
            0.5,
            "deepbooru: score threshold",
            i,
            minimum=0.0,
            maximum=1.0,
        ),
        _opt("deepbooru_sort_alpha", True, "deepbooru: sort tags alphabetically", i),
        _opt("deepbooru_use_spaces", True, "deepbooru: use spaces in tags", i),
        _opt("deepbooru_escape", True, "deepbooru: escape (\\) brackets", i),
        _opt("deepbooru_filter_tags", "", "deepbooru: filter out those tags", i),
    ]


def _extra_networks() -> list[OptionInfo]:
    e = "extra_networks"
    return [
        _opt("extra_networks_show_hidden_directories", True, "Show hidden directories", e),
        _opt("extra_networks_dir_button_function", False, "Add a '/' to the beginning of directory buttons", e),
        _opt(
            "extra_networks_hidden_models",
            "When searched",
            "Show cards for models in hidden directories",
            e,
            choices=("Always", "When searched", "Never"),
        ),
        _opt(
            "extra_networks_default_multiplier",
            1.0,
            "Default multiplier for extra networks",
            e,
            minimum=0.0,
            maximum=2.0,
        ),
        _opt("extra_networks_card_width", 0, "Card width for Extra Networks; 0 = auto", e, minimum=0),
        _opt("extra_networks_card_height", 0, "Card height for Extra Networks; 0 = auto", e, minimum=0),
        _opt("extra_networks_card_text_scale", 1.0, "Card text scale", e, minimum=0.0, maximum=2.0),
        _opt("extra_networks_card_show_desc", True, "Show description on card", e),
        _opt("extra_networks_card_description_is_html", False, "Treat card description as HTML", e),
        _opt(
            "extra_networks_card_order_field",
            "Path",
            "Default order field for Extra Networks cards",
            e,
            choices=("Path", "Name", "Date Created", "Date Modified"),
        ),
        _opt(
            "extra_networks_card_order",
            "Ascending",
            "Default order for Extra Networks cards",
            e,
            choices=("Ascending", "Descending"),
        ),
        _opt(
            "extra_networks_tree_view_style",
            "Dirs",
            "Extra Networks directory view style",
            e,
            choices=("Tree", "Dirs"),
        ),
        _opt(
            "extra_networks_tree_view_default_enabled",
            True,
            "Show the Extra Networks directory view by default",
            e,
        ),
        _opt("extra_networks_add_text_separator", " ", "Extra networks separator", e),
        _opt("ui_extra_networks_tab_reorder", "", "Extra networks tab order", e),
        _opt(
            "textual_inversion_print_at_load",
            False,
            "Print a list of Textual Inversion embeddings when loading",
            e,
        ),
        _opt("textual_inversion_add_hashes_to_infotext", True, "Add Textual Inversion hashes to infotext", e),
        _opt("sd_hypernetwork", "None", "Add hypernetwork to prompt", e),
        _opt("sd_lora", "None", "Add network to prompt", e),
        _opt(
            "lora_preferred_name",
            "Alias from file",
            "When adding to prompt, refer to Lora by",
            e,
            choices=("Alias from file", "Filename"),
        ),
        _opt("lora_add_hashes_to_infotext", True, "Add Lora hashes to infotext", e),
        _opt("lora_bundled_ti_to_infotext", True, "Add Lora name as TI hashes for bundled Textual Inversion", e),
        _opt("lora_show_all", False, "Always show all networks on the Lora page", e),
        _opt(
            "lora_hide_unknown_for_versions",
            [],
            "Hide networks of unknown versions for model versions",
            e,
            choices=("SD1", "SD2", "SDXL"),
        ),
        _opt(
            "lora_in_memory_limit",
            0,
            "Number of Lora networks to keep cached in memory; 0 = as many as the model cache's memory budget holds",
            e,
            minimum=0,
            maximum=10,
        ),
        _opt("lora_not_found_warning_console", False, "Lora not found warning in console", e),
        _opt("lora_not_found_gradio_warning", False, "Lora not found warning popup in webui", e),
    ]


def _user_interface() -> list[OptionInfo]:
    pe, g, alt, ui, it = "ui_prompt_editing", "ui_gallery", "ui_alternatives", "ui", "infotext"
    return [
        _opt(
            "keyedit_precision_attention",
            0.1,
            "Precision for (attention:1.1) when editing with Ctrl+up/down",
            pe,
            minimum=0.01,
            maximum=0.2,
        ),
        _opt(
            "keyedit_precision_extra",
            0.05,
            "Precision for <extra networks:0.9> when editing with Ctrl+up/down",
            pe,
            minimum=0.01,
            maximum=0.2,
        ),
        _opt("keyedit_delimiters", r".,\/!?%^*;:{}=`~() ", "Word delimiters when editing with Ctrl+up/down", pe),
        _opt("keyedit_move", True, "Alt+left/right moves prompt elements", pe),
        _opt("disable_token_counters", False, "Disable prompt token counters", pe),
        _opt("include_styles_into_token_counters", True, "Count tokens of enabled styles", pe),
        _opt("return_grid", True, "Show grid in gallery", g),
        _opt("do_not_show_images", False, "Do not show any images in gallery", g),
        _opt("js_modal_lightbox", True, "Full page image viewer: enable", g),
        _opt(
            "js_modal_lightbox_initially_zoomed",
            True,
            "Full page image viewer: show images zoomed in by default",
            g,
        ),
        _opt("js_modal_lightbox_gamepad", False, "Full page image viewer: navigate with gamepad", g),
        _opt("gallery_height", "", "Gallery height (CSS value)", g),
        _opt(
            "open_dir_button_choice",
            "Subdirectory",
            "What directory the open-folder button opens",
            g,
            choices=("Output Root", "Subdirectory", "Subdirectory (even temp dir)"),
        ),
        _opt("compact_prompt_box", False, "Compact prompt layout", alt),
        _opt("samplers_in_dropdown", True, "Use dropdown for sampler selection instead of radio group", alt),
        _opt("dimensions_and_batch_together", True, "Show Width/Height and Batch sliders in same row", alt),
        _opt("sd_checkpoint_dropdown_use_short", False, "Checkpoint dropdown: use filenames without paths", alt),
        _opt("hires_fix_show_sampler", False, "Hires fix: show hires checkpoint and sampler selection", alt),
        _opt("hires_fix_show_prompts", False, "Hires fix: show hires prompt and negative prompt", alt),
        _opt("txt2img_settings_accordion", False, "Settings in txt2img hidden under Accordion", alt),
        _opt("img2img_settings_accordion", False, "Settings in img2img hidden under Accordion", alt),
        _opt(
            "interrupt_after_current",
            True,
            "Don't Interrupt in the middle: finish the current image first",
            alt,
        ),
        _opt("localization", "None", "Localization", ui, requires_restart=True),
        _opt(
            "quicksettings_list",
            ["sd_model_checkpoint"],
            "Quicksettings list (settings shown at the top)",
            ui,
            requires_restart=True,
        ),
        _opt("ui_tab_order", [], "UI tab order", ui, requires_restart=True),
        _opt("hidden_tabs", [], "Hidden UI tabs", ui, requires_restart=True),
        _opt("ui_reorder_list", [], "UI item order for txt2img/img2img tabs", ui, requires_restart=True),
        _opt(
            "gradio_theme",
            "Default",
            "Gradio theme (built-in themes only: hub themes are not downloaded)",
            ui,
            choices=GRADIO_THEMES,
            requires_restart=True,
        ),
        _opt(
            "ui_color_mode",
            "Auto (browser)",
            "Light or dark page (--theme overrides)",
            ui,
            choices=UI_COLOR_MODES,
            comment="ours: A1111 has only the --theme flag and the __theme URL parameter",
        ),
        _opt("show_progress_in_title", True, "Show generation progress in window title", ui),
        _opt("send_seed", True, "Send seed when sending prompt or image to other interface", ui),
        _opt("send_size", True, "Send size when sending prompt or image to another interface", ui),
        _opt("enable_pnginfo", True, "Write infotext to metadata of the generated image", it),
        _opt("save_txt", False, "Create a text file with infotext next to every generated image", it),
        _opt("add_model_name_to_info", True, "Add model name to infotext", it),
        _opt("add_model_hash_to_info", True, "Add model hash to infotext", it),
        _opt("add_vae_name_to_info", True, "Add VAE name to infotext", it),
        _opt("add_vae_hash_to_info", True, "Add VAE hash to infotext", it),
        _opt("add_user_name_to_info", False, "Add user name to infotext when authenticated", it),
        _opt("add_version_to_infotext", True, "Add program version to infotext", it),
        _opt("disable_weights_auto_swap", True, "Ignore the checkpoint in pasted infotext", it),
        _opt("infotext_skip_pasting", [], "Ignore these fields when reading infotext", it),
        _opt(
            "infotext_styles",
            "Apply if any",
            "Infer styles from prompts of pasted infotext",
            it,
            choices=("Ignore", "Apply", "Discard", "Apply if any"),
        ),
    ]


def _live_previews() -> list[OptionInfo]:
    lp = "live-previews"
    return [
        _opt("show_progressbar", True, "Show progressbar", lp),
        _opt("live_previews_enable", True, "Show live previews of the created image", lp),
        _opt(
            "live_previews_image_format",
            "png",
            "Live preview file format",
            lp,
            choices=("jpeg", "png", "webp"),
        ),
        _opt("show_progress_grid", True, "Show previews of all images generated in a batch as a grid", lp),
        _opt(
            "show_progress_every_n_steps",
            10,
            "Live preview display period (steps); -1 = only at the end",
            lp,
            minimum=-1,
            maximum=32,
            step=1,
        ),
        _opt(
            "show_progress_type",
            "Approx NN",
            "Live preview method",
            lp,
            choices=("Full", "Approx NN", "Approx cheap", "TAESD"),
        ),
        _opt(
            "live_preview_allow_lowvram_full",
            False,
            "Allow Full live preview method with lowvram/medvram",
            lp,
        ),
        _opt(
            "live_preview_content",
            "Prompt",
            "Live preview subject",
            lp,
            choices=("Combined", "Prompt", "Negative prompt"),
        ),
        _opt(
            "live_preview_refresh_period",
            1000.0,
            "Progressbar and preview update period (ms)",
            lp,
            minimum=0.0,
        ),
        _opt(
            "live_preview_fast_interrupt",
            False,
            "Return image with chosen live preview method on interrupt",
            lp,
        ),
        _opt("js_live_preview_in_modal_lightbox", False, "Show Live preview in full page image viewer", lp),
        _opt("prevent_screen_sleep_during_generation", True, "Prevent screen sleep during generation", lp),
    ]


def _sampler_params() -> list[OptionInfo]:
    sp = "sampler-params"
    return [
        _opt("hide_samplers", [], "Hide samplers in user interface", sp),
        _opt("eta_ddim", 0.0, "Eta for DDIM", sp, minimum=0.0, maximum=1.0),
        _opt("eta_ancestral", 1.0, "Eta for k-diffusion samplers", sp, minimum=0.0, maximum=1.0),
        _opt("ddim_discretize", "uniform", "img2img DDIM discretize", sp, choices=("uniform", "quad")),
        _opt("s_churn", 0.0, "sigma churn", sp, minimum=0.0, maximum=100.0),
        _opt("s_tmin", 0.0, "sigma tmin", sp, minimum=0.0, maximum=10.0),
        _opt("s_tmax", 0.0, "sigma tmax; 0 = inf", sp, minimum=0.0, maximum=999.0),
        _opt("s_noise", 1.0, "sigma noise", sp, minimum=0.0, maximum=1.1),
        _opt("sigma_min", 0.0, "sigma min; 0 = default", sp, minimum=0.0),
        _opt("sigma_max", 0.0, "sigma max; 0 = default", sp, minimum=0.0),
        _opt("rho", 0.0, "rho; 0 = default", sp, minimum=0.0),
        _opt("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", sp, minimum=0),
        _opt(
            "always_discard_next_to_last_sigma",
            False,
            "Always discard next-to-last sigma",
            sp,
        ),
        _opt("sgm_noise_multiplier", False, "SGM noise multiplier", sp),
        _opt(
            "uni_pc_variant",
            "bh1",
            "UniPC variant",
            sp,
            choices=("bh1", "bh2", "vary_coeff"),
        ),
        _opt(
            "uni_pc_skip_type",
            "time_uniform",
            "UniPC skip type",
            sp,
            choices=("time_uniform", "time_quadratic", "logSNR"),
        ),
        _opt("uni_pc_order", 3, "UniPC order", sp, minimum=1, maximum=50),
        _opt("uni_pc_lower_order_final", True, "UniPC lower order final", sp),
        _opt(
            "sd_noise_schedule",
            "Default",
            "Noise schedule for sampling",
            sp,
            choices=("Default", "Zero Terminal SNR"),
        ),
        _opt(
            "skip_early_cond",
            0.0,
            "Ignore negative prompt during early sampling",
            sp,
            minimum=0.0,
            maximum=1.0,
        ),
        _opt(
            "beta_dist_alpha",
            0.6,
            "Beta scheduler - alpha",
            sp,
            minimum=0.01,
            maximum=1.0,
        ),
        _opt(
            "beta_dist_beta",
            0.6,
            "Beta scheduler - beta",
            sp,
            minimum=0.01,
            maximum=1.0,
        ),
    ]


def _postprocessing_and_hidden() -> list[OptionInfo]:
    pp, h = "postprocessing", "hidden"
    return [
        _opt(
            "postprocessing_enable_in_main_ui",
            [],
            "Enable postprocessing operations in txt2img and img2img tabs",
            pp,
        ),
        _opt("postprocessing_disable_in_extras", [], "Disable postprocessing operations in extras tab", pp),
        _opt("postprocessing_operation_order", [], "Postprocessing operation order", pp),
        _opt(
            "upscaling_max_images_in_cache",
            5,
            "Maximum number of images in upscaling cache",
            pp,
            minimum=0,
            maximum=10,
        ),
        _opt(
            "postprocessing_existing_caption_action",
            "Ignore",
            "Action for existing captions",
            pp,
            choices=("Ignore", "Keep", "Prepend", "Append"),
        ),
        _opt("disabled_extensions", [], "Disable these extensions", h, requires_restart=True),
        _opt(
            "disable_all_extensions",
            "none",
            "Disable all extensions (preserves the list of disabled extensions)",
            h,
            choices=("none", "extra", "all"),
            requires_restart=True,
        ),
        _opt(
            "restore_config_state_file",
            "",
            "Config state file to restore from, under 'config-states/'",
            h,
            restrict_api=True,
        ),
    ]


def default_option_infos() -> list[OptionInfo]:
    """The built-in options: A1111's keys and defaults, plus a few of ours (see their `comment`)."""
    return [
        *_saving_images(),
        *_saving_paths(),
        *_saving_to_dirs(),
        *_upscaling_and_faces(),
        *_system_and_api(),
        *_stable_diffusion(),
        *_vae_and_img2img(),
        *_optimizations_and_compat(),
        *_interrogate(),
        *_extra_networks(),
        *_user_interface(),
        *_live_previews(),
        *_sampler_params(),
        *_postprocessing_and_hidden(),
    ]


@functools.cache
def unimplemented_options() -> Mapping[str, str]:
    """Built-in option key -> why nothing acts on it yet (read-only view)."""
    return MappingProxyType({info.key: info.note for info in default_option_infos() if not info.implemented})
