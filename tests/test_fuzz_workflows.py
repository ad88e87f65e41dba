"""Random and malformed workflow documents never produce anything but a structured WorkflowError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodegraph import WorkflowError, validate
from nodegraph.workflow import graph_from_data, parse_json_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
node_types = st.sampled_from(["Number", "Add", "Format", "Split", "WriteText", "Count", "Nope", ""])
input_names = st.sampled_from(["value", "a", "b", "n", "text", "style", "pair", "steps", "name", "zz"])
node_ids = st.sampled_from(["a", "b", "c", "d"])
links = st.tuples(node_ids | st.integers(), st.sampled_from(["value", "sum", "text", "length", "x"]) | st.integers())
inputs = st.dictionaries(input_names, json_values | links.map(list), max_size=4)
nodes = st.dictionaries(node_ids, st.fixed_dictionaries({"type": node_types, "inputs": inputs}), max_size=4)
workflows = st.fixed_dictionaries({"version": st.sampled_from([1, 1, 1, 2, "1"]), "nodes": nodes}) | json_values


def check(data) -> None:
    try:
        validate(graph_from_data(data))
    except WorkflowError as err:
        assert err.issues and all(i.message for i in err.issues)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows)
def test_random_workflows_give_structured_errors_only(data):
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_structured_errors_only(text):
    try:
        data = parse_json_text(text)
    except WorkflowError:
        return
    check(data)


@settings(max_examples=100, deadline=None)
@given(nodes)
def test_mutated_valid_json_round_trips_or_errors(node_map):
    text = json.dumps({"version": 1, "nodes": node_map})
    check(parse_json_text(text))


import nodes.catalog  # noqa: E402,F401  (the SDXL pack: its ComfyUI mappings are what this property exercises)

comfy_types = st.sampled_from(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncodeSDXL", "EmptyLatentImage",
                               "VAEEncode", "VAEEncodeForInpaint", "InpaintModelConditioning", "SetLatentNoiseMask",
                               "KSampler", "KSamplerAdvanced", "VAEDecode", "LoadImage", "SaveImage",
                               "ImageCompositeMasked", "Unknown"])
comfy_ids = st.sampled_from(["1", "2", "3", "4"])
comfy_inputs = st.dictionaries(
    st.sampled_from(["model", "clip", "vae", "pixels", "mask", "positive", "negative", "latent_image", "samples",
                     "text", "seed", "steps", "cfg", "denoise", "x", "y", "images", "image", "start_at_step",
                     "end_at_step", "width", "height", "destination", "source", "ckpt_name"]),
    json_values | st.tuples(comfy_ids | st.integers(), st.integers(-1, 3)).map(list), max_size=6)
comfy_docs = st.dictionaries(comfy_ids, st.fixed_dictionaries({"class_type": comfy_types, "inputs": comfy_inputs}),
                             min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comfy_docs)
def test_random_comfy_api_documents_give_structured_errors_only(data):
    check(data)
