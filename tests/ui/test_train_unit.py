"""The Train tab without a browser: A1111's elem_ids and defaults; every form control maps to
one field of its request (the LoRA form covers every `LoraTrainRequest` field, the Train form
every `TrainEmbeddingRequest` / `TrainHypernetworkRequest` field with txt2img's preview
controls); bad input is a `gr.Error` with the message; the poll shows progress, the loss and
the samples, stops when the run has ended and then rebuilds that kind's extra-network cards."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.core.errors import UserError
from modules.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    CreateResult,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from modules.engine.interrogation import Interrogator
from modules.ui import train
from modules.ui.train import (
    TrainTab,
    build_train_tab,
    create_hypernetwork_request,
    lora_request,
    loss_frame,
    outcome_text,
    progress_text,
    train_request,
)
from tests.fixtures.interrogate_models import write_deepbooru
from tests.ui.gradio_loop import in_a_loop

# A1111's Train tab ids (a1111-ui/NOTES.md "Train") and the old Preprocess tab's
A1111_IDS = {
    "train_tabs",
    "train_new_embedding_name",
    "train_initialization_text",
    "train_nvpt",
    "train_overwrite_old_embedding",
    "train_create_embedding",
    "train_new_hypernetwork_name",
    "train_new_hypernetwork_sizes",
    "train_new_hypernetwork_layer_structure",
    "train_new_hypernetwork_activation_func",
    "train_new_hypernetwork_initialization_option",
    "train_new_hypernetwork_add_layer_norm",
    "train_new_hypernetwork_use_dropout",
    "train_overwrite_old_hypernetwork",
    "train_create_hypernetwork",
    "train_embedding",
    "refresh_train_embedding_name",
    "train_hypernetwork",
    "refresh_train_hypernetwork_name",
    "train_embedding_learn_rate",
    "train_hypernetwork_learn_rate",
    "train_batch_size",
    "train_gradient_step",
    "train_dataset_directory",
    "train_log_directory",
    "train_template_file",
    "refrsh_train_template_file",
    "train_training_width",
    "train_training_height",
    "train_varsize",
    "train_steps",
    "train_create_image_every",
    "train_save_embedding_every",
    "use_weight",
    "train_save_image_with_stored_embedding",
    "train_preview_from_txt2img",
    "train_shuffle_tags",
    "train_tag_drop_out",
    "train_latent_sampling_method",
    "train_train_embedding",
    "train_interrupt_training",
    "train_train_hypernetwork",
    "ti_output",
    "ti_gallery",
    "ti_progress",
    "ti_error",
    "train_process_src",
    "train_process_dst",
    "train_process_width",
    "train_process_height",
    "train_preprocess_txt_action",
    "train_process_flip",
    "train_process_split",
    "train_process_caption",
    "train_process_caption_deepbooru",
    "train_process_split_threshold",
    "train_process_overlap_ratio",
    "train_run_preprocess",
    "train_interrupt_preprocessing",
}


class FakeHandle:
    def __init__(self, job_id: str, *, done: bool = False, running: bool = False) -> None:
        self.id = job_id
        self._done = done
        self._running = running

    def done(self) -> bool:
        return self._done

    def is_running(self) -> bool:
        return self._running


class FakeEngine:
    def __init__(self) -> None:
        self.submitted: list[Any] = []
        self.status: dict[str, Any] | None = None
        self.handles: dict[str, FakeHandle] = {}
        self.interrupted: list[str | None] = []
        self.refuse: str | None = None
        self.calls: list[str] = []
        self.interrogator: Interrogator | None = None

    def embeddings(self) -> Any:
        return SimpleNamespace(loaded={"emb_b": 1, "emb_a": 2})

    def submit(self, request: Any) -> FakeHandle:
        if self.refuse:
            raise UserError(self.refuse)
        self.submitted.append(request)
        handle = self.handles[f"task({len(self.submitted)})"] = FakeHandle(f"task({len(self.submitted)})")
        return handle

    def handle(self, job_id: str) -> FakeHandle:
        return self.handles[job_id]

    def training_status(self, job_id: str | None = None) -> dict[str, Any] | None:
        return self.status

    def interrupt(self, job_id: str | None = None) -> None:
        self.interrupted.append(job_id)

    def submit_call(self, fn: Callable[[Any], Any], description: str = "script") -> Any:
        """Runs `fn` at once (a finished job)."""
        future: Future[Any] = Future()
        try:
            future.set_result(fn(SimpleNamespace(interrupted=False)))
        except Exception as exc:
            future.set_exception(exc)
        self.calls.append(description)
        return SimpleNamespace(id="task(call)", future=future, result=future.result)

    def create_embedding(self, request: CreateEmbeddingRequest) -> CreateResult:
        self.submitted.append(request)
        return CreateResult("embedding", request.name, f"/data/embeddings/{request.name}.pt")

    def create_hypernetwork(self, request: CreateHypernetworkRequest) -> CreateResult:
        self.submitted.append(request)
        return CreateResult("hypernetwork", request.name, f"/data/hypernetworks/{request.name}.pt")


@pytest.fixture()
def services(tmp_path: Path) -> Any:
    networks = SimpleNamespace(hypernetworks=lambda: [SimpleNamespace(name="hn")], refresh=lambda kind=None: None)
    paths = SimpleNamespace(data_dir=tmp_path, outputs_dir=tmp_path / "outputs")
    engine = FakeEngine()
    models = tmp_path / "models"
    engine.interrogator = Interrogator(
        blip_dir=models / "BLIP",
        clip_dir=models / "CLIP",
        deepbooru_dirs=(models / "torch_deepdanbooru",),
        category_dirs=(),
    )
    return SimpleNamespace(engine=engine, networks=networks, paths=paths, options=None)


def build(services: Any, *, with_other_tabs: bool = False) -> tuple[gr.Blocks, TrainTab]:
    """The tab in a page; with txt2img's preview controls and the cards built before it."""

    def make() -> tuple[gr.Blocks, TrainTab]:
        with gr.Blocks() as blocks:
            if with_other_tabs:
                gr.Textbox("a txt2img prompt", elem_id="txt2img_prompt")
                gr.Textbox("ugly", elem_id="txt2img_neg_prompt")
                gr.Slider(1, 150, value=28, elem_id="txt2img_steps")
                gr.Dropdown(["Euler a", "DDIM"], value="DDIM", elem_id="txt2img_sampling")
                gr.Slider(1, 30, value=5.5, elem_id="txt2img_cfg_scale")
                gr.Number(1234, elem_id="txt2img_seed")
                gr.Slider(64, 2048, value=640, elem_id="txt2img_width")
                gr.Slider(64, 2048, value=448, elem_id="txt2img_height")
                for prefix in ("txt2img", "img2img"):
                    for page in ("lora", "textual_inversion", "hypernetworks"):
                        gr.HTML("", elem_id=f"{prefix}_{page}_cards_html")
            tab = build_train_tab(services)
        return blocks, tab

    return in_a_loop(make)


