"""ControlNet units (modules.core.controlnet): the sd-webui-controlnet payload as clients send it,
the infotext line, slider defaults and control types.

Payloads are written from the facts of the extension (@56cec5b2: `example/txt2img_example/
api_txt2img.py`, `example/inpaint_example/api_inpaint.py`, `internal_controlnet/args.py`) and of
the `webuiapi` package's `ControlNetUnit.to_dict()` (0.9.17 and the pre-2024-06 form), not copied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modules.core.controlnet import (
    CONTROL_MODES,
    HR_OPTIONS,
    INFOTEXT_FIELDS,
    RESIZE_MODES,
    ControlImage,
    ControlNetUnit,
    PreprocessorInfo,
    Slider,
    apply_preprocessor_defaults,
    control_types,
    controlnet_script_args,
    infotext_params,
    parse_unit,
    parse_unit_infotext,
    parse_units,
    unit_from_infotext,
    unit_infotext,
)
from modules.core.errors import ValidationError
from modules.core.infotext import build_infotext, parse_infotext

IMG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
MASK = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAG7buVgAAAABJRU5ErkJggg=="
SRC = "alwayson_scripts.controlnet.args"


def official_example_unit() -> dict[str, Any]:
    """The unit of the extension's example/txt2img_example/api_txt2img.py (its legacy `lowvram`)."""
    return {
        "enabled": True,
        "module": "none",
        "model": "canny",
        "weight": 1.0,
        "image": IMG,
        "resize_mode": "Crop and Resize",
        "lowvram": False,
        "processor_res": 64,
        "threshold_a": 64,
        "threshold_b": 64,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "pixel_perfect": False,
    }


def webuiapi_unit(image: str | None = IMG, mask: str | None = None) -> dict[str, Any]:
    """What webuiapi 0.9.17's `ControlNetUnit(image=..., module="canny", model=...).to_dict()` sends
    (its defaults: resize "Resize and Fill", processor_res 512, thresholds 64, control_mode 0 ->
    "Balanced", enabled True; `image` "" and `mask` None when not given)."""
    return {
        "image": image or "",
        "mask": mask,
        "module": "canny",
        "model": "control_v11p_sd15_canny [d14c016b]",
        "weight": 1.0,
        "resize_mode": "Resize and Fill",
        "low_vram": False,
        "processor_res": 512,
        "threshold_a": 64,
        "threshold_b": 64,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "pixel_perfect": False,
        "hr_option": "Both",
        "enabled": True,
    }


def webuiapi_old_unit() -> dict[str, Any]:
    """webuiapi before June 2024: `input_image`, `lowvram`, `guidance` beside `guidance_end`, no
    `enabled`; between 2024-01 and 2024-03 its control_mode 0 was the tuple ('Balanced',)."""
    return {
        "input_image": IMG,
        "mask": None,
        "module": "canny",
        "model": "control_sd15_canny [fef5e48e]",
        "weight": 0.8,
        "resize_mode": "Resize and Fill",
        "lowvram": True,
        "processor_res": 512,
        "threshold_a": 64,
        "threshold_b": 64,
        "guidance": 0.7,
        "guidance_start": 0.1,
        "guidance_end": 0.7,
        "control_mode": ["Balanced"],
        "pixel_perfect": False,
        "hr_option": "Both",
    }


# -- real client payloads ----------------------------------------------------------------------


def test_the_extensions_official_example_parses_unchanged() -> None:
    units, warnings = parse_units([official_example_unit()])
    assert warnings == []
    assert len(units) == 1
    unit = units[0]
    assert unit.enabled is True
    assert (unit.module, unit.model, unit.weight) == ("none", "canny", 1.0)
    assert unit.low_vram is False
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (64, 64.0, 64.0)
    assert isinstance(unit.threshold_a, float) and isinstance(unit.processor_res, int)
    assert (unit.resize_mode, unit.control_mode, unit.hr_option) == ("Crop and Resize", "Balanced", "Both")
    assert unit.image_inputs() == (ControlImage(IMG, None, f"{SRC}[0].image", f"{SRC}[0].mask"),)


