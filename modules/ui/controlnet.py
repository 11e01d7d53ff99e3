"""The ControlNet accordion of the txt2img and img2img tabs, laid out as sd-webui-controlnet's UI
is to its users: the accordion `#<tab>_controlnet` (closed), the units as tabs "ControlNet Unit
0..N-1" (`services.controlnet.unit_count()`), and per unit (ids `#<tab>_controlnet_ControlNet-<i>_...`
as the extension's):

- the control image `..._input_image` (on img2img shown only with "Upload independent control
  image" `..._controlnet_same_img2img_checkbox` ticked; unticked, the img2img image is the
  control image, as the extension does), and the preview `..._generated_image`;
- Enable, Low VRAM, Pixel Perfect, Allow Preview (`..._controlnet_enable_checkbox`,
  `..._controlnet_low_vram_checkbox`, `..._controlnet_pixel_perfect_checkbox`,
  `..._controlnet_preprocessor_preview_checkbox`);
- Control Type `..._controlnet_type_filter_radio` ("All" and the preprocessors' tags), which
  narrows the Preprocessor `..._controlnet_preprocessor_dropdown` (labels shown, names kept) and
  Model `..._controlnet_model_dropdown` dropdowns (`core.controlnet.control_types`); 💥
  `..._controlnet_trigger_preprocessor` runs the preprocessor into the preview, 🔄
  `..._controlnet_refresh_models` rescans the models;
- Control Weight, Starting / Ending Control Step, the preprocessor's own sliders (resolution,
  threshold A / B with the labels and ranges of its `module_detail`; the resolution hidden under
  Pixel Perfect), Control Mode, Resize Mode, and the Hires-Fix Option (txt2img, shown while
  Hires. fix is on).

On Generate, `ControlNetSection.apply` puts the units into the request (`controlnet_units`, disabled
units dropped, `source` "ControlNet Unit i"); the engine checks them before queueing (its errors
reach the page as `gr.Error`). A model-free preprocessor (reference_only, reference_adain, ...:
`PreprocessorInfo.model_free`) goes with the Model "None"; the UI has no model check of its own.

Paste: `paste_values` turns an infotext's `ControlNet i` lines into the units' field values
(`modules.ui.paste` adds them to what it restores), and `ControlNetSection.paste_updates` completes
them into whole updates: Control Type "All", the dropdowns' full choices, the pasted preprocessor's
sliders shown / hidden with its labels and ranges and the pasted values, all in the paste's one
response. The units' own handlers listen to the user's input (`.input`), not to every change, so
no handler chained on a programmatic change (a paste, a send-to) runs after it with half-updated
values and overwrites what it set.

Send to ControlNet (`add_send_button`, wired in `modules.ui.send_to`): a gallery's (or PNG Info's)
image goes into the selected unit of a tab (`ControlNetSection.send_image_updates`: Enable ticked,
on img2img "Upload independent control image" too, the accordion opened on that unit).

Not here: the extension's masks drawn on the control image, batch / multi-input tabs, the
openpose editor, presets."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr
from PIL import Image

from modules.core.controlnet import (
    CONTROL_MODES,
    HR_OPTIONS,
    INFOTEXT_FIELDS,
    RESIZE_MODES,
    ControlNetUnit,
    PreprocessorInfo,
    Slider,
    control_types,
    parse_unit_infotext,
)
from modules.core.errors import SdWebuiError
from modules.core.requests import GenerationRequest
from modules.engine.controlnet import pixel_perfect_resolution
from modules.services import Services
from modules.ui.named_inputs import inputs_of, values_of
from modules.ui.selected_tab import TabHolder, selected_tab_holder, set_on_select
from modules.ui.user_events import user_change

log = logging.getLogger(__name__)

R = TypeVar("R", bound=GenerationRequest)

ALL = "All"
NO_MODEL = "None"
TRIGGER = "\U0001f4a5"  # 💥
REFRESH = "\U0001f504"  # 🔄
MODEL_MIN_WIDTH = 360
"""The Model dropdown's least width in px: a model title of ~38 characters shows whole."""
SEND_LABEL = "Send to ControlNet"
"""The gallery button's label (the name the extension's companions, e.g. the openpose editor, give
their button that sends an image to a unit)."""
UNIT_FIELDS = (
    "enabled",
    "image",
    "low_vram",
    "pixel_perfect",
    "module",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "control_mode",
    "resize_mode",
    "hr_option",
)
"""A unit's controls that make its `ControlNetUnit` (named `controlnet_<i>_<name>`); img2img adds
`independent` ("Upload independent control image")."""
PASTED_FIELDS = ("enabled", *INFOTEXT_FIELDS, "low_vram", "hr_option")
"""The unit fields an infotext line restores (the extension's eleven, plus those of the older,
longer line)."""
UNSET = -1
"""A preprocessor slider the chosen preprocessor does not show (the extension's -1: "its default")."""


