"""What flows between the SDXL nodes: the one place where socket payloads are defined.

- ``IMAGE``: float32 tensor [B, H, W, C] in [0, 1].
- ``MASK``: float32 tensor [B, H, W] in [0, 1]; **1 = repaint**, 0 = keep.
- ``LATENT``: ``Latent`` -- scaled latents [B, 4, h, w], optionally the masked-image latents and a
  latent-size mask [B, 1, h, w] (what a 9-channel inpainting UNet takes besides the latents).
- ``CONDITIONING``: ``Conditioning`` -- both encoders' hidden states concatenated [1, 77k, D] and the
  pooled embedding of encoder 2 [1, P]; optionally a strength, area or mask, a part of the schedule and
  further entries (regional prompting). Size/crop time ids belong to sampling.
- ``UNET``, ``CLIP``, ``VAE``: lazy handles (``nodes.models``): a source, dtype and device; nothing is
  read from disk until a node that needs the weights runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from nodegraph.codec import payload
from nodegraph.types import Socket

if TYPE_CHECKING:
    import torch

# Raw tensors cannot carry a socket name, so the aliases say it; the element type is Any so that declaring
# (and validating) nodes never imports torch.
Image = Annotated[Any, Socket("IMAGE")]
Mask = Annotated[Any, Socket("MASK")]


@payload
@dataclass(frozen=True, eq=False)
class Latent:
    __socket__ = "LATENT"
    samples: torch.Tensor
    masked: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    empty: bool = False  # from EmptyLatent: sampling starts from pure noise whatever the strength

    def replace(self, **changes: object) -> Latent:
        fields: dict[str, Any] = {"samples": self.samples, "masked": self.masked, "mask": self.mask,
                                  "empty": self.empty}
        fields.update(changes)
        return Latent(**fields)  # type: ignore[arg-type]


@payload
@dataclass(frozen=True, eq=False)
class Conditioning:
    """One prompt's encodings; the optional fields make it a regional / timed entry (nodes.conditioning),
    and ``more`` holds further entries (ConditioningCombine). A plain one samples exactly as before."""

    __socket__ = "CONDITIONING"
    embeds: torch.Tensor
    pooled: torch.Tensor
    strength: float = 1.0
    area: tuple[float, float, float, float] | None = None  # x, y, width, height
    area_in_pixels: bool = True  # False: the area is in fractions of the image
    mask: torch.Tensor | None = None  # [H, W] in [0, 1], any size: resized to the latent
    start: float = 0.0  # fraction of the schedule where the entry starts applying
    end: float = 1.0
    more: tuple[Conditioning, ...] = ()
    control: tuple[Any, ...] = ()  # nodes.controlnet.ControlHint: ControlNets the sampler applies with it

    def entries(self) -> list[Conditioning]:
        return [dataclasses.replace(self, more=()), *self.more]

    @property
    def plain(self) -> bool:
        return (not self.more and self.strength == 1.0 and self.area is None and self.mask is None
                and self.start == 0.0 and self.end == 1.0)


def require_finite(what: str, **tensors: torch.Tensor | None) -> None:
    """Fail the node when a tensor holds NaN or infinity: a silent NaN becomes a black or noisy image."""
    for name, tensor in tensors.items():
        if tensor is not None and not bool(tensor.isfinite().all()):
            raise ValueError(f"{what}: the {name} contain non-finite values (NaN or infinity); "
                             "check prompt weights and the model's dtype")