def elem_ids(blocks: gr.Blocks) -> set[str]:
    return {str(c.elem_id) for c in blocks.blocks.values() if getattr(c, "elem_id", None)}


def defaults(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: component.value for name, component in fields.items()}


def handler(blocks: gr.Blocks, component: Any, event: str) -> Any:
    [fn] = [f for f in blocks.fns.values() if (component._id, event) in f.targets]
    return fn


def then(blocks: gr.Blocks, fn: Any) -> Any:
    """The event that runs after `fn` succeeded."""
    [after] = [f for f in blocks.fns.values() if f.trigger_after == fn._id]
    assert after.trigger_only_on_success
    return after


def call(fn: Any, fields: dict[str, Any], values: dict[str, Any]) -> Any:
    """Call a handler that takes its inputs as one {component: value} dict."""
    return fn.fn({fields[name]: value for name, value in values.items()})


# -- layout -----------------------------------------------------------------------------------------


def test_a1111_ids_our_sub_tabs_and_the_lora_buttons(services: Any) -> None:
    blocks, tab = build(services)
    ids = elem_ids(blocks)
    assert ids >= A1111_IDS, sorted(A1111_IDS - ids)
    assert {"train_lora_train", "train_lora_interrupt", "ti_loss_plot"} <= ids
    assert [t.label for t in tab.tabs.children] == [
        "Create embedding",
        "Create hypernetwork",
        "Preprocess images",
        "Train",
        "Train LoRA",
    ]
    for name, component in tab.lora_fields.items():
        assert component.elem_id == f"train_lora_{name}"
    # the dropdowns list the embeddings and hypernetworks there are
    assert [c[0] for c in tab.embedding.choices] == ["emb_a", "emb_b"]
    assert [c[0] for c in tab.hypernetwork.choices] == ["hn"]
    assert tab.timer.active is False