def field_name(index: int, name: str) -> str:
    """The handlers' name of unit `index`'s control `name`."""
    return f"controlnet_{index}_{name}"


def unit_source(index: int) -> str:
    """Where a unit came from, in messages: "ControlNet Unit i" (its tab's title)."""
    return f"ControlNet Unit {index}"


def unit_elem_id(tab: str, index: int, suffix: str) -> str:
    """The extension's ids: `<tab>_controlnet_ControlNet-<i>_<suffix>`."""
    return f"{tab}_controlnet_ControlNet-{index}_{suffix}"


def unit_tab_id(tab: str, index: int) -> str:
    """The id of unit `index`'s tab in the units' `gr.Tabs` (what `selected` names)."""
    return f"{tab}_controlnet_unit_{index}"


# -- the request ----------------------------------------------------------------------------------


def _image(value: Any) -> Image.Image | None:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):  # an editor value: its background / composite
        for key in ("composite", "background", "image"):
            if isinstance(value.get(key), Image.Image):
                return value[key].convert("RGB")
    return None


def unit_from_ui(index: int, values: Mapping[str, Any], *, is_img2img: bool) -> ControlNetUnit | None:
    """Unit `index` from the named values (`field_name(index, ...)`); None when it is not enabled.

    The image: the uploaded one; on img2img, None (the img2img image) unless "Upload independent
    control image" is ticked. Raises `gr.Error` for an enabled unit that needs an image and has
    none."""

    def get(name: str) -> Any:
        return values[field_name(index, name)]

    if not get("enabled"):
        return None
    independent = bool(values.get(field_name(index, "independent"), False)) if is_img2img else True
    image = _image(get("image")) if independent else None
    if independent and image is None:
        raise gr.Error(f"{unit_source(index)}: upload a control image (or disable the unit)")
    return ControlNetUnit(
        enabled=True,
        module=str(get("module") or "none"),
        model=str(get("model") or NO_MODEL),
        weight=float(get("weight")),
        image=image,
        resize_mode=str(get("resize_mode") or RESIZE_MODES[1]),
        low_vram=bool(get("low_vram")),
        processor_res=int(get("processor_res")),
        threshold_a=float(get("threshold_a")),
        threshold_b=float(get("threshold_b")),
        guidance_start=float(get("guidance_start")),
        guidance_end=float(get("guidance_end")),
        pixel_perfect=bool(get("pixel_perfect")),
        control_mode=str(get("control_mode") or CONTROL_MODES[0]),
        hr_option=str(get("hr_option") or HR_OPTIONS[0]),
        source=unit_source(index),
    )


def units_from_ui(values: Mapping[str, Any], count: int, *, is_img2img: bool) -> tuple[ControlNetUnit, ...]:
    """The enabled units among `count`, in order (disabled ones dropped)."""
    units = (unit_from_ui(index, values, is_img2img=is_img2img) for index in range(count))
    return tuple(unit for unit in units if unit is not None)


