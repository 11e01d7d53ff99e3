"""img2img's 📎 `#interrogate` and 📦 `#deepbooru`: after 📋 in the prompt row's tools (A1111's
order), filling the prompt box with the interrogation of the current sub-tab's image (a job on
the worker), a `gr.Error` naming the file when the weights are missing, and on the Batch sub-tab
captions written for the input directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.app import build_services
from modules.core.settings import parse_settings
from modules.engine.interrogation import Interrogator
from modules.services import Services
from modules.ui.img2img import Img2ImgTab, build_img2img_tab
from modules.ui.img2img_modes import BATCH, IMG2IMG, INPAINT
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.interrogate.conftest import Weights, copy_weights

TAGS = "1girl, back\\\\slash, hat \\(object\\), long hair, smile, solo"
IMAGE = Image.new("RGB", (40, 30), (90, 90, 200))


def _services(data: Path) -> Services:
    services = build_services(parse_settings(["--data-dir", str(data)], {}), data, {})
    assert isinstance(services.engine.interrogator, Interrogator)  # the composition root wires it
    return services


@pytest.fixture(scope="module")
def services(weights: Weights, module_tmp: ModuleTempDirs) -> Iterator[Services]:
    built = _services(copy_weights(weights, module_tmp.mktemp("ui-data"), "torch_deepdanbooru"))
    yield built
    built.worker.shutdown()


def _tab(services: Services) -> tuple[gr.Blocks, Img2ImgTab]:
    with gr.Blocks() as blocks, gr.Tab("img2img"):
        tab = build_img2img_tab(services)
    return blocks, tab


def _click(blocks: gr.Blocks, button: gr.Button) -> tuple[Callable[[dict[Any, Any]], Any], list[Any]]:
    found = [fn for fn in blocks.fns.values() if any(t[0] == button._id for t in fn.targets)]
    assert len(found) == 1 and found[0].fn is not None and found[0].inputs_as_dict
    return found[0].fn, list(found[0].inputs)


def _data(tab: Img2ImgTab, inputs: list[Any], **values: Any) -> dict[Any, Any]:
    by_name = {
        "mode": tab.mode,
        "init_image": tab.init_image,
        "sketch": tab.sketch,
        "inpaint_editor": tab.inpaint_editor,
        "inpaint_sketch": tab.inpaint_sketch,
        "batch_input_dir": tab.batch_fields["batch_input_dir"],
        "batch_output_dir": tab.batch_fields["batch_output_dir"],
    }
    data = {component: None for component in inputs}
    data[tab.mode] = IMG2IMG
    data[tab.batch_fields["batch_input_dir"]] = ""
    data[tab.batch_fields["batch_output_dir"]] = ""
    for name, value in values.items():
        data[by_name[name]] = value
    return data


def test_the_buttons_follow_the_styles_button_with_a1111s_ids(services: Services) -> None:
    _, tab = _tab(services)
    assert tab.interrogate is not None
    clip, deepbooru = tab.interrogate.clip, tab.interrogate.deepbooru
    assert (clip.elem_id, clip.value, deepbooru.elem_id, deepbooru.value) == ("interrogate", "📎", "deepbooru", "📦")
    tools = tab.row.style_apply.parent
    assert tools is not None and tools.elem_id == "img2img_tools"
    assert tools.children[-3:] == [tab.row.style_apply, clip, deepbooru]
    assert tools.parent is not None and tools.parent.elem_id == "img2img_actions_column"
    assert tools in tools.parent.children


def test_deepbooru_fills_the_prompt_with_the_current_subtabs_image(services: Services) -> None:
    blocks, tab = _tab(services)
    assert tab.interrogate is not None
    run, inputs = _click(blocks, tab.interrogate.deepbooru)
    assert tab.row.prompt not in inputs
    assert run(_data(tab, inputs, init_image=IMAGE)) == TAGS
    inpaint = {"background": IMAGE, "layers": [], "composite": IMAGE}
    assert run(_data(tab, inputs, mode=INPAINT, inpaint_editor=inpaint)) == TAGS
    with pytest.raises(gr.Error, match="no image"):
        run(_data(tab, inputs))


def test_missing_weights_are_a_gr_error_naming_the_file(services: Services) -> None:
    blocks, tab = _tab(services)
    assert tab.interrogate is not None
    run, inputs = _click(blocks, tab.interrogate.clip)
    with pytest.raises(gr.Error, match=r"model_base_caption_capfilt_large\.pth"):
        run(_data(tab, inputs, init_image=IMAGE))


def test_batch_writes_a_caption_per_image(services: Services) -> None:
    folder = services.paths.data_dir / "batch-in"
    folder.mkdir()
    IMAGE.save(folder / "a.png")
    IMAGE.save(folder / "b.png")
    blocks, tab = _tab(services)
    assert tab.interrogate is not None
    run, inputs = _click(blocks, tab.interrogate.deepbooru)
    result = run(_data(tab, inputs, mode=BATCH, batch_input_dir="batch-in", batch_output_dir="batch-out"))
    assert result == gr.update()
    out = services.paths.data_dir / "batch-out"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_text(encoding="utf-8") == TAGS
    with pytest.raises(gr.Error, match="only folders inside"):
        run(_data(tab, inputs, mode=BATCH, batch_input_dir="/etc", batch_output_dir=""))