def test_a1111_defaults(services: Any) -> None:
    _, tab = build(services)
    e, h, t = tab.create_embedding_fields, tab.create_hypernetwork_fields, tab.train_fields
    assert (e["init_text"].value, e["num_vectors_per_token"].value, e["overwrite_old"].value) == ("*", 1, False)
    assert h["enable_sizes"].value == ["768", "320", "640", "1280"]
    assert [c[0] for c in h["enable_sizes"].choices] == ["768", "1024", "320", "640", "1280"]
    assert (h["layer_structure"].value, h["activation_func"].value, h["weight_init"].value) == (
        "1, 2, 1",
        "linear",
        "Normal",
    )
    assert h["dropout_structure"].value == "0, 0, 0"
    assert (t["embedding_learn_rate"].value, t["hypernetwork_learn_rate"].value) == ("0.005", "0.00001")
    assert (t["steps"].value, t["create_image_every"].value, t["save_embedding_every"].value) == (100000, 500, 500)
    assert (t["log_directory"].value, t["latent_sampling_method"].value) == ("textual_inversion", "once")
    assert t["save_image_with_stored_embedding"].value is True
    assert t["template_filename"].value == "style_filewords.txt"  # the bundled templates
    assert {"hypernetwork.txt", "subject_filewords.txt"} <= {c[0] for c in t["template_filename"].choices}
    p = tab.preprocess_fields
    assert (p["width"].value, p["height"].value, p["existing_caption"].value) == (512, 512, "ignore")
    assert (p["split_threshold"].value, p["overlap_ratio"].value) == (0.5, 0.2)


def test_missing_caption_weights_disable_the_boxes_with_a_note(services: Any) -> None:
    write_deepbooru(services.paths.data_dir / "models")  # DeepBooru there, BLIP not
    blocks, tab = build(services)
    assert tab.preprocess_fields["caption_blip"].interactive is False
    assert tab.preprocess_fields["caption_deepbooru"].interactive is not False
    [note] = [c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == "train_process_caption_note"]
    assert "model_base_caption_capfilt_large.pth" in note.value and note.visible
    assert "DeepBooru" not in note.value


# -- form -> request ------------------------------------------------------------------------------------

LORA_ALTERNATIVES: dict[str, Any] = {
    "name": "mine",
    "data_root": "/data/set",
    "output_dir": "/data/out",
    "caption_extension": ".caption",
    "learning_rate": "3e-4",
    "unet_lr": "0.0002",
    "text_encoder_lr": "5e-5",
    "sample_prompt": "a cat",
    "sample_negative_prompt": "blurry",
    "comment": "hello",
    "caption_dropout_rate": 0.25,
    "sample_sampler_name": "DDIM",
}
LORA_SPLIT = {"resolution_width": "resolution", "resolution_height": "resolution"}