def test_the_extensions_inpaint_example_image_mask_object() -> None:
    body = {
        "batch_images": "",
        "control_mode": "Balanced",
        "enabled": True,
        "guidance_end": 1,
        "guidance_start": 0,
        "image": {"image": IMG, "mask": MASK},
        "low_vram": False,
        "model": "control_v11p_sd15_inpaint [ebff9138]",
        "module": "inpaint_only",
        "pixel_perfect": False,
        "processor_res": -1,
        "resize_mode": "Crop and Resize",
        "save_detected_map": True,
        "threshold_a": -1,
        "threshold_b": -1,
        "weight": 1,
    }
    units, warnings = parse_units([body])
    assert warnings == []  # batch_images "" is the extension's default: not worth a warning
    unit = units[0]
    assert (unit.guidance_start, unit.guidance_end, unit.weight) == (0.0, 1.0, 1.0)
    assert isinstance(unit.guidance_end, float)
    assert unit.image_inputs() == (ControlImage(IMG, MASK, f"{SRC}[0].image.image", f"{SRC}[0].image.mask"),)


def test_webuiapi_to_dict_parses_unchanged() -> None:
    units, warnings = parse_units([webuiapi_unit(mask=MASK), webuiapi_unit(image=None)])
    assert warnings == []
    first, second = units
    assert first.enabled and first.model == "control_v11p_sd15_canny [d14c016b]"
    assert (first.resize_mode, first.processor_res, first.threshold_a) == ("Resize and Fill", 512, 64.0)
    assert first.image_inputs() == (ControlImage(IMG, MASK, f"{SRC}[0].image", f"{SRC}[0].mask"),)
    assert second.image is None and second.image_inputs() == ()  # "" means no image (img2img's is used)


def test_old_webuiapi_legacy_names_and_tuple_control_mode() -> None:
    units, warnings = parse_units([webuiapi_old_unit()])
    unit = units[0]
    assert unit.image == IMG and unit.image_key == "input_image"
    assert unit.image_inputs()[0].field == f"{SRC}[0].input_image"
    assert unit.low_vram is True
    assert (unit.guidance_start, unit.guidance_end) == (0.1, 0.7)
    assert unit.control_mode == "Balanced"
    # No `enabled`: off, as in the extension since v1.1.448, and said so.
    assert unit.enabled is False
    assert len(warnings) == 1 and "no 'enabled' key" in warnings[0]


def test_args_as_a_dict_by_index_and_as_one_unit_object() -> None:
    by_index, _ = parse_units({"1": webuiapi_unit(), "0": official_example_unit()})
    assert [u.model for u in by_index] == ["canny", "control_v11p_sd15_canny [d14c016b]"]
    assert by_index[1].source == f"{SRC}[1]"
    single, _ = parse_units(official_example_unit())
    assert len(single) == 1 and single[0].source == SRC


def test_the_controlnet_entry_is_found_as_a1111_finds_scripts() -> None:
    args = [official_example_unit()]
    assert controlnet_script_args({"controlnet": {"args": args}}) == ("controlnet", args)
    assert controlnet_script_args({"ADetailer": {"args": []}, "ControlNet": {"args": args}}) == ("ControlNet", args)
    assert controlnet_script_args({"ControlNet": {}}) == ("ControlNet", None)
    assert controlnet_script_args({"ADetailer": {"args": []}}) is None
    assert controlnet_script_args(None) is None
    with pytest.raises(ValidationError, match=r"alwayson_scripts\.controlnet: expected an object"):
        controlnet_script_args({"controlnet": args})


def test_none_entries_are_skipped_and_units_pass_through() -> None:
    unit = ControlNetUnit(enabled=True, module="canny")
    units, warnings = parse_units([None, unit, {}, None])
    assert units == [unit, ControlNetUnit()]
    assert warnings == []
    assert parse_units(None) == ([], []) and parse_units([]) == ([], [])


def test_the_old_positional_form_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match=r"args\[0\]: expected a ControlNet unit object"):
        parse_units([True, "canny", "control_sd15_canny", 1.0])
    with pytest.raises(ValidationError, match="expected a list of ControlNet units"):
        parse_units("canny")
    with pytest.raises(ValidationError, match="dict of them by index"):
        parse_units({"foo": 1})


# -- fields ------------------------------------------------------------------------------------


