"""The hires fix and refiner controls of txt2img/img2img without a browser: their choices (A1111's
upscaler list, "Use same ..." first), the rows the options show, the 🔄 refresh, and paste of the
infotext keys `Hires checkpoint`, `Hires sampler`, `Hires schedule type`, `Hires prompt`,
`Hires negative prompt`, `Refiner`, `Refiner switch at` into them (and into the API's fields)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from modules.api.schemas_generation import Img2ImgPayload, Txt2ImgPayload
from modules.api.schemas_generation import infotext_values as api_infotext_values
from modules.app import build_services
from modules.core.infotext import parse_infotext
from modules.core.settings import parse_settings
from modules.services import Services
from modules.ui.img2img import build_img2img_tab
from modules.ui.paste import infotext_values, parse_for_paste, paste_fields
from modules.ui.refiner import refiner_request_values, refresh_checkpoint_choices
from modules.ui.txt2img import (
    LATENT_UPSCALERS,
    build_txt2img_tab,
    hr_scheduler_choices,
    hr_upscaler_choices,
    show_row_unless,
)

HIRES_AND_REFINER = (
    "a cat\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 64x64, "
    "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Lanczos, Hires checkpoint: sd2 [{short}], "
    'Hires sampler: Euler a, Hires schedule type: Karras, Hires prompt: "a cat, sharp", '
    "Hires negative prompt: soft, Refiner: sd2 [{short}], Refiner switch at: 0.65"
)
PLAIN = "a cat\nSteps: 20, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64"


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    """Services over a data dir with two (hashed) checkpoint files and one ESRGAN model file."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        checkpoints = data / "models" / "Stable-diffusion"
        checkpoints.mkdir(parents=True)
        for name in ("sd1", "sd2"):
            (checkpoints / f"{name}.safetensors").write_bytes(name.encode() * 64)
        built = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
        built.paths.esrgan_dir.mkdir(parents=True, exist_ok=True)
        (built.paths.esrgan_dir / "4x_TestSharp.pth").write_bytes(b"not read")
        built.registry.refresh()
        built.upscalers.refresh()
        for info in built.registry.checkpoints():
            built.registry.ensure_hash(info)
        yield built
        built.worker.shutdown()


def _title(services: Services, name: str) -> str:
    return services.registry.find_checkpoint(name).title


def _short(services: Services) -> str:
    return _title(services, "sd2.safetensors").rsplit("[", 1)[1].rstrip("]")


def _tabs(services: Services) -> tuple[Any, Any]:
    with gr.Blocks():
        with gr.Tab("txt2img"):
            txt2img = build_txt2img_tab(services)
        with gr.Tab("img2img"):
            img2img = build_img2img_tab(services)
    return txt2img, img2img


def test_the_choices_are_a1111s(services: Services) -> None:
    upscalers = hr_upscaler_choices(services)
    assert upscalers[:9] == [*LATENT_UPSCALERS, "None", "Lanczos", "Nearest"]
    assert "4x_TestSharp" in upscalers[9:]  # the server's model upscalers, as Extras lists them
    txt2img, img2img = _tabs(services)
    fields = txt2img.fields
    titles = [_title(services, "sd1.safetensors"), _title(services, "sd2.safetensors")]
    assert fields["hr_upscaler"].choices[: len(upscalers)] == [(u, u) for u in upscalers]
    assert [c[0] for c in fields["hr_checkpoint_name"].choices] == ["Use same checkpoint", *titles]
    assert fields["hr_checkpoint_name"].value == "Use same checkpoint"
    samplers = [c[0] for c in fields["hr_sampler_name"].choices]
    assert samplers[0] == "Use same sampler" and "DPM++ 2M" in samplers and "Euler a" in samplers
    assert fields["hr_sampler_name"].value == "Use same sampler"
    assert hr_scheduler_choices()[:3] == ["Use same scheduler", "Automatic", "Uniform"]
    assert fields["hr_scheduler"].value == "Use same scheduler"
    for tab, prefix in ((txt2img, "txt2img"), (img2img, "img2img")):
        checkpoint, switch_at = tab.fields["refiner_checkpoint"], tab.fields["refiner_switch_at"]
        assert [c[0] for c in checkpoint.choices] == titles and checkpoint.value is None
        assert (switch_at.value, switch_at.minimum, switch_at.maximum, switch_at.step) == (0.8, 0.01, 1.0, 0.01)
        assert tab.fields["enable_refiner"].value is False
        assert tab.fields["enable_refiner"].elem_id == f"{prefix}_enable-checkbox"
        assert (checkpoint.elem_id, switch_at.elem_id) == (f"{prefix}_checkpoint", f"{prefix}_switch_at")


