"""Graph vs diffusers' StableDiffusionXLInpaintPipeline on the same tiny model and parameters.

Alternates a cold graph run (empty result cache, models already loaded, as the pipeline's are) and a
pipeline call in one process, 5 pairs, for the demo size (128x96, 8 steps) and 512x512 / 20 steps, and
prints the median ratio graph / diffusers. Then reruns the graph with only the seed changed and checks
from the report that EncodePrompt and VAEEncode did not run. Then it times the Sample node with
per-encoder guidance (guidance_scale_g != guidance_scale_l: 3 UNet rows per step in one call) against
standard CFG (2 rows), alternating, and prints the median ratio (target <= 1.55). Add-on rows (512x512,
20 steps): a LoRA vs load_lora_weights + set_adapters, and a ControlNet vs
StableDiffusionXLControlNetInpaintPipeline, then the rerun of the LoRA graph with only its strength changed
(prompts reused only when the LoRA has no text-encoder weights).
Run: python bench/vs_diffusers.py [--guidance-only | --no-addons | --addons-only]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import StableDiffusionXLInpaintPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from nodegraph import Engine  # noqa: E402
from nodes.schedulers import make_scheduler  # noqa: E402
from nodes.tiny import make_tiny_model  # noqa: E402
from tests.sdxl_graphs import inpaint_graph  # noqa: E402

PAIRS = 5


def measure(model: Path, tmp: Path, width: int, height: int, steps: int) -> dict[str, object]:
    image_path, mask_path = tmp / f"img{width}.png", tmp / f"mask{width}.png"
    image = Image.open(ROOT / "workflows" / "demo_image.png").convert("RGB").resize((width, height))
    mask = Image.open(ROOT / "workflows" / "demo_mask.png").convert("L").resize((width, height))
    image.save(image_path)
    mask.save(mask_path)
    options = dict(prompt="a red apple", negative="blurry", seed=0, steps=steps, guidance_scale=7.5)
    graph = inpaint_graph(str(model), image=image_path, mask=mask_path, **options)
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    scheduler_config = dict(pipe.scheduler.config)
    engine = Engine()
    out = tmp / "out"

    def run_graph() -> float:
        engine.memory.clear()  # cold: nothing cached, models stay loaded
        t = time.perf_counter()
        engine.run(graph, output_dir=out)
        return time.perf_counter() - t

    def run_pipe() -> float:
        t = time.perf_counter()
        pipe.scheduler = make_scheduler("euler", "normal", scheduler_config)
        result = pipe(prompt="a red apple", negative_prompt="blurry", image=image, mask_image=mask, height=height,
                      width=width, num_inference_steps=steps, guidance_scale=7.5,
                      generator=[torch.Generator().manual_seed(0)]).images[0]
        result.save(out / "pipe.png")
        return time.perf_counter() - t

    out.mkdir(exist_ok=True)
    run_graph(), run_pipe()  # warm-up: loads models, first-call allocations
    ratios, graph_times, pipe_times = [], [], []
    for _ in range(PAIRS):
        g, p = run_graph(), run_pipe()
        graph_times.append(g)
        pipe_times.append(p)
        ratios.append(g / p)
    graph.set_input("sample", "seed", 1)
    rerun = engine.run(graph, output_dir=out)
    executed = sorted(n for n, v in rerun.nodes.items() if v["status"] == "executed")
    return {
        "size": f"{width}x{height}", "steps": steps,
        "graph_median_s": round(statistics.median(graph_times), 3),
        "diffusers_median_s": round(statistics.median(pipe_times), 3),
        "median_ratio_graph_over_diffusers": round(statistics.median(ratios), 3),
        "seed_rerun_executed": executed,
        "seed_rerun_skips_encoders": not {"positive", "negative", "encode"} & set(executed),
    }


def _pairs(run_graph: Callable[[], float], run_pipe: Callable[[], float]) -> dict[str, float]:
    run_graph(), run_pipe()  # warm-up
    g_times, p_times, ratios = [], [], []
    for _ in range(PAIRS):
        g, p = run_graph(), run_pipe()
        g_times.append(g)
        p_times.append(p)
        ratios.append(g / p)
    return {"graph_median_s": round(statistics.median(g_times), 3),
            "diffusers_median_s": round(statistics.median(p_times), 3),
            "median_ratio_graph_over_diffusers": round(statistics.median(ratios), 3)}


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_addons(model: Path, tmp: Path, size: int = 512, steps: int = 20) -> list[dict[str, object]]:
    from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline

    from nodes.tiny import make_tiny_controlnet, make_tiny_lora

    image_path, mask_path = tmp / f"img{size}.png", tmp / f"mask{size}.png"
    image = Image.open(ROOT / "workflows" / "demo_image.png").convert("RGB").resize((size, size))
    mask = Image.open(ROOT / "workflows" / "demo_mask.png").convert("L").resize((size, size))
    image.save(image_path)
    mask.save(mask_path)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    common = dict(prompt="a red apple", negative_prompt="blurry", image=image, mask_image=mask, height=size,
                  width=size, num_inference_steps=steps, guidance_scale=7.5)
    rows: list[dict[str, object]] = []

    # LoRA (kohya layout, UNet and both text encoders) at 0.8.
    lora = make_tiny_lora(tmp / "lora.safetensors", "kohya", seed=1)
    engine = Engine()

    def lora_graph(strength: float, source: Path = lora):
        """The LoRA as ComfyUI's LoraLoader maps it: UNet and text encoders patched by two nodes, so each
        strength keys only what it changes."""
        g = inpaint_graph(str(model), image=image_path, mask=mask_path, prompt="a red apple", negative="blurry",
                          seed=0, steps=steps, guidance_scale=7.5)
        unet = g.add("LoadLoraModelOnly", id="lora_unet", unet=g["checkpoint"].unet, source=str(source),
                     strength_unet=strength)
        clip = g.add("LoadLoraClipOnly", id="lora_clip", clip=g["checkpoint"].clip, source=str(source),
                     strength_clip=strength)
        for n in ("positive", "negative"):
            g.set_input(n, "clip", clip.clip.link())
        g.set_input("sample", "unet", unet.unet.link())
        return g

    graph = lora_graph(0.8)
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="l")
    pipe.set_adapters(["l"], adapter_weights=[0.8])

    def graph_cold() -> float:
        engine.memory.clear()
        return _timed(lambda: engine.run(graph, output_dir=out))

    rows.append({"row": "lora", "size": f"{size}x{size}", "steps": steps, **_pairs(
        graph_cold, lambda: _timed(lambda: pipe(**common, generator=[torch.Generator().manual_seed(0)])))})

    # The same graph with only the LoRA strength changed, after a run at 0.8: with a LoRA on the text
    # encoders the prompts are encoded again; with a UNet-only LoRA they come from memory.
    unet_only = make_tiny_lora(tmp / "lora_unet.safetensors", "peft", seed=2, components=("unet",))
    for name, source in (("lora_strength_rerun", lora), ("lora_strength_rerun_unet_only", unet_only)):
        engine.run(lora_graph(0.8, source), output_dir=out)
        t = time.perf_counter()
        rerun = engine.run(lora_graph(0.5, source), output_dir=out)
        seconds = time.perf_counter() - t
        executed = sorted(n for n, v in rerun.nodes.items() if v["status"] == "executed")
        rows.append({"row": name, "rerun_s": round(seconds, 3), "executed": executed,
                     "prompts_reused": not {"positive", "negative"} & set(executed)})

    # ControlNet on a Canny edge map of the image (computed once, given to both as an image file), scale 0.8,
    # guidance over the first 80% of the steps.
    from nodegraph.node import REGISTRY
    from nodes.image import pil_to_tensor

    cn = make_tiny_controlnet(tmp / "controlnet", seed=2)
    edge_map = REGISTRY.get("Canny").fn(image=pil_to_tensor(image)[None], low_threshold=0.1, high_threshold=0.3)
    edge_image = Image.fromarray((edge_map[0].numpy() * 255).round().astype("uint8"))
    edge_image.save(tmp / "edges.png")
    g = inpaint_graph(str(model), image=image_path, mask=mask_path, prompt="a red apple", negative="blurry", seed=0,
                      steps=steps, guidance_scale=7.5)
    edges = g.add("LoadImage", id="edges", path=str(tmp / "edges.png"))
    apply = g.add("ApplyControlNet", id="apply", positive=g["positive"].conditioning,
                  negative=g["negative"].conditioning, control_net=g.add("LoadControlNet", id="cn",
                                                                           source=str(cn)).control_net,
                  image=edges.image, strength=0.8, start_percent=0.0, end_percent=0.8)
    g.set_input("sample", "positive", apply.positive.link())
    g.set_input("sample", "negative", apply.negative.link())
    engine = Engine()
    cpipe = StableDiffusionXLControlNetInpaintPipeline.from_pretrained(
        str(model), controlnet=ControlNetModel.from_pretrained(str(cn)))
    cpipe.set_progress_bar_config(disable=True)

    def cn_cold() -> float:
        engine.memory.clear()
        return _timed(lambda: engine.run(g, output_dir=out))

    rows.append({"row": "controlnet", "size": f"{size}x{size}", "steps": steps, **_pairs(cn_cold, lambda: _timed(
        lambda: cpipe(**common, control_image=edge_image, controlnet_conditioning_scale=0.8,
                      control_guidance_start=0.0, control_guidance_end=0.8,
                      generator=[torch.Generator().manual_seed(0)])))})
    return rows


def guidance_cost(model: Path, tmp: Path, width: int, height: int, steps: int) -> dict[str, object]:
    """Sample's own seconds (from the run report) with per-encoder guidance vs standard CFG."""
    image_path, mask_path = tmp / f"img{width}.png", tmp / f"mask{width}.png"
    Image.open(ROOT / "workflows" / "demo_image.png").convert("RGB").resize((width, height)).save(image_path)
    Image.open(ROOT / "workflows" / "demo_mask.png").convert("L").resize((width, height)).save(mask_path)
    engine = Engine()
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    graph = inpaint_graph(str(model), image=image_path, mask=mask_path, negative="blurry", steps=steps)

    def sample_seconds(seed: int, **scales: float) -> float:
        graph.set_input("sample", "seed", seed)  # a new seed: Sample runs, the encodings come from memory
        for name in ("guidance_scale_g", "guidance_scale_l"):
            graph.set_input("sample", name, scales.get(name))
        return float(engine.run(graph, output_dir=out).nodes["sample"]["seconds"])

    sample_seconds(0), sample_seconds(0, guidance_scale_g=9.0, guidance_scale_l=3.0)  # warm-up
    standard, split = [], []
    for i in range(1, PAIRS + 1):
        standard.append(sample_seconds(i))
        split.append(sample_seconds(i, guidance_scale_g=9.0, guidance_scale_l=3.0))
    ratios = [b / a for a, b in zip(standard, split, strict=True)]
    return {"size": f"{width}x{height}", "steps": steps, "cfg_median_s": round(statistics.median(standard), 3),
            "per_encoder_median_s": round(statistics.median(split), 3),
            "median_ratio_per_encoder_over_cfg": round(statistics.median(ratios), 3)}


def main() -> None:
    torch.manual_seed(0)
    guidance_only = "--guidance-only" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = make_tiny_model(tmp / "tiny", in_channels=9)
        addons_only = "--addons-only" in sys.argv[1:]
        for width, height, steps in ((128, 96, 8), (512, 512, 20)):
            if addons_only:
                break
            if not guidance_only:
                print(json.dumps(measure(model, tmp, width, height, steps)))
            print(json.dumps(guidance_cost(model, tmp, width, height, steps)))
        if "--no-addons" not in sys.argv[1:] and not guidance_only:
            for row in measure_addons(model, tmp):
                print(json.dumps(row))


if __name__ == "__main__":
    main()