def test_defaults_are_the_extensions() -> None:
    unit = ControlNetUnit()
    assert dataclasses.asdict(unit) | {"source": "", "image_key": "image", "mask_key": "mask"} == {
        "enabled": False,
        "module": "none",
        "model": "None",
        "weight": 1.0,
        "image": None,
        "mask": None,
        "resize_mode": "Crop and Resize",
        "low_vram": False,
        "processor_res": -1,
        "threshold_a": -1,
        "threshold_b": -1,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "pixel_perfect": False,
        "control_mode": "Balanced",
        "hr_option": "Both",
        "save_detected_map": True,
        "inpaint_crop_input_image": True,
        "advanced_weighting": None,
        "effective_region_mask": None,
        "source": "",
        "image_key": "image",
        "mask_key": "mask",
    }
    assert parse_unit({}) == unit
    assert not unit.has_model and ControlNetUnit(model="canny").has_model
    assert RESIZE_MODES == ("Just Resize", "Crop and Resize", "Resize and Fill")
    assert CONTROL_MODES == ("Balanced", "My prompt is more important", "ControlNet is more important")
    assert HR_OPTIONS == ("Both", "Low res only", "High res only")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Just Resize", "Just Resize"),
        ("Crop and Resize", "Crop and Resize"),
        ("Resize and Fill", "Resize and Fill"),
        (0, "Just Resize"),
        (1, "Crop and Resize"),
        (2, "Resize and Fill"),
        (3, "Just Resize"),  # A1111's "Just Resize (latent upscale)"
        ("Inner Fit (Scale to Fit)", "Crop and Resize"),
        ("Outer Fit (Shrink to Fit)", "Resize and Fill"),
        ("Scale to Fit (Inner Fit)", "Crop and Resize"),
        ("Envelope (Outer Fit)", "Resize and Fill"),
        ("ResizeMode.OUTER_FIT", "Resize and Fill"),
        ("INNER_FIT", "Crop and Resize"),
        ("2", "Resize and Fill"),
    ],
)
def test_resize_mode_values_ints_and_aliases(value: Any, expected: str) -> None:
    unit = parse_unit({"resize_mode": value})
    assert unit.resize_mode == expected
    assert unit.resize_mode_index == RESIZE_MODES.index(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Balanced", "Balanced"),
        ("My prompt is more important", "My prompt is more important"),
        ("ControlNet is more important", "ControlNet is more important"),
        (0, "Balanced"),
        (1, "My prompt is more important"),
        (2, "ControlNet is more important"),
        (["ControlNet is more important"], "ControlNet is more important"),
        ("ControlMode.PROMPT", "My prompt is more important"),
    ],
)
def test_control_mode_values_and_ints(value: Any, expected: str) -> None:
    assert parse_unit({"control_mode": value}).control_mode == expected


def test_hr_option_values_and_ints() -> None:
    assert [parse_unit({"hr_option": v}).hr_option for v in (0, 1, 2)] == list(HR_OPTIONS)
    assert parse_unit({"hr_option": "High res only"}).hr_option == "High res only"
    assert parse_unit({"hr_option": "HiResFixOption.LOW_RES_ONLY"}).hr_option == "Low res only"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"resize_mode": "Stretch"}, r"args\[0\]\.resize_mode: 'Stretch' is not one of"),
        ({"resize_mode": 4}, r"resize_mode: 4 is not one of 0\.\.3"),
        ({"control_mode": 3}, r"control_mode: 3 is not one of 0\.\.2"),
        ({"control_mode": True}, "control_mode"),
        ({"hr_option": "Sometimes"}, "hr_option"),
        ({"weight": 2.5}, r"weight: must be between 0 and 2, got 2\.5"),
        ({"weight": -0.1}, "weight: must be between 0 and 2"),
        ({"weight": "heavy"}, "weight: expected a number"),
        ({"weight": float("nan")}, "weight: expected a finite number"),
        ({"weight": True}, "weight: expected a number"),
        ({"guidance_start": 1.5}, "guidance_start: must be between 0 and 1"),
        ({"guidance_end": -0.5}, "guidance_end: must be between 0 and 1"),
        ({"guidance": 2}, "guidance_end: must be between 0 and 1"),
        ({"guidance_start": 0.8, "guidance_end": 0.2}, r"guidance_start \(0\.8\) is greater than guidance_end"),
        ({"enabled": "perhaps"}, "enabled: expected true or false"),
        ({"enabled": 2}, "enabled: expected true or false"),
        ({"module": 5}, "module: expected a string"),
        ({"model": ["a"]}, "model: expected a string"),
        ({"processor_res": "big"}, "processor_res: expected a number"),
        ({"advanced_weighting": []}, "advanced_weighting: expected a non-empty list"),
        ({"advanced_weighting": [1, "x"]}, r"advanced_weighting\[1\]: expected a number"),
        ({"guidance": 0.5, "guidance_end": 0.6}, "both 'guidance' and 'guidance_end'"),
        ({"input_image": IMG, "image": MASK}, "both 'input_image' and 'image'"),
        ({"mask": IMG, "mask_image": MASK, "image": IMG}, "both 'mask_image' and 'mask'"),
    ],
)
def test_bad_values_raise_validation_errors_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        parse_units([body])
    assert info.value.status_code == 422


