"""Issue 16 #5, the whole matrix: every PIL mode and file format read right by LoadImage AND LoadMask.

One known picture -- a grey ramp G (0..254, exact in every encoding below) with the right half transparent
where the mode has alpha -- is written in each mode/format, then read back: the image must be G in all three
channels, LoadImage's mask 1 - alpha (0 without alpha), LoadMask's luminance G, and LoadMask's alpha channel
the alpha (or a clear error naming the file when the mode has none).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodes.image import LoadImage, LoadMask

W, H = 16, 8
GREY = (np.arange(W * H).reshape(H, W) * 2).astype(np.uint8)  # 0, 2, ..., 254
ALPHA = np.tile(np.where(np.arange(W) < W // 2, 255, 0), (H, 1)).astype(np.uint8)  # right half transparent


def grey_palette(alpha: bool) -> Image.Image:
    """Mode P holding the ramp (a 128-grey palette) with index 0 reserved as the transparent colour."""
    index = (GREY // 2 + 1).astype(np.uint8)  # 1..128
    if alpha:
        index = np.where(ALPHA > 0, index, 0).astype(np.uint8)
    pil = Image.fromarray(index, mode="L").convert("P")
    palette = [0, 0, 0] + [v for g in range(128) for v in (2 * g, 2 * g, 2 * g)]
    pil.putpalette(palette + [0] * (768 - len(palette)))
    return pil


def save_gif(path: Path) -> None:
    first, second = grey_palette(True), grey_palette(True)
    second.putpalette([255] * 768)  # a second frame that would read as white everywhere
    first.save(path, save_all=True, append_images=[second], transparency=0, duration=50, disposal=2)


Writer = Callable[[Path], None]
# name -> (file suffix, writer, has alpha)
CASES: dict[str, tuple[str, Writer, bool]] = {
    "L png": (".png", lambda p: Image.fromarray(GREY, "L").save(p), False),
    "LA png": (".png", lambda p: Image.fromarray(np.dstack([GREY, ALPHA]), "LA").save(p), True),
    "P png transparency": (".png", lambda p: grey_palette(True).save(p, transparency=0), True),
    "P png": (".png", lambda p: grey_palette(False).save(p), False),
    "I;16 png": (".png", lambda p: Image.fromarray(GREY.astype(np.uint16) * 257).save(p), False),
    "I;16 tiff": (".tif", lambda p: Image.fromarray(GREY.astype(np.uint16) * 257).save(p), False),
    "I tiff": (".tif", lambda p: Image.fromarray(GREY.astype(np.int32) * 257, "I").save(p), False),
    "F tiff": (".tif", lambda p: Image.fromarray(GREY.astype(np.float32) / 255).save(p), False),
    "RGB png": (".png", lambda p: Image.fromarray(np.dstack([GREY] * 3)).save(p), False),
    "RGB tiff": (".tif", lambda p: Image.fromarray(np.dstack([GREY] * 3)).save(p), False),
    "RGBA png": (".png", lambda p: Image.fromarray(np.dstack([GREY] * 3 + [ALPHA])).save(p), True),
    "RGBA tiff": (".tif", lambda p: Image.fromarray(np.dstack([GREY] * 3 + [ALPHA])).save(p), True),
    "RGB webp": (".webp", lambda p: Image.fromarray(np.dstack([GREY] * 3)).save(p, lossless=True), False),
    "RGBA webp": (".webp", lambda p: Image.fromarray(np.dstack([GREY] * 3 + [ALPHA])).save(p, lossless=True),
                  True),
    "CMYK tiff": (".tif", lambda p: Image.fromarray(np.dstack([GREY] * 3)).convert("CMYK").save(p), False),
    "CMYK jpeg": (".jpg", lambda p: Image.fromarray(np.dstack([GREY] * 3)).convert("CMYK").save(p, quality=100),
                  False),
    "YCbCr jpeg": (".jpg", lambda p: Image.fromarray(np.dstack([GREY] * 3)).convert("YCbCr").save(p, quality=100),
                   False),
    "P gif frames": (".gif", save_gif, True),
}
LOSSY = {"CMYK jpeg", "YCbCr jpeg"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_image_and_mask_read_the_same_picture_in_every_mode(tmp_path, case):
    suffix, write, alpha = CASES[case]
    path = tmp_path / f"picture{suffix}"
    write(path)
    atol = 3 / 255 if case in LOSSY else 1e-6
    grey = GREY / 255.0

    image, image_mask = LoadImage(path=str(path), ctx=None, round_to=1)
    assert image.shape == (1, H, W, 3) and image.dtype.is_floating_point
    pixels = image[0].numpy()
    if alpha:  # colour under fully transparent pixels is undefined in some encoders (GIF, WebP)
        pixels = pixels[:, : W // 2]
        expected_rgb = np.repeat(grey[:, : W // 2, None], 3, -1)
    else:
        expected_rgb = np.repeat(grey[..., None], 3, -1)
    np.testing.assert_allclose(pixels, expected_rgb, atol=atol, err_msg=case)
    expected_alpha = ALPHA / 255.0 if alpha else np.ones((H, W))
    np.testing.assert_array_equal(image_mask[0].numpy(), 1.0 - expected_alpha, err_msg=case)

    luminance = LoadMask(path=str(path), ctx=None, round_to=1)
    assert luminance.shape == (1, H, W)
    lum = luminance[0].numpy()
    np.testing.assert_allclose(lum[:, : W // 2] if alpha else lum, grey[:, : W // 2] if alpha else grey,
                               atol=atol, err_msg=case)
    assert float(lum.min()) >= 0.0 and float(lum.max()) <= 1.0

    if alpha:
        np.testing.assert_array_equal(LoadMask(path=str(path), ctx=None, round_to=1, channel="alpha")[0].numpy(),
                                      expected_alpha, err_msg=case)
    else:
        with pytest.raises(ValueError, match="no alpha channel"):
            LoadMask(path=str(path), ctx=None, round_to=1, channel="alpha")


def test_the_matrix_covers_every_mode_the_issue_lists(tmp_path):
    """1 is covered by test_bad_inputs.test_one_bit_images (a ramp cannot be 1-bit); the rest are here. A YCbCr
    JPEG is stored as YCbCr but Pillow opens it as RGB, so "YCbCr" is not among the modes read back."""
    modes = set()
    for name, (suffix, write, _) in CASES.items():
        path = tmp_path / f"{len(modes)}-{name.replace(' ', '_').replace(';', '')}{suffix}"
        write(path)
        with Image.open(path) as img:
            modes.add(img.mode)
    assert {"L", "LA", "P", "RGB", "RGBA", "CMYK", "F", "I"} <= modes, modes
    assert modes & {"I;16", "I;16L", "I;16B"} or "I" in modes, modes  # 16-bit PNGs open as "I" in older Pillows
