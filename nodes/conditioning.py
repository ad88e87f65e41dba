"""Conditioning that combines prompts: regions, masks, parts of the schedule, averages (ComfyUI semantics).

A CONDITIONING holds one or more entries (``Conditioning.more``). Each entry's prediction is weighted by
its strength times its area or mask (over the latent) while the schedule is inside its [start, end);
where entries overlap, the weighted predictions are averaged (weights normalised). Unlike ComfyUI, an
area entry is evaluated on the whole latent and then weighted, not on a crop of it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from nodegraph import node
from nodes.payloads import Conditioning, Mask

if TYPE_CHECKING:
    import torch

NODE_DEPENDS = ("torch",)
Strength = Annotated[float, Field(ge=0.0, le=10.0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Pixels = Annotated[int, Field(ge=0, le=16384)]


def _each(conditioning: Conditioning, **changes: Any) -> Conditioning:
    """Apply the same change to every entry (as ComfyUI's Set* nodes do)."""
    first, *rest = [dataclasses.replace(e, **changes) for e in conditioning.entries()]
    return dataclasses.replace(first, more=tuple(rest))


def _fit_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat or cut a [B, n, D] encoding to ``length`` tokens."""
    if t.shape[1] == length:
        return t
    return t.repeat(1, -(-length // t.shape[1]), 1)[:, :length]


@node(category="conditioning", version=1)
def ConditioningCombine(a: Conditioning, b: Conditioning) -> Conditioning:
    """Both prompts' entries: each is evaluated and their predictions averaged by weight."""
    first, *rest = [*a.entries(), *b.entries()]
    return dataclasses.replace(first, more=tuple(rest))


def _comfy_area(inputs: dict[str, Any], fractions: bool) -> dict[str, dict[str, Any]]:
    ours = {"conditioning": inputs["conditioning"], "x": inputs.get("x", 0), "y": inputs.get("y", 0),
            "width": inputs.get("width", 1.0 if fractions else 64), "height": inputs.get("height", 1.0 if fractions else 64),
            "strength": inputs.get("strength", 1.0)}
    return {"": {"type": "ConditioningSetAreaPercentage" if fractions else "ConditioningSetArea", "inputs": ours}}


@node(category="conditioning", version=1)
def ConditioningSetArea(conditioning: Conditioning, width: Pixels = 64, height: Pixels = 64, x: Pixels = 0,
                        y: Pixels = 0, strength: Strength = 1.0) -> Conditioning:
    """Apply the prompt inside a rectangle (pixels of the image, rounded to whole latent cells)."""
    return _each(conditioning, area=(float(x), float(y), float(width), float(height)), area_in_pixels=True,
                 strength=strength)


@node(category="conditioning", version=1)
def ConditioningSetAreaPercentage(conditioning: Conditioning, width: Unit = 1.0, height: Unit = 1.0, x: Unit = 0.0,
                                  y: Unit = 0.0, strength: Strength = 1.0) -> Conditioning:
    """Apply the prompt inside a rectangle given in fractions of the image."""
    return _each(conditioning, area=(x, y, width, height), area_in_pixels=False, strength=strength)


@node(category="conditioning", version=1)
def ConditioningSetMask(conditioning: Conditioning, mask: Mask, strength: Strength = 1.0) -> Conditioning:
    """Apply the prompt where the mask is set (weighted by the mask's value): regional prompting, e.g.
    inside an inpainting mask."""
    return _each(conditioning, mask=mask[0] if mask.ndim == 3 else mask, strength=strength)


@node(category="conditioning", version=1)
def ConditioningSetTimestepRange(conditioning: Conditioning, start: Unit = 0.0, end: Unit = 1.0) -> Conditioning:
    """Apply the prompt only from ``start`` to ``end`` (fractions of the schedule, 0 = the noisy end)."""
    return _each(conditioning, start=start, end=end)


@node(category="conditioning", version=1)
def ConditioningAverage(to: Conditioning, source: Conditioning, to_strength: Unit = 1.0) -> Conditioning:
    """Blend each entry of ``to`` with the first entry of ``source``: to * w + source * (1 - w), tokens
    and pooled embedding alike (source's tokens repeated or cut to ``to``'s length)."""
    src = source.entries()[0]
    entries = []
    for entry in to.entries():
        embeds = entry.embeds * to_strength + _fit_tokens(src.embeds, entry.embeds.shape[1]) * (1 - to_strength)
        pooled = entry.pooled * to_strength + src.pooled * (1 - to_strength)
        entries.append(dataclasses.replace(entry, embeds=embeds, pooled=pooled))
    return dataclasses.replace(entries[0], more=tuple(entries[1:]))


@node(category="conditioning", version=1)
def ConditioningConcat(to: Conditioning, source: Conditioning) -> Conditioning:
    """Append the first entry of ``source``'s tokens to each entry of ``to`` (pooled stays ``to``'s)."""
    import torch

    src = source.entries()[0]
    entries = [dataclasses.replace(e, embeds=torch.cat([e.embeds, src.embeds.to(e.embeds)], dim=1))
               for e in to.entries()]
    return dataclasses.replace(entries[0], more=tuple(entries[1:]))


@node(category="conditioning", version=1)
def ConditioningZeroOut(conditioning: Conditioning) -> Conditioning:
    """Zero tokens and pooled embedding (SDXL's 'no negative prompt')."""
    import torch

    entries = [dataclasses.replace(e, embeds=torch.zeros_like(e.embeds), pooled=torch.zeros_like(e.pooled))
               for e in conditioning.entries()]
    return dataclasses.replace(entries[0], more=tuple(entries[1:]))