def test_loose_values_are_read_as_the_extension_reads_them() -> None:
    unit = parse_unit(
        {
            "enabled": "true",
            "pixel_perfect": 1,
            "low_vram": "False",
            "weight": "0.5",
            "processor_res": 512.0,
            "threshold_a": "100",
            "guidance_end": 1,
            "advanced_weighting": [1, 0.5, "0.25"],
        }
    )
    assert (unit.enabled, unit.pixel_perfect, unit.low_vram) == (True, True, False)
    assert (unit.weight, unit.processor_res, unit.threshold_a) == (0.5, 512, 100.0)
    assert unit.advanced_weighting == (1.0, 0.5, 0.25)
    notes: list[str] = []
    assert parse_unit({"processor_res": 512.7}, warnings=notes).processor_res == 512
    assert notes == ["unit.processor_res: 512.7 is not a whole number, 512 used"]


def test_nulls_mean_the_defaults() -> None:
    body = {name: None for name in INFOTEXT_FIELDS} | {"enabled": None, "image": None, "hr_option": None}
    assert parse_unit(body) == ControlNetUnit()


def test_legacy_names_map_to_the_current_ones() -> None:
    unit = parse_unit({"input_image": IMG, "mask_image": MASK, "lowvram": True, "guidance": 0.4})
    assert (unit.image, unit.mask, unit.low_vram, unit.guidance_end) == (IMG, MASK, True, 0.4)
    assert unit.image_inputs() == (ControlImage(IMG, MASK, "unit.input_image", "unit.mask_image"),)
    # The same value under both names is fine (old webuiapi sent guidance and guidance_end).
    assert parse_unit({"guidance": 0.4, "guidance_end": 0.4}).guidance_end == 0.4
    # An empty legacy field does not shadow the current one.
    assert parse_unit({"input_image": "", "image": IMG, "mask_image": None}).image == IMG


# -- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "mask", "expected"),
    [
        (IMG, None, [(IMG, None, "u.image", "u.mask")]),
        (IMG, MASK, [(IMG, MASK, "u.image", "u.mask")]),
        ({"image": IMG}, None, [(IMG, None, "u.image.image", "u.image.mask")]),
        ({"image": IMG, "mask": MASK}, None, [(IMG, MASK, "u.image.image", "u.image.mask")]),
        ([IMG, MASK], None, [(IMG, MASK, "u.image[0]", "u.image[1]")]),
        ((IMG, MASK), None, [(IMG, MASK, "u.image[0]", "u.image[1]")]),
        ([{"image": IMG, "mask": ""}], None, [(IMG, None, "u.image[0].image", "u.image[0].mask")]),
        (
            [{"image": IMG}, {"image": MASK, "mask": IMG}],
            None,
            [(IMG, None, "u.image[0].image", "u.image[0].mask"), (MASK, IMG, "u.image[1].image", "u.image[1].mask")],
        ),
        ("data:image/png;base64," + IMG, None, [("data:image/png;base64," + IMG, None, "u.image", "u.mask")]),
        (None, None, []),
        ("", None, []),
    ],
)
def test_every_image_form_of_the_extension(image: Any, mask: Any, expected: list[tuple[Any, ...]]) -> None:
    unit = parse_unit({"image": image, "mask": mask}, source="u")
    assert unit.image_inputs() == tuple(ControlImage(*e) for e in expected)


