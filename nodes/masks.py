"""Mask and simple image operations with ComfyUI's semantics (masks: [B, H, W], 1 = repaint)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from nodegraph import node
from nodegraph.node import PERSIST
from nodes.payloads import Image, Mask

Pixels = Annotated[int, Field(ge=0, le=16384)]
Extent = Annotated[int, Field(ge=1, le=16384)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Channel = Literal["red", "green", "blue", "alpha"]
_CHANNELS = {"red": 0, "green": 1, "blue": 2, "alpha": 3}


@node(category="mask", version=1, cache=PERSIST)
def InvertMask(mask: Mask) -> Mask:
    """1 - mask: repaint what was kept and keep what was repainted."""
    return 1.0 - mask


@node(category="mask", version=1, cache=PERSIST)
def ThresholdMask(mask: Mask, value: Unit = 0.5) -> Mask:
    """1 where the mask is above value, else 0."""
    return (mask > value).float()


@node(category="mask", version=1, cache=PERSIST)
def SolidMask(value: Unit = 1.0, width: Extent = 512, height: Extent = 512) -> Mask:
    """A one-item mask batch filled with value."""
    import torch

    return torch.full((1, height, width), float(value), dtype=torch.float32)


@node(category="mask", version=1, cache=PERSIST)
def MaskToImage(mask: Mask) -> Image:
    """The mask as a grey RGB image."""
    return mask.float()[..., None].expand(*mask.shape, 3).contiguous()


@node(category="mask", version=1, cache=PERSIST)
def ImageToMask(image: Image, channel: Channel = "red") -> Mask:
    """One channel of the image as a mask (alpha of an RGB image is an error, not a guess)."""
    index = _CHANNELS[channel]
    if index >= image.shape[-1]:
        raise ValueError(f"the image has {image.shape[-1]} channels, so it has no {channel} channel")
    return image[..., index].contiguous()


@node(category="image", version=1, cache=PERSIST)
def InvertImage(image: Image) -> Image:
    """1 - image."""
    return 1.0 - image


@node(category="mask", version=1, cache=PERSIST)
def CropMask(mask: Mask, x: Pixels = 0, y: Pixels = 0, width: Extent = 512, height: Extent = 512) -> Mask:
    """The region [y, y+height) x [x, x+width), cut at the mask's edges."""
    return mask[:, y:y + height, x:x + width].contiguous()


@node(category="image", version=1, cache=PERSIST)
def CropImage(image: Image, width: Extent = 512, height: Extent = 512, x: Pixels = 0, y: Pixels = 0) -> Image:
    """The region at (x, y) of that size; x and y are moved inside the image first, as ComfyUI does."""
    x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width, :].contiguous()


@node(category="mask", version=1, cache=PERSIST)
def GrowMask(mask: Mask, expand: Annotated[int, Field(ge=-16384, le=16384)] = 0,
             tapered_corners: bool = True) -> Mask:
    """Dilate (expand > 0) or erode (expand < 0) by |expand| pixels, one pixel per step.

    Each step takes the maximum (or minimum) over a pixel's 3x3 neighbourhood; with tapered_corners the
    diagonal neighbours are left out, so corners round off.
    """
    import torch
    import torch.nn.functional as F

    out = mask.float()[:, None]
    grow = expand > 0
    for _ in range(abs(expand)):
        x = out if grow else -out
        padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        if tapered_corners:
            stacked = torch.stack([padded[..., 1:-1, 1:-1], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1],
                                   padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]])
            x = stacked.amax(dim=0)
        else:
            x = F.max_pool2d(padded, 3, stride=1)
        out = x if grow else -x
    return out[:, 0].contiguous()


@node(category="mask", version=1, cache=PERSIST)
def FeatherMask(mask: Mask, left: Pixels = 0, top: Pixels = 0, right: Pixels = 0, bottom: Pixels = 0) -> Mask:
    """Fade the mask out linearly towards each edge: row/column i from that edge is scaled by (i+1)/width."""
    import torch

    out = mask.float().clone()
    h, w = out.shape[-2:]
    for size, extent, column, from_end in ((left, w, True, False), (right, w, True, True),
                                           (top, h, False, False), (bottom, h, False, True)):
        size = min(size, extent)
        if size == 0:
            continue
        ramp = (torch.arange(size, dtype=torch.float32) + 1.0) / size
        idx = torch.arange(size)
        if from_end:
            idx = extent - 1 - idx
        if column:
            out[:, :, idx] *= ramp
        else:
            out[:, idx, :] *= ramp[:, None]
    return out


MaskOperation = Literal["multiply", "add", "subtract", "and", "or", "xor"]


@node(category="mask", version=1, cache=PERSIST)
def CompositeMask(destination: Mask, source: Mask, x: Pixels = 0, y: Pixels = 0,
                  operation: MaskOperation = "multiply") -> Mask:
    """Combine source into destination with its top-left corner at (x, y); the result is clamped to [0, 1].

    and/or/xor work on the masks rounded to 0/1. Where source lies outside destination it is cut off.
    """
    import torch

    out = destination.float().clone()
    src = source.float()
    if src.shape[0] not in (1, out.shape[0]):
        raise ValueError(f"source has {src.shape[0]} masks; destination has {out.shape[0]}")
    h, w = out.shape[-2:]
    x, y = min(x, w), min(y, h)
    bh, bw = min(src.shape[-2], h - y), min(src.shape[-1], w - x)
    region = out[:, y:y + bh, x:x + bw]
    piece = src[:, :bh, :bw]
    if operation == "multiply":
        combined = region * piece
    elif operation == "add":
        combined = region + piece
    elif operation == "subtract":
        combined = region - piece
    else:
        a, b = torch.round(region).bool(), torch.round(piece).bool()
        fn = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
        combined = fn(a, b).float()
    out[:, y:y + bh, x:x + bw] = combined
    return out.clamp(0.0, 1.0)
