"""The built-in runners of the weighted ControlNet preprocessors (controlnet_aux networks).

Annotator files are written by tests/fixtures/controlnet_annotators.py: controlnet_aux's own
networks at seeded random weights, saved as the real files are. Each runner's map is compared with
controlnet_aux's detector loaded from the same folder and called on the image the extension feeds
it (scaled to the preprocessor resolution and padded to multiples of 64), then cropped: that checks
the flags, sliders and resolution plumbing. Downloads are made to fail for the whole module.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import modules.models.controlnet_preprocessors as cp
from modules.core.errors import NotFoundError, UserError
from modules.models.controlnet_preprocessors import ops, runners
from tests.fixtures.controlnet_annotators import WRITERS, write_annotator

pytest.importorskip("controlnet_aux")

RES = 64


def aux(module: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{module}")


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a download was attempted: {args} {kwargs}")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import huggingface_hub
    import torch.hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    for name in ("hed", "pidi", "lineart", "lineart_anime", "mlsd", "teed", "midas", "open_pose", "normalbae"):
        module = aux(name)
        if hasattr(module, "hf_hub_download"):
            monkeypatch.setattr(module, "hf_hub_download", _no_download)
    yield
    cp.unload_annotators()


@pytest.fixture(scope="session")
def annotators(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Writes a kind's files on first use (only the ones a test asks for); returns the folder."""
    folder = tmp_path_factory.mktemp("annotators")
    done: set[str] = set()

    def get(kind: str) -> Path:
        if kind not in done:
            write_annotator(folder, kind, seed=1 + list(WRITERS).index(kind))
            done.add(kind)
        return folder

    return get