def test_opaque_run_time_images_are_kept_as_they_are() -> None:
    class FakePil:  # any object (a PIL image at run time) stays opaque
        pass

    image, mask = FakePil(), FakePil()
    unit = ControlNetUnit(enabled=True, image=image, mask=mask)
    assert unit.image_inputs() == (ControlImage(image, mask, "image", "mask"),)
    assert parse_unit({"image": {"image": image, "mask": mask}}).image_inputs()[0].mask is mask


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        ({"mask": IMG}, None, r"u\.image\.image: missing"),
        ({"foo": IMG, "bar": MASK}, None, r"u\.image\.image: missing"),
        ([IMG], None, r"u\.image: a list is either \[image, mask\]"),
        ([IMG, MASK, IMG], None, "got 3 items"),
        ([], None, "an empty list is not an image"),
        ([{"mask": IMG}], None, r"u\.image\[0\]\.image: missing"),
        ([{"image": IMG}, IMG], None, r"u\.image\[1\]: expected an \{'image', 'mask'\} object"),
        (None, MASK, r"u\.mask: a mask was given without an image"),
        (42, None, r"u\.image: expected an image \(a base64 string\), got int"),
        ({"image": IMG, "mask": 1.5}, None, r"u\.image\.mask: expected an image"),
    ],
)
def test_bad_image_shapes_are_refused_at_parse_time(image: Any, mask: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_unit({"image": image, "mask": mask}, source="u")


def test_a_unit_mask_beside_an_image_object_is_reported_as_ignored() -> None:
    notes: list[str] = []
    parse_unit({"enabled": True, "image": {"image": IMG}, "mask": MASK}, source="u", warnings=notes)
    assert notes == ["u.mask: ignored, the image field carries its own masks"]


# -- unknown and unsupported keys --------------------------------------------------------------


def test_unknown_keys_are_warned_never_silently_dropped() -> None:
    body = official_example_unit() | {"strength": 0.5, "preprocessor": "canny"}
    units, warnings = parse_units([body])
    assert units[0].enabled
    assert warnings == [
        f"{SRC}[0].strength: unknown ControlNet unit field, ignored",
        f"{SRC}[0].preprocessor: unknown ControlNet unit field, ignored",
    ]


def test_extension_fields_not_applied_here_warn_only_when_set() -> None:
    defaults = {
        "is_ui": False,
        "input_mode": "simple",
        "batch_images": "",
        "output_dir": "",
        "loopback": False,
        "pulid_mode": "Fidelity",
        "union_control_type": "Unknown",
        "ipadapter_input": None,
        "batch_modifiers": [],
        "batch_image_files": [],
        "animatediff_batch": False,
    }
    assert parse_units([official_example_unit() | defaults]).warnings == []
    _, warnings = parse_units(
        [official_example_unit() | {"union_control_type": "Depth", "ipadapter_input": ["abc"], "guess_mode": True}]
    )
    assert warnings == [
        f"{SRC}[0].union_control_type: not supported here, ignored",
        f"{SRC}[0].ipadapter_input: not supported here, ignored",
        f"{SRC}[0].guess_mode: Guess Mode was removed from the extension (1.1.136); use control_mode; ignored",
    ]


# -- infotext ----------------------------------------------------------------------------------

CANNY_LINE = (
    "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
    "Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0, "
    "Pixel Perfect: False, Control Mode: Balanced"
)
CANNY = PreprocessorInfo(
    "canny",
    tags=("Canny",),
    model_free=False,
    slider_1=Slider("Low Threshold", 100, 1, 255, 1),
    slider_2=Slider("High Threshold", 200, 1, 255, 1),
)


def test_unit_infotext_is_the_extensions_line() -> None:
    unit = parse_unit({"enabled": True, "module": "canny", "model": "canny", "image": IMG})
    unit = apply_preprocessor_defaults(unit, CANNY)  # -1 -> the sliders' defaults, as ints
    assert unit_infotext(0, unit, "control_v11p_sd15_canny [d14c016b]") == ("ControlNet 0", CANNY_LINE)
    # In the params line it is quoted (it holds commas), as A1111 quotes every such value.
    text = build_infotext("a cat", "", {"Steps": 20, "ControlNet 0": CANNY_LINE})
    assert text == f'a cat\nSteps: 20, ControlNet 0: "{CANNY_LINE}"'


def test_unit_infotext_writes_values_as_the_unit_holds_them() -> None:
    unit = parse_unit(official_example_unit())
    key, value = unit_infotext(2, unit) or ("", "")
    assert key == "ControlNet 2"
    assert value == (
        "Module: none, Model: canny, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 64, "
        "Threshold A: 64.0, Threshold B: 64.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: Balanced"
    )


def test_unit_infotext_writes_the_float_fields_as_floats() -> None:
    unit = ControlNetUnit(enabled=True, weight=1, guidance_start=0, guidance_end=1, processor_res=512, threshold_a=100)
    _, value = unit_infotext(0, unit) or ("", "")
    assert "Weight: 1.0, " in value and "Guidance Start: 0.0, Guidance End: 1.0, " in value
    assert "Processor Res: 512, Threshold A: 100, Threshold B: -1, " in value


def test_a_value_with_a_comma_or_colon_writes_no_line() -> None:
    unit = ControlNetUnit(enabled=True, model="a, b")
    assert unit_infotext(0, unit) is None
    assert unit_infotext(0, ControlNetUnit(enabled=True), "C:/models/x") is None


def test_infotext_numbers_only_the_enabled_units() -> None:
    units = [
        ControlNetUnit(enabled=True, module="canny"),
        ControlNetUnit(enabled=False, module="depth"),
        ControlNetUnit(enabled=True, module="invert"),
    ]
    params = infotext_params(units, ["m0 [00000000]", None, None])
    assert list(params) == ["ControlNet 0", "ControlNet 1"]
    assert params["ControlNet 0"].startswith("Module: canny, Model: m0 [00000000], ")
    assert params["ControlNet 1"].startswith("Module: invert, Model: None, ")


def test_infotext_round_trip_through_the_params_line() -> None:
    unit = parse_unit(
        {
            "enabled": True,
            "module": "canny",
            "model": "control_v11p_sd15_canny [d14c016b]",
            "weight": 0.35,
            "resize_mode": "Resize and Fill",
            "processor_res": 768,
            "threshold_a": 50,
            "threshold_b": 150.5,
            "guidance_start": 0.1,
            "guidance_end": 0.85,
            "pixel_perfect": True,
            "control_mode": "ControlNet is more important",
        }
    )
    entry = unit_infotext(0, unit)
    assert entry is not None
    text = build_infotext("a cat", "", {"Steps": 20, "Sampler": "Euler a", entry[0]: entry[1]})
    pasted = parse_infotext(text)["ControlNet 0"]
    assert isinstance(pasted, str)
    fields = parse_unit_infotext(pasted)
    assert fields == {
        "enabled": True,
        "module": "canny",
        "model": "control_v11p_sd15_canny [d14c016b]",
        "weight": 0.35,
        "resize_mode": "Resize and Fill",
        "processor_res": 768,
        "threshold_a": 50.0,
        "threshold_b": 150.5,
        "guidance_start": 0.1,
        "guidance_end": 0.85,
        "pixel_perfect": True,
        "control_mode": "ControlNet is more important",
    }
    restored = unit_from_infotext(pasted)
    assert dataclasses.replace(restored, source="") == dataclasses.replace(unit, source="")
    assert {f: getattr(restored, f) for f in INFOTEXT_FIELDS} == {f: getattr(unit, f) for f in INFOTEXT_FIELDS}


def test_parse_reads_the_quoted_value_and_the_pre_2024_line() -> None:
    assert parse_unit_infotext(f'"{CANNY_LINE}"')["threshold_b"] == 200
    old = (
        "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, Resize Mode: Crop and Resize, "
        "Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, "
        "Control Mode: My prompt is more important, Hr Option: Low res only, Save Detected Map: True"
    )
    unit = unit_from_infotext(old)
    assert (unit.enabled, unit.module, unit.weight, unit.pixel_perfect) == (True, "depth_midas", 1.0, True)
    assert (unit.control_mode, unit.hr_option, unit.processor_res) == (
        "My prompt is more important",
        "Low res only",
        512,
    )
    assert (unit.threshold_a, unit.threshold_b) == (-1, -1)
    # As A1111 1.6-era images carry it (thresholds shown, ints where the unit held ints).
    v16 = (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: Just Resize, "
        "Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, "
        "Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced"
    )
    unit = unit_from_infotext(v16)
    assert (unit.resize_mode, unit.threshold_a, unit.threshold_b, unit.guidance_end) == ("Just Resize", 100, 200, 1)
    with pytest.raises(ValidationError, match="is not 'Key: value'"):
        parse_unit_infotext("Module canny, Weight: 1")


# -- preprocessor defaults ---------------------------------------------------------------------


def test_slider_defaults_replace_out_of_range_values_only_for_enabled_units() -> None:
    base = ControlNetUnit(enabled=True, module="canny", processor_res=-1, threshold_a=300, threshold_b=50)
    unit = apply_preprocessor_defaults(base, CANNY)
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 100, 50)
    disabled = dataclasses.replace(base, enabled=False)
    assert apply_preprocessor_defaults(disabled, CANNY) is disabled
    # Hidden thresholds range 0..1 with default 0.5; a hidden resolution keeps the value.
    none = PreprocessorInfo("none", resolution=None)
    unit = apply_preprocessor_defaults(ControlNetUnit(enabled=True, threshold_a=64, threshold_b=0.25), none)
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (-1, 0.5, 0.25)


