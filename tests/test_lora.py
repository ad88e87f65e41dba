"""LoRA nodes: equal to diffusers' load_lora_weights + set_adapters, cache keys, and a shared base model.

Reference = StableDiffusionXLInpaintPipeline on the same tiny model after ``load_lora_weights`` and
``set_adapters`` (VAE encoding switched to the posterior mode, as in test_reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline
from PIL import Image

from nodegraph import Engine, Graph
from nodes.tiny import make_tiny_lora
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, inpaint_graph

TOL = 1e-4
STEPS = 4


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {
        "peft": make_tiny_lora(root / "peft.safetensors", "peft", seed=1),
        "kohya": make_tiny_lora(root / "kohya.safetensors", "kohya", seed=2),
        "unet_only": make_tiny_lora(root / "unet_only.safetensors", "peft", seed=3, components=("unet",)),
        "kohya4": make_tiny_lora(root / "kohya4.safetensors", "kohya", seed=4, in_channels=4),
    }


def reference(model: Path, loras: list[tuple[Path, dict[str, float] | float]], seed: int = 0) -> np.ndarray:
    """The pipeline after load_lora_weights of each LoRA and one set_adapters call with their weights."""
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    if loras:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    init = Image.open(DEMO_IMAGE).convert("RGB")
    mask = Image.open(DEMO_MASK).convert("L")
    return pipe(prompt="a red apple", image=init, mask_image=mask, height=init.height, width=init.width,
                num_inference_steps=STEPS, strength=0.9999, generator=[torch.Generator().manual_seed(seed)],
                output_type="np").images


def lora_graph(model: Path, loras: list[tuple[Path, float, float]], seed: int = 0, split: bool = False) -> Graph:
    """inpaint_graph with LoRAs chained between the checkpoint and the prompt / sampler nodes."""
    g = inpaint_graph(str(model), seed=seed, steps=STEPS)
    unet, clip = g["checkpoint"].unet, g["checkpoint"].clip
    for i, (path, su, sc) in enumerate(loras):
        if split:
            unet = g.add("LoadLoraModelOnly", id=f"lora{i}_unet", unet=unet, source=str(path), strength_unet=su).unet
            clip = g.add("LoadLoraClipOnly", id=f"lora{i}_clip", clip=clip, source=str(path), strength_clip=sc).clip
        else:
            node = g.add("LoadLora", id=f"lora{i}", unet=unet, clip=clip, source=str(path), strength_unet=su,
                         strength_clip=sc)
            unet, clip = node.unet, node.clip
    g.set_input("positive", "clip", clip.link())
    g.set_input("sample", "unet", unet.link())
    return g


def images(g: Graph, tmp_path: Path, engine: Engine | None = None) -> np.ndarray:
    return (engine or Engine()).run(g, output_dir=tmp_path)["decode"]["image"].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["peft", "kohya"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_lora_matches_pipeline(tiny_models, loras, tmp_path, posterior_mode, layout, strength):
    expected = reference(tiny_models[9], [(loras[layout], strength)])
    got = images(lora_graph(tiny_models[9], [(loras[layout], strength, strength)]), tmp_path)
    base = reference(tiny_models[9], [])
    assert float(np.abs(got - base).max()) > 1e-2  # the LoRA really changes the image
    assert float(np.abs(got - expected).max()) <= TOL


@pytest.mark.slow
def test_kohya_lora_on_4_channel_unet(tiny_models, loras, tmp_path, posterior_mode):
    expected = reference(tiny_models[4], [(loras["kohya4"], 0.8)])
    got = images(lora_graph(tiny_models[4], [(loras["kohya4"], 0.8, 0.8)]), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL


@pytest.mark.slow
def test_two_stacked_loras_match_pipeline(tiny_models, loras, tmp_path, posterior_mode):
    expected = reference(tiny_models[9], [(loras["peft"], 0.7), (loras["kohya"], 0.4)])
    got = images(lora_graph(tiny_models[9], [(loras["peft"], 0.7, 0.7), (loras["kohya"], 0.4, 0.4)]), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL


@pytest.mark.slow
def test_separate_unet_and_clip_strengths_match_pipeline(tiny_models, loras, tmp_path, posterior_mode):
    weights = {"unet": 1.0, "text_encoder": 0.3, "text_encoder_2": 0.3}
    expected = reference(tiny_models[9], [(loras["kohya"], weights)])
    for split in (False, True):
        got = images(lora_graph(tiny_models[9], [(loras["kohya"], 1.0, 0.3)], split=split), tmp_path)
        assert float(np.abs(got - expected).max()) <= TOL


@pytest.mark.slow
def test_with_and_without_lora_alternately_in_one_engine(tiny_models, loras, tmp_path):
    """Adapters are switched, never fused: the shared base model is not corrupted for other graphs."""
    model, lora = tiny_models[9], [(loras["peft"], 1.0, 1.0)]
    alone_base = {s: images(lora_graph(model, [], seed=s), tmp_path) for s in (1, 2)}
    alone_lora = {s: images(lora_graph(model, lora, seed=s), tmp_path) for s in (1, 2)}
    engine = Engine()
    for s in (1, 2):  # new seeds each time, so Sample really runs on the shared model
        assert np.array_equal(images(lora_graph(model, [], seed=s), tmp_path, engine), alone_base[s])
        assert np.array_equal(images(lora_graph(model, lora, seed=s), tmp_path, engine), alone_lora[s])
    assert float(np.abs(alone_base[1] - alone_lora[1]).max()) > 1e-2


def _statuses(result) -> dict[str, str]:
    return {n: info["status"] for n, info in result.report()["nodes"].items()}


@pytest.mark.slow
def test_changing_a_lora_strength_reruns_exactly_what_depends_on_it(tiny_models, loras, tmp_path):
    model, lora = tiny_models[9], loras["kohya"]
    engine = Engine()
    engine.run(lora_graph(model, [(lora, 1.0, 1.0)], split=True), output_dir=tmp_path)
    # UNet strength only: the prompt encoding is reused, sampling and everything after it rerun.
    second = _statuses(engine.run(lora_graph(model, [(lora, 0.5, 1.0)], split=True), output_dir=tmp_path))
    assert second["positive"] == "cached" and second["encode"] == "cached" and second["latent_mask"] == "cached"
    assert second["sample"] == "executed" and second["decode"] == "executed"
    # Text-encoder strength only: the prompt is re-encoded (a text encoding with the LoRA is its own entry).
    third = _statuses(engine.run(lora_graph(model, [(lora, 0.5, 0.2)], split=True), output_dir=tmp_path))
    assert third["positive"] == "executed" and third["sample"] == "executed" and third["encode"] == "cached"
    # The same strengths again: every computing node from memory.
    again = _statuses(engine.run(lora_graph(model, [(lora, 0.5, 0.2)], split=True), output_dir=tmp_path))
    assert {again[n] for n in ("positive", "encode", "sample", "decode")} == {"cached"}


@pytest.mark.slow
def test_clip_strength_of_a_unet_only_lora_reruns_nothing(tiny_models, loras, tmp_path):
    model, lora = tiny_models[9], loras["unet_only"]
    engine = Engine()
    engine.run(lora_graph(model, [(lora, 1.0, 1.0)]), output_dir=tmp_path)
    second = _statuses(engine.run(lora_graph(model, [(lora, 1.0, 0.1)]), output_dir=tmp_path))
    assert {second[n] for n in ("positive", "sample", "decode")} == {"cached"}
    # ... whereas the LoRA's content is part of the key: without it the prompt is encoded again.
    plain = _statuses(engine.run(lora_graph(model, []), output_dir=tmp_path))
    assert plain["sample"] == "executed"


def test_lora_key_uses_content_not_path(tiny_models, loras, tmp_path):
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(loras["peft"].read_bytes())
    engine = Engine()
    keys = [engine.plan(lora_graph(tiny_models[9], [(p, 1.0, 1.0)])).nodes["sample"].key
            for p in (loras["peft"], copy)]
    assert keys[0] == keys[1]
    other = engine.plan(lora_graph(tiny_models[9], [(loras["kohya"], 1.0, 1.0)])).nodes["sample"].key
    assert other != keys[0]


def test_lora_source_refused_at_validation(tiny_models, tmp_path):
    from nodegraph import validate
    from nodegraph.errors import WorkflowError

    for bad in (str(tmp_path / "missing.safetensors"), str(tmp_path / "weights.ckpt")):
        with pytest.raises(WorkflowError, match="source"):
            validate(lora_graph(tiny_models[9], [(Path(bad), 1.0, 1.0)]))
