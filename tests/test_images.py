"""Fitting input pictures to a target size (fouriscale/images.py): one rule for every front end."""

import numpy as np
from PIL import Image

from fouriscale.images import centre_crop_box, fit_image


def test_fit_image_rule():
    wide = Image.new("RGB", (200, 100), "red")
    same, note = fit_image(Image.new("RGB", (64, 96)), 96, 64)
    assert same.size == (64, 96) and note is None
    resized, note = fit_image(Image.new("RGB", (128, 64)), 32, 64)  # same aspect: resized only
    assert resized.size == (64, 32) and note == "downscaled from 128x64 to 64x32"
    cropped, note = fit_image(wide, 64, 64)  # 2:1 into 1:1: centre crop, then resize
    assert cropped.size == (64, 64) and note.startswith("centre-cropped from 200x100 to 100x100")
    exact, note = fit_image(wide, 100, 100)  # the crop alone gives the target: no resize, no resize note
    assert exact.size == (100, 100) and note == "centre-cropped from 200x100 to 100x100 (the target's aspect ratio)"
    assert (np.asarray(exact) == np.asarray(wide.crop((50, 0, 150, 100)))).all()
    assert centre_crop_box((200, 100), 1.0) == (50, 0, 150, 100)
    assert centre_crop_box((100, 200), 2.0) == (0, 75, 100, 125)
    mask = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), "L")
    up, note = fit_image(mask, 8, 8, mask=True)
    assert set(np.unique(np.asarray(up))) == {0, 255} and note == "upscaled from 2x2 to 8x8"
