"""Face restoration: the crop/restore/paste pipeline (stub networks, known boxes), the Haar
detector on a drawn face, the restorers' loading from models/GFPGAN and models/Codeformer (real
layouts, random weights), and the no-weights error."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.errors import ModelFileError, NotFoundError
from modules.models.face_restoration import (
    FaceBox,
    FaceRestorers,
    FaceRestorerUnavailableError,
    HaarFaceDetector,
    crop_transform,
    face_net_for,
    load_face_model,
    restore_faces,
)
from tests.fixtures.face_models import synthetic_face, write_codeformer, write_gfpgan
from tests.fixtures.module_tmp import ModuleTempDirs

BOX: FaceBox = (80, 90, 140, 160)


def noise(size: tuple[int, int] = (256, 256), seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)


def gray_net(tensor: torch.Tensor) -> torch.Tensor:
    return torch.full_like(tensor, 0.5)


def detector_of(*boxes: FaceBox) -> Any:
    return lambda _rgb: list(boxes)


def crop_region(box: FaceBox, size: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W): pixels the warped 512 crop of `box` can touch (plus one pixel)."""
    m = crop_transform(box)
    scale, tx, ty = m[0, 0], m[0, 2], m[1, 2]
    x0, x1 = (0 - tx) / scale - 1, (512 - tx) / scale + 1
    y0, y1 = (0 - ty) / scale - 1, (512 - ty) / scale + 1
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def test_face_restored_and_pasted_back_outside_unchanged() -> None:
    image = noise()
    out = restore_faces(image, gray_net, detector_of(BOX))
    before, after = np.asarray(image), np.asarray(out)
    assert out.size == image.size and out.mode == "RGB"
    inside = crop_region(BOX, image.size)
    assert inside.sum() < inside.size  # the test means something
    assert np.array_equal(before[~inside], after[~inside])
    cx, cy = (BOX[0] + BOX[2]) // 2, (BOX[1] + BOX[3]) // 2
    centre = after[cy - 5 : cy + 5, cx - 5 : cx + 5].astype(int)
    assert np.abs(centre - 128).max() <= 1  # fully replaced by the network's output
    assert not np.array_equal(before[inside], after[inside])


def test_mask_is_feathered() -> None:
    image = Image.new("RGB", (256, 256), (0, 0, 0))
    after = np.asarray(restore_faces(image, lambda t: torch.ones_like(t), detector_of(BOX)))[..., 0]
    row = after[(BOX[1] + BOX[3]) // 2]
    values = set(row.tolist())
    assert 255 in values and 0 in values
    assert len([v for v in values if 0 < v < 255]) >= 5  # a soft ramp, not a hard edge


def test_visibility_zero_unchanged_and_half_blends() -> None:
    image = noise(seed=1)
    assert np.array_equal(np.asarray(restore_faces(image, gray_net, detector_of(BOX), visibility=0.0)), image)
    black = Image.new("RGB", (256, 256), (0, 0, 0))
    half = np.asarray(restore_faces(black, lambda t: torch.ones_like(t), detector_of(BOX), visibility=0.5))
    cx, cy = (BOX[0] + BOX[2]) // 2, (BOX[1] + BOX[3]) // 2
    assert abs(int(half[cy, cx, 0]) - 128) <= 1


def test_two_faces_and_no_faces() -> None:
    image = noise((320, 256), seed=2)
    boxes: tuple[FaceBox, ...] = ((20, 30, 70, 90), (220, 120, 280, 190))
    after = np.asarray(restore_faces(image, gray_net, detector_of(*boxes)))
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert np.abs(after[cy, cx].astype(int) - 128).max() <= 1
    outside = ~(crop_region(boxes[0], image.size) | crop_region(boxes[1], image.size))
    assert np.array_equal(np.asarray(image)[outside], after[outside])
    assert np.array_equal(np.asarray(restore_faces(image, gray_net, detector_of())), np.asarray(image))


def test_alpha_kept() -> None:
    image = noise(mode="RGBA", seed=3)
    out = restore_faces(image, gray_net, detector_of(BOX))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])


def test_haar_detects_a_drawn_face_and_not_noise() -> None:
    detector = HaarFaceDetector()
    boxes = detector(np.asarray(synthetic_face(256)))
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert x0 < 128 < x1 and y0 < 128 < y1 and (x1 - x0) > 100
    assert detector(np.asarray(noise(seed=4))) == []


