"""Mask blur as A1111 does it (cv2.GaussianBlur, OpenCV's default border), at any blur size: a blur
wider than the mask once raised inside torch's reflect padding (a 500 for mask_blur >= 26 on 64 px)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from modules.engine.images import gaussian_kernel_blur


@pytest.mark.parametrize(("w", "h", "blur"), [(64, 64, 4), (64, 64, 26), (20, 64, 32), (5, 3, 10), (1, 7, 3)])
def test_blur_equals_opencv_for_any_size(w: int, h: int, blur: int) -> None:
    rng = np.random.default_rng(w * h + blur)
    mask = Image.fromarray(((rng.random((h, w)) > 0.5) * 255).astype(np.uint8), "L")
    size = 2 * int(2.5 * blur + 0.5) + 1
    expected = np.clip(np.round(cv2.GaussianBlur(np.asarray(mask, dtype=np.float32), (size, size), blur)), 0, 255)
    assert np.array_equal(np.asarray(gaussian_kernel_blur(mask, blur, blur)), expected.astype(np.uint8))