def _other_value(name: str, component: Any) -> Any:
    if name in LORA_ALTERNATIVES:
        return LORA_ALTERNATIVES[name]
    if isinstance(component, gr.Checkbox):
        return not component.value
    if isinstance(component, gr.Dropdown):
        return next(c[1] for c in component.choices if c[1] != component.value)
    if isinstance(component, gr.Number):
        return (component.value or 0) + 2
    raise AssertionError(f"no other value for {name}")


def test_every_lora_request_field_has_a_control_and_every_control_its_field(services: Any) -> None:
    _, tab = build(services)
    fields = tab.lora_fields
    covered = {LORA_SPLIT.get(name, name) for name in fields}
    assert covered == {f.name for f in dataclasses.fields(LoraTrainRequest)}

    base = defaults(fields) | {"name": "base", "data_root": "/data/base"}
    request = lora_request(base)
    # the form shows kohya's defaults (the request's)
    assert request == LoraTrainRequest(name="base", data_root="/data/base")
    for name, component in fields.items():
        changed = lora_request(base | {name: _other_value(name, component)})
        differing = {f.name for f in dataclasses.fields(LoraTrainRequest)} - {
            f.name for f in dataclasses.fields(LoraTrainRequest) if getattr(changed, f.name) == getattr(request, f.name)
        }
        assert differing == {LORA_SPLIT.get(name, name)}, name


def test_lora_form_values_are_converted() -> None:
    values = {
        "resolution_width": 768.0,
        "resolution_height": 512,
        "unet_lr": "",
        "text_encoder_lr": " 1e-5 ",
        "max_train_epochs": 0,
        "min_snr_gamma": 5,
        "learning_rate": "1e-4",
    }
    base = {
        f.name: getattr(LoraTrainRequest(name="x", data_root="d"), f.name) for f in dataclasses.fields(LoraTrainRequest)
    }
    base.pop("resolution")
    base |= {"unet_lr": "", "text_encoder_lr": "", "max_train_epochs": 0, "min_snr_gamma": 0, "learning_rate": "1e-4"}
    request = lora_request(base | values)
    assert request.resolution == (768, 512)
    assert request.unet_lr is None and request.text_encoder_lr == 1e-5
    assert request.max_train_epochs is None and request.min_snr_gamma == 5.0
    assert lora_request(base | values | {"max_train_epochs": 3}).max_train_epochs == 3
    with pytest.raises(UserError, match="Learning rate: expected a number"):
        lora_request(base | values | {"learning_rate": "fast"})
    with pytest.raises(UserError, match=r"LoRA max steps|Max steps: please enter a number"):
        lora_request(base | values | {"max_train_steps": None})
    with pytest.raises(UserError, match="whole number"):
        lora_request(base | values | {"network_dim": 2.5})


TRAIN_ALTERNATIVES: dict[str, Any] = {
    "embedding_name": "other",
    "hypernetwork_name": "other",
    "embedding_learn_rate": "0.01",
    "hypernetwork_learn_rate": "0.001",
    "batch_size": 2,
    "gradient_step": 3,
    "data_root": "/e",
    "log_directory": "logs",
    "template_filename": "subject.txt",
    "training_width": 256,
    "training_height": 320,
    "varsize": True,
    "steps": 50,
    "clip_grad_mode": "norm",
    "clip_grad_value": "0.5",
    "shuffle_tags": True,
    "tag_drop_out": 0.3,
    "latent_sampling_method": "random",
    "use_weight": True,
    "create_image_every": 7,
    "save_embedding_every": 9,
    "save_image_with_stored_embedding": False,
    "preview_from_txt2img": True,
    "preview_prompt": "p",
    "preview_negative_prompt": "n",
    "preview_steps": 3,
    "preview_sampler_name": "Euler a",
    "preview_cfg_scale": 9.0,
    "preview_seed": 5,
    "preview_width": 256,
    "preview_height": 320,
}


