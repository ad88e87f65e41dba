"""ComfyUI API-format files load through the declared mappings (ComfyClass specs in nodes/comfyui.py)."""

from __future__ import annotations

import json
import math

import pytest

from nodegraph import Engine, WorkflowError
from nodegraph.graph import Link
from nodegraph.workflow import graph_from_data, parse_json_text
from tests import toy_nodes  # noqa: F401  (registers Square)

INPAINT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "builtin:tiny-sdxl-inpaint"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "a.png", "upload": "image"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
    "20": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1],
                                                          "grow_mask_by": 6}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "cfg": 7.5, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["20", 0]},
          "_meta": {"title": "My sampler"}},
}


def test_primitive_values_pass_through_as_literals_and_native_nodes_are_addressed_by_prefix(tmp_path):
    data = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "nodegraph.Square", "inputs": {"x": ["2", 0]}}}
    graph = graph_from_data(data)
    assert set(graph.nodes) == {"3"} and graph.nodes["3"].inputs == {"x": 3}
    assert Engine().run(graph, outputs=["3"], output_dir=tmp_path)["3"]["value"] == 9


def test_links_are_translated_by_index_and_ids_are_recorded():
    graph = graph_from_data(INPAINT)
    assert graph.nodes["3"].inputs["latent"] == Link("20", "latent")
    assert graph.nodes["20"].inputs["latent"] == Link("20.enc", "latent")
    assert graph.metadata["comfy_ids"]["20.enc"] == "20" and graph.metadata["comfy_ids"]["3"] == "3"
    assert graph.metadata["comfy_titles"] == {"3": "My sampler"}


def test_unknown_class_types_are_all_reported_with_title_and_nearest_alternative():
    data = {"1": {"class_type": "KSamplr", "inputs": {}, "_meta": {"title": "Sampler A"}},
            "2": {"class_type": "FancyUpscaler", "inputs": {}},
            "3": {"class_type": "PrimitiveInt", "inputs": {"value": ["9", 0]}}}
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    unknown = {i.node: i for i in info.value.issues if i.kind == "unknown_comfy_type"}
    assert set(unknown) == {"1", "2"}
    assert unknown["1"].expected == "KSampler" and "'Sampler A'" in unknown["1"].message
    assert ("missing_node", "3") in {(i.kind, i.node) for i in info.value.issues}


def test_a_thousand_deep_chain_of_pass_through_nodes_resolves_without_recursion():
    data = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 7}}}
    for i in range(1, 1001):
        data[str(i)] = {"class_type": "PrimitiveInt", "inputs": {"value": [str(i - 1), 0]}}
    data["sq"] = {"class_type": "nodegraph.Square", "inputs": {"x": ["1000", 0]}}
    graph = graph_from_data(data)
    assert graph.nodes["sq"].inputs == {"x": 7}


def test_pass_through_loop_is_a_cycle_issue():
    data = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": ["2", 0]}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "nodegraph.Square", "inputs": {"x": ["1", 0]}}}
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    assert "cycle" in {i.kind for i in info.value.issues}


def test_generated_ids_never_collide_with_user_ids():
    data = dict(INPAINT)
    data["20.enc"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    (issue,) = info.value.issues
    assert issue.kind == "duplicate_id" and issue.node == "20" and issue.found == "20.enc"


def test_non_finite_and_out_of_range_numbers_are_structured_errors():
    text = json.dumps({"3": {"class_type": "KSamplerAdvanced",
                             "inputs": {"steps": "INF", "noise_seed": 1, "cfg": "NAN", "model": ["4", 0],
                                        "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["20", 0],
                                        "start_at_step": -1}}})
    text = text.replace('"INF"', "Infinity").replace('"NAN"', "NaN")
    data = {**INPAINT, **parse_json_text(text)}
    assert math.isinf(data["3"]["inputs"]["steps"])
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    found = {(i.kind, i.node, i.input) for i in info.value.issues}
    assert found == {("invalid_value", "3", "steps"), ("invalid_value", "3", "cfg"),
                     ("invalid_value", "3", "start_at_step")}
    assert all("KSamplerAdvanced #3" in i.message for i in info.value.issues)


def test_unimplemented_sampler_names_say_what_to_use_instead():
    data = json.loads(json.dumps(INPAINT))
    data["3"]["inputs"]["sampler_name"] = "euler_cfg_pp"
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    (issue,) = info.value.issues
    assert issue.node == "3" and issue.input == "sampler_name"
    assert "'euler_cfg_pp'" in issue.message and "use 'euler' instead" in issue.message
    data["3"]["inputs"]["sampler_name"] = "dpmpp_2m_sde_gpu"  # the same sampler as the CPU one here
    assert graph_from_data(data).nodes["3"].inputs["sampler"] == "dpmpp_2m_sde"
    data["3"]["inputs"]["sampler_name"] = "not_a_sampler"
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    assert "not one of" in info.value.issues[0].message


def test_load_image_names_annotated_with_the_input_directory():
    data = {"10": {"class_type": "LoadImage", "inputs": {"image": "sub/a b.png [input]", "upload": "image"}},
            "11": {"class_type": "LoadImageMask", "inputs": {"image": "m.png [input]", "channel": "alpha"}}}
    graph = graph_from_data(data)
    assert graph.nodes["10"].inputs == {"path": "sub/a b.png"}
    assert graph.nodes["11"].inputs == {"path": "m.png", "channel": "alpha", "invert": True, "round_to": 1}
