"""`--hide-ui-dir-config`: the settings that name folders or file-name patterns (A1111's
`restricted_opts`, plus the options whose UI component A1111 hides with the flag, which its
`Options.__setattr__` then refuses too), less the ones nothing here reads yet: `temp_dir`,
`clean_temp_dir_at_start`, `outdir_init_images`, `directories_max_prompt_words` (the Settings tab
does not offer them, and the first three can never be written through the API). With the flag
they are left out of the Settings tab and the quicksettings row, and no route or UI control may
change them (POST /sdapi/v1/options answers 403); without it they are ordinary settings in the UI,
and most of them are still `restrict_api` (never written through the API: a client could
otherwise make the server write files anywhere)."""

from __future__ import annotations

DIR_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "samples_filename_pattern",
        "save_images_add_number",
        "save_images_replace_action",
        "grid_zip_filename_pattern",
        "directories_filename_pattern",
        "outdir_samples",
        "outdir_txt2img_samples",
        "outdir_img2img_samples",
        "outdir_extras_samples",
        "outdir_grids",
        "outdir_txt2img_grids",
        "outdir_img2img_grids",
        "outdir_save",
    }
)


def dir_config_locked(key: str, hide_ui_dir_config: bool) -> bool:
    """True when `key` may not be shown or changed (the flag is on and it is a folder setting)."""
    return hide_ui_dir_config and key in DIR_CONFIG_KEYS
