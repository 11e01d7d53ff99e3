"""img2img's image inputs: Gradio ImageEditor values ({"background", "layers", "composite"}) as
the image and mask a request needs (Inpaint: the painted layers are the mask; Sketch and Inpaint
sketch: the strokes are baked into the image, with "Mask transparency"), the image each sub-tab
shows (for 📐, "Resize by" and "Copy image to"), and uploads flattened to RGB."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
from PIL import Image

from modules.ui.img2img_modes import IMG2IMG, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, SKETCH

EditorValue = Mapping[str, Any]

# "Copy image to:" targets: (sub-tab, button text, elem_id suffix)
COPY_TARGETS = (
    (IMG2IMG, "img2img", "img2img"),
    (SKETCH, "sketch", "sketch"),
    (INPAINT, "inpaint", "inpaint"),
    (INPAINT_SKETCH, "inpaint sketch", "inpaint_sketch"),
)


def to_rgb(image: Image.Image) -> Image.Image:
    """An upload as RGB; transparent parts become white (A1111 flattens the same way)."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def editor_value(image: Image.Image) -> dict[str, Any]:
    """An ImageEditor value with `image` as the background and nothing painted (send to inpaint)."""
    return {"background": image, "layers": [], "composite": image}


def _layers(editor: EditorValue | None, size: tuple[int, int]) -> list[Image.Image]:
    """The editor's painted layers as RGBA images of `size`."""
    out = []
    for layer in (editor or {}).get("layers") or ():
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        out.append(rgba if rgba.size == size else rgba.resize(size))
    return out


def painted_mask(editor: EditorValue | None, size: tuple[int, int]) -> Image.Image:
    """White wherever any painted layer is not transparent ("L", `size`)."""
    mask = Image.new("L", size, 0)
    for layer in _layers(editor, size):
        mask.paste(255, mask=layer.getchannel("A").point(lambda a: 255 if a > 0 else 0))
    return mask


def editor_composite(editor: EditorValue | None, opacity: float = 1.0) -> Image.Image | None:
    """What the editor shows, as RGB: the background with the painted layers over it (their alpha
    scaled by `opacity`); the editor's own composite when the strokes are fully opaque. None when
    no image was uploaded."""
    background = (editor or {}).get("background")
    if background is None:
        return None
    composite = (editor or {}).get("composite")
    if opacity >= 1.0 and composite is not None:
        return to_rgb(composite if composite.size == background.size else composite.resize(background.size))
    canvas = to_rgb(background).convert("RGBA")
    for layer in _layers(editor, canvas.size):
        if opacity < 1.0:
            layer.putalpha(layer.getchannel("A").point(lambda a: round(a * max(opacity, 0.0))))
        canvas.alpha_composite(layer)
    return canvas.convert("RGB")


def editor_image_and_mask(editor: EditorValue | None) -> tuple[Image.Image, Image.Image]:
    """The Inpaint editor's value as (image, mask): the background is the image; the mask is white
    wherever any painted layer is not transparent."""
    background = (editor or {}).get("background")
    if background is None:
        raise gr.Error("Please upload an image to inpaint")
    mask = painted_mask(editor, background.size)
    if mask.getbbox() is None:
        raise gr.Error("Please paint the area to inpaint (the mask is empty)")
    return to_rgb(background), mask


def inpaint_sketch_image_and_mask(editor: EditorValue | None, mask_alpha: float) -> tuple[Image.Image, Image.Image]:
    """The Inpaint sketch editor's value as (image, mask): the image is the background with the
    colour strokes over it ("Mask transparency" % makes the strokes that much more transparent);
    the mask is wherever something was painted."""
    image = editor_composite(editor, 1.0 - float(mask_alpha) / 100.0)
    if image is None:
        raise gr.Error("Please upload an image to sketch on")
    mask = painted_mask(editor, image.size)
    if mask.getbbox() is None:
        raise gr.Error("Please paint over the area to inpaint (nothing is painted)")
    return image, mask


def image_of_mode(
    mode: int,
    init_image: Image.Image | None,
    sketch: EditorValue | None,
    inpaint_editor: EditorValue | None,
    inpaint_sketch: EditorValue | None,
    inpaint_base: Image.Image | None,
) -> Image.Image | None:
    """The image sub-tab `mode` works from (before any painting): used by 📐, "Resize by"'s preview
    and "Copy image to". Sketches count their strokes (A1111's sketch tools bake them in)."""
    if mode == IMG2IMG:
        return init_image
    if mode in (SKETCH, INPAINT_SKETCH):
        return editor_composite(sketch if mode == SKETCH else inpaint_sketch)
    if mode == INPAINT:
        return (inpaint_editor or {}).get("background")
    if mode == INPAINT_UPLOAD:
        return inpaint_base
    return None


def image_to_copy(source: int, value: Any, target: int) -> Image.Image | dict[str, Any]:
    """ "Copy image to:": sub-tab `source`'s image (its value is `value`) as the value of sub-tab
    `target`'s input (an image for img2img, else an editor with nothing painted)."""
    values: dict[int, Any] = {source: value}
    image = image_of_mode(
        source, values.get(IMG2IMG), values.get(SKETCH), values.get(INPAINT), values.get(INPAINT_SKETCH), None
    )
    if image is None:
        raise gr.Error("There is no image to copy: upload one first")
    image = to_rgb(image)
    return image if target == IMG2IMG else editor_value(image)