# -- paste ----------------------------------------------------------------------------------------


def paste_values(parsed: Mapping[str, object]) -> dict[str, object]:
    """Field name -> value for the units an infotext's `ControlNet i` lines describe (line i goes
    to unit i; a unit without a line is left as it is, as the extension's paste does). A line that
    does not parse is skipped (logged)."""
    out: dict[str, object] = {}
    for key, raw in parsed.items():
        prefix, _, number = key.partition(" ")
        if prefix != "ControlNet" or not number.isdigit():
            continue
        try:
            fields = parse_unit_infotext(str(raw))
        except SdWebuiError as exc:
            log.warning("paste: %s not restored: %s", key, exc)
            continue
        index = int(number)
        out[field_name(index, "type_filter")] = ALL
        for name in PASTED_FIELDS:
            if name in fields:
                value = fields[name]
                if name in ("module", "model", "resize_mode", "control_mode", "hr_option"):
                    value = str(value)
                out[field_name(index, name)] = value
    return out


# -- the preprocessors' sliders -------------------------------------------------------------------


def _slider_update(slider: Slider | None, *, shown: bool = True, reset: bool) -> dict[str, Any]:
    if slider is None or not shown:
        update: dict[str, Any] = {"visible": False}
        if reset:
            update["value"] = UNSET
        return gr.update(**update)
    update = {
        "visible": True,
        "label": slider.name,
        "minimum": slider.minimum,
        "maximum": slider.maximum,
        "step": slider.step,
    }
    if reset:
        update["value"] = slider.value
    return gr.update(**update)


def slider_updates(info: PreprocessorInfo | None, pixel_perfect: bool, *, reset: bool) -> list[dict[str, Any]]:
    """Updates of (resolution, threshold A, threshold B) for preprocessor `info`: shown with its
    labels and ranges, the resolution hidden under Pixel Perfect; `reset` also sets the values (the
    preprocessor's defaults, -1 for a hidden slider), as when the user picks a preprocessor."""
    if info is None:
        return [_slider_update(None, reset=reset)] * 3
    return [
        _slider_update(info.resolution, shown=not pixel_perfect, reset=reset),
        _slider_update(info.slider_1, reset=reset),
        _slider_update(info.slider_2, reset=reset),
    ]


def _pasted_slider(update: dict[str, Any], slider: Slider | None, value: object) -> dict[str, Any]:
    """`update` (of `_slider_update`, values kept) with a pasted `value`: clamped to the shown
    slider's range, its default for the extension's -1 ("default")."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return update
    number = float(value)
    if slider is not None and update.get("visible"):
        number = float(slider.value) if number == UNSET else min(max(number, slider.minimum), slider.maximum)
    return {**update, "value": int(number) if number.is_integer() else number}


def _slider_bounds(infos: Sequence[PreprocessorInfo]) -> tuple[float, float]:
    """The widest range of any threshold slider (a pasted value fits before the preprocessor's
    own range is shown)."""
    sliders = [s for info in infos for s in (info.slider_1, info.slider_2) if s is not None]
    low = min([UNSET, *(s.minimum for s in sliders)])
    high = max([1.0, *(s.maximum for s in sliders)])
    return float(low), float(high)


# -- the section ----------------------------------------------------------------------------------


@dataclass
class UnitControls:
    """One unit's components (those not in `fields` are the UI's own)."""

    index: int
    fields: dict[str, Any]
    image_group: gr.Group
    allow_preview: gr.Checkbox
    preview: gr.Image
    trigger: gr.Button
    type_filter: gr.Radio
    refresh: gr.Button
    hr_option: gr.Radio
    tab: gr.Tab | None = None

    def c(self, name: str) -> Any:
        """The unit's control `name` (a `UNIT_FIELDS` name, or "independent")."""
        return self.fields[field_name(self.index, name)]