def test_preprocessor_info_from_and_to_module_detail() -> None:
    detail = {
        "model_free": False,
        "sliders": [
            {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    info = PreprocessorInfo.from_detail("canny", detail, tags=("Canny",))
    assert info == CANNY
    assert info.module_detail() == detail
    invert = PreprocessorInfo.from_detail("invert", {"model_free": False, "sliders": []}, label="invert (x)")
    assert (invert.resolution, invert.slider_1, invert.display_name) == (None, None, "invert (x)")
    blur = PreprocessorInfo.from_detail(
        "blur", {"model_free": True, "sliders": [{"name": "Sigma", "value": 9.0, "min": 0.01, "max": 64.0}]}
    )
    assert blur.resolution is None and blur.slider_1 == Slider("Sigma", 9.0, 0.01, 64.0, 0.01)


# -- control types -----------------------------------------------------------------------------


def test_control_types_as_the_extension_filters_them() -> None:
    preprocessors = [
        PreprocessorInfo("none", tags=("InstructP2P",)),
        PreprocessorInfo("canny", tags=("Canny",)),
        PreprocessorInfo("invert", label="invert (from white bg & black line)", tags=("Canny", "Lineart")),
        PreprocessorInfo("tile_resample", tags=("Tile",)),
    ]
    models = [
        "control_sd15_canny [fef5e48e]",
        "control_v11p_sd15_canny [d14c016b]",
        "control_v11f1e_sd15_tile [a371b31b]",
        "t2iadapter_canny_sd15v2 [cecc6046]",
        "controlnet_blur_xl [00000000]",
        "controlnet-union-sdxl [11111111]",
    ]
    types = control_types(preprocessors, models)
    assert list(types) == ["All", "Canny", "InstructP2P", "Lineart", "Tile"]
    assert types["All"] == {
        "module_list": ["none", "canny", "invert (from white bg & black line)", "tile_resample"],
        "model_list": ["None", *models],
        "default_option": "none",
        "default_model": "None",
    }
    assert types["Canny"] == {
        "module_list": ["none", "canny", "invert (from white bg & black line)"],
        "model_list": [
            "None",
            "control_sd15_canny [fef5e48e]",
            "control_v11p_sd15_canny [d14c016b]",
            "t2iadapter_canny_sd15v2 [cecc6046]",
            "controlnet-union-sdxl [11111111]",
        ],
        "default_option": "canny",
        "default_model": "control_v11p_sd15_canny [d14c016b]",  # a "11" model wins
    }
    assert types["Tile"]["model_list"] == [
        "None",
        "control_v11f1e_sd15_tile [a371b31b]",
        "controlnet_blur_xl [00000000]",
        "controlnet-union-sdxl [11111111]",
    ]
    assert types["InstructP2P"] == {
        "module_list": ["none"],
        "model_list": ["None"],
        "default_option": "none",
        "default_model": "None",
    }
