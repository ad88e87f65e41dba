"""Graph vs diffusers' StableDiffusionXLInpaintPipeline on the same tiny model and parameters.

Alternates a cold graph run (empty result cache, models already loaded, as the pipeline's are) and a
pipeline call in one process, 5 pairs, for the demo size (128x96, 8 steps) and 512x512 / 20 steps, and
prints the median ratio graph / diffusers. Then reruns the graph with only the seed changed and checks
from the report that EncodePrompt and VAEEncode did not run. Finally it times the Sample node with
per-encoder guidance (guidance_scale_g != guidance_scale_l: 3 UNet rows per step in one call) against
standard CFG (2 rows), alternating, and prints the median ratio (target <= 1.55).
Run: python bench/vs_diffusers.py [--guidance-only]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
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
        for width, height, steps in ((128, 96, 8), (512, 512, 20)):
            if not guidance_only:
                print(json.dumps(measure(model, tmp, width, height, steps)))
            print(json.dumps(guidance_cost(model, tmp, width, height, steps)))


if __name__ == "__main__":
    main()
