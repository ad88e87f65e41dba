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
    if not args.full_size:
        for path in write_tiny_addons(folder / "addons", args.in_channels, args.seed):
            print(f"  add-on: {path}")
    return 0


def write_tiny_addons(folder: Path, in_channels: int, seed: int) -> list[Path]:
    """A tiny random LoRA in both layouts and a tiny SDXL ControlNet matching the tiny model, in ``folder``
    (outside the model's components, so the model's content fingerprint does not change)."""
    from nodes.tiny import make_tiny_controlnet, make_tiny_lora

    return [make_tiny_lora(folder / "lora-peft.safetensors", "peft", seed=seed + 1, in_channels=in_channels),
            make_tiny_lora(folder / "lora-kohya.safetensors", "kohya", seed=seed + 2, in_channels=in_channels),
            make_tiny_controlnet(folder / "controlnet", seed=seed + 3, in_channels=in_channels)]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight SDXL model (diffusers format), with a "
                       "tiny LoRA (peft and kohya layouts) and a tiny ControlNet in <dir>/addons")
    p.add_argument("dir", help="a new or empty directory")
    p.add_argument("--in-channels", type=int, choices=[9, 4], default=9,
                   help="9 = inpainting UNet (default), 4 = base UNet")
    p.add_argument("--seed", type=int, default=0, help="weights are deterministic from this seed")
    p.add_argument("--full-size", action="store_true",
                   help="the real SDXL 1.0 architecture (about 7 GB in float16) instead of the tiny one")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="weight dtype of --full-size models (the VAE stays float32)")
    p.set_defaults(func=_make_tiny_model)