def _hires_rows(blocks: gr.Blocks) -> dict[str, Any]:
    return {str(b.elem_id): b for b in blocks.blocks.values() if getattr(b, "elem_id", None) in ROWS}


ROWS = ("txt2img_hires_fix_row3", "txt2img_hires_fix_row4")


@pytest.mark.parametrize(("show_sampler", "show_prompts"), [(False, False), (True, False), (False, True)])
def test_the_hires_rows_follow_the_options(services: Services, show_sampler: bool, show_prompts: bool) -> None:
    before = {key: services.options.get(key) for key in ("hires_fix_show_sampler", "hires_fix_show_prompts")}
    try:
        services.options.set("hires_fix_show_sampler", show_sampler)
        services.options.set("hires_fix_show_prompts", show_prompts)
        with gr.Blocks() as blocks:
            build_txt2img_tab(services)
        rows = _hires_rows(blocks)
        assert rows[ROWS[0]].visible is show_sampler and rows[ROWS[1]].visible is show_prompts
    finally:
        for key, value in before.items():
            services.options.set(key, value)


def test_a_set_hires_choice_shows_its_row() -> None:
    shown = show_row_unless("Use same sampler")
    assert shown("Euler a") == gr.update(visible=True)
    assert shown("Use same sampler") == gr.skip() and shown(None) == gr.skip()  # nothing changes
    assert show_row_unless("")("sharp") == gr.update(visible=True)
    assert show_row_unless("")("") == gr.skip()


def test_refresh_keeps_the_choice_under_its_title(services: Services) -> None:
    title = _title(services, "sd2.safetensors")
    update = refresh_checkpoint_choices(services, "sd2.safetensors", ("Use same checkpoint",))
    assert update["choices"] == ["Use same checkpoint", _title(services, "sd1.safetensors"), title]
    assert update["value"] == title
    assert refresh_checkpoint_choices(services, "Use same checkpoint", ("Use same checkpoint",))["value"] == (
        "Use same checkpoint"
    )
    assert refresh_checkpoint_choices(services, "gone.safetensors", ("Use same checkpoint",))["value"] == (
        "Use same checkpoint"
    )
    assert refresh_checkpoint_choices(services, "gone.safetensors")["value"] is None


def test_refiner_request_values() -> None:
    assert refiner_request_values(True, "sd2.safetensors", 0.65) == ("sd2.safetensors", 0.65)
    assert refiner_request_values(False, "sd2.safetensors", 0.65) == (None, None)
    assert refiner_request_values(True, None, 0.65) == (None, None)
    assert refiner_request_values(True, "", 0.65) == (None, None)
    assert refiner_request_values(True, "None", 0.65) == (None, None)