def picture(width: int = 100, height: int = 80, seed: int = 0) -> Image.Image:
    """A small image with shapes and lines (so edges and lines exist) plus noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), dtype=np.float64)
    img[..., 0] = 255 * ((x - 40) ** 2 + (y - 35) ** 2 < 400)
    img[..., 1] = 200 * (x > 60)
    img[..., 2] = 2 * np.abs(x - y)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def padded(image: Image.Image, resolution: int = RES) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], int]:
    pad, crop = ops.resize_with_pad(np.asarray(image.convert("RGB")), resolution)
    return pad, crop, min(pad.shape[:2])


def as_array(result: cp.PreprocessResult) -> np.ndarray:
    assert result.image.mode == "RGB"
    return np.asarray(result.image)


def expected_size(image: Image.Image, resolution: int = RES) -> tuple[int, int]:
    """(width, height) of a map at the preprocessor resolution."""
    height, width = ops.resized_size(image.height, image.width, resolution)
    return width, height


def close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1


# -- soft edges, lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flags"),
    [("hed", {}), ("hed_safe", {"safe": True}), ("scribble_hed", {"scribble": True})],
)
def test_hed_family_matches_controlnet_aux(
    annotators: Callable[[str], Path], name: str, flags: dict[str, bool]
) -> None:
    folder = annotators("hed")
    image = picture()
    result = cp.run_preprocessor(name, image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("hed").HEDdetector.from_pretrained(str(folder / "hed"))
    pad, crop, size = padded(image)
    plain = crop(
        detector(pad, detect_resolution=size, image_resolution=size, safe=flags.get("safe", False), output_type="np")
    )
    if flags.get("scribble"):
        # the extension thins the cropped map (controlnet_aux would do it on the padded one)
        want = runners._scribble(plain)
        assert set(np.unique(as_array(result))) <= {0, 255}
    else:
        want = plain
    close(as_array(result), want)


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("pidinet", {}),
        ("pidinet_safe", {"safe": True}),
        ("pidinet_sketch", {"apply_filter": True}),
        ("pidinet_scribble", {"scribble": True}),
    ],
)
def test_pidinet_family_matches_controlnet_aux(
    annotators: Callable[[str], Path], name: str, flags: dict[str, bool]
) -> None:
    folder = annotators("pidinet")
    image = picture()
    result = cp.run_preprocessor(name, image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("pidi").PidiNetDetector.from_pretrained(str(folder / "pidinet"))
    pad, crop, size = padded(image)
    plain = crop(
        detector(
            pad,
            detect_resolution=size,
            image_resolution=size,
            safe=flags.get("safe", False),
            apply_filter=flags.get("apply_filter", False),
            output_type="np",
        )
    )
    close(as_array(result), runners._scribble(plain) if flags.get("scribble") else plain)


def test_pidinet_variants_differ(annotators: Callable[[str], Path]) -> None:
    folder = annotators("pidinet")
    maps = [
        as_array(cp.run_preprocessor(n, picture(), resolution=RES, annotator_dir=folder))
        for n in ("pidinet", "pidinet_safe", "pidinet_sketch")
    ]
    assert not np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[0], maps[2])


@pytest.mark.parametrize(("name", "coarse"), [("lineart", False), ("lineart_coarse", True)])
def test_lineart_matches_controlnet_aux(annotators: Callable[[str], Path], name: str, coarse: bool) -> None:
    annotators("lineart")
    folder = annotators("lineart_coarse")
    image = picture()
    result = cp.run_preprocessor(name, image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("lineart").LineartDetector.from_pretrained(str(folder / "lineart"))
    pad, crop, size = padded(image)
    want = crop(detector(pad, coarse=coarse, detect_resolution=size, image_resolution=size, output_type="np"))
    close(as_array(result), want)
    other = crop(detector(pad, coarse=not coarse, detect_resolution=size, image_resolution=size, output_type="np"))
    assert not np.array_equal(as_array(result), other)  # the other file (different weights) gives another map


@pytest.mark.slow
def test_lineart_anime_matches_controlnet_aux(annotators: Callable[[str], Path]) -> None:
    folder = annotators("lineart_anime")
    image = picture()
    result = cp.run_preprocessor("lineart_anime", image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("lineart_anime").LineartAnimeDetector.from_pretrained(str(folder / "lineart_anime"))
    pad, crop, size = padded(image)
    close(as_array(result), crop(detector(pad, detect_resolution=size, image_resolution=size, output_type="np")))


def test_mlsd_thresholds_reach_the_detector(annotators: Callable[[str], Path]) -> None:
    folder = annotators("mlsd")
    image = picture()
    detector = aux("mlsd").MLSDdetector.from_pretrained(str(folder / "mlsd"))
    pad, crop, size = padded(image)
    counts = []
    # default thresholds find lines with these weights; a high value or distance threshold drops them
    for thr_v, thr_d in ((0.1, 0.1), (0.5, 0.1), (0.1, 5.0)):
        result = cp.run_preprocessor(
            "mlsd", image, resolution=RES, threshold_a=thr_v, threshold_b=thr_d, annotator_dir=folder
        )
        assert result.image.size == expected_size(image)
        want = detector(pad, thr_v=thr_v, thr_d=thr_d, detect_resolution=size, image_resolution=size, output_type="np")
        close(as_array(result), crop(want))
        counts.append(int((as_array(result) > 0).sum()))
    assert counts[0] > 0 and counts[1] == 0 and counts[2] == 0


@pytest.mark.parametrize("steps", [2, 0, 5])
def test_teed_safe_steps(annotators: Callable[[str], Path], steps: int) -> None:
    folder = annotators("teed")
    image = picture()
    result = cp.run_preprocessor("softedge_teed", image, resolution=RES, threshold_a=steps, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("teed").TEEDdetector.from_pretrained(str(folder / "TEED"), filename="7_model.pth")
    pad, crop, size = padded(image)
    close(as_array(result), crop(ops.hwc3(detector(pad, detect_resolution=size, safe_steps=steps, output_type="np"))))


def test_anyline_is_mteed_with_faint_lines(annotators: Callable[[str], Path]) -> None:
    folder = annotators("mteed")
    image = picture()
    result = cp.run_preprocessor("softedge_anyline", image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("teed").TEEDdetector.from_pretrained(str(folder / "TEED"), filename="MTEED.pth")
    pad, crop, size = padded(image)
    edges = crop(ops.hwc3(detector(pad, detect_resolution=size, safe_steps=2, output_type="np")))
    got = as_array(result)
    # kept faint strokes become 1 (the extension's uint8 screen blend); elsewhere the MTEED map
    differs = got != edges
    assert np.all(got[differs] == 1)
    assert not np.array_equal(
        got, as_array(cp.run_preprocessor("softedge_teed", image, resolution=RES, annotator_dir=annotators("teed")))
    )


# -- depth, normals, pose --------------------------------------------------------------------------


@pytest.mark.slow
def test_midas_depth_and_normal(annotators: Callable[[str], Path]) -> None:
    folder = annotators("midas")
    image = picture()
    detector = aux("midas").MidasDetector.from_pretrained(str(folder / "midas"))
    pad, crop, size = padded(image)
    depth = cp.run_preprocessor("depth_midas", image, resolution=RES, annotator_dir=folder)
    assert depth.image.size == expected_size(image)
    close(as_array(depth), crop(detector(pad, detect_resolution=size, image_resolution=size, output_type="np")))
    assert runners.cached_annotators() == 1
    for bg in (0.4, 0.8):
        normal = cp.run_preprocessor("normal_midas", image, resolution=RES, threshold_a=bg, annotator_dir=folder)
        _, want = detector(
            pad, bg_th=bg, depth_and_normal=True, detect_resolution=size, image_resolution=size, output_type="np"
        )
        # the extension keeps (x, y, z) as RGB; controlnet_aux flips it to BGR
        close(as_array(normal), crop(want)[:, :, ::-1])
    assert runners.cached_annotators() == 1  # one network for depth and normal
    assert cp.unload_annotators() == 1 and runners.cached_annotators() == 0


@pytest.mark.slow
def test_openpose_flags(annotators: Callable[[str], Path]) -> None:
    folder = annotators("openpose")
    image = picture()
    detector = aux("open_pose").OpenposeDetector.from_pretrained(str(folder / "openpose"))
    pad, crop, size = padded(image)
    for name, (body, hand, face) in {
        "openpose": (True, False, False),
        "openpose_full": (True, True, True),
        "openpose_faceonly": (False, False, True),
    }.items():
        result = cp.run_preprocessor(name, image, resolution=RES, annotator_dir=folder)
        assert result.image.size == expected_size(image)
        want = detector(
            pad,
            detect_resolution=size,
            image_resolution=size,
            include_body=body,
            include_hand=hand,
            include_face=face,
            output_type="np",
        )
        close(as_array(result), crop(want))
        poses = result.extra["poses"]
        assert isinstance(poses, dict)
        assert (poses["canvas_height"], poses["canvas_width"]) == pad.shape[:2]
        assert isinstance(poses["people"], list)
    assert runners.cached_annotators() == 1  # the three share one set of networks


@pytest.mark.slow
def test_normal_bae_matches_controlnet_aux(annotators: Callable[[str], Path]) -> None:
    folder = annotators("normal_bae")
    image = picture()
    result = cp.run_preprocessor("normal_bae", image, resolution=RES, annotator_dir=folder)
    assert result.image.size == expected_size(image)
    detector = aux("normalbae").NormalBaeDetector.from_pretrained(str(folder / "normal_bae"))
    pad, crop, size = padded(image)
    close(as_array(result), crop(detector(pad, detect_resolution=size, image_resolution=size, output_type="np")))


# -- errors, cache, registration ---------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as err:
        cp.run_preprocessor("softedge_hed", picture(), annotator_dir=tmp_path)
    assert "ControlNetHED.pth" in err.value.message and str(tmp_path / "hed") in err.value.message


@pytest.mark.parametrize("content", [b"not a checkpoint at all", "wrong network"])
def test_corrupt_or_wrong_file_is_a_4xx_naming_it(
    annotators: Callable[[str], Path], tmp_path: Path, content: bytes | str
) -> None:
    target = tmp_path / "mlsd" / "mlsd_large_512_fp32.pth"
    target.parent.mkdir()
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:  # a real annotator file of another network under mlsd's name
        target.write_bytes((annotators("teed") / "TEED" / "7_model.pth").read_bytes())
    with pytest.raises(cp.AnnotatorFileError) as err:
        cp.run_preprocessor("mlsd", picture(), resolution=RES, annotator_dir=tmp_path)
    assert isinstance(err.value, UserError) and 400 <= err.value.status_code < 500
    assert "mlsd_large_512_fp32.pth" in err.value.message


def test_still_not_built_in_answers_501_saying_so(tmp_path: Path) -> None:
    target = tmp_path / "manga_line" / "erika.pth"
    target.parent.mkdir()
    target.write_bytes(b"x")
    with pytest.raises(cp.PreprocessorNotBuiltInError) as err:
        cp.run_preprocessor("lineart_anime_denoise", picture(), annotator_dir=tmp_path)
    assert err.value.status_code == 501
    assert "not built in" in err.value.message and "manga_line" in err.value.message


def test_every_weighted_one_is_built_in_or_says_why() -> None:
    for name in cp.weighted_preprocessors():
        assert (name in runners.BUILT_IN) != (name in runners.NOT_BUILT_IN), name
        spec = cp.get_preprocessor(name)
        if name in runners.BUILT_IN:
            assert spec.weights, name  # a built-in runner always has its files checked first


def test_registered_runner_wins_and_cache_is_reused(annotators: Callable[[str], Path]) -> None:
    folder = annotators("teed")
    image = picture()
    first = as_array(cp.run_preprocessor("softedge_teed", image, resolution=RES, annotator_dir=folder))
    assert runners.cached_annotators() == 1
    again = as_array(cp.run_preprocessor("softedge_teed", image, resolution=RES, annotator_dir=folder))
    assert np.array_equal(first, again) and runners.cached_annotators() == 1

    def mine(call: cp.PreprocessorCall) -> cp.PreprocessResult:
        blank = Image.new("RGB", (3, 2))
        return cp.PreprocessResult(image=blank, display=blank)

    cp.register_runner("softedge_teed", mine)
    try:
        assert cp.run_preprocessor("softedge_teed", image, annotator_dir=folder).image.size == (3, 2)
    finally:
        cp.unregister_runner("softedge_teed")
    assert cp.unload_annotators() == 1 and runners.cached_annotators() == 0


def test_importing_the_package_does_not_import_controlnet_aux() -> None:
    code = (
        "import sys, modules.models.controlnet_preprocessors as cp; "
        "assert 'controlnet_aux' not in sys.modules and 'skimage' not in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, annotators: Callable[[str], Path]) -> None:
    folder = annotators("teed")
    real = importlib.import_module

    def refuse(name: str, package: str | None = None) -> Any:
        if name.startswith("controlnet_aux"):
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(NotFoundError, match=r"controlnet_aux==0\.0\.10"):
        cp.run_preprocessor("softedge_teed", picture(), resolution=RES, annotator_dir=folder)