def test_every_train_request_field_has_a_control(services: Any) -> None:
    _, tab = build(services, with_other_tabs=True)
    values = defaults(tab.train_fields) | {"embedding_name": "emb_a", "hypernetwork_name": "hn", "data_root": "/d"}
    values["template_filename"] = "style_filewords.txt"
    embedding = train_request("embedding", values)
    hypernetwork = train_request("hypernetwork", values)
    assert isinstance(embedding, TrainEmbeddingRequest) and isinstance(hypernetwork, TrainHypernetworkRequest)
    # A1111's defaults, and txt2img's controls as the preview parameters
    previews = {
        "preview_prompt": "a txt2img prompt",
        "preview_negative_prompt": "ugly",
        "preview_steps": 28,
        "preview_sampler_name": "DDIM",
        "preview_cfg_scale": 5.5,
        "preview_seed": 1234,
        "preview_width": 640,
        "preview_height": 448,
    }
    assert embedding == TrainEmbeddingRequest(embedding_name="emb_a", data_root="/d", **previews)
    assert hypernetwork == TrainHypernetworkRequest(hypernetwork_name="hn", data_root="/d", **previews)
    # every field of each request comes from a control: change each control, its field changes
    names = {
        "embedding": {f.name for f in dataclasses.fields(TrainEmbeddingRequest)},
        "hypernetwork": {f.name for f in dataclasses.fields(TrainHypernetworkRequest)},
    }
    form_to_field = {
        "embedding_learn_rate": "learn_rate",
        "hypernetwork_learn_rate": "learn_rate",
        "save_embedding_every": None,  # save_embedding_every / save_hypernetwork_every
    }
    reached: dict[str, set[str]] = {"embedding": set(), "hypernetwork": set()}
    assert set(tab.train_fields) == set(TRAIN_ALTERNATIVES)
    for name, other in TRAIN_ALTERNATIVES.items():
        for kind in reached:
            before = train_request(kind, values)
            after = train_request(kind, values | {name: other})
            changed = {f for f in names[kind] if getattr(before, f) != getattr(after, f)}
            reached[kind] |= changed
            assert len(changed) <= 1, (name, kind, changed)
            target = form_to_field.get(name, name)
            if changed and target is not None:
                assert changed == {target}, (name, changed)
    assert reached["embedding"] == names["embedding"]
    assert reached["hypernetwork"] == names["hypernetwork"]


def test_create_forms_to_requests() -> None:
    request = create_hypernetwork_request(
        name=" hn ",
        enable_sizes=["768", "1280"],
        layer_structure="1, 1.5, 1",
        activation_func="relu",
        weight_init="XavierNormal",
        add_layer_norm=True,
        use_dropout=True,
        dropout_structure="0, 0.05, 0",
        overwrite_old=True,
    )
    assert request == CreateHypernetworkRequest(
        name="hn",
        enable_sizes=(768, 1280),
        overwrite_old=True,
        layer_structure=(1.0, 1.5, 1.0),
        activation_func="relu",
        weight_init="XavierNormal",
        add_layer_norm=True,
        use_dropout=True,
        dropout_structure=(0.0, 0.05, 0.0),
    )
    no_dropout = dataclasses.replace(request, use_dropout=False, dropout_structure=None)
    kwargs = dict(
        name="hn",
        enable_sizes=["768", "1280"],
        layer_structure="1, 1.5, 1",
        activation_func="relu",
        weight_init="XavierNormal",
        add_layer_norm=True,
        overwrite_old=True,
    )
    assert create_hypernetwork_request(**kwargs, use_dropout=False, dropout_structure="0, 0.05, 0") == no_dropout
    with pytest.raises(UserError, match="layer structure"):
        create_hypernetwork_request(
            **kwargs | {"layer_structure": "1, two, 1"}, use_dropout=False, dropout_structure=""
        )


# -- events -------------------------------------------------------------------------------------------


