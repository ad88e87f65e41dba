"""Node-side bad input (issue 16): every image mode read right, input limits, special files, prompt weights
that overflow, non-finite tensors and unreadable weights -- each refused with a message naming the file."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import Graph, WorkflowError, validate
from nodes.image import LoadImage, LoadMask, open_image
from nodes.latent import LoadLatent
from nodes.prompt_syntax import MAX_WEIGHT, PromptWeightError, parse_weighted

W, H = 16, 8
GRADIENT_16 = (np.arange(W * H, dtype=np.float64).reshape(H, W) / (W * H - 1) * 65535).astype(np.uint16)
RGB = np.stack([np.full((H, W), 200), np.tile(np.arange(W) * 16, (H, 1)), np.full((H, W), 30)], -1).astype(np.uint8)
ALPHA = np.tile(np.where(np.arange(W) < W // 2, 255, 0), (H, 1)).astype(np.uint8)  # right half transparent


def load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image, mask = LoadImage(path=str(path), ctx=None, round_to=1)
    assert image.dtype == torch.float32 and image.shape == (1, H, W, 3)
    return image[0].numpy(), mask[0].numpy()


def load_mask(path: Path, **kwargs: object) -> np.ndarray:
    mask = LoadMask(path=str(path), ctx=None, round_to=1, **kwargs)
    assert mask.shape == (1, H, W)
    return mask[0].numpy()


# ---- every PIL mode --------------------------------------------------------------------------------
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(GRADIENT_16).save(path)
    assert Image.open(path).mode.startswith("I")
    expected = GRADIENT_16 / 65535.0
    np.testing.assert_allclose(load_mask(path), expected, atol=1e-6)
    image, mask = load_image(path)
    np.testing.assert_allclose(image, np.repeat(expected[..., None], 3, -1), atol=1e-6)
    assert abs(float(load_mask(path).mean()) - 0.5) < 0.01  # was 99.6 % "repaint" when clipped
    assert not mask.any()


def test_32_bit_integer_and_float_images(tmp_path):
    as_int = tmp_path / "int32.tif"
    Image.fromarray(GRADIENT_16.astype(np.int32), mode="I").save(as_int)
    np.testing.assert_allclose(load_mask(as_int), GRADIENT_16 / 65535.0, atol=1e-6)
    as_float = tmp_path / "float.tif"
    values = (GRADIENT_16 / 65535.0).astype(np.float32)
    values[0, 0], values[0, 1] = 1.5, -0.5  # out of range floats are clipped to [0, 1]
    Image.fromarray(values).save(as_float)
    mask = load_mask(as_float)
    assert (mask[0, 0], mask[0, 1]) == (1.0, 0.0)
    np.testing.assert_allclose(mask[1:], values[1:], atol=1e-6)


def test_one_bit_images(tmp_path):
    path = tmp_path / "bits.png"
    checker = (np.indices((H, W)).sum(0) % 2).astype(bool)
    Image.fromarray(checker).convert("1").save(path)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(load_mask(path), checker.astype(np.float32))
    image, _ = load_image(path)
    np.testing.assert_array_equal(image[..., 1], checker.astype(np.float32))


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("RGB", ".png"), ("RGB", ".tif"), ("RGB", ".webp")])
def test_lossless_colour_modes_and_formats(tmp_path, mode, suffix):
    path = tmp_path / f"image{suffix}"
    pil = Image.fromarray(RGB).convert(mode)
    pil.save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image, mask = load_image(path)
    np.testing.assert_allclose(image, np.asarray(pil.convert("RGB")) / 255.0, atol=1e-6)
    assert not mask.any()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_becomes_the_mask(tmp_path, mode):
    path = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([RGB, ALPHA])).convert(mode).save(path)
    image, mask = load_image(path)
    np.testing.assert_array_equal(mask, 1.0 - ALPHA / 255.0)
    np.testing.assert_array_equal(load_mask(path, channel="alpha"), ALPHA / 255.0)


def test_palette_with_a_transparent_colour(tmp_path):
    path = tmp_path / "palette.png"
    pal = Image.fromarray(np.where(ALPHA > 0, 1, 0).astype(np.uint8), mode="L").convert("P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    image, mask = load_image(path)
    np.testing.assert_array_equal(mask, (ALPHA == 0).astype(np.float32))  # index 0 is transparent
    np.testing.assert_array_equal(image[0, 0], [0.0, 0.0, 1.0])


def test_animated_gif_gives_its_first_frame_with_transparency(tmp_path):
    path = tmp_path / "anim.gif"
    frames = []
    for value in (1, 2):
        frame = Image.fromarray(np.where(ALPHA > 0, value, 0).astype(np.uint8), mode="L").convert("P")
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], transparency=0, duration=50, disposal=2)
    image, mask = load_image(path)
    np.testing.assert_array_equal(mask, (ALPHA == 0).astype(np.float32))
    np.testing.assert_array_equal(image[0, 0], [1.0, 0.0, 0.0])  # frame 1 is red; frame 2 green


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr"])
def test_cmyk_and_ycbcr_are_converted_to_rgb(tmp_path, mode):
    path = tmp_path / f"{mode}.tif" if mode == "CMYK" else tmp_path / f"{mode}.jpg"
    Image.fromarray(RGB).convert(mode).save(path, **({"quality": 100} if mode == "YCbCr" else {}))
    image, _ = load_image(path)
    np.testing.assert_allclose(image, RGB / 255.0, atol=0.06)


# ---- limits and special files ----------------------------------------------------------------------
def huge_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height with almost no pixel data: decoding it would fail, so the
    limit's message proves the size was refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"IDAT" + zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(data) - 4) + data
                     + struct.pack(">I", zlib.crc32(data)) + b"\0\0\0\0IEND\xaeB`\x82")
    return path


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    bomb = huge_png_header(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(ValueError, match=r"bomb.png: 12000x12000 = 144000000 pixels is over the input limit of "
                                         r"67108864 pixels"):
        LoadImage(path=str(bomb), ctx=None)
    with pytest.raises(ValueError, match="over the input limit"):
        LoadMask(path=str(bomb), ctx=None)
    small = tmp_path / "small.png"
    Image.fromarray(RGB).save(small)
    with pytest.raises(ValueError, match=f"small.png: {W}x{H} = {W * H} pixels is over the input limit of 100"):
        open_image(str(small), max_pixels=100)
    assert open_image(str(small), max_pixels=W * H).size == (W, H)


def test_a_directory_as_an_image_path_says_so(tmp_path):
    for fn in (LoadImage, LoadMask):
        with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a directory, not an image file"):
            fn(path=str(tmp_path), ctx=None)
    with pytest.raises(IsADirectoryError, match="is a directory, not a latent file"):
        LoadLatent(path=str(tmp_path))


def test_special_and_endless_files_are_refused_quickly(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        with pytest.raises(ValueError, match="not a regular file"):
            LoadLatent(path=path)
        with pytest.raises(ValueError, match="not a regular file"):
            LoadImage(path=path, ctx=None)
        for fn in (LoadLatent, LoadImage, LoadMask):  # the cache key's fingerprint reads the file first
            with pytest.raises(ValueError, match="not a regular file"):
                fn.__node_spec__.fingerprint(path=path)


def test_an_oversized_latent_file_is_refused_without_reading_it(tmp_path):
    sparse = tmp_path / "huge.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(2 * 1024**3)  # a sparse file: no disk space used
    with pytest.raises(ValueError, match="huge.safetensors: 2147483648 bytes is over the 1073741824-byte limit"):
        LoadLatent(path=str(sparse))


def test_load_mask_warns_when_it_resizes(tmp_path, caplog):
    path = tmp_path / "odd.png"
    Image.new("L", (21, 13), 255).save(path)
    with caplog.at_level(logging.WARNING):
        mask = LoadMask(path=str(path), ctx=None)
    assert mask.shape == (1, 8, 16)
    assert "odd.png: 21x13 resized to 16x8 (a multiple of 8)" in caplog.text


# ---- prompts and non-finite values -----------------------------------------------------------------
OVERFLOWING = ["(apple:" + "9" * 400 + ")", "(" * 1000 + "apple" + ")" * 1000, "(apple:101)"]


@pytest.mark.parametrize("prompt", OVERFLOWING, ids=["huge-weight", "nested-1000", "over-max"])
def test_overflowing_prompt_weights_are_refused_at_validation(prompt):
    with pytest.raises(PromptWeightError, match=r"outside \[-100, 100\]"):
        parse_weighted(prompt)
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source="builtin:tiny-sdxl-inpaint")
    g.add("EncodePrompt", id="enc", clip=ckpt.clip, prompt="fine", prompt_2=prompt)
    with pytest.raises(WorkflowError) as info:
        validate(g, ["enc"])
    [issue] = info.value.issues
    assert (issue.node, issue.input) == ("enc", "prompt_2") and "outside [-100, 100]" in issue.message


def test_weights_at_the_limit_and_unweighted_overflows_pass():
    assert parse_weighted(f"(apple:{MAX_WEIGHT:g})") == [("apple", MAX_WEIGHT)]
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source="builtin:tiny-sdxl-inpaint")
    g.add("EncodePrompt", id="enc", clip=ckpt.clip, prompt=OVERFLOWING[0], weighting=False)
    validate(g, ["enc"])  # weighting off: the brackets are plain text


def test_non_finite_latents_fail_the_node(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "nan.safetensors"
    samples = torch.zeros(1, 4, 2, 2)
    samples[0, 0, 0, 0] = float("nan")
    save_file({"samples": samples}, str(path))
    with pytest.raises(ValueError, match="nan.safetensors: the latents contain non-finite values"):
        LoadLatent(path=str(path))


# ---- unreadable weights name the file --------------------------------------------------------------
def test_an_unreadable_latent_file_is_named(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors file"):
        LoadLatent(path=str(path))


def test_corrupt_vae_weights_name_the_file(tiny_models, tmp_path):
    from nodes.models import ModelRef, load_component
    from nodes.sources import SourceError, resolve

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models[9], broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SourceError, match=f"{weights}: cannot read the VAE weights"):
        load_component(ModelRef(resolve(str(broken)), "float32", "cpu"), "vae_decoder")


def test_special_files_and_the_pixel_limit_are_refused_at_validation(tmp_path):
    """Before anything runs, naming the node and input; the engine's own limit applies."""
    from nodegraph import Engine, EngineSettings, Graph, WorkflowError

    bomb = huge_png_header(tmp_path / "bomb.png", 12000, 12000)
    small = tmp_path / "small.png"
    Image.fromarray(RGB).save(small)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    g = Graph()
    g.add("LoadImage", id="bomb", path=str(bomb))
    g.add("LoadMask", id="device", path="/dev/zero")
    g.add("LoadLatent", id="pipe", path=str(fifo))
    g.add("LoadLatent", id="folder", path=str(tmp_path))
    g.add("LoadImage", id="small", path=str(small))
    g.add("SaveLatent", id="out", latent=g["pipe"].latent, path=str(tmp_path / "never.safetensors"))
    with pytest.raises(WorkflowError) as info:
        Engine(EngineSettings(max_input_pixels=100)).plan(g)
    assert {(i.node, i.input) for i in info.value.issues} == {
        ("bomb", "path"), ("device", "path"), ("pipe", "path"), ("folder", "path"), ("small", "path")}
    found = {i.node: i.message for i in info.value.issues}
    assert "over the input limit of 100 pixels" in found["bomb"] and "over the input limit" in found["small"]
    assert "not a regular file" in found["device"] and "not a regular file" in found["pipe"]
    assert "is a directory" in found["folder"]
    del g.nodes["small"]
    with pytest.raises(WorkflowError) as info:  # the default limit lets a small image through
        Engine().plan(g)
    assert {i.node for i in info.value.issues} == {"bomb", "device", "pipe", "folder"}
