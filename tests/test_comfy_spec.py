"""The ComfyUI spec declarations: object_info in ComfyUI's shape, consistent with the converter, and docs."""

from __future__ import annotations

import json

from nodegraph import REGISTRY
from nodegraph.comfy_spec import ComfyClass, comfy_object_info, render_docs
from nodes.comfyui import COMFY_SAMPLERS
from tests.sdxl_graphs import ROOT


def test_object_info_has_comfyuis_shape():
    info = comfy_object_info(REGISTRY, {"checkpoints": ["sdxl.safetensors"], "input_images": ["a.png"]})
    json.dumps(info)  # all JSON
    ks = info["KSampler"]
    assert list(ks["input"]["required"]) == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                             "negative", "latent_image", "denoise"]
    assert ks["input_order"] == {"required": list(ks["input"]["required"])}
    assert ks["input"]["required"]["model"] == ["MODEL"]
    assert ks["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "step": 1,
                                                       "control_after_generate": True,
                                                       "tooltip": "The random seed of the noise."}]
    assert ks["input"]["required"]["sampler_name"][0] == list(COMFY_SAMPLERS) and "uni_pc_bh2" in COMFY_SAMPLERS
    assert (ks["output"], ks["output_is_list"], ks["output_node"], ks["category"]) == (["LATENT"], [False], False,
                                                                                      "sampling")
    assert info["LoadImage"]["input"]["required"]["image"] == [["a.png"], {"image_upload": True}]
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sdxl.safetensors"]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    save = info["SaveImage"]
    assert save["output_node"] and save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["ImageCompositeMasked"]["input_order"]["optional"] == ["mask"]
    native = info["nodegraph.LoadImage"]
    assert "path" in native["input"]["required"] and native["output_name"] == ["image", "mask"]
    for name, entry in info.items():
        assert set(entry) >= {"input", "input_order", "output", "output_is_list", "output_name", "name",
                              "display_name", "description", "category", "output_node", "python_module"}, name
        assert entry["name"] == name and len(entry["output"]) == len(entry["output_name"])


def test_every_declaration_is_consistent():
    REGISTRY.load_entry_points()
    classes = [m for m in REGISTRY.comfy.values() if isinstance(m, ComfyClass)]
    assert len(classes) >= 47
    info = comfy_object_info(REGISTRY)
    for cls in classes:
        entry = info[cls.class_type]
        order = entry["input_order"]["required"] + entry["input_order"].get("optional", [])
        widgets = [n for n in order if cls.input(n).is_widget]  # type: ignore[union-attr]
        assert [w.name for w in cls.widgets()] == widgets, cls.class_type  # the editor's widget order
        assert len(cls.outputs) == len(cls.output_types), cls.class_type
        for spec in cls.inputs:
            if spec.default is not None and spec.type != "COMBO":
                assert spec.check(spec.default) is None, (cls.class_type, spec.name)
            if spec.type == "COMBO" and spec.choices:
                assert spec.default in spec.choices, (cls.class_type, spec.name)


def test_docs_table_is_up_to_date():
    path = ROOT / "docs" / "comfyui.md"
    text = path.read_text()
    assert render_docs(text, REGISTRY) == text, "regenerate: python3 -m nodegraph.comfy_spec docs/comfyui.md"
