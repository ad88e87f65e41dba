"""CLI commands contributed by the SDXL node package (entry-point group ``nodegraph.commands``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _make_tiny_model(args: argparse.Namespace) -> int:
    from nodes.tiny import make_tiny_model

    target = Path(args.dir)
    if target.exists() and any(target.iterdir()):
        print(f"error: {target} exists and is not empty", file=sys.stderr)
        return 2
    if target.exists():
        target.rmdir()
    if args.full_size:
        from nodes.tiny import make_full_size_model

        folder = make_full_size_model(target, in_channels=args.in_channels, seed=args.seed, dtype=args.dtype)
    else:
        folder = make_tiny_model(target, in_channels=args.in_channels, seed=args.seed)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote a {'full-size' if args.full_size else 'tiny'} random-weight SDXL model ({args.in_channels}-channel UNet, seed {args.seed}, "
          f"{size / 1e6:.1f} MB) to {folder}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight SDXL model (diffusers format)")
    p.add_argument("dir", help="a new or empty directory")
    p.add_argument("--in-channels", type=int, choices=[9, 4], default=9,
                   help="9 = inpainting UNet (default), 4 = base UNet")
    p.add_argument("--seed", type=int, default=0, help="weights are deterministic from this seed")
    p.add_argument("--full-size", action="store_true",
                   help="the real SDXL 1.0 architecture (about 7 GB in float16) instead of the tiny one")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="weight dtype of --full-size models (the VAE stays float32)")
    p.set_defaults(func=_make_tiny_model)
