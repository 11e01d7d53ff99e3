"""The Checkpoint Merger tab's jobs with the real engine: the tab and `python -m modules.merge`
write byte-identical files for the same recipe (block weights, base alpha, a baked LoRA,
float16); the tab's Interrupt stops a running merge (no file); Extract LoRA writes a LoRA the
Lora list shows; the command line's refusals and interrupt (exit codes, no file left)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from modules import merge as merge_cli
from modules.app import build_services
from modules.core.errors import NotFoundError
from modules.core.merge_blocks import layout_of
from modules.core.settings import parse_settings
from modules.models import merge as mg
from modules.models.checkpoint_io import tensor_shapes
from modules.models.loader import Placement, load_single_file
from modules.services import Services
from modules.ui.merger import BLOCK_NAMES, build_merger_tab
from tests.fixtures import lora_files as lf
from tests.fixtures.ldm_checkpoints import write_checkpoint
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.ui.gradio_loop import in_a_loop

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("merge-parity")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    write_checkpoint(sd / "a.safetensors", "sd1", seed=0)
    write_checkpoint(sd / "b.safetensors", "sd1", seed=1)
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    lf.kohya_sd(lora_dir / "style.safetensors", load_single_file(sd / "a.safetensors", Placement()))
    return root


@pytest.fixture(scope="module")
def services(data_dir: Path) -> Iterator[Services]:
    built = build_services(parse_settings(["--data-dir", str(data_dir)], {}), data_dir, {})
    yield built
    built.worker.shutdown()


def _build(services: Services) -> tuple[gr.Blocks, Any]:
    def build() -> tuple[gr.Blocks, Any]:
        with gr.Blocks() as blocks:
            tab = build_merger_tab(services)
        return blocks, tab

    return in_a_loop(build)


def _handler_of(blocks: gr.Blocks, button: Any) -> Any:
    [fn] = [f for f in blocks.fns.values() if any(target[0] == button._id for target in f.targets)]
    return fn


def _run_tab_merge(
    services: Services, values: dict[str, Any], blocks_tab: tuple[gr.Blocks, Any] | None = None
) -> list[str]:
    blocks, tab = blocks_tab or _build(services)
    fn = _handler_of(blocks, tab.merge)
    both = {**tab.fields, **tab.extra}
    data = {both[name]: value for name, value in values.items()}
    assert set(data) == set(fn.inputs)
    assert fn.fn is not None
    return list(fn.fn(data))


def _form(**changes: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "primary_model_name": "a.safetensors",
        "secondary_model_name": "b.safetensors",
        "tertiary_model_name": None,
        "interp_method": mg.WEIGHTED_SUM,
        "multiplier": 0.35,
        "custom_name": "",
        "checkpoint_format": "safetensors",
        "save_as_half": False,
        "config_source": "A, B or C",
        "bake_in_vae": "None",
        "discard_weights": "",
        "save_metadata": True,
        "add_merge_recipe": True,
        "copy_metadata_fields": True,
        "metadata_json": "{}",
        "use_blocks": False,
        "base_alpha": 0.3,
        "bake_loras": "",
        **{f"block_{name}": 0.3 for name in BLOCK_NAMES},
    }
    form.update(changes)
    return form


def test_tab_and_command_line_write_the_same_bytes(services: Services, data_dir: Path, tmp_path: Path) -> None:
    sd = data_dir / "models" / "Stable-diffusion"
    layout = layout_of(tensor_shapes(sd / "a.safetensors"))
    sliders = {f"block_{name}": round(0.05 * (i % 20), 2) for i, name in enumerate(BLOCK_NAMES)}
    form = _form(custom_name="same", save_as_half=True, use_blocks=True, base_alpha=0.15, bake_loras="style:0.7")
    shown = _run_tab_merge(services, {**form, **sliders})
    tab_file = sd / "same.safetensors"
    assert f"Checkpoint saved to {tab_file}" in shown[-1]

    weights = ",".join(f"{sliders['block_' + name]:.6g}" for name in layout.names)
    cli_file = tmp_path / "out" / "same.safetensors"
    code = merge_cli.main(
        [
            str(sd / "a.safetensors"),
            str(sd / "b.safetensors"),
            "--alpha",
            "0.35",
            "--block-weights",
            weights,
            "--base-alpha",
            "0.15",
            "--fp16",
            "--bake-lora",
            f"{data_dir / 'models' / 'Lora' / 'style.safetensors'}:0.7",
            "--out",
            str(cli_file),
            "-q",
        ]
    )
    assert code == 0
    assert cli_file.read_bytes() == tab_file.read_bytes()


def test_command_line_refusals(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = data_dir / "models" / "Stable-diffusion"
    a, b = str(sd / "a.safetensors"), str(sd / "b.safetensors")
    out = str(tmp_path / "x.safetensors")
    cases = [
        ([a, "--out", out], "takes 2 model(s)"),
        ([a, b, "--out", str(tmp_path / "x.bin")], "must end in .safetensors or .ckpt"),
        ([a, str(tmp_path / "missing.safetensors"), "--out", out], "no such file"),
        ([a, b, "--out", out, "--block-weights", "0.5,0.5"], "need 13 values"),
        ([a, b, "--out", out, "--bake-lora", "nope:1"], "no such file"),
        ([a, b, "--out", a], "refusing to overwrite an input"),
    ]
    for argv, message in cases:
        assert merge_cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.safetensors").exists()


def test_command_line_interrupt_leaves_no_file(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = data_dir / "models" / "Stable-diffusion"
    calls = []

    def ctrl_c_midway(quiet: bool) -> Any:
        def progress(done: int, total: int, what: str) -> None:
            calls.append(done)
            if done == total // 2:
                raise KeyboardInterrupt

        return progress

    monkeypatch.setattr(merge_cli, "_progress_printer", ctrl_c_midway)
    out = tmp_path / "stopped.safetensors"
    assert merge_cli.main([str(sd / "a.safetensors"), str(sd / "b.safetensors"), "--out", str(out)]) == 130
    assert "nothing was saved" in capsys.readouterr().err
    assert calls and not any(tmp_path.iterdir())


def test_runs_as_a_module(data_dir: Path, tmp_path: Path) -> None:
    sd = data_dir / "models" / "Stable-diffusion"
    out = tmp_path / "module.safetensors"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modules.merge",
            str(sd / "a.safetensors"),
            str(sd / "b.safetensors"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert f"Checkpoint saved to {out}" in done.stdout and out.is_file()


def test_the_tabs_interrupt_stops_a_running_merge(
    services: Services, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = data_dir / "models" / "Stable-diffusion"
    before = sorted(p.name for p in sd.iterdir())
    blocks, tab = _build(services)
    assert tab.interrupt is not None
    stop = _handler_of(blocks, tab.interrupt)
    assert stop.fn is not None
    real_get = mg.TensorSource.get
    pressed: list[int] = []

    def press_interrupt_while_reading(self: mg.TensorSource, key: str) -> Any:
        if not pressed:
            pressed.append(1)
            job_id = services.engine.current_job_id()
            assert job_id is not None
            deadline = time.monotonic() + 10
            while not _known(services, job_id) and time.monotonic() < deadline:
                time.sleep(0.01)  # the handle is registered just after the job was queued
            stop.fn()  # the Interrupt button, while the merge job reads its first tensor
        return real_get(self, key)

    monkeypatch.setattr(mg.TensorSource, "get", press_interrupt_while_reading)
    shown = _run_tab_merge(services, _form(custom_name="stopped"), (blocks, tab))
    assert pressed and "Interrupted: nothing was saved" in shown[-1]
    assert sorted(p.name for p in sd.iterdir()) == before


def _known(services: Services, job_id: str) -> bool:
    try:
        services.engine.handle(job_id)
    except NotFoundError:
        return False
    return True


def test_the_tabs_interrupt_leaves_a_generation_alone(services: Services) -> None:
    blocks, tab = _build(services)
    stop = _handler_of(blocks, tab.interrupt)
    gate = threading.Event()
    busy = services.engine.submit_call(lambda ctx: gate.wait(10) and not ctx.interrupted, description="txt2img")
    try:
        deadline = time.monotonic() + 10
        while services.engine.current_job_id() != busy.id and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.fn()  # not a merge: nothing happens
    finally:
        gate.set()
    assert busy.result(10) is True


def test_extract_lora_from_the_tab(services: Services, data_dir: Path) -> None:
    blocks, tab = _build(services)
    [fn] = [
        f
        for f in blocks.fns.values()
        if f.inputs_as_dict and tab.result in f.outputs and not any(t[0] == tab.merge._id for t in f.targets)
    ]
    assert fn.fn is not None
    by_id = {component.elem_id: component for component in fn.inputs}
    values = {
        "modelmerger_extract_original": "a.safetensors",
        "modelmerger_extract_tuned": "b.safetensors",
        "modelmerger_extract_name": "from-tab",
        "modelmerger_extract_rank": 4,
        "modelmerger_extract_conv_rank": 2,
        "modelmerger_extract_clamp": 1.0,
        "modelmerger_extract_min_diff": 0.01,
        "modelmerger_extract_save_as_half": True,
    }
    shown = list(fn.fn({by_id[k]: v for k, v in values.items()}))
    target = data_dir / "models" / "Lora" / "from-tab.safetensors"
    assert f"LoRA saved to {target}" in shown[-1] and target.is_file()
    assert "from-tab" in [info.name for info in services.networks.loras()]
    with pytest.raises(gr.Error, match="already exists"):
        list(fn.fn({by_id[k]: v for k, v in values.items()}))