def test_haar_end_to_end_with_stub_net() -> None:
    face = synthetic_face(200, canvas=512)
    out = restore_faces(face, gray_net, HaarFaceDetector())
    after = np.asarray(out)
    assert np.abs(after[256, 256].astype(int) - 128).max() <= 1
    assert np.array_equal(after[:40, :40], np.asarray(face)[:40, :40])  # corners untouched
    assert np.array_equal(after[-40:, -40:], np.asarray(face)[-40:, -40:])


def test_no_weights_is_a_clear_user_error(tmp_path: Path) -> None:
    restorers = FaceRestorers(tmp_path / "GFPGAN", tmp_path / "Codeformer")
    assert restorers.available() == []
    for name in ("GFPGAN", "codeformer"):
        with pytest.raises(FaceRestorerUnavailableError, match="no model file") as info:
            restorers.get(name)
        assert info.value.status_code == 404
        assert "nothing is downloaded" in info.value.message
    with pytest.raises(NotFoundError, match="not found"):
        restorers.get("RestoreFormer")
    options = {"face_restoration_model": "CodeFormer", "code_former_weight": 0.5}
    assert restorers.for_options(options)() is None


def test_codeformer_weight_reaches_forward() -> None:
    seen: list[float] = []

    class FakeCodeFormer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, weight: float = 0.5) -> tuple[torch.Tensor, None]:
            seen.append(weight)
            assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
            return x, None

    descriptor = SimpleNamespace(model=FakeCodeFormer(), architecture=SimpleNamespace(id="CodeFormer"))
    net = face_net_for(descriptor, codeformer_weight=0.25)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(net(x), x, atol=1e-6)  # [0,1] -> [-1,1] -> back
    assert seen == [0.25]


@pytest.fixture(scope="module")
def face_model_dirs(module_tmp: ModuleTempDirs) -> Path:
    root = module_tmp.mktemp("face-models")
    write_gfpgan(root / "GFPGAN" / "GFPGANv1.4.pth")  # BasicSR layout: {"params_ema": ...}
    write_codeformer(root / "Codeformer" / "codeformer.safetensors")
    return root


def test_spandrel_detects_the_real_layouts(face_model_dirs: Path) -> None:
    gfpgan = load_face_model(face_model_dirs / "GFPGAN" / "GFPGANv1.4.pth")
    assert gfpgan.architecture.id == "GFPGAN" and gfpgan.purpose == "FaceSR"
    codeformer = load_face_model(face_model_dirs / "Codeformer" / "codeformer.safetensors")
    assert codeformer.architecture.id == "CodeFormer" and codeformer.purpose == "FaceSR"
    with pytest.raises(ModelFileError, match="expected CodeFormer"):
        load_face_model(face_model_dirs / "GFPGAN" / "GFPGANv1.4.pth", expect="CodeFormer")


def test_global_spandrel_registry_untouched(face_model_dirs: Path) -> None:
    from spandrel import MAIN_REGISTRY

    load_face_model(face_model_dirs / "Codeformer" / "codeformer.safetensors")
    assert "CodeFormer" not in {support.architecture.id for support in MAIN_REGISTRY}


def test_not_a_face_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "Codeformer" / "other.safetensors"
    path.parent.mkdir()
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(path))
    with pytest.raises(ModelFileError, match="not a GFPGAN or CodeFormer"):
        load_face_model(path)


def test_real_gfpgan_end_to_end(face_model_dirs: Path) -> None:
    """Random GFPGAN weights through the whole path (load, crop, network, paste); ~5 s on CPU."""
    restorers = FaceRestorers(face_model_dirs / "GFPGAN", face_model_dirs / "Codeformer", detector=detector_of(BOX))
    assert restorers.available() == ["CodeFormer", "GFPGAN"]
    restorer = restorers.get("gfpgan")
    assert restorer.name == "GFPGAN"
    image = noise(seed=5)
    out = restorer.restore(image)
    inside = crop_region(BOX, image.size)
    before, after = np.asarray(image), np.asarray(out)
    assert np.array_equal(before[~inside], after[~inside])
    assert not np.array_equal(before[inside], after[inside])
    assert restorers.get("GFPGAN").net is not restorer.net  # a new wrapper, the same loaded model
    assert len(restorers._loaded) == 1
