"""Where a UNet step's time goes on this machine, and what the layout and kernel choices change.

One full-size SDXL inpainting UNet (random weights, `nodegraph make-tiny-model DIR --full-size`) called as
Sample calls it under CFG (batch 2, 9 input channels, 77 tokens), at one size. For each dtype the variants
are timed in alternation, round by round, and reported as the median per call and its ratio to the first
variant of that dtype (the default path: contiguous memory, PyTorch's SDPA choice), measured in the same
run. ``--compile`` then compiles the UNet the way ``compile='unet'`` does and times its first call (the
compilation) and later calls. ``--profile`` adds the operators that took the most time in one call of each dtype's default variant
(torch.profiler, self CPU time).

Run: python bench/unet_step.py --model DIR [--size 256 --rounds 3 --dtypes float32,bfloat16 --profile --compile]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def inputs(size: int, dtype: torch.dtype) -> dict[str, Any]:
    side = size // 8
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(2, 9, side, side, generator=g).to(dtype),
        "timestep": torch.tensor(500.0),
        "encoder_hidden_states": (torch.randn(2, 77, 2048, generator=g) * 0.1).to(dtype),
        "added_cond_kwargs": {"text_embeds": (torch.randn(2, 1280, generator=g) * 0.1).to(dtype),
                              "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype)},
        "return_dict": False,
    }


def variants(unet: Any) -> dict[str, Callable[[], contextlib.AbstractContextManager[Callable[[dict[str, Any]], Any]]]]:
    """name -> a context that sets the variant up (untimed), yields the call to time, and undoes it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    @contextlib.contextmanager
    def plain() -> Iterator[Callable[[dict[str, Any]], Any]]:
        yield lambda kw: unet(**kw)

    @contextlib.contextmanager
    def channels_last() -> Iterator[Callable[[dict[str, Any]], Any]]:
        unet.to(memory_format=torch.channels_last)  # the weights once, as a load-time option would
        try:
            yield lambda kw: unet(**{**kw, "sample": kw["sample"].contiguous(memory_format=torch.channels_last)})
        finally:
            unet.to(memory_format=torch.contiguous_format)

    @contextlib.contextmanager
    def channels_last_weights() -> Iterator[Callable[[dict[str, Any]], Any]]:
        unet.to(memory_format=torch.channels_last)  # the input stays as Sample passes it (contiguous)
        try:
            yield lambda kw: unet(**kw)
        finally:
            unet.to(memory_format=torch.contiguous_format)

    def kernel(backend: Any) -> Callable[[], contextlib.AbstractContextManager[Callable[[dict[str, Any]], Any]]]:
        @contextlib.contextmanager
        def use() -> Iterator[Callable[[dict[str, Any]], Any]]:
            with sdpa_kernel(backend):
                yield lambda kw: unet(**kw)
        return use

    return {"sdpa (default)": plain, "channels_last": channels_last, "channels_last weights": channels_last_weights,
            "math attention": kernel(SDPBackend.MATH),
            "flash attention": kernel(SDPBackend.FLASH_ATTENTION)}


def time_call(variant: Callable[[], contextlib.AbstractContextManager[Callable[[dict[str, Any]], Any]]],
              kw: dict[str, Any]) -> float:
    with variant() as call:
        start = time.perf_counter()
        call(kw)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time the UNet compiled by LoadCheckpoint's compile='unet' (first call separately)")
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {args.size}, CFG batch 2")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=dtype).eval()
        kw = inputs(args.size, dtype)
        calls = variants(unet)
        times: dict[str, list[float]] = {v: [] for v in calls}
        with torch.no_grad():
            for variant in calls.values():  # warm-up: first calls allocate and pick kernels
                time_call(variant, kw)
            for _ in range(args.rounds):
                for v, variant in calls.items():
                    times[v].append(time_call(variant, kw))
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    unet(**kw)
            if args.compile:
                from nodes.compile import compile_component

                compile_component(unet, "unet", "unet", "cpu")
                first = time_call(calls["sdpa (default)"], kw)
                print(f"{name}: first compiled call (compiles) {first:.1f} s")
                times["compiled"] = [time_call(calls["sdpa (default)"], kw) for _ in range(args.rounds)]
        base = statistics.median(times["sdpa (default)"])
        print(f"\n{name}: median per UNet call over {args.rounds} rounds")
        for v, ts in times.items():
            med = statistics.median(ts)
            print(f"  {v:22s} {med:8.3f} s  ratio {med / base:.3f}  ({', '.join(f'{t:.2f}' for t in ts)})")
        if args.profile:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
        del unet, calls, kw
        gc.collect()


if __name__ == "__main__":
    main()
