"""ComfyUI UI-format ("workflow") files and ComfyUI-written PNGs: converted as ComfyUI's editor does."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from nodegraph import REGISTRY, Engine, WorkflowError
from nodegraph.comfy_ui import is_ui_workflow, ui_to_api
from nodegraph.workflow import graph_from_data, load_workflow
from tests.sdxl_graphs import ROOT

COMFY = ROOT / "tests" / "comfy"
IMAGE = "workflows/demo_image_alpha.png"


class UIDoc:
    """Builds a UI-format document in the shape ComfyUI's editor saves (version 0.4)."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.subgraphs: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def node(self, node_id: int, node_type: str, widgets: Any = None, inputs: tuple[Any, ...] = (),
             outputs: tuple[str, ...] = (), mode: int = 0, title: str | None = None,
             into: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """inputs: (name, TYPE) for sockets, (name, TYPE, widget name) for widgets turned into inputs."""
        entry = {
            "id": node_id, "type": node_type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": len(self.nodes),
            "mode": mode,
            "inputs": [{"name": i[0], "type": i[1], "link": None, **({"widget": {"name": i[2]}} if len(i) > 2 else {})}
                       for i in inputs],
            "outputs": [{"name": o.lower(), "type": o, "links": [], "slot_index": n} for n, o in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type}, "widgets_values": [] if widgets is None else widgets,
        }
        if title:
            entry["title"] = title
        (self.nodes if into is None else into).append(entry)
        return entry

    def link(self, src: int, slot: int, dst: int, name: str, nodes: list[dict[str, Any]] | None = None,
             links: list[Any] | None = None, as_object: bool = False) -> None:
        nodes = self.nodes if nodes is None else nodes
        links = self.links if links is None else links
        link_id = 1000 + len(self.links) + sum(len(s["links"]) for s in self.subgraphs) + (
            len(links) if links is not self.links else 0)
        target = next(n for n in nodes if n["id"] == dst)
        dst_slot = next(i for i, s in enumerate(target["inputs"]) if s["name"] == name)
        target["inputs"][dst_slot]["link"] = link_id
        kind = target["inputs"][dst_slot]["type"]
        if as_object:
            links.append({"id": link_id, "origin_id": src, "origin_slot": slot, "target_id": dst,
                          "target_slot": dst_slot, "type": kind})
        else:
            links.append([link_id, src, slot, dst, dst_slot, kind])

    def doc(self) -> dict[str, Any]:
        out = {"id": "0b4c9c7e-0000-4000-8000-000000000000", "revision": 0, "last_node_id": 99,
               "last_link_id": 2000, "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
               "extra": {"ds": {"scale": 1, "offset": [0, 0]}, **self.extra}, "version": 0.4}
        if self.subgraphs:
            out["definitions"] = {"subgraphs": self.subgraphs}
        return out