def test_create_embedding_says_where_and_lists_it(services: Any) -> None:
    blocks, tab = build(services)
    fn = handler(blocks, _button(blocks, "train_create_embedding"), "click")
    out = call(
        fn,
        tab.create_embedding_fields,
        {"name": "new", "init_text": "cat", "num_vectors_per_token": 3, "overwrite_old": False},
    )
    assert services.engine.submitted == [CreateEmbeddingRequest(name="new", num_vectors_per_token=3, init_text="cat")]
    assert out == ["Created: /data/embeddings/new.pt", ""]
    assert fn.outputs == [tab.output, tab.error]  # an error marks only these
    listed = then(blocks, fn)
    assert listed.fn()[0]["choices"] == ["emb_a", "emb_b"]
    assert listed.outputs == [tab.embedding]

    fn = handler(blocks, _button(blocks, "train_create_hypernetwork"), "click")
    values = defaults(tab.create_hypernetwork_fields) | {"name": "h2", "layer_structure": "1, x"}
    with pytest.raises(gr.Error, match="expected numbers separated by commas"):
        call(fn, tab.create_hypernetwork_fields, values)


def _button(blocks: gr.Blocks, elem_id: str) -> Any:
    [button] = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return button


def test_train_lora_submits_and_starts_polling_or_says_what_is_wrong(services: Any) -> None:
    (services.paths.data_dir / "set").mkdir()
    blocks, tab = build(services)
    fn = handler(blocks, _button(blocks, "train_lora_train"), "click")
    values = defaults(tab.lora_fields) | {"name": "mine", "data_root": "set"}
    services.engine.status = {"kind": "lora", "name": "mine", "state": "running", "step": 0, "max_steps": 0}
    out = call(fn, tab.lora_fields, values)
    [request] = services.engine.submitted
    assert isinstance(request, LoraTrainRequest)
    assert request.data_root == str((services.paths.data_dir / "set").resolve())  # relative to the data dir
    assert request.output_dir == ""
    assert out == [{"job": "task(1)", "samples": 0}, ""]
    assert fn.outputs == [tab.watch, tab.output]  # an error marks only these
    started = then(blocks, fn)
    progress, plot, gallery, error, timer = started.fn({"job": "task(1)", "samples": 0})
    assert "waiting for the worker" in progress
    assert plot["visible"] is True and len(plot["value"]) == 0 and gallery == [] and error == ""
    assert isinstance(timer, gr.Timer) and timer.active is True

    # the engine's refusal, a folder outside the data dir, a bad number: gr.Error with the message
    services.engine.refuse = "the LoRA to train needs a name"
    with pytest.raises(gr.Error, match="needs a name"):
        call(fn, tab.lora_fields, values)
    services.engine.refuse = None
    with pytest.raises(gr.Error, match="only folders inside the data dir"):
        call(fn, tab.lora_fields, values | {"data_root": "/etc"})
    with pytest.raises(gr.Error, match="Network alpha: expected a number"):
        call(fn, tab.lora_fields, values | {"network_alpha": "lots"})
    assert len(services.engine.submitted) == 1


