"""Canny: an edge map from an image, the usual control image for a canny ControlNet (no model needed)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from nodegraph import node
from nodes.payloads import Image

NODE_DEPENDS = ("torch", "kornia")
Threshold = Annotated[float, Field(ge=0.01, le=0.99)]


def _check(low_threshold: float = 0.4, high_threshold: float = 0.8, **_: Any) -> list[tuple[str | None, str]]:
    if low_threshold > high_threshold:
        return [("low_threshold", f"low_threshold {low_threshold} is above high_threshold {high_threshold}")]
    return []


@node(category="image", version=1, check=_check)
def Canny(image: Image, low_threshold: Threshold = 0.4, high_threshold: Threshold = 0.8) -> Image:
    """White edges on black, as a 3-channel image of the input's size (kornia's Canny on the luminance).

    Thresholds are on gradient magnitude of the [0, 1] image, as in ComfyUI's Canny node: lower them to
    find fainter edges.
    """
    import torch
    from kornia.filters import canny

    with torch.no_grad():
        _, edges = canny(image.movedim(-1, 1).float(), low_threshold=low_threshold, high_threshold=high_threshold)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1).contiguous()