def inpaint_ui(steps_from_primitive: bool = True) -> dict[str, Any]:
    """tests/comfy/inpaint_api.json as the editor saves it, using every pattern on the way: a Reroute, a
    PrimitiveNode, a Note, a muted and a bypassed node, the seed's control value and a subgraph."""
    ui = UIDoc()
    ui.node(4, "CheckpointLoaderSimple", ["builtin:tiny-sdxl-inpaint"], outputs=("MODEL", "CLIP", "VAE"))
    ui.node(10, "LoadImage", [IMAGE, "image"], outputs=("IMAGE", "MASK"), title="Load Image")
    ui.node(30, "Reroute", inputs=(("", "*"),), outputs=("CLIP",))
    ui.link(4, 1, 30, "")
    ui.node(6, "CLIPTextEncode", ["a red apple on a wooden table"], inputs=(("clip", "CLIP"),),
            outputs=("CONDITIONING",))
    ui.link(30, 0, 6, "clip")
    # The negative prompt lives in a subgraph: input CLIP -> CLIPTextEncode -> output CONDITIONING.
    inner_nodes: list[dict[str, Any]] = []
    inner_links: list[Any] = []
    ui.node(1, "CLIPTextEncode", ["blurry"], inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",), into=inner_nodes)
    ui.node(2, "Note", ["the negative prompt"], into=inner_nodes)
    inner_links.append({"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "CLIP"})
    inner_nodes[0]["inputs"][0]["link"] = 1
    inner_links.append({"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                        "type": "CONDITIONING"})
    sub_id = "5e1c5a0e-1111-4222-8333-444455556666"
    ui.subgraphs.append({"id": sub_id, "name": "Negative", "version": 1, "state": {}, "revision": 0, "config": {},
                         "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]},
                         "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
                         "inputs": [{"id": "i0", "name": "clip", "type": "CLIP", "linkIds": [1]}],
                         "outputs": [{"id": "o0", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [2]}],
                         "widgets": [], "nodes": inner_nodes, "links": inner_links})
    ui.node(7, sub_id, inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",), title="Negative")
    ui.link(30, 0, 7, "clip")
    ui.node(31, "InvertMask", inputs=(("mask", "MASK"),), outputs=("MASK",), mode=4)  # bypassed
    ui.link(10, 1, 31, "mask")
    ui.node(20, "InpaintModelConditioning", [True],
            inputs=(("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("pixels", "IMAGE"),
                    ("mask", "MASK")), outputs=("CONDITIONING", "CONDITIONING", "LATENT"))
    for src, slot, name in ((6, 0, "positive"), (7, 0, "negative"), (4, 2, "vae"), (10, 0, "pixels"), (31, 0, "mask")):
        ui.link(src, slot, 20, name)
    steps_input = (("steps", "INT", "steps"),) if steps_from_primitive else ()
    ui.node(3, "KSampler", [42, "randomize", 99 if steps_from_primitive else 4, 7.5, "euler", "normal", 1.0],
            inputs=(("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                    ("latent_image", "LATENT"), *steps_input), outputs=("LATENT",))
    for src, slot, name in ((4, 0, "model"), (20, 0, "positive"), (20, 1, "negative"), (20, 2, "latent_image")):
        ui.link(src, slot, 3, name)
    if steps_from_primitive:
        ui.node(32, "PrimitiveNode", [4, "fixed"], outputs=("INT",), title="steps")
        ui.link(32, 0, 3, "steps")
    ui.node(8, "VAEDecode", inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=("IMAGE",))
    ui.link(3, 0, 8, "samples")
    ui.link(4, 2, 8, "vae")
    ui.node(15, "ImageCompositeMasked", [0, 0, False],
            inputs=(("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")), outputs=("IMAGE",))
    for src, slot, name in ((10, 0, "destination"), (8, 0, "source"), (10, 1, "mask")):
        ui.link(src, slot, 15, name)
    ui.node(9, "SaveImage", ["ComfyUI"], inputs=(("images", "IMAGE"),))
    ui.link(15, 0, 9, "images")
    ui.node(33, "SaveImage", ["muted"], inputs=(("images", "IMAGE"),), mode=2)
    ui.link(8, 0, 33, "images")
    ui.node(34, "MarkdownNote", ["# notes"])
    return ui.doc()


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # ComfyUI image names are relative paths


def test_inpaint_ui_converts_to_the_api_prompt_comfyui_would_queue():
    data = inpaint_ui()
    assert is_ui_workflow(data)
    api = ui_to_api(data, REGISTRY)
    expected = json.loads((COMFY / "inpaint_api.json").read_text())
    assert set(api) == {"4", "10", "6", "7:1", "20", "3", "8", "15", "9"}  # no Reroute/Note/muted/bypassed
    assert api["3"]["inputs"] == expected["3"]["inputs"] | {"negative": ["20", 1]}  # steps 4 from the PrimitiveNode
    assert api["7:1"]["inputs"] == {"text": "blurry", "clip": ["4", 1]}  # through the Reroute and the subgraph
    assert api["20"]["inputs"]["negative"] == ["7:1", 0] and api["20"]["inputs"]["mask"] == ["10", 1]  # bypassed
    assert api["10"] == {"class_type": "LoadImage", "inputs": {"image": IMAGE}, "_meta": {"title": "Load Image"}}
    assert api["15"]["inputs"] == expected["15"]["inputs"]


@pytest.mark.slow
def test_ui_api_and_png_forms_give_identical_images(builtin_models_dir, at_root, tmp_path):
    api_graph = load_workflow(COMFY / "inpaint_api.json")
    ui_path = tmp_path / "inpaint.json"
    ui_path.write_text(json.dumps(inpaint_ui()))
    ui_graph = load_workflow(ui_path)
    assert ui_graph.metadata["imported_from"] == "comfyui-ui"
    a = Engine().run(api_graph, output_dir=tmp_path / "a")
    b = Engine().run(ui_graph, output_dir=tmp_path / "b")
    assert torch.equal(a["15"]["image"], b["15"]["image"])
    # A PNG as ComfyUI's SaveImage writes it: 'prompt' (API JSON) and 'workflow' (editor JSON) text chunks.
    png = tmp_path / "ComfyUI_00001_.png"
    info = PngInfo()
    info.add_text("prompt", (COMFY / "inpaint_api.json").read_text())
    info.add_text("workflow", json.dumps(inpaint_ui()))
    PILImage.new("RGB", (8, 8)).save(png, pnginfo=info)
    c = Engine().run(load_workflow(png), output_dir=tmp_path / "c")
    assert torch.equal(a["15"]["image"], c["15"]["image"])


def test_png_with_only_a_workflow_chunk_reads_the_editor_json(tmp_path):
    png = tmp_path / "old.png"
    info = PngInfo()
    info.add_text("workflow", json.dumps(inpaint_ui()))
    PILImage.new("RGB", (8, 8)).save(png, pnginfo=info)
    graph = load_workflow(png)
    assert graph.metadata["imported_from"] == "comfyui-ui" and graph.nodes["3"].inputs["steps"] == 4
    png2 = tmp_path / "both.png"
    info.add_text("prompt", (COMFY / "inpaint_api.json").read_text())
    PILImage.new("RGB", (8, 8)).save(png2, pnginfo=info)
    assert load_workflow(png2).metadata["imported_from"] == "comfyui-api"


def _sampler_doc(widgets: Any) -> dict[str, Any]:
    ui = UIDoc()
    ui.node(3, "KSampler", widgets, inputs=(("model", "MODEL"), ("positive", "CONDITIONING"),
                                            ("negative", "CONDITIONING"), ("latent_image", "LATENT")))
    return ui.doc()


@pytest.mark.parametrize(("widgets", "expected"), [
    ([5, "increment", 12, 6.5, "ddim", "karras", 0.5],
     {"seed": 5, "steps": 12, "cfg": 6.5, "sampler_name": "ddim", "scheduler": "karras", "denoise": 0.5}),
    # An older file without the control value, and a newer one with a trailing value we do not know.
    ([5, 12, 6.5, "ddim", "karras", 0.5],
     {"seed": 5, "steps": 12, "cfg": 6.5, "sampler_name": "ddim", "scheduler": "karras", "denoise": 0.5}),
    ([5, "fixed", 12, 6.5, "ddim", "karras", 0.5, "extra"],
     {"seed": 5, "steps": 12, "cfg": 6.5, "sampler_name": "ddim", "scheduler": "karras", "denoise": 0.5}),
    ([5, "fixed", 12, 6.5, "ddim", "karras"],  # one short: denoise keeps its default
     {"seed": 5, "steps": 12, "cfg": 6.5, "sampler_name": "ddim", "scheduler": "karras"}),
    ({"seed": 5, "steps": 12}, {"seed": 5, "steps": 12}),  # widgets saved by name
])
def test_widget_values_map_onto_inputs_in_spec_order(widgets, expected):
    assert ui_to_api(_sampler_doc(widgets), REGISTRY)["3"]["inputs"] == expected


def test_a_thousand_reroutes_resolve_without_recursion():
    ui = UIDoc()
    ui.node(1, "CheckpointLoaderSimple", ["builtin:tiny-sdxl"], outputs=("MODEL", "CLIP", "VAE"))
    previous, slot = 1, 1
    for i in range(100, 1100):
        ui.node(i, "Reroute", inputs=(("", "*"),), outputs=("*",))
        ui.link(previous, slot, i, "")
        previous, slot = i, 0
    ui.node(2, "CLIPTextEncode", ["x"], inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",))
    ui.link(previous, 0, 2, "clip")
    assert ui_to_api(ui.doc(), REGISTRY)["2"]["inputs"] == {"text": "x", "clip": ["1", 1]}


def test_bypass_passes_the_input_of_the_output_type():
    ui = UIDoc()
    ui.node(1, "LoadImage", ["a.png", "image"], outputs=("IMAGE", "MASK"))
    # A bypassed VAEEncodeForInpaint-like node with IMAGE and MASK inputs: its MASK-typed output takes the mask.
    ui.node(2, "ImageCompositeMasked", [0, 0, False],
            inputs=(("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")), outputs=("IMAGE",), mode=4)
    ui.link(1, 0, 2, "destination")
    ui.link(1, 1, 2, "mask")
    ui.node(3, "InvertMask", inputs=(("mask", "MASK"),), outputs=("MASK",), mode=4)
    ui.link(1, 1, 3, "mask")
    ui.node(4, "SaveImage", ["x"], inputs=(("images", "IMAGE"),))
    ui.link(2, 0, 4, "images")
    ui.node(5, "GrowMask", [3, True], inputs=(("mask", "MASK"),), outputs=("MASK",))
    ui.link(3, 0, 5, "mask")
    api = ui_to_api(ui.doc(), REGISTRY)
    assert api["4"]["inputs"]["images"] == ["1", 0] and api["5"]["inputs"]["mask"] == ["1", 1]
    assert set(api) == {"1", "4", "5"}


def test_muted_node_drops_the_link_and_validation_names_the_ui_node():
    ui = UIDoc()
    ui.node(1, "LoadImage", ["a.png", "image"], outputs=("IMAGE", "MASK"), mode=2)
    ui.node(2, "SaveImage", ["x"], inputs=(("images", "IMAGE"),), title="Final")
    ui.link(1, 0, 2, "images")
    api = ui_to_api(ui.doc(), REGISTRY)
    assert api == {"2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}, "_meta": {"title": "Final"}}}


def test_unknown_types_are_all_reported_with_ui_id_title_and_alternative():
    ui = UIDoc()
    ui.node(1, "UpscaleModelLoader", ["4x.pth"], title="Upscaler")
    ui.node(2, "LoadImageMasks", ["a.png"])
    ui.node(3, "Note", ["fine"])
    with pytest.raises(WorkflowError) as info:
        ui_to_api(ui.doc(), REGISTRY)
    issues = {i.node: i for i in info.value.issues}
    assert set(issues) == {"1", "2"} and all(i.kind == "unknown_comfy_type" for i in issues.values())
    assert "UpscaleModelLoader #1 'Upscaler'" in issues["1"].message
    assert issues["2"].expected == "LoadImageMask" and "nearest supported one is 'LoadImageMask'" in issues["2"].message


def test_errors_inside_a_subgraph_name_the_flattened_ui_id():
    data = inpaint_ui()
    data["definitions"]["subgraphs"][0]["nodes"][0]["type"] = "CLIPTextEncodeFancy"
    with pytest.raises(WorkflowError) as info:
        ui_to_api(data, REGISTRY)
    (issue,) = info.value.issues
    assert issue.node == "7:1" and "CLIPTextEncodeFancy #7:1" in issue.message


def test_subgraph_promoted_widget_value_feeds_the_inner_widget():
    ui = UIDoc()
    inner: list[dict[str, Any]] = []
    ui.node(1, "EmptyLatentImage", [512, 512, 1], inputs=(("width", "INT", "width"),), outputs=("LATENT",), into=inner)
    inner[0]["inputs"][0]["link"] = 1
    links = [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
             {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}]
    sub = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    ui.subgraphs.append({"id": sub, "name": "Latent", "inputs": [{"name": "width", "type": "INT", "linkIds": [1]}],
                         "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [2]}], "nodes": inner,
                         "links": links, "inputNode": {"id": -10}, "outputNode": {"id": -20}})
    ui.node(5, sub, [768], inputs=(("width", "INT", "width"),), outputs=("LATENT",))
    ui.node(6, "VAEDecode", inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=("IMAGE",))
    ui.link(5, 0, 6, "samples")
    api = ui_to_api(ui.doc(), REGISTRY)
    assert api["5:1"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert api["6"]["inputs"] == {"samples": ["5:1", 0]}


def test_legacy_group_node_expands_into_its_inner_nodes():
    ui = UIDoc()
    ui.extra["groupNodes"] = {"Encode both": {
        "nodes": [{"index": 0, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": None}],
                   "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
                   "widgets_values": ["default a"]},
                  {"index": 1, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": None}],
                   "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
                   "widgets_values": ["default b"]}],
        "links": [], "external": []}}
    ui.node(1, "CheckpointLoaderSimple", ["builtin:tiny-sdxl"], outputs=("MODEL", "CLIP", "VAE"))
    ui.node(2, "workflow>Encode both", ["positive text", "negative text"],
            inputs=(("clip", "CLIP"), ("clip", "CLIP")), outputs=("CONDITIONING", "CONDITIONING"))
    ui.link(1, 1, 2, "clip")
    ui.nodes[1]["inputs"][1]["link"] = ui.nodes[1]["inputs"][0]["link"]
    ui.node(4, "KSampler", [1, "fixed", 2, 7.0, "euler", "normal", 1.0],
            inputs=(("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                    ("latent_image", "LATENT")))
    ui.link(2, 0, 4, "positive")
    ui.link(2, 1, 4, "negative")
    api = ui_to_api(ui.doc(), REGISTRY)
    assert api["2:0"]["inputs"] == {"text": "positive text", "clip": ["1", 1]}
    assert api["2:1"]["inputs"] == {"text": "negative text", "clip": ["1", 1]}
    assert api["4"]["inputs"]["positive"] == ["2:0", 0] and api["4"]["inputs"]["negative"] == ["2:1", 0]


def test_ui_file_loads_as_a_graph_with_comfy_ids():
    graph = graph_from_data(inpaint_ui())
    assert graph.metadata["comfy_ids"]["20.enc"] == "20"
    assert graph.nodes["7:1"].type == "EncodePrompt"


def test_convert_command_prints_api_and_writes_native(tmp_path, capsys):
    from nodegraph.cli import main

    ui_path = tmp_path / "wf.json"
    ui_path.write_text(json.dumps(inpaint_ui()))
    assert main(["convert", str(ui_path), "--to", "api"]) == 0
    assert json.loads(capsys.readouterr().out) == ui_to_api(inpaint_ui(), REGISTRY)
    native = tmp_path / "native.json"
    assert main(["convert", str(ui_path), "-o", str(native)]) == 0
    assert load_workflow(native).nodes == load_workflow(ui_path).nodes
    # A native file has an API form too (nodegraph.<Type> class_types), which loads back to the same graph.
    api = tmp_path / "api.json"
    assert main(["convert", str(native), "--to", "api", "-o", str(api)]) == 0
    assert json.loads(api.read_text())["20.enc"]["class_type"] == "nodegraph.VAEEncode"
    assert load_workflow(api).nodes == load_workflow(native).nodes
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**inpaint_ui(), "nodes": [{"id": 1, "type": "Nope", "mode": 0}]}))
    assert main(["convert", str(bad)]) == 2


def test_native_nodes_in_ui_files_map_widgets_with_the_seed_control_value():
    ui = UIDoc()
    ui.node(1, "nodegraph.Sample", [7, "randomize", 2, 12], inputs=(("unet", "UNET"), ("positive", "CONDITIONING"),
                                                                   ("latent", "LATENT")))
    inputs = ui_to_api(ui.doc(), REGISTRY)["1"]["inputs"]
    assert inputs == {"seed": 7, "batch_size": 2, "steps": 12}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=4), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.text(max_size=12), json_values), min_size=1, max_size=4))
def test_malformed_ui_files_are_workflow_errors_not_crashes(edits):
    """Replace parts of a valid UI file with arbitrary JSON: the converter answers or says what is wrong."""
    data = inpaint_ui()
    for pick, key, value in edits:
        targets: list[Any] = [data, *data["nodes"], *data["links"], *data["definitions"]["subgraphs"]]
        target = targets[pick % len(targets)]
        if isinstance(target, dict):
            keys = list(target)
            target[keys[pick % len(keys)] if key == "" or pick % 2 else key] = value
        else:
            target[pick % len(target)] = value
    try:
        graph_from_data(data)  # conversion, then the API import and its checks
    except WorkflowError:
        pass