def test_the_poll_follows_the_run_and_rebuilds_the_cards_when_it_ends(
    services: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[tuple[str, str]] = []
    monkeypatch.setattr(
        train, "render_page", lambda _s, prefix, page: rendered.append((prefix, page)) or f"{prefix}:{page}"
    )
    blocks, tab = build(services, with_other_tabs=True)
    poll = handler(blocks, tab.timer, "tick")
    sample = tmp_path / "s1.png"
    Image.new("RGB", (8, 8), "red").save(sample)
    engine = services.engine
    engine.handles["task(9)"] = FakeHandle("task(9)", running=True)
    engine.status = {
        "kind": "lora",
        "name": "mine",
        "state": "running",
        "step": 3,
        "max_steps": 10,
        "epoch": 1,
        "loss": 0.25,
        "learning_rate": 1e-4,
        "losses": [[1, 0.3], [2, 0.2], [3, 0.25]],
        "samples": [[2, str(sample)]],
        "warnings": ["8-bit Adam is not available here: using AdamW"],
        "elapsed": 3.0,
        "eta": 7.0,
    }
    out = poll.fn({"job": "task(9)", "samples": 0})
    watch, progress, plot, gallery, output, _error, timer = out[:7]
    assert watch == {"job": "task(9)", "samples": 1}
    assert "step 3/10" in progress and "loss 0.2500" in progress and "ETA 00:07" in progress
    assert "8-bit Adam is not available" in progress
    assert list(plot["step"]) == [1, 2, 3] and list(plot["loss"]) == [0.3, 0.2, 0.25]
    assert [caption for _img, caption in gallery] == ["step 2"]
    assert isinstance(output, type(gr.skip())) and isinstance(timer, type(gr.skip()))
    assert rendered == []

    # the same samples again: the gallery is left alone
    out = poll.fn({"job": "task(9)", "samples": 1})
    assert isinstance(out[3], type(gr.skip()))

    # finished, but the job has not returned yet (the registries are refreshed by then): keep polling
    engine.status |= {"state": "done", "step": 10, "filename": "/data/models/Lora/mine.safetensors"}
    out = poll.fn({"job": "task(9)", "samples": 1})
    assert isinstance(out[6], type(gr.skip()))
    engine.handles["task(9)"] = FakeHandle("task(9)", done=True)
    out = poll.fn({"job": "task(9)", "samples": 1})
    assert out[4] == "Training finished at 10 steps.\nLoRA saved to /data/models/Lora/mine.safetensors"
    assert isinstance(out[6], gr.Timer) and out[6].active is False
    cards = dict(zip([c.elem_id for _p, c in tab.cards], out[7:], strict=True))
    assert cards["txt2img_lora_cards_html"] == "txt2img:lora" and cards["img2img_lora_cards_html"] == "img2img:lora"
    assert isinstance(cards["txt2img_textual_inversion_cards_html"], type(gr.skip()))
    assert sorted(rendered) == [("img2img", "lora"), ("txt2img", "lora")]


def test_a_failed_run_says_why_and_interrupt_stops_the_run(services: Any) -> None:
    blocks, tab = build(services)
    poll = handler(blocks, tab.timer, "tick")
    engine = services.engine
    engine.handles["task(2)"] = FakeHandle("task(2)", done=True)
    engine.status = {
        "kind": "embedding",
        "name": "e",
        "state": "failed",
        "message": "CUDA out of memory",
        "job_id": "task(2)",
    }
    out = poll.fn({"job": "task(2)", "samples": 0})
    assert out[4] == "Training failed: CUDA out of memory"
    assert "CUDA out of memory" in out[5]

    interrupt = handler(blocks, _button(blocks, "train_lora_interrupt"), "click")
    engine.status = {"kind": "lora", "state": "running", "job_id": "task(3)"}
    interrupt.fn({"job": "task(3)"})
    interrupt.fn({})  # a page that did not start it stops the run that is going
    engine.status = {"kind": "lora", "state": "done", "job_id": "task(3)"}
    interrupt.fn({"job": "task(3)"})  # nothing running: nothing to stop
    assert engine.interrupted == ["task(3)", "task(3)"]


def test_status_texts() -> None:
    assert progress_text(None) == ""
    running = {"kind": "embedding", "name": "cat", "state": "running", "step": 0, "max_steps": 0}
    assert progress_text(running) == "Embedding cat: preparing…"
    assert progress_text(running, queued=True) == "Embedding cat: waiting for the worker…"
    text = progress_text(
        running | {"step": 50, "max_steps": 100, "epoch": 2, "loss": 0.123456, "elapsed": 3725, "eta": 65}
    )
    assert text == "Embedding cat: step 50/100 · epoch 2 · loss 0.1235 · elapsed 1:02:05 · ETA 01:05"
    assert outcome_text({"kind": "hypernetwork", "state": "interrupted", "step": 7, "filename": "/h/x.pt"}) == (
        "Training interrupted at 7 steps.\nHypernetwork saved to /h/x.pt"
    )
    frame = loss_frame({"losses": [[i, float(i)] for i in range(1, 2502)]})
    assert len(frame) <= train.PLOT_POINTS + 1
    assert frame["step"].iloc[0] == 1 and frame["step"].iloc[-1] == 2501
    assert list(loss_frame(None).columns) == ["step", "loss"] and len(loss_frame(None)) == 0


def test_preprocess_runs_as_a_job_and_reports(services: Any) -> None:
    src = services.paths.data_dir / "raw"
    src.mkdir()
    Image.new("RGB", (100, 60), "blue").save(src / "a.png")
    (src / "b.png").write_text("not an image")
    blocks, tab = build(services)
    fn = handler(blocks, _button(blocks, "train_run_preprocess"), "click")
    fields = tab.preprocess_fields
    values = defaults(fields) | {"src": "raw", "dst": "prepared", "width": 64, "height": 64, "flip": True}
    *_, (summary, job) = list(call(fn, fields, values))
    assert services.engine.calls == ["preprocess"]
    assert summary == "Preprocessing finished: 2 images written; skipped 1: b.png (not an image Pillow can read)."
    assert job == ""
    assert sorted(p.name for p in (services.paths.data_dir / "prepared").iterdir()) == [
        "00000-0-a.png",
        "00000-1-a.png",
    ]
    with pytest.raises(gr.Error, match="only folders inside the data dir"):
        list(call(fn, fields, values | {"dst": "/tmp/elsewhere"}))


def test_extensions_add_train_sub_tabs(services: Any) -> None:
    seen: list[Any] = []

    def fire(kind: str, params: Any) -> list[Any]:
        assert kind == "ui_train_tabs"
        seen.append(params)
        with gr.Tab("Extension training"):
            gr.Textbox(elem_id="ext_train_box")
        return [None]

    services.scripts = SimpleNamespace(callbacks=SimpleNamespace(fire=fire))
    blocks, tab = build(services, with_other_tabs=True)
    assert [t.label for t in tab.tabs.children][-2:] == ["Train LoRA", "Extension training"]
    assert "ext_train_box" in elem_ids(blocks)
    [params] = seen
    ids = [c.elem_id for c in params.txt2img_preview_params]
    assert ids == [
        "txt2img_prompt",
        "txt2img_neg_prompt",
        "txt2img_steps",
        "txt2img_sampling",
        "txt2img_cfg_scale",
        "txt2img_seed",
        "txt2img_width",
        "txt2img_height",
    ]


def test_preprocess_captions_with_deepbooru_and_refuses_blip_without_its_weights(services: Any) -> None:
    write_deepbooru(services.paths.data_dir / "models")
    src = services.paths.data_dir / "raw"
    src.mkdir()
    Image.new("RGB", (80, 80), "green").save(src / "a.png")
    blocks, tab = build(services)
    fn = handler(blocks, _button(blocks, "train_run_preprocess"), "click")
    fields = tab.preprocess_fields
    values = defaults(fields) | {"src": "raw", "dst": "prepared", "width": 64, "height": 64}
    *_, (summary, _job) = list(call(fn, fields, values | {"caption_deepbooru": True}))
    assert summary == "Preprocessing finished: 1 image written, 1 caption."
    caption = (services.paths.data_dir / "prepared" / "00000-0-a.txt").read_text()
    assert "solo" in caption and "blue" not in caption  # the fixture's tags above / below 0.5
    with pytest.raises(gr.Error, match=r"model_base_caption_capfilt_large\.pth"):
        list(call(fn, fields, values | {"caption_blip": True}))