def test_infotext_values_of_the_hires_and_refiner_keys(services: Services) -> None:
    values = infotext_values(parse_infotext(HIRES_AND_REFINER.format(short="0123456789")))
    assert values["hr_checkpoint_name"] == "sd2 [0123456789]"
    assert (values["hr_sampler_name"], values["hr_scheduler"]) == ("Euler a", "Karras")
    assert (values["hr_prompt"], values["hr_negative_prompt"]) == ("a cat, sharp", "soft")
    assert (values["refiner_checkpoint"], values["refiner_switch_at"]) == ("sd2 [0123456789]", 0.65)
    assert values["enable_refiner"] is True and values["enable_hr"] is True

    # an infotext without them puts the controls back (as A1111's paste does)
    plain = infotext_values(parse_infotext(PLAIN))
    assert plain["hr_checkpoint_name"] == "Use same checkpoint"
    assert (plain["hr_sampler_name"], plain["hr_scheduler"]) == ("Use same sampler", "Use same scheduler")
    assert (plain["hr_prompt"], plain["hr_negative_prompt"]) == ("", "")
    assert plain["enable_refiner"] is False and "refiner_checkpoint" not in plain and "refiner_switch_at" not in plain

    # the first pass's own sampler or schedule named as the hires one is "Use same ..."
    same = infotext_values(parse_infotext(PLAIN + ", Hires sampler: Euler, Hires schedule type: Karras"))
    assert (same["hr_sampler_name"], same["hr_scheduler"]) == ("Use same sampler", "Use same scheduler")


def test_paste_fills_the_hires_and_refiner_controls(services: Services) -> None:
    txt2img, img2img = _tabs(services)
    text = HIRES_AND_REFINER.format(short=_short(services))
    sd2 = _title(services, "sd2.safetensors")
    parsed = parse_for_paste(services, text)
    assert parsed["Hires checkpoint"] == sd2 and parsed["Refiner"] == sd2  # short title -> dropdown title

    pasted = paste_fields(parsed, txt2img.fields)
    f = txt2img.fields
    assert pasted[f["hr_checkpoint_name"]] == sd2
    assert (pasted[f["hr_sampler_name"]], pasted[f["hr_scheduler"]]) == ("Euler a", "Karras")
    assert (pasted[f["hr_prompt"]], pasted[f["hr_negative_prompt"]]) == ("a cat, sharp", "soft")
    assert pasted[f["hr_upscaler"]] == "Lanczos" and pasted[f["enable_hr"]] is True
    assert (pasted[f["enable_refiner"]], pasted[f["refiner_checkpoint"]], pasted[f["refiner_switch_at"]]) == (
        True,
        sd2,
        0.65,
    )

    g = img2img.fields
    pasted = paste_fields(parsed, g)
    assert (pasted[g["enable_refiner"]], pasted[g["refiner_checkpoint"]], pasted[g["refiner_switch_at"]]) == (
        True,
        sd2,
        0.65,
    )

    # a plain infotext resets them; a checkpoint the server does not have is left as it is
    reset = paste_fields(parse_for_paste(services, PLAIN), f)
    assert reset[f["hr_checkpoint_name"]] == "Use same checkpoint" and reset[f["enable_refiner"]] is False
    assert reset[f["hr_sampler_name"]] == "Use same sampler" and reset[f["hr_prompt"]] == ""
    unknown = paste_fields(parse_for_paste(services, PLAIN + ", Refiner: elsewhere [0000000000]"), f)
    assert unknown[f["enable_refiner"]] is True and f["refiner_checkpoint"] not in unknown


def test_the_api_infotext_reads_the_same_keys() -> None:
    text = HIRES_AND_REFINER.format(short="0123456789")
    txt = api_infotext_values(Txt2ImgPayload(infotext=text))
    assert (txt["hr_checkpoint_name"], txt["hr_sampler_name"], txt["hr_scheduler"]) == (
        "sd2 [0123456789]",
        "Euler a",
        "Karras",
    )
    assert (txt["hr_prompt"], txt["hr_negative_prompt"]) == ("a cat, sharp", "soft")
    assert (txt["refiner_checkpoint"], txt["refiner_switch_at"]) == ("sd2 [0123456789]", 0.65)
    img = api_infotext_values(Img2ImgPayload(infotext=text))
    assert (img["refiner_checkpoint"], img["refiner_switch_at"]) == ("sd2 [0123456789]", 0.65)
    assert "hr_sampler_name" not in img
    # "Use same ..." (what parse_infotext fills in when a key is missing) is no value for the API
    plain = api_infotext_values(Txt2ImgPayload(infotext=PLAIN))
    assert not {"hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "refiner_checkpoint"} & set(plain)
