"""Image and mask nodes end to end on the tiny model: composite, save/rerun, sizes, masks, crops."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import Graph, NodeExecutionError
from nodegraph.cli import main
from nodegraph.workflow import PNG_TEXT_KEY
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, FAST, ROOT, inpaint_graph, run

pytestmark = pytest.mark.slow  # every test here runs the tiny model end to end


def with_composite(g: Graph, feather: int = 0) -> Graph:
    comp = g.add("CompositeMasked", id="composite", original=g["image"].image, generated=g["decode"].image,
                 mask=g["mask"].mask, feather=feather)
    g.set_input("save", "image", comp.image.link())
    return g


@pytest.mark.parametrize("feather", [0, 3])
def test_composite_leaves_every_unmasked_pixel_equal(tiny_models, tmp_path, feather):
    result = run(with_composite(inpaint_graph(str(tiny_models[9]), **FAST), feather), tmp_path)
    original, out = result["image"]["image"], result["composite"]["image"]
    keep = result["mask"]["mask"] == 0
    assert torch.equal(out[keep], original[keep])
    repaint = result["mask"]["mask"] >= 0.999
    inner = repaint.clone()
    if feather:  # well inside the mask, far from the feathered seam
        inner = torch.nn.functional.max_pool2d((~repaint).float()[None], 2 * feather + 3, 1, feather + 1)[0] == 0
    assert torch.allclose(out[inner], result["decode"]["image"][inner], atol=1e-6)


def test_saved_png_carries_the_workflow_and_reruns(builtin_models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["run", "workflows/demo_tiny.json", "--output-dir", str(out), "--quiet",
                 "--set", "sample.steps=2"]) == 0
    (png,) = out.glob("demo_*.png")
    embedded = json.loads(Image.open(png).text[PNG_TEXT_KEY])
    assert embedded["nodes"]["sample"]["inputs"]["steps"] == 2
    rerun = ["run", str(png), "--output-dir", str(out), "--quiet", "--report", str(tmp_path / "r.json")]
    assert main(rerun) == 2  # a PNG's workflow is untrusted: it may not read the demo images elsewhere
    assert main([*rerun, "--trust-workflow"]) == 0  # our own PNG
    assert len(list(out.glob("demo_*.png"))) == 2
    nodes = json.loads((tmp_path / "r.json").read_text())["nodes"]
    assert nodes["composite"]["cache"] == "disk" and nodes["sample"] | {"seconds": 0} == {
        "type": "Sample", "status": "cached", "cache": "disk", "read": False, "seconds": 0}


def test_image_and_mask_of_different_sizes(tiny_models, tmp_path):
    small = tmp_path / "small_mask.png"
    Image.new("L", (64, 64), 255).save(small)
    with pytest.raises(NodeExecutionError) as info:
        run(inpaint_graph(str(tiny_models[9]), mask=small, **FAST), tmp_path)
    assert info.value.node_id == "encode"
    assert "image is 128x96 but mask is 64x64" in str(info.value)


def test_sizes_not_multiple_of_8_are_rounded_down_with_a_warning(tiny_models, tmp_path, caplog):
    odd_image, odd_mask = tmp_path / "odd.png", tmp_path / "odd_mask.png"
    Image.open(DEMO_IMAGE).resize((101, 75)).save(odd_image)
    Image.open(DEMO_MASK).resize((101, 75)).save(odd_mask)
    with caplog.at_level(logging.WARNING):
        result = run(inpaint_graph(str(tiny_models[9]), image=odd_image, mask=odd_mask, **FAST), tmp_path)
    assert result["decode"]["image"].shape == (1, 72, 96, 3)
    assert "101x75 resized to 96x72" in caplog.text
    g = inpaint_graph(str(tiny_models[9]), image=odd_image, mask=odd_mask, **FAST)
    g.set_input("image", "round_to", 1)
    with pytest.raises(NodeExecutionError, match="must be multiples of 8"):
        run(g, tmp_path)


@pytest.mark.parametrize("fill", [0, 255])
def test_empty_and_full_masks_still_work(tiny_models, tmp_path, fill):
    mask = tmp_path / "m.png"
    Image.new("L", (128, 96), fill).save(mask)
    result = run(with_composite(inpaint_graph(str(tiny_models[9]), mask=mask, **FAST)), tmp_path)
    out, original, generated = result["composite"]["image"], result["image"]["image"], result["decode"]["image"]
    assert torch.equal(out, original) if fill == 0 else torch.equal(out, generated)


def test_thin_strokes_survive_max_downsampling(tiny_models, tmp_path):
    stroke = tmp_path / "stroke.png"
    arr = np.zeros((96, 128), dtype=np.uint8)
    arr[:, 61:63] = 255  # 2 pixels wide, thinner than one latent cell
    Image.fromarray(arr).save(stroke)
    masks = {}
    for mode in ("nearest", "max", "area"):
        result = run(inpaint_graph(str(tiny_models[9]), mask=stroke, mask_mode=mode, **FAST), tmp_path)
        masks[mode] = result["latent_mask"]["latent"].mask
    assert masks["nearest"].sum() == 0
    assert masks["max"][0, 0, :, 7].eq(1).all() and masks["max"].sum() == 12
    assert torch.allclose(masks["area"][0, 0, :, 7], torch.full((12,), 0.25))


def test_crop_to_mask_and_back(tiny_models, tmp_path):
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="checkpoint", source=str(tiny_models[9]))
    img = g.add("LoadImage", id="image", path=str(DEMO_IMAGE))
    msk = g.add("LoadMask", id="mask", path=str(DEMO_MASK))
    crop = g.add("CropToMask", id="crop", image=img.image, mask=msk.mask, padding=4, width=64, height=64)
    pos = g.add("EncodePrompt", clip=ckpt.clip, prompt="an apple")
    enc = g.add("VAEEncode", vae=ckpt.vae, image=crop.image, mask=crop.mask)
    lat = g.add("DownsampleMask", latent=enc.latent, mask=crop.mask)
    smp = g.add("Sample", unet=ckpt.unet, positive=pos.conditioning, latent=lat.latent, steps=2)
    dec = g.add("VAEDecode", vae=ckpt.vae, latent=smp.latent)
    back = g.add("UncropToMask", id="uncrop", original=img.image, generated=dec.image, mask=msk.mask,
                 region=crop.region)
    g.add("SaveImage", image=back.image)
    result = run(g, tmp_path)
    x0, y0, x1, y1 = result["crop"]["region"].box
    m = result["mask"]["mask"][0]
    ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
    assert x0 <= int(xs.min()) and int(xs.max()) < x1 and y0 <= int(ys.min()) and int(ys.max()) < y1
    assert abs((x1 - x0) / (y1 - y0) - 1.0) < 0.1  # widened to the 64x64 aspect
    assert result["crop"]["image"].shape == (1, 64, 64, 3)
    out, original = result["uncrop"]["image"], result["image"]["image"]
    assert torch.equal(out[0][m == 0], original[0][m == 0])
    assert not torch.equal(out, original)