@dataclass
class ControlNetSection:
    """One tab's ControlNet accordion. `fields` names the unit controls (`controlnet_<i>_<name>`)."""

    is_img2img: bool
    accordion: gr.Accordion | None = None
    units: list[UnitControls] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    tabs: gr.Tabs | None = None
    selected_unit: TabHolder | None = None
    """The index of the unit tab last selected, held in the page (`selected_tab`; 0 at first)."""
    preprocessors: dict[str, PreprocessorInfo] = field(default_factory=dict)
    models: Callable[[], list[str]] = list
    """The Model dropdown's choices now ("None" first)."""
    send_button: gr.Button | None = None

    @property
    def tab_name(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"

    @property
    def paste_fields(self) -> dict[str, Any]:
        """`fields` and each unit's Control Type (`controlnet_<i>_type_filter`: a paste sets it to
        "All", so the pasted preprocessor and model are among the dropdowns' choices)."""
        types = {field_name(unit.index, "type_filter"): unit.type_filter for unit in self.units}
        return {**self.fields, **types}

    def request_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`{"controlnet_units": ...}` from the handler's named values (empty without units)."""
        if not self.units:
            return {}
        return {"controlnet_units": units_from_ui(values, len(self.units), is_img2img=self.is_img2img)}

    def apply(self, request: R, values: Mapping[str, Any]) -> R:
        """`request` with the enabled units of the handler's values."""
        changes = self.request_fields(values)
        return dataclasses.replace(request, **changes) if changes else request

    def paste_updates(self, updates: Mapping[Any, object]) -> dict[Any, object]:
        """`updates` (component -> value, as `paste_fields` restores an infotext) with each unit
        whose preprocessor is pasted made whole in the same response: the Control Type "All", the
        Preprocessor and Model dropdowns with every choice (and the pasted values), the sliders
        with the pasted preprocessor's visibility, labels and ranges and the pasted values, the
        resolution hidden under the pasted Pixel Perfect (unticked when the line does not say).
        Units the infotext says nothing about, and other components, pass unchanged."""
        out: dict[Any, object] = dict(updates)
        for unit in self.units:
            module = unit.c("module")
            if module not in updates:
                continue
            info = self.preprocessors.get(str(updates[module]))
            pixel_perfect = bool(updates.get(unit.c("pixel_perfect"), False))
            out[unit.c("pixel_perfect")] = pixel_perfect
            out[unit.type_filter] = ALL
            out[module] = gr.update(choices=self._module_choices(), value=updates[module])
            models = self.models()
            model = unit.c("model")
            out[model] = (
                gr.update(choices=models, value=updates[model]) if model in updates else gr.update(choices=models)
            )
            sliders = (info.resolution, info.slider_1, info.slider_2) if info is not None else (None, None, None)
            names = ("processor_res", "threshold_a", "threshold_b")
            for name, slider, update in zip(
                names, sliders, slider_updates(info, pixel_perfect, reset=False), strict=True
            ):
                component = unit.c(name)
                out[component] = _pasted_slider(update, slider, updates[component]) if component in updates else update
        return out

    def _module_choices(self) -> list[tuple[str, str]]:
        return [(info.display_name, info.name) for info in self.preprocessors.values()]

    def unit_index(self, selected: object) -> int:
        """A valid unit index from the `selected_unit` state's value (0 when unknown)."""
        index = selected if isinstance(selected, int) and not isinstance(selected, bool) else 0
        return index if 0 <= index < len(self.units) else 0

    @property
    def send_outputs(self) -> list[Any]:
        """The components `send_image_updates` updates (an event's outputs)."""
        outputs: list[Any] = [self.accordion, self.tabs]
        for unit in self.units:
            outputs += [unit.c("image"), unit.c("enabled")]
            if self.is_img2img:
                outputs += [unit.c("independent"), unit.image_group, unit.allow_preview, unit.trigger]
        return [o for o in outputs if o is not None]

    def send_image_updates(self, image: Image.Image, selected: object = 0) -> dict[Any, object]:
        """Updates that put `image` into the unit `selected` (the unit tab last selected; 0 when
        unknown) as its control image: Enable ticked; on img2img "Upload independent control image"
        ticked and the upload, Allow Preview and 💥 shown; the accordion opened on that unit's tab.
        Raises `gr.Error` when the tab has no ControlNet."""
        if not self.units or self.accordion is None:
            raise gr.Error("ControlNet is not available")
        unit = self.units[self.unit_index(selected)]
        updates: dict[Any, object] = {
            unit.c("image"): image,
            unit.c("enabled"): True,
            self.accordion: gr.update(open=True),
        }
        if self.tabs is not None:
            updates[self.tabs] = gr.update(selected=unit_tab_id(self.tab_name, unit.index))
        if self.is_img2img:
            updates[unit.c("independent")] = True
            for component in (unit.image_group, unit.allow_preview, unit.trigger):
                updates[component] = gr.update(visible=True)
        return updates


def add_send_button(section: ControlNetSection, beside: Any) -> gr.Button | None:
    """ "Send to ControlNet" (`#<tab>_send_to_controlnet`) appended to the row of `beside` (a built
    button: the gallery's 📐); None (nothing built) without ControlNet units. Kept as
    `section.send_button`; `modules.ui.send_to` wires it."""
    row = getattr(beside, "parent", None)
    if not section.units or row is None:
        return None
    parent = row.parent
    with row:  # entering a built block again makes the current context its parent: undone below
        button = gr.Button(
            SEND_LABEL, elem_id=f"{section.tab_name}_send_to_controlnet", size="sm", min_width=150, scale=0
        )
    row.parent = parent
    section.send_button = button
    return button


def model_choices(services: Services) -> list[str]:
    """ "None", then every ControlNet model's title ("stem [hash8]")."""
    controlnet = services.controlnet
    names = controlnet.list_models() if controlnet is not None else []
    return [NO_MODEL, *(name for name in names if name != NO_MODEL)]


def build_controlnet_section(
    services: Services,
    *,
    is_img2img: bool,
    size: tuple[Any, Any] | None = None,
    enable_hr: Any = None,
) -> ControlNetSection:
    """The accordion, built where it is called; `size` = the tab's (width, height) sliders (Pixel
    Perfect's preview resolution), `enable_hr` = txt2img's Hires. fix box (shows the Hires-Fix
    Option). Without ControlNet (`services.controlnet` None) nothing is built."""
    tab = "img2img" if is_img2img else "txt2img"
    section = ControlNetSection(is_img2img)
    controlnet = services.controlnet
    if controlnet is None:
        return section
    infos = list(controlnet.preprocessors())
    by_name = {info.name: info for info in infos}
    tags = sorted({tag for info in infos for tag in info.tags})
    low, high = _slider_bounds(infos)
    models = model_choices(services)
    section.preprocessors = dict(by_name)
    section.models = lambda: model_choices(services)
    with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet") as accordion:
        section.accordion = accordion
        section.selected_unit = selected_unit = selected_tab_holder(0, f"{tab}_controlnet_selected_unit")
        with gr.Tabs(elem_id=f"{tab}_controlnet_tabs") as tabs:
            section.tabs = tabs
            for index in range(controlnet.unit_count()):
                with gr.Tab(
                    unit_source(index), id=unit_tab_id(tab, index), elem_id=unit_elem_id(tab, index, "tab")
                ) as t:
                    unit = _build_unit(tab, index, is_img2img, infos, tags, (low, high), models)
                unit.tab = t
                section.units.append(unit)
                section.fields.update(unit.fields)
    for unit in section.units:
        _wire_unit(services, unit, by_name, is_img2img, size)
        if unit.tab is not None:
            set_on_select(unit.tab, selected_unit, unit.index)
    if enable_hr is not None:
        radios = [unit.hr_option for unit in section.units]
        enable_hr.change(
            lambda on: [gr.update(visible=bool(on))] * len(radios),
            enable_hr,
            radios,
            queue=False,
            show_progress="hidden",
        )
    return section


def _build_unit(
    tab: str,
    index: int,
    is_img2img: bool,
    infos: Sequence[PreprocessorInfo],
    tags: Sequence[str],
    bounds: tuple[float, float],
    models: Sequence[str],
) -> UnitControls:
    def eid(suffix: str) -> str:
        return unit_elem_id(tab, index, suffix)

    default = ControlNetUnit()
    none_info = next((i for i in infos if i.name == default.module), None)
    low, high = bounds
    independent: gr.Checkbox | None = None
    with (
        gr.Group(visible=not is_img2img, elem_classes="sdw-cnet-image-group") as image_group,
        gr.Row(equal_height=True),
    ):
        image = gr.Image(
            label="Control image",
            type="pil",
            sources=["upload", "clipboard"],
            image_mode="RGB",
            elem_id=eid("input_image"),
            height=260,
        )
        preview = gr.Image(
            label="Preprocessor Preview",
            type="pil",
            interactive=False,
            visible=False,
            elem_id=eid("generated_image"),
            height=260,
        )
    with gr.Row(elem_classes="sdw-cnet-main-options"):
        enabled = gr.Checkbox(label="Enable", value=default.enabled, elem_id=eid("controlnet_enable_checkbox"))
        low_vram = gr.Checkbox(label="Low VRAM", value=default.low_vram, elem_id=eid("controlnet_low_vram_checkbox"))
        pixel_perfect = gr.Checkbox(
            label="Pixel Perfect", value=default.pixel_perfect, elem_id=eid("controlnet_pixel_perfect_checkbox")
        )
        allow_preview = gr.Checkbox(
            label="Allow Preview",
            value=False,
            visible=not is_img2img,
            elem_id=eid("controlnet_preprocessor_preview_checkbox"),
        )
    if is_img2img:
        independent = gr.Checkbox(
            label="Upload independent control image",
            value=False,
            elem_id=eid("controlnet_same_img2img_checkbox"),
        )
    type_filter = gr.Radio([ALL, *tags], value=ALL, label="Control Type", elem_id=eid("controlnet_type_filter_radio"))
    with gr.Row(equal_height=True, elem_classes="sdw-cnet-preprocessor-model"):
        module = gr.Dropdown(
            [(info.display_name, info.name) for info in infos],
            value=default.module,
            label="Preprocessor",
            elem_id=eid("controlnet_preprocessor_dropdown"),
            scale=2,
            min_width=200,
        )
        trigger = gr.Button(
            TRIGGER,
            visible=not is_img2img,
            size="sm",
            min_width=40,
            scale=0,
            elem_id=eid("controlnet_trigger_preprocessor"),
            elem_classes="sdw-small-refresh",
        )
        # wide enough for a whole title ("control_v11p_sd15_openpose [cab727d4]"): in a narrow
        # column the row wraps, the Model on a line of its own (modules/ui/css/controlnet.css)
        model = gr.Dropdown(
            list(models),
            value=NO_MODEL,
            label="Model",
            elem_id=eid("controlnet_model_dropdown"),
            elem_classes="sdw-cnet-model",
            scale=3,
            min_width=MODEL_MIN_WIDTH,
        )
        refresh = gr.Button(
            REFRESH,
            size="sm",
            min_width=40,
            scale=0,
            elem_id=eid("controlnet_refresh_models"),
            elem_classes="sdw-small-refresh",
        )
    with gr.Row():
        weight = gr.Slider(
            0.0,
            2.0,
            value=default.weight,
            step=0.05,
            label="Control Weight",
            elem_id=eid("controlnet_control_weight_slider"),
        )
        guidance_start = gr.Slider(
            0.0,
            1.0,
            value=default.guidance_start,
            step=0.01,
            label="Starting Control Step",
            elem_id=eid("controlnet_start_control_step_slider"),
        )
        guidance_end = gr.Slider(
            0.0,
            1.0,
            value=default.guidance_end,
            step=0.01,
            label="Ending Control Step",
            elem_id=eid("controlnet_ending_control_step_slider"),
        )
    resolution = none_info.resolution if none_info is not None else None
    with gr.Row():
        processor_res = gr.Slider(
            resolution.minimum if resolution is not None else UNSET,
            resolution.maximum if resolution is not None else 4096,
            value=resolution.value if resolution is not None else UNSET,
            step=resolution.step if resolution is not None else 1,
            label="Resolution",
            visible=resolution is not None,
            elem_id=eid("controlnet_preprocessor_resolution_slider"),
        )
        threshold_a = gr.Slider(
            low,
            high,
            value=UNSET,
            step=0.01,
            label="Threshold A",
            visible=False,
            elem_id=eid("controlnet_threshold_A_slider"),
        )
        threshold_b = gr.Slider(
            low,
            high,
            value=UNSET,
            step=0.01,
            label="Threshold B",
            visible=False,
            elem_id=eid("controlnet_threshold_B_slider"),
        )
    control_mode = gr.Radio(
        list(CONTROL_MODES),
        value=default.control_mode,
        label="Control Mode",
        elem_id=eid("controlnet_control_mode_radio"),
    )
    resize_mode = gr.Radio(
        list(RESIZE_MODES),
        value=default.resize_mode,
        label="Resize Mode",
        elem_id=eid("controlnet_resize_mode_radio"),
    )
    hr_option = gr.Radio(
        list(HR_OPTIONS),
        value=default.hr_option,
        label="Hires-Fix Option",
        visible=False,  # txt2img shows it while Hires. fix is on
        elem_id=eid("controlnet_hr_option_radio"),
    )
    fields = {
        "enabled": enabled,
        "image": image,
        "low_vram": low_vram,
        "pixel_perfect": pixel_perfect,
        "module": module,
        "model": model,
        "weight": weight,
        "guidance_start": guidance_start,
        "guidance_end": guidance_end,
        "processor_res": processor_res,
        "threshold_a": threshold_a,
        "threshold_b": threshold_b,
        "control_mode": control_mode,
        "resize_mode": resize_mode,
        "hr_option": hr_option,
    }
    if independent is not None:
        fields["independent"] = independent
    named = {field_name(index, name): component for name, component in fields.items()}
    return UnitControls(index, named, image_group, allow_preview, preview, trigger, type_filter, refresh, hr_option)


def _wire_unit(
    services: Services,
    unit: UnitControls,
    by_name: Mapping[str, PreprocessorInfo],
    is_img2img: bool,
    size: tuple[Any, Any] | None,
) -> None:
    controlnet = services.controlnet
    assert controlnet is not None
    index = unit.index

    def c(name: str) -> Any:
        return unit.fields[field_name(index, name)]

    module, model, pixel_perfect = c("module"), c("model"), c("pixel_perfect")
    sliders = [c("processor_res"), c("threshold_a"), c("threshold_b")]

    # the model list is read when the page loads (models added since the start show up)
    root = gr.context.Context.root_block
    if isinstance(root, gr.Blocks):
        root.load(
            lambda value: gr.update(choices=model_choices(services), value=value),
            model,
            model,
            queue=False,
            show_progress="hidden",
        )

    def refresh_models(value: str | None) -> Any:
        controlnet.refresh_models()
        choices = model_choices(services)
        return gr.update(choices=choices, value=value if value in choices else NO_MODEL)

    unit.refresh.click(refresh_models, model, model, queue=False)

    # the user's pick of a preprocessor: its sliders with their defaults; of Pixel Perfect: the
    # resolution shown or hidden, the values kept. Only the user's input: a paste sets the sliders
    # itself (`ControlNetSection.paste_updates`), and a handler chained on its change would run
    # with the dropdown's choices not yet updated and overwrite them
    user_change(module)(
        lambda name, pp: slider_updates(by_name.get(str(name)), bool(pp), reset=True),
        [module, pixel_perfect],
        sliders,
        queue=False,
        show_progress="hidden",
    )
    pixel_perfect.input(
        lambda name, pp: slider_updates(by_name.get(str(name)), bool(pp), reset=False),
        [module, pixel_perfect],
        sliders,
        queue=False,
        show_progress="hidden",
    )

    label_to_name = {info.display_name: info.name for info in by_name.values()}

    def control_type(tag: str) -> tuple[list[tuple[str, str]], list[str], str, str]:
        """(preprocessor choices, model choices, default preprocessor, default model) of `tag`."""
        types = control_types(list(by_name.values()), model_choices(services))
        chosen = types.get(tag) or types[ALL]
        modules = [(label, label_to_name.get(label, label)) for label in chosen["module_list"]]
        default_module = label_to_name.get(chosen["default_option"], chosen["default_option"])
        return modules, list(chosen["model_list"]), default_module, str(chosen["default_model"])

    def pick_type(tag: str, pp: bool) -> list[Any]:
        modules, models, default_module, default_model = control_type(tag)
        return [
            gr.update(choices=modules, value=default_module),
            gr.update(choices=models, value=default_model),
            *slider_updates(by_name.get(default_module), bool(pp), reset=True),
        ]

    # the user's pick: the choices and the defaults (a paste sets "All" and the choices itself)
    user_change(unit.type_filter)(
        pick_type, [unit.type_filter, pixel_perfect], [module, model, *sliders], queue=False, show_progress="hidden"
    )

    # Allow Preview shows the preview; 💥 runs the preprocessor into it
    unit.allow_preview.change(
        lambda on: gr.update(visible=bool(on)), unit.allow_preview, unit.preview, queue=False, show_progress="hidden"
    )
    preview_fields: dict[str, Any] = {
        name: c(name) for name in ("image", "module", "processor_res", "threshold_a", "threshold_b", "pixel_perfect")
    }
    preview_fields["resize_mode"] = c("resize_mode")
    if size is not None:
        preview_fields["width"], preview_fields["height"] = size

    def run_preview(data: dict[Any, Any]) -> tuple[Any, Any]:
        values = values_of(preview_fields, data)
        image = _image(values["image"])
        if image is None:
            raise gr.Error(f"{unit_source(index)}: upload a control image first")
        resolution = int(values["processor_res"])
        pp = bool(values["pixel_perfect"])
        if pp and "width" in values:
            resolution = pixel_perfect_resolution(
                (image.height, image.width), int(values["height"]), int(values["width"]), str(values["resize_mode"])
            )
        try:
            detected = controlnet.run_preprocessor(
                str(values["module"]),
                image,
                resolution=resolution,
                threshold_a=float(values["threshold_a"]),
                threshold_b=float(values["threshold_b"]),
                pixel_perfect=pp,
            )
        except SdWebuiError as exc:
            raise gr.Error(f"{unit_source(index)}: {exc}") from exc
        return gr.update(value=detected, visible=True), True

    unit.trigger.click(
        run_preview, inputs_of(preview_fields), [unit.preview, unit.allow_preview], concurrency_limit=None
    )

    if is_img2img:
        independent = c("independent")
        image_group = unit.image_group

        def same_image(on: bool) -> list[Any]:
            shown = bool(on)
            return [
                gr.update(visible=shown),
                gr.update(value=None),
                gr.update(visible=shown, value=False),
                gr.update(visible=shown),
            ]

        # the user's toggle (a send-to ticks it and shows the upload itself)
        independent.input(
            same_image,
            independent,
            [image_group, c("image"), unit.allow_preview, unit.trigger],
            queue=False,
            show_progress="hidden",
        )
