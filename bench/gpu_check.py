"""One prepared script for a lent GPU (under 8 minutes on an H100): the full-size SDXL inpainting
architecture (random weights) at 1024x1024, float16, 4 steps, for offload none / model / sequential /
group and nf4 quantization, each measured as peak VRAM (torch.cuda.max_memory_allocated) and seconds per
step, with diffusers' own StableDiffusionXLInpaintPipeline measured in the same process as the baseline.

    python bench/gpu_check.py                 # builds the model into a temp dir first (~1 minute)
    python bench/gpu_check.py --model DIR     # reuse one from `nodegraph make-tiny-model DIR --full-size`
    python bench/gpu_check.py --dry-run       # same code on the CPU with the tiny model (no CUDA needed)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CONFIGS = [("none", "none"), ("model", "none"), ("sequential", "none"), ("group", "none"), ("none", "nf4")]


def reset() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None


def graph_case(model: str, device: str, offload: str, quantize: str, size: int, steps: int) -> dict[str, object]:
    from nodegraph.context import CancelToken, RunContext, SilentListener
    from nodes.latent import VAEDecode
    from nodes.models import LoadCheckpoint
    from nodes.payloads import Latent
    from nodes.sampling import Sample
    from nodes.text import EncodePrompt

    reset()
    ctx = RunContext("gpu-check", Path("."), SilentListener(), CancelToken(), {}, [])
    dtype = "float16" if device == "cuda" else "float32"
    unet, clip, vae = LoadCheckpoint(source=model, device=device, dtype=dtype, offload=offload, quantize=quantize)
    positive = EncodePrompt(clip=clip, prompt="a red apple on a wooden table", ctx=ctx)
    side = size // 8
    latent = Latent(torch.zeros(1, 4, side, side), torch.zeros(1, 4, side, side), torch.ones(1, 1, side, side))
    start = time.perf_counter()
    sampled = Sample(unet=unet, positive=positive, latent=latent, ctx=ctx, steps=steps, strength=1.0)
    if device == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    image = VAEDecode(vae=vae, latent=sampled, ctx=ctx)
    return {"case": f"graph offload={offload} quantize={quantize}", "peak_vram_mb": peak_mb(),
            "s_per_step": round(per_step, 3), "finite": bool(torch.isfinite(image).all())}


def pipeline_case(model: str, device: str, size: int, steps: int) -> dict[str, object]:
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    reset()
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    image, mask = Image.new("RGB", (size, size), (120, 90, 60)), Image.new("L", (size, size), 255)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(p, i, t, kwargs):  # noqa: ANN001
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return kwargs

    pipe(prompt="a red apple on a wooden table", image=image, mask_image=mask, height=size, width=size,
         num_inference_steps=steps, strength=1.0, callback_on_step_end=on_step,
         generator=torch.Generator().manual_seed(0))
    del pipe
    return {"case": "diffusers pipeline (baseline)", "peak_vram_mb": peak_mb(),
            "s_per_step": round(sum(times[1:]) / max(len(times) - 1, 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="full-size model folder; built into a temp dir when omitted")
    parser.add_argument("--dry-run", action="store_true", help="CPU + tiny model: checks the script, not the GPU")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    size, steps = (64, 2) if args.dry_run else (1024, 4)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from nodes.tiny import make_full_size_model, make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "m") if args.dry_run else make_full_size_model(Path(tmp) / "m"))
        print(json.dumps({"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
                          "size": size, "steps": steps}), flush=True)
        print(json.dumps(pipeline_case(model, device, size, steps)), flush=True)
        for offload, quantize in CONFIGS:
            if device == "cpu" and (offload != "none" or quantize == "nf4"):
                print(json.dumps({"case": f"graph offload={offload} quantize={quantize}", "skipped": "needs CUDA"}))
                continue
            try:
                print(json.dumps(graph_case(model, device, offload, quantize, size, steps)), flush=True)
            except Exception as exc:  # one failing option must not hide the others' figures
                print(json.dumps({"case": f"graph offload={offload} quantize={quantize}",
                                  "error": f"{type(exc).__name__}: {exc}"}), flush=True)


if __name__ == "__main__":
    main()
