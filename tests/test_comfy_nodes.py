"""Each ComfyUI core class_type we map: a small API-format graph, checked against a hand computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

from nodegraph import Engine, WorkflowError
from nodegraph.workflow import graph_from_data


def run(prompt: dict[str, Any], node: str, tmp_path: Path, output: str | None = None) -> Any:
    result = Engine().run(graph_from_data(prompt), outputs=[node], output_dir=tmp_path)
    outputs = result[node]
    return outputs[output] if output else next(iter(outputs.values()))


def png(path: Path, pixels: np.ndarray) -> str:
    PILImage.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def solid_mask(value: float, width: int, height: int) -> dict[str, Any]:
    return {"class_type": "SolidMask", "inputs": {"value": value, "width": width, "height": height}}


def empty_image(color: int, width: int, height: int, batch: int = 1) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                   "color": color}}


def latent_file(path: Path, samples: torch.Tensor) -> dict[str, Any]:
    save_file({"samples": samples.contiguous()}, str(path))
    return {"class_type": "nodegraph.LoadLatent", "inputs": {"path": str(path)}}


def test_solid_invert_threshold_and_feather_masks(tmp_path):
    prompt = {"1": solid_mask(0.25, 4, 3), "2": {"class_type": "InvertMask", "inputs": {"mask": ["1", 0]}},
              "3": {"class_type": "ThresholdMask", "inputs": {"mask": ["2", 0], "value": 0.8}},
              "4": {"class_type": "FeatherMask", "inputs": {"mask": ["2", 0], "left": 2, "top": 0, "right": 1,
                                                            "bottom": 0}}}
    assert torch.equal(run(prompt, "2", tmp_path), torch.full((1, 3, 4), 0.75))
    assert torch.equal(run(prompt, "3", tmp_path), torch.zeros(1, 3, 4))  # 0.75 is not above 0.8
    # Columns from the left scaled by 1/2, 2/2; the last one (from the right) by 1/1.
    assert torch.allclose(run(prompt, "4", tmp_path)[0, 0], torch.tensor([0.375, 0.75, 0.75, 0.75]))


def test_load_image_mask_channels_and_threshold(tmp_path):
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[0, :, 0] = [0, 100, 200, 255]
    rgba[0, :, 3] = [255, 255, 0, 128]
    path = png(tmp_path / "m.png", rgba)
    prompt = {"r": {"class_type": "LoadImageMask", "inputs": {"image": path, "channel": "red", "upload": "image"}},
              "a": {"class_type": "LoadImageMask", "inputs": {"image": path, "channel": "alpha"}},
              "t": {"class_type": "ThresholdMask", "inputs": {"mask": ["r", 0], "value": 0.5}}}
    assert torch.allclose(run(prompt, "r", tmp_path), torch.tensor([[[0, 100, 200, 255]]]) / 255.0)
    assert torch.allclose(run(prompt, "a", tmp_path), 1 - torch.tensor([[[255, 255, 0, 128]]]) / 255.0)
    assert torch.equal(run(prompt, "t", tmp_path), torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))


def test_image_mask_conversions_invert_and_empty_image(tmp_path):
    prompt = {"1": empty_image(0x336699, 3, 2),
              "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "green"}},
              "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
              "4": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    image = run(prompt, "1", tmp_path)
    assert image.shape == (1, 2, 3, 3) and torch.allclose(image[0, 0, 0], torch.tensor([0x33, 0x66, 0x99]) / 255.0)
    assert torch.allclose(run(prompt, "2", tmp_path), torch.full((1, 2, 3), 0x66 / 255.0))
    assert torch.allclose(run(prompt, "3", tmp_path), torch.full((1, 2, 3, 3), 0x66 / 255.0))
    assert torch.allclose(run(prompt, "4", tmp_path)[0, 1, 2], 1 - torch.tensor([0x33, 0x66, 0x99]) / 255.0)


def test_crop_mask_and_image_crop(tmp_path):
    pixels = (np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)
    path = png(tmp_path / "i.png", pixels)
    prompt = {"img": {"class_type": "LoadImage", "inputs": {"image": path}},
              "m": {"class_type": "ImageToMask", "inputs": {"image": ["img", 0], "channel": "red"}},
              "cm": {"class_type": "CropMask", "inputs": {"mask": ["m", 0], "x": 1, "y": 2, "width": 2, "height": 5}},
              "ci": {"class_type": "ImageCrop", "inputs": {"image": ["img", 0], "width": 3, "height": 3, "x": 20,
                                                           "y": 1}}}
    image = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    assert torch.equal(run(prompt, "img", tmp_path, "image")[0], image)
    assert torch.equal(run(prompt, "cm", tmp_path)[0], image[2:7, 1:3, 0])
    assert torch.equal(run(prompt, "ci", tmp_path)[0], image[1:4, 15:, :])  # x moved inside: the last column


def test_grow_mask_dilates_and_erodes(tmp_path):
    dot = np.zeros((5, 5, 3), dtype=np.uint8)
    dot[2, 2] = 255
    path = png(tmp_path / "dot.png", dot)
    base = {"m": {"class_type": "LoadImageMask", "inputs": {"image": path, "channel": "red"}}}
    prompt = {**base,
              "plus": {"class_type": "GrowMask", "inputs": {"mask": ["m", 0], "expand": 1, "tapered_corners": True}},
              "box": {"class_type": "GrowMask", "inputs": {"mask": ["m", 0], "expand": 1, "tapered_corners": False}},
              "back": {"class_type": "GrowMask", "inputs": {"mask": ["box", 0], "expand": -1,
                                                            "tapered_corners": False}}}
    plus = torch.zeros(5, 5)
    plus[1:4, 2] = plus[2, 1:4] = 1
    box = torch.zeros(5, 5)
    box[1:4, 1:4] = 1
    assert torch.equal(run(prompt, "plus", tmp_path)[0], plus)
    assert torch.equal(run(prompt, "box", tmp_path)[0], box)
    assert torch.equal(run(prompt, "back", tmp_path)[0], torch.from_numpy(dot[..., 0] / 255.0).float())


@pytest.mark.parametrize(("operation", "inside"), [("add", 1.0), ("subtract", 0.0), ("multiply", 0.5),
                                                   ("and", 1.0), ("xor", 0.0)])
def test_mask_composite(tmp_path, operation, inside):
    prompt = {"d": solid_mask(0.6, 4, 4), "s": solid_mask(1.0, 2, 2),
              "c": {"class_type": "MaskComposite", "inputs": {"destination": ["d", 0], "source": ["s", 0], "x": 1,
                                                              "y": 3, "operation": operation}}}
    out = run(prompt, "c", tmp_path)[0]
    expected = torch.full((4, 4), 0.6)
    expected[3:, 1:3] = {"multiply": 0.6}.get(operation, inside)
    assert torch.allclose(out, expected)


def test_pad_for_outpaint_feathers_the_padded_side(tmp_path):
    prompt = {"i": empty_image(0xFFFFFF, 10, 10),
              "p": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["i", 0], "left": 2, "top": 0,
                                                                    "right": 0, "bottom": 0, "feathering": 3}}}
    image, mask = run(prompt, "p", tmp_path, "image"), run(prompt, "p", tmp_path, "mask")
    assert image.shape == (1, 10, 12, 3) and torch.all(image[0, :, :2] == 0.5) and torch.all(image[0, :, 2:] == 1)
    expected_row = torch.tensor([1.0, 1.0, 1.0, (2 / 3) ** 2, (1 / 3) ** 2] + [0.0] * 7)
    assert mask.shape == (1, 10, 12) and torch.allclose(mask[0], expected_row.expand(10, 12))


def test_image_scale_variants(tmp_path):
    pixels = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    path = png(tmp_path / "2x2.png", pixels)
    src = {"class_type": "LoadImage", "inputs": {"image": path}}
    prompt = {
        "i": src,
        "up": {"class_type": "ImageScale", "inputs": {"image": ["i", 0], "upscale_method": "nearest-exact",
                                                      "width": 16, "height": 0, "crop": "disabled"}},
        "by": {"class_type": "ImageScaleBy", "inputs": {"image": ["up", 0], "upscale_method": "area",
                                                        "scale_by": 0.125}},
        "mp": {"class_type": "ImageScaleToTotalPixels", "inputs": {"image": ["up", 0], "upscale_method": "bilinear",
                                                                   "megapixels": 0.0625}},
        "crop": {"class_type": "ImageScale", "inputs": {"image": ["up", 0], "upscale_method": "nearest-exact",
                                                        "width": 4, "height": 8, "crop": "center"}},
    }
    loaded = run(prompt, "i", tmp_path, "image")
    up = run(prompt, "up", tmp_path)
    assert up.shape == (1, 16, 16, 3)  # height 0 follows the aspect ratio
    # Nearest from the (rounded-to-8) loaded image; area back down to 2x2 gives the quadrant means.
    assert torch.equal(up, torch.nn.functional.interpolate(loaded.movedim(-1, 1), size=(16, 16),
                                                           mode="nearest-exact").movedim(1, -1))
    quadrants = up.reshape(1, 2, 8, 2, 8, 3).mean(dim=(2, 4))
    assert torch.allclose(run(prompt, "by", tmp_path), quadrants, atol=1e-6)
    assert run(prompt, "mp", tmp_path).shape == (1, 256, 256, 3)  # 65536 px from 256: scale by 16
    # centre crop of 16x16 to the 4:8 aspect keeps columns 4..11, then resizes to 4x8
    expected = torch.nn.functional.interpolate(up[:, :, 4:12].movedim(-1, 1), size=(8, 4), mode="nearest-exact")
    assert torch.equal(run(prompt, "crop", tmp_path), expected.movedim(1, -1))


def test_image_batch_resizes_the_second_image(tmp_path):
    prompt = {"a": empty_image(0xFF0000, 8, 4), "b": empty_image(0x00FF00, 16, 16, batch=2),
              "c": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}}}
    out = run(prompt, "c", tmp_path)
    assert out.shape == (3, 4, 8, 3)
    assert torch.all(out[0] == torch.tensor([1.0, 0, 0])) and torch.all(out[1:] == torch.tensor([0, 1.0, 0]))


def test_latent_batches(tmp_path):
    samples = torch.arange(3 * 4 * 2 * 2, dtype=torch.float32).reshape(3, 4, 2, 2)
    prompt = {"l": latent_file(tmp_path / "l.safetensors", samples),
              "r": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["l", 0], "amount": 2}},
              "f": {"class_type": "LatentFromBatch", "inputs": {"samples": ["r", 0], "batch_index": 4, "length": 5}},
              "g": {"class_type": "LatentFromBatch", "inputs": {"samples": ["l", 0], "batch_index": 9, "length": 1}}}
    assert torch.equal(run(prompt, "r", tmp_path).samples, torch.cat([samples, samples]))
    assert torch.equal(run(prompt, "f", tmp_path).samples, samples[1:3])  # items 4, 5 of the six
    assert torch.equal(run(prompt, "g", tmp_path).samples, samples[2:3])  # index moved inside the batch


def test_latent_upscale_and_upscale_by(tmp_path):
    samples = torch.arange(4 * 2 * 2, dtype=torch.float32).reshape(1, 4, 2, 2)
    prompt = {"l": latent_file(tmp_path / "l.safetensors", samples),
              "u": {"class_type": "LatentUpscale", "inputs": {"samples": ["l", 0], "upscale_method": "nearest-exact",
                                                             "width": 32, "height": 0, "crop": "disabled"}},
              "b": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["l", 0], "upscale_method": "bilinear",
                                                               "scale_by": 1.5}},
              "x": {"class_type": "LatentUpscale", "inputs": {"samples": ["l", 0], "upscale_method": "bislerp",
                                                             "width": 64, "height": 64, "crop": "disabled"}}}
    up = run({k: v for k, v in prompt.items() if k != "x"}, "u", tmp_path).samples
    assert torch.equal(up, samples.repeat_interleave(4, 2).repeat_interleave(4, 3))  # at least 64 px: 8 cells
    by = run({k: v for k, v in prompt.items() if k != "x"}, "b", tmp_path).samples
    assert by.shape == (1, 4, 3, 3) and torch.allclose(by[0, 0, 1, 1], samples[0, 0].mean())
    with pytest.raises(WorkflowError, match="use 'bicubic'"):
        graph_from_data(prompt)


def test_latent_composite_and_masked(tmp_path):
    prompt = {"to": latent_file(tmp_path / "to.safetensors", torch.zeros(1, 4, 4, 4)),
              "from": latent_file(tmp_path / "from.safetensors", torch.ones(1, 4, 2, 2)),
              "c": {"class_type": "LatentComposite", "inputs": {"samples_to": ["to", 0], "samples_from": ["from", 0],
                                                                "x": 8, "y": 8, "feather": 0}},
              "f": {"class_type": "LatentComposite", "inputs": {"samples_to": ["to", 0], "samples_from": ["from", 0],
                                                                "x": 8, "y": 8, "feather": 16}},
              "e": {"class_type": "LatentComposite", "inputs": {"samples_to": ["to", 0], "samples_from": ["from", 0],
                                                                "x": 24, "y": 0, "feather": 0}},
              "half": solid_mask(0.5, 16, 16),
              "m": {"class_type": "LatentCompositeMasked", "inputs": {"destination": ["to", 0], "source": ["from", 0],
                                                                      "x": 0, "y": 16, "resize_source": False,
                                                                      "mask": ["half", 0]}}}
    region = torch.zeros(1, 4, 4, 4)
    region[..., 1:3, 1:3] = 1
    assert torch.equal(run(prompt, "c", tmp_path).samples, region)
    # Two cells of feather on a 2x2 paste with room on every side: each cell is faded once across and once down.
    assert torch.allclose(run(prompt, "f", tmp_path).samples, region * 0.25)
    edge = torch.zeros(1, 4, 4, 4)
    edge[..., 0:2, 3:4] = 1  # cut at the destination's right edge
    assert torch.equal(run(prompt, "e", tmp_path).samples, edge)
    masked = torch.zeros(1, 4, 4, 4)
    masked[..., 2:4, 0:2] = 0.5
    assert torch.allclose(run(prompt, "m", tmp_path).samples, masked)


@pytest.mark.slow
def test_tiled_vae_nodes_and_preview_image(builtin_models_dir, tmp_path):
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "builtin:tiny-sdxl"}},
              "i": empty_image(0x808080, 64, 48),
              "e": {"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": ["4", 2]}},
              "et": {"class_type": "VAEEncodeTiled", "inputs": {"pixels": ["i", 0], "vae": ["4", 2], "tile_size": 512,
                                                                "overlap": 64, "temporal_size": 64,
                                                                "temporal_overlap": 8}},
              "d": {"class_type": "VAEDecode", "inputs": {"samples": ["e", 0], "vae": ["4", 2]}},
              "dt": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["et", 0], "vae": ["4", 2],
                                                                "tile_size": 512, "overlap": 64, "temporal_size": 64,
                                                                "temporal_overlap": 8}},
              "p": {"class_type": "PreviewImage", "inputs": {"images": ["dt", 0]}}}
    result = Engine().run(graph_from_data(prompt), outputs=["e", "et", "d", "dt", "p"], output_dir=tmp_path)
    assert torch.equal(result["e"]["latent"].samples, result["et"]["latent"].samples)
    assert torch.equal(result["d"]["image"], result["dt"]["image"])
    (written,) = result.outputs["p"]
    assert Path(written).parent == tmp_path / "previews" and Path(written).is_file()


def test_image_composite_masked_with_offset_and_without_mask(tmp_path):
    prompt = {"d": empty_image(0x000000, 6, 4), "s": empty_image(0xFFFFFF, 3, 3), "m": solid_mask(0.25, 3, 3),
              "off": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["d", 0], "source": ["s", 0],
                                                                       "x": 4, "y": 2, "resize_source": False}},
              "mask": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["d", 0], "source": ["s", 0],
                                                                        "x": 1, "y": 0, "resize_source": False,
                                                                        "mask": ["m", 0]}},
              "fit": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["d", 0], "source": ["s", 0],
                                                                       "x": 0, "y": 0, "resize_source": True}}}
    expected = torch.zeros(1, 4, 6, 3)
    expected[:, 2:4, 4:6] = 1  # cut at the destination's corner
    assert torch.equal(run(prompt, "off", tmp_path), expected)
    expected = torch.zeros(1, 4, 6, 3)
    expected[:, 0:3, 1:4] = 0.25
    assert torch.allclose(run(prompt, "mask", tmp_path), expected)
    assert torch.equal(run(prompt, "fit", tmp_path), torch.ones(1, 4, 6, 3))
