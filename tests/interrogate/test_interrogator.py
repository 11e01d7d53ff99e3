"""The Interrogator: A1111's "clip" result (BLIP caption, then the best matches of each category
file, with its options), lazy loading and the memory budget, missing weights named, captions
for a folder (the Train tab's preprocessing and img2img's Batch), jobs on the worker."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from modules.core.errors import NotFoundError, UserError
from modules.engine.interrogation import (
    INTERROGATOR,
    Interrogator,
    InterrogatorWeightsMissing,
    caption_function,
    category_types,
    interrogator_of,
    load_categories,
    submit_interrogation,
)
from modules.engine.worker import Worker
from modules.models.memory import MemoryBudget
from tests.fixtures import interrogate_models as fx
from tests.interrogate.conftest import Weights, make_interrogator, options

IMAGE = Image.new("RGB", (40, 40), (220, 200, 30))
TAGS = "1girl, back\\\\slash, hat \\(object\\), long hair, smile, solo"


def test_categories_as_a1111(weights: Weights, tmp_path: Path) -> None:
    assert category_types([tmp_path / "none", weights.categories]) == [
        "artists",
        "flavors.top3",
        "mediums",
        "movements",
    ]
    loaded = load_categories([weights.categories], skip=["mediums"])
    assert [(c.name, c.topn) for c in loaded] == [("artists", 1), ("flavors.top3", 3), ("movements", 1)]
    assert loaded[1].items == fx.CATEGORIES["flavors.top3"]
    (tmp_path / "blank.txt").write_text("one\n\n  two  \n", encoding="utf-8")
    assert load_categories([tmp_path])[0].items == ("one", "two")


def test_clip_is_the_caption_then_the_best_of_each_category(weights: Weights) -> None:
    interrogator = make_interrogator(weights)
    caption = interrogator.blip_caption(IMAGE)
    result = interrogator.interrogate(IMAGE, "clip")
    assert result.startswith(caption + ", ")
    parts = result[len(caption) + 2 :].split(", ")
    assert len(parts) == 1 + 3 + 1 + 1  # flavors.top3 gives three
    artists, flavors, mediums, movements = (
        fx.CATEGORIES[k] for k in ("artists", "flavors.top3", "mediums", "movements")
    )
    assert parts[0] in artists and set(parts[1:4]) <= set(flavors) and len(set(parts[1:4])) == 3
    assert parts[4] in mediums and parts[5] in movements


def test_clip_options(weights: Weights) -> None:
    first_lines = make_interrogator(weights, interrogate_clip_dict_limit=1)
    caption = first_lines.blip_caption(IMAGE)
    assert first_lines.interrogate(IMAGE, "clip") == f"{caption}, by artist one, flavor a, a painting, impressionism"
    skipping = make_interrogator(
        weights, interrogate_clip_skip_categories=["artists", "flavors.top3"], interrogate_return_ranks=True
    )
    ranked = skipping.interrogate(IMAGE, "clip")[len(caption) :]
    assert re.fullmatch(
        r", \((a painting|a photograph):[01]\.\d{3}\), \((impressionism|cubism|surrealism):[01]\.\d{3}\)", ranked
    )


def test_without_category_lists_the_result_is_the_caption_and_clip_is_not_needed(
    weights: Weights, tmp_path: Path
) -> None:
    interrogator = make_interrogator(weights, clip_dir=tmp_path / "no-clip", category_dir=tmp_path / "no-lists")
    assert interrogator.missing("clip") is None
    assert interrogator.interrogate(IMAGE, "clip") == interrogator.blip_caption(IMAGE)
    assert interrogator.loaded() == ("blip",)


def test_unknown_model_and_missing_weights(weights: Weights, tmp_path: Path) -> None:
    interrogator = make_interrogator(
        weights, blip_dir=tmp_path / "BLIP", clip_dir=tmp_path / "CLIP", deepbooru_dir=tmp_path / "torch_deepdanbooru"
    )
    with pytest.raises(NotFoundError, match=r"^Model not found$") as unknown:
        interrogator.job(IMAGE, "wd14")
    assert unknown.value.status_code == 404
    with pytest.raises(InterrogatorWeightsMissing) as missing:
        interrogator.job(IMAGE, "deepdanbooru")
    assert missing.value.status_code == 404
    assert "model-resnet_custom_v3.pt" in str(missing.value) and str(tmp_path / "torch_deepdanbooru") in str(
        missing.value
    )
    note = interrogator.missing("clip")
    assert note is not None and "model_base_caption_capfilt_large.pth" in note and "ViT-L-14.pt" in note
    assert str(tmp_path / "CLIP") in note and str(tmp_path / "BLIP") in note
    assert interrogator.missing("blip") is not None and "ViT-L-14" not in str(interrogator.missing("blip"))
    with pytest.raises(InterrogatorWeightsMissing):
        interrogator.interrogate(IMAGE, "clip")


def test_models_load_once_and_the_budget_may_drop_them(weights: Weights) -> None:
    budget = MemoryBudget()
    interrogator = Interrogator(
        blip_dir=weights.models / "BLIP",
        clip_dir=weights.models / "CLIP",
        deepbooru_dirs=(weights.models / "torch_deepdanbooru",),
        category_dirs=(weights.categories,),
        options=options(),
        budget=budget,
    )
    assert interrogator.loaded() == ()
    assert interrogator.interrogate(IMAGE, "deepdanbooru") == TAGS
    assert interrogator.loaded() == ("deepbooru",)
    held = {e.key: e for e in budget.snapshot()}
    assert set(held) == {f"{INTERROGATOR}:deepbooru"} and not held[f"{INTERROGATOR}:deepbooru"].pinned
    assert held[f"{INTERROGATOR}:deepbooru"].nbytes > 0
    budget.set_limit(0)  # nothing may be kept: the budget drops it
    assert interrogator.loaded() == ()
    budget.set_limit(1 << 40)
    assert interrogator.interrogate(IMAGE, "deepdanbooru") == TAGS  # loaded again
    interrogator.unload()
    assert interrogator.loaded() == () and budget.snapshot() == ()


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20), (10, 200, 10)).save(folder / "one.png")
    Image.new("RGB", (20, 30), (200, 10, 10)).save(folder / "two.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.md").write_text("not an image either", encoding="utf-8")


def test_caption_folder_writes_blip_then_tags_beside_each_image(weights: Weights, tmp_path: Path) -> None:
    interrogator = make_interrogator(weights, interrogate_return_ranks=True)
    src = tmp_path / "src"
    _images(src)
    (src / "two.txt").write_text("my own caption", encoding="utf-8")
    report = interrogator.caption_folder(src, use_blip=True, use_deepbooru=True)
    assert [p.name for p in report.written] == ["one.txt"]
    assert [p.name for p in report.kept] == ["two.txt"] and report.skipped[0][0] == "broken.png"
    caption = interrogator.blip_caption(Image.open(src / "one.png"))
    ranked_tags = interrogator.deepbooru_tags(IMAGE)
    assert (src / "one.txt").read_text(encoding="utf-8") == f"{caption}, {ranked_tags}"
    assert (src / "two.txt").read_text(encoding="utf-8") == "my own caption"
    assert "1 existing kept" in report.summary() and "broken.png" in report.summary()

    dst = tmp_path / "dst"
    again = interrogator.caption_folder(src, dst, use_deepbooru=True, overwrite=True)
    assert sorted(p.name for p in again.written) == ["one.txt", "two.txt"]
    assert (dst / "two.txt").read_text(encoding="utf-8") == ranked_tags
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temp files left

    by_model = interrogator.caption_folder(src, dst, model="deepdanbooru", overwrite=True)
    assert len(by_model.written) == 2
    calls = iter([False, False, True])  # broken.png, one.png, then stop
    stopped = interrogator.caption_folder(
        src, dst, model="deepdanbooru", overwrite=True, should_stop=lambda: next(calls)
    )
    assert stopped.stopped and [p.name for p in stopped.written] == ["one.txt"]
    with pytest.raises(UserError, match="BLIP and/or DeepBooru"):
        interrogator.caption_folder(src)


def test_the_paths_helpers_the_train_tab_calls(weights: Weights, tmp_path: Path) -> None:
    from modules.core.paths import Paths
    from modules.core.settings import parse_settings

    data = tmp_path / "data"
    paths = Paths.from_settings(parse_settings(["--data-dir", str(data)], {}), tmp_path, {})
    from modules.engine.interrogation import missing_weights

    note = missing_weights(paths, "deepbooru")
    assert note is not None and str(data / "models" / "torch_deepdanbooru") in note
    with pytest.raises(InterrogatorWeightsMissing):
        caption_function(paths, blip=False, deepbooru=True)
    shutil.copytree(weights.models / "torch_deepdanbooru", data / "models" / "torch_deepdanbooru")
    assert missing_weights(paths, "deepbooru") is None
    caption = caption_function(paths, blip=False, deepbooru=True)
    assert caption is not None and caption(IMAGE) == TAGS
    assert caption_function(paths, blip=False, deepbooru=False) is None


class _Engine:
    """The part of the engine facade the job helpers use, over a real worker."""

    def __init__(self, interrogator: Interrogator | None) -> None:
        self.worker = Worker()
        self.worker.start()
        if interrogator is not None:
            self.interrogator = interrogator

    def submit_call(self, fn, description: str = "script"):  # type: ignore[no-untyped-def]
        return self.worker.submit(fn, description=description)


def test_interrogation_runs_as_a_job_on_the_worker(weights: Weights) -> None:
    engine = _Engine(make_interrogator(weights))
    try:
        job = submit_interrogation(engine, IMAGE, "deepdanbooru")
        assert job.context.description == "interrogate"
        assert job.future.result(timeout=120) == TAGS
        assert job.context.textinfo == "Interrogating (DeepBooru)"
        with pytest.raises(NotFoundError, match="Model not found"):
            submit_interrogation(engine, IMAGE, "nope")
    finally:
        engine.worker.shutdown()
    bare = _Engine(None)
    try:
        with pytest.raises(UserError, match="not available") as err:
            interrogator_of(bare)
        assert err.value.status_code == 503
    finally:
        bare.worker.shutdown()
