"""The img2img tab's six sub-tabs as A1111 numbers them (its `mode` / `tabnum`): which sub-tab a
request's image and mask come from, which show the inpaint controls, their tab ids."""

from __future__ import annotations

IMG2IMG, SKETCH, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH = 0, 1, 2, 3, 4, 5
INPAINT_MODES = (INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH)  # where the inpaint controls show

# sub-tab number -> the gr.Tab id (and elem_id) in `mode_img2img`, A1111's names
SUBTAB_IDS = {
    IMG2IMG: "img2img_img2img_tab",
    SKETCH: "img2img_img2img_sketch_tab",
    INPAINT: "img2img_inpaint_tab",
    INPAINT_SKETCH: "img2img_inpaint_sketch_tab",
    INPAINT_UPLOAD: "img2img_inpaint_upload_tab",
    BATCH: "img2img_batch_tab",
}
