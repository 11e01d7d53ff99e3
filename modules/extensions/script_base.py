"""A1111's `modules.scripts.Script` base class, as extension code subclasses it.

A script is a title, optional Gradio controls (`ui`) whose values become its `*args`, and methods
called around generation. A selectable script (the "Script" dropdown, API `script_name`) replaces
the generation with its `run(p, *args)`; an always-on one (`show()` returns `AlwaysVisible`) has its
methods called on every generation of its tab. `modules.extensions.runner` calls them; this module
holds only the class and the small argument objects of A1111's API.

Methods of A1111's API that the runner never calls are listed in `NOT_CALLED` with the reason; a
script overriding one gets a warning when it is loaded (never silently skipped).
"""

from __future__ import annotations

import re
from typing import Any


class _AlwaysVisible:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible: Any = _AlwaysVisible()
"""`show()` returns this for a script that is always rendered and always run (A1111's sentinel)."""


class PostprocessImageArgs:
    """`postprocess_image(p, pp, *args)`: set `pp.image` to replace the image."""

    def __init__(self, image: Any) -> None:
        self.image = image


class PostprocessBatchListArgs:
    """`postprocess_batch_list(p, pp, *args, batch_number)`: `pp.images` may be replaced, added to
    or shortened (then update `p.prompts`, `p.negative_prompts` and `p.seeds` to match, as in A1111)."""

    def __init__(self, images: list[Any]) -> None:
        self.images = images


class Script:
    """Subclass this in `extensions/<name>/scripts/<file>.py` (as `modules.scripts.Script`)."""

    name: str | None = None  # the lower-cased title, set by the runner
    section: str | None = None
    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson: bool = False
    is_txt2img: bool = False
    is_img2img: bool = False
    tabname: str | None = None
    group: Any = None
    create_group: bool = True
    infotext_fields: list[Any] | None = None
    paste_field_names: list[str] | None = None
    api_info: Any = None
    setup_for_ui_only: bool = False
    controls: list[Any] | None = None
    on_before_component_elem_id: list[tuple[str, Any]] | None = None
    on_after_component_elem_id: list[tuple[str, Any]] | None = None

    def title(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no title()")

    def ui(self, is_img2img: bool) -> Any:
        """Build the script's Gradio controls; return the list whose values become `*args`."""
        return None

    def show(self, is_img2img: bool) -> Any:
        """False: hidden on this tab; True: in the Script dropdown; `AlwaysVisible`: always run."""
        return True

    def run(self, p: Any, *args: Any) -> Any:
        """Selectable scripts: do the work, return a `Processed` (usually from `process_images(p)`)."""
        return None

    def setup(self, p: Any, *args: Any) -> None:
        """Always-on scripts: when `p` is set up, before anything else."""

    def before_process(self, p: Any, *args: Any) -> None:
        """Very early in `process_images`, before prompts and seeds are worked out."""

    def process(self, p: Any, *args: Any) -> None:
        """Before processing starts: `p.all_prompts`, `p.all_seeds` ... are set and may be changed."""

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Before each batch (`batch_number`, `prompts`, `seeds`, `subseeds` in kwargs)."""

    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """After the batch's extra networks are in force, before the conditioning is made."""

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Before each sampling pass (the first pass and the hires pass)."""

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """For each batch (`batch_number`, `prompts`, `seeds`, `subseeds` in kwargs)."""

    def post_sample(self, p: Any, ps: Any, *args: Any) -> None:
        """Latents before the VAE decode (not called here, see NOT_CALLED)."""

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """The decoded batch as a float tensor in 0..1 (`images`, `batch_number` in kwargs);
        changes to the tensor's values are kept."""

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, *args: Any, **kwargs: Any) -> None:
        """The decoded batch as a list of images (`batch_number` in kwargs)."""

    def on_mask_blend(self, p: Any, mba: Any, *args: Any) -> None:
        """Inpainting mask blend at each step (not called here, see NOT_CALLED)."""

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        """Each finished image before its infotext is made and it is saved."""

    def postprocess_maskoverlay(self, p: Any, ppmo: Any, *args: Any) -> None:
        """Inpaint overlay (not called here, see NOT_CALLED)."""

    def postprocess_image_after_composite(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        """Each image after an "only masked" inpaint was pasted back (here: right after
        `postprocess_image`, since the paste-back has happened by then)."""

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        """After all processing of one `process_images` call."""

    def before_hr(self, p: Any, *args: Any) -> None:
        """Before the hires-fix pass of a batch."""

    def before_component(self, component: Any, **kwargs: Any) -> None:
        """Called before each core component of the page is made (UI only)."""

    def after_component(self, component: Any, **kwargs: Any) -> None:
        """Called after each core component of the page is made (UI only)."""

    def on_before_component(self, callback: Any, *, elem_id: str) -> None:
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback: Any, *, elem_id: str) -> None:
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """A1111's ids for script controls: `script_<tab>_<title>_<item>`; the tab part only when
        the script shows on both tabs alike."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


NOT_CALLED: dict[str, str] = {
    "post_sample": "the engine hands no latents to scripts before the VAE decode",
    "on_mask_blend": "the engine's inpaint blend has no per-step script hook",
    "postprocess_maskoverlay": "the engine pastes inpaint overlays without a script hook",
    "after_extra_networks_activate": "extra networks are applied per job, inside the model lease",
}
"""A1111 Script methods the runner does not call, with the reason (reported when a script
overrides one)."""


def overridden_uncalled(script: Script) -> list[str]:
    """The NOT_CALLED methods `script` overrides (each is a load-time warning)."""
    return [name for name in NOT_CALLED if getattr(type(script), name, None) is not getattr(Script, name)]
