"""The one field table (modules/core/fields.py): every infotext key mapped once, to a request field
that exists on the requests it applies to or to a built-in option; paste and the API's `infotext`
field both read it; and the declared ignored fields turn into warnings only when set."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modules.api.schemas_generation import INFOTEXT_OVERRIDES, Img2ImgPayload, Txt2ImgPayload
from modules.api.schemas_generation import infotext_values as api_infotext_values
from modules.core.fields import (
    HIRES,
    IGNORED_FIELDS,
    IMG2IMG,
    INFOTEXT_FIELDS,
    TXT2IMG,
    ignored_field_warnings,
    infotext_for_field,
    infotext_for_option,
    option_fields,
    option_for_infotext,
    overrides_from_infotext,
    parse_bool,
    request_fields,
    values_from_infotext,
)
from modules.core.infotext import build_infotext, infotext_key_order, parse_infotext
from modules.core.option_defaults import default_option_infos, unimplemented_options
from modules.core.requests import GenerationRequest, Img2ImgRequest, Txt2ImgRequest, validate_request
from modules.ui.paste import infotext_values as paste_infotext_values

FULL = build_infotext(
    "a cat",
    "blurry",
    {
        "Steps": 31,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 6.5,
        "Image CFG scale": 1.25,
        "Seed": 1234,
        "Size": "640x448",
        "Variation seed": 99,
        "Variation seed strength": 0.3,
        "Seed resize from": "320x256",
        "Denoising strength": 0.45,
        "Clip skip": 2,
        "ENSD": 31337,
        "RNG": "CPU",
        "Hires upscale": 1.5,
        "Hires steps": 7,
        "Hires upscaler": "Latent",
        "Mask blur": 6,
        "Eta": 0.5,
    },
)
EXPECTED = {
    "prompt": "a cat",
    "negative_prompt": "blurry",
    "steps": 31,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
    "cfg_scale": 6.5,
    "image_cfg_scale": 1.25,
    "seed": 1234,
    "width": 640,
    "height": 448,
    "subseed": 99,
    "subseed_strength": 0.3,
    "seed_resize_from_w": 320,
    "seed_resize_from_h": 256,
    "denoising_strength": 0.45,
    "hr_scale": 1.5,
    "hr_second_pass_steps": 7,
    "hr_upscaler": "Latent",
    "mask_blur": 6,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
}


def test_each_infotext_key_is_mapped_once_to_a_field_or_an_option() -> None:
    keys = [entry.key for entry in INFOTEXT_FIELDS]
    assert len(keys) == len(set(keys))
    for entry in INFOTEXT_FIELDS:
        assert (entry.field is None) != (entry.option is None), entry
        assert entry.tabs and entry.tabs <= {TXT2IMG, IMG2IMG, HIRES}, entry


def test_request_fields_exist_on_the_requests_they_apply_to() -> None:
    classes = {TXT2IMG: Txt2ImgRequest, HIRES: Txt2ImgRequest, IMG2IMG: Img2ImgRequest}
    for entry in request_fields():
        for tab in entry.tabs:
            assert entry.field in classes[tab].__dataclass_fields__, (entry.key, tab)


def test_options_exist_and_keys_are_ones_infotext_writes() -> None:
    options = {info.key for info in default_option_infos()}
    assert {entry.option for entry in option_fields()} <= options
    known = set(infotext_key_order()) | {
        "Prompt",
        "Negative prompt",
        "Pad conds v0",
        "Refiner switch by sampling steps",
    }
    for entry in INFOTEXT_FIELDS:
        base = entry.key[:-2] if entry.key.endswith(("-1", "-2")) else entry.key
        assert base in known, entry.key


def test_option_lookups_both_ways() -> None:
    assert option_for_infotext("Clip skip") == "CLIP_stop_at_last_layers"
    assert infotext_for_option("CLIP_stop_at_last_layers") == "Clip skip"
    assert option_for_infotext("Steps") is None and infotext_for_option("samples_format") is None
    assert infotext_for_field("steps") == "Steps" and infotext_for_field("width") == "Size-1"
    assert infotext_for_field("eta") is None
    for entry in option_fields():
        assert entry.option is not None
        assert option_for_infotext(entry.key) == entry.option
        assert infotext_for_option(entry.option) == entry.key


def test_values_from_infotext_parse_types_and_filter_by_tab() -> None:
    parsed = parse_infotext(FULL)
    assert values_from_infotext(parsed) == EXPECTED
    txt2img = values_from_infotext(parsed, (TXT2IMG, HIRES))
    assert "mask_blur" not in txt2img and "image_cfg_scale" not in txt2img and txt2img["hr_scale"] == 1.5
    img2img = values_from_infotext(parsed, (IMG2IMG,))
    assert "hr_scale" not in img2img and img2img["mask_blur"] == 6 and img2img["denoising_strength"] == 0.45
    assert values_from_infotext({"Steps": "many", "Seed": "20.0"}) == {"seed": 20}  # bad text left out


def test_overrides_from_infotext_only_for_the_options_asked() -> None:
    parsed = parse_infotext(FULL)
    assert overrides_from_infotext(parsed, {"CLIP_stop_at_last_layers", "randn_source"}) == {
        "CLIP_stop_at_last_layers": 2,
        "randn_source": "CPU",
    }
    assert overrides_from_infotext(parsed, ()) == {}
    assert parse_bool("True") is True and parse_bool("False") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_paste_and_the_api_read_the_same_table() -> None:
    parsed = parse_infotext(FULL)
    pasted = paste_infotext_values(parsed)
    # paste also sets the UI's own controls: hires fix and "Extra" opened, and (A1111's paste) the
    # hires choices and the refiner the infotext does not name put back to "Use same ..." / off
    assert pasted == {
        **EXPECTED,
        "enable_hr": True,
        "subseed_show": True,
        "hr_checkpoint_name": "Use same checkpoint",
        "hr_sampler_name": "Use same sampler",
        "hr_scheduler": "Use same scheduler",
        "hr_prompt": "",
        "hr_negative_prompt": "",
        "enable_refiner": False,
    }

    txt = api_infotext_values(Txt2ImgPayload(infotext=FULL, steps=3))
    # the fields FULL has (the hires choices it does not name are no values, not "Use same ...")
    expected_txt = {
        e.field: EXPECTED[e.field]
        for e in request_fields((TXT2IMG, HIRES))
        if e.field in EXPECTED and e.field != "steps"
    }
    assert {k: v for k, v in txt.items() if k != "override_settings"} == expected_txt
    assert txt["override_settings"] == {
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
        "randn_source": "CPU",
        # sampler settings the engine acts on (issue 11) come back from an infotext too
        "eta_ancestral": 0.5,
        "refiner_switch_by_sample_steps": False,
        "rho": 0.0,
        "sigma_max": 0.0,
        "sigma_min": 0.0,
        "fp8_storage": "Disable",  # acted on (issue 18): A1111's default for an infotext without "FP8 weight"
    }

    img = api_infotext_values(Img2ImgPayload(infotext=FULL, override_settings={"randn_source": "NV"}))
    assert {k: v for k, v in img.items() if k != "override_settings"} == {
        e.field: EXPECTED[e.field] for e in request_fields((IMG2IMG,)) if e.field in EXPECTED
    }
    assert img["override_settings"]["randn_source"] == "NV"  # the client's own override wins


def test_the_api_never_overrides_models_or_options_nothing_reads_from_an_infotext() -> None:
    assert "sd_model_checkpoint" not in INFOTEXT_OVERRIDES and "sd_vae" not in INFOTEXT_OVERRIDES
    assert not INFOTEXT_OVERRIDES & set(unimplemented_options())
    text = "cat\nSteps: 2, Seed: 1, Model hash: 0123456789, VAE: x.pt, Eta: 0.4, Sigma churn: 2"
    overrides = api_infotext_values(Txt2ImgPayload(infotext=text)).get("override_settings", {})
    assert not {"sd_model_checkpoint", "sd_vae"} & set(overrides)
    assert overrides["eta_ancestral"] == 0.4 and overrides["s_churn"] == 2.0  # acted on since issue 11


# -- accepted but not acted on ------------------------------------------------------------------

IGNORED_VALUES: dict[str, Any] = {
    "firstphase_width": 256,
    "firstphase_height": 256,
    "comments": {"note": "hello"},
    "script_args": (1, 2),
}
ACTED_ON_SINCE_ISSUE_11 = (
    "eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "refiner_checkpoint", "refiner_switch_at",
    "hr_checkpoint_name", "firstpass_image", "latent_mask",
)  # fmt: skip


def _request_for(name: str) -> type[GenerationRequest]:
    if name in Txt2ImgRequest.__dataclass_fields__:
        return Txt2ImgRequest
    return Img2ImgRequest


def test_every_ignored_field_is_declared_once_and_exists_on_a_request() -> None:
    names = [f.field for f in IGNORED_FIELDS]
    assert len(names) == len(set(names)) and set(names) == set(IGNORED_VALUES)
    for name in names:
        assert name in Txt2ImgRequest.__dataclass_fields__ or name in Img2ImgRequest.__dataclass_fields__


@pytest.mark.parametrize("name", sorted(IGNORED_VALUES))
def test_an_ignored_field_that_is_set_is_a_warning(name: str) -> None:
    cls = _request_for(name)
    assert ignored_field_warnings(cls()) == []
    warnings = ignored_field_warnings(cls(**{name: IGNORED_VALUES[name]}))
    assert len(warnings) == 1 and warnings[0].startswith(f"{name}: accepted but not acted on (")


def test_fields_the_engine_acts_on_are_no_warning() -> None:
    names = {f.field for f in IGNORED_FIELDS}
    assert not names & set(ACTED_ON_SINCE_ISSUE_11)
    request = Txt2ImgRequest(eta=0.3, s_churn=1.0, s_noise=1.003, refiner_checkpoint="r", refiner_switch_at=0.8)
    assert ignored_field_warnings(request) == []


def test_defaults_empty_values_and_values_that_change_nothing_are_no_warning() -> None:
    quiet = Txt2ImgRequest(
        eta=1.0,
        s_churn=0,
        s_tmin=0.0,
        s_tmax=0,
        s_noise=1,
        comments={},
        script_args=(),
        alwayson_scripts={},
        refiner_checkpoint="None",
        hr_checkpoint_name="Use same checkpoint",
        firstphase_width=0,
        firstpass_image="",
    )
    assert ignored_field_warnings(quiet) == []


def test_alwayson_scripts_name_each_script_that_is_not_installed() -> None:
    request = Txt2ImgRequest(alwayson_scripts={"ControlNet": {"args": [{}]}, "foo": {"args": []}})
    assert ignored_field_warnings(request) == [
        "alwayson_scripts: script 'ControlNet' is not installed; its args were ignored",
        "alwayson_scripts: script 'foo' is not installed; its args were ignored",
    ]
    assert ignored_field_warnings(request, installed_scripts=("controlnet",)) == [
        "alwayson_scripts: script 'foo' is not installed; its args were ignored"
    ]


def test_validate_request_reports_ignored_fields_and_overrides_nothing_reads() -> None:
    request = Txt2ImgRequest(
        comments={"a": "b"},
        width=100,
        override_settings={"CLIP_stop_at_last_layers": 2, "eta_ddim": 0.5, "enable_quantization": True},
    )
    checked, warnings = validate_request(request)
    assert checked.width == 96
    assert warnings[0].startswith("comments: accepted but not acted on (")
    assert any(
        w.startswith("override_settings: 'enable_quantization' is accepted but not acted on (") for w in warnings
    )
    assert not any("CLIP_stop_at_last_layers" in w or "eta_ddim" in w for w in warnings)
    assert validate_request(Txt2ImgRequest())[1] == []


def test_requests_carry_what_clients_send() -> None:
    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert {"script_args", "alwayson_scripts", "firstpass_image"} <= fields
    assert "hr_checkpoint_name" in Txt2ImgRequest.__dataclass_fields__
    assert "latent_mask" in Img2ImgRequest.__dataclass_fields__
