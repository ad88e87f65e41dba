"""Peak memory and time of the memory options, on the CPU, with the full-size SDXL inpainting architecture
(random weights): 512x512, 2 denoising steps (CFG batch 2) for the UNet in fp32, bf16, int8 (quanto) and
with sliced attention; and a VAE decode at 2048x2048 pixels with and without tiling.

Every case runs in its own process; its peak RSS is the kernel's figure for that child (wait4). Ratios
are against the fp32 UNet and the untiled decode measured in the same invocation. The int8 case is
measured on its second load, when the quantized weights kept on disk are used (the first load quantizes
the full-precision weights and holds them once, like any first load).

Run: python bench/memory.py --model DIR   (DIR from `nodegraph make-tiny-model DIR --full-size`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from measure import run_measured

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "unet_fp32": {"dtype": "float32"},
    "unet_bf16": {"dtype": "bfloat16"},
    "unet_int8": {"dtype": "bfloat16", "quantize": "int8"},
    "unet_fp32_sliced": {"dtype": "float32", "attention": "sliced"},
    "vae_decode_untiled": {"dtype": "float32"},
    "vae_decode_tiled": {"dtype": "float32", "vae_tiling": True},
}


def run_case(model: str, name: str, pixels: int) -> dict[str, float]:
    """Inside the child: load what the case needs through the node functions and time the work."""
    import torch

    from nodegraph.context import CancelToken, RunContext, SilentListener
    from nodes.latent import VAEDecode
    from nodes.models import LoadCheckpoint
    from nodes.payloads import Conditioning, Latent
    from nodes.sampling import Sample

    options = dict(CASES[name])
    ctx = RunContext("bench", Path("."), SilentListener(), CancelToken(), {}, [])
    unet, _, vae = LoadCheckpoint(source=model, **options)
    start = time.perf_counter()
    with torch.no_grad():
        if name.startswith("unet"):
            side = 512 // 8
            latent = Latent(torch.zeros(1, 4, side, side), torch.zeros(1, 4, side, side), torch.ones(1, 1, side, side))
            cond = Conditioning(torch.randn(1, 77, 2048) * 0.1, torch.randn(1, 1280) * 0.1)
            Sample(unet=unet, positive=cond, latent=latent, ctx=ctx, steps=2, strength=1.0, guidance_scale=5.0)
        else:
            side = pixels // 8
            VAEDecode(vae=vae, latent=Latent(torch.randn(1, 4, side, side)), ctx=ctx)
    return {"work_s": round(time.perf_counter() - start, 2)}


def measure(model: str, name: str, pixels: int, cache: str) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--model", model, "--case", name, "--pixels", str(pixels)]
    env = {**os.environ, "NODEGRAPH_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    measured = run_measured(cmd, ROOT, env, capture=True)
    if measured.exit_code != 0:
        return {"case": name, "failed": measured.exit_code}
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    return {"case": name, "peak_rss_mb": measured.peak_rss_mb, "wall_s": measured.wall_s, **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a full-size model folder (make-tiny-model --full-size)")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--pixels", type=int, default=2048, help="side of the VAE decode case, in pixels")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.case:
        print(json.dumps(run_case(args.model, args.case, args.pixels)))
        return
    with tempfile.TemporaryDirectory() as cache:
        measure(args.model, "unet_int8", args.pixels, cache)  # first load: quantizes and keeps the weights
        rows = {name: measure(args.model, name, args.pixels, cache) for name in CASES}
    for row in rows.values():
        print(json.dumps(row))
    peak = {k: v.get("peak_rss_mb") for k, v in rows.items()}
    ratio = lambda a, b: round(peak[a] / peak[b], 3) if peak.get(a) and peak.get(b) else None  # noqa: E731
    summary = {
        "bf16_over_fp32_peak": ratio("unet_bf16", "unet_fp32"),
        "int8_over_fp32_peak": ratio("unet_int8", "unet_fp32"),
        "int8_over_bf16_peak": ratio("unet_int8", "unet_bf16"),
        "sliced_over_fp32_peak": ratio("unet_fp32_sliced", "unet_fp32"),
        "tiled_over_untiled_decode_peak": ratio("vae_decode_tiled", "vae_decode_untiled"),
        "targets": {"int8 <= 0.6 x bf16": (ratio("unet_int8", "unet_bf16") or 9) <= 0.6,
                    "tiled <= 0.35 x untiled": (ratio("vae_decode_tiled", "vae_decode_untiled") or 9) <= 0.35},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
