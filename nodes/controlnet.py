"""ControlNet for SDXL inpainting: LoadControlNet, ApplyControlNet (positive + negative), ControlConditioning.

Applying a ControlNet only attaches a ``ControlHint`` (the lazy ControlNet handle, the control image, a
strength and a step range) to the conditioning; the sampler wraps its UNet with ``with_control``, which
runs every active ControlNet on the scaled latents each step and feeds the summed residuals into the UNet
-- the computation of diffusers' StableDiffusionXLControlNetInpaintPipeline (several ControlNets add up, as
its MultiControlNetModel does).

start_percent / end_percent are fractions of the steps the sampler runs, as diffusers'
``control_guidance_start`` / ``control_guidance_end``: step i of n applies the hint unless
``i / n < start`` or ``(i + 1) / n > end``. (ComfyUI measures them along the noise schedule instead, so a
ComfyUI workflow with a partial range can switch at a step earlier or later than ComfyUI would.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import Field

from nodegraph import RunContext, node
from nodegraph.node import CachePolicy
from nodegraph.types import MODEL_SOURCE
from nodes.components import ComponentSource, check_component_source, component_source
from nodes.memory import choose_dtypes
from nodes.models import Device, DType, ModelRef, _read_json, manager, resolve_device
from nodes.payloads import Conditioning, Image
from nodes.schedules import percent_timestep
from nodes.sources import SourceError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "diffusers")
Percent = Annotated[float, Field(ge=0.0, le=1.0)]
RangeBy = Literal["steps", "timesteps"]
RangeInput = Annotated[RangeBy, Field(description="what start/end_percent count: steps (the share of the sampler's "
                                                  "steps, as diffusers' control_guidance_start/end) or timesteps "
                                                  "(the share of the model's noise schedule, as ComfyUI)")]
Strength = Annotated[float, Field(ge=0.0, le=10.0, description="scale of the ControlNet's residuals")]


@dataclass(frozen=True)
class ControlNetHandle:
    __socket__ = "CONTROL_NET"
    ref: ModelRef
    conditioning_channels: int


@dataclass(frozen=True, eq=False)
class ControlHint:
    """One ControlNet applied to a conditioning (compared by identity: the same hint on both sides of CFG
    is evaluated once for all rows)."""

    controlnet: ControlNetHandle
    image: Any  # IMAGE tensor [B, H, W, C] in [0, 1]
    strength: float
    start: float
    end: float
    range_by: RangeBy = "steps"

    def active(self, i: int, n: int, t: float, train_steps: int = 1000) -> bool:
        """Whether it applies at step i of n (timestep t)."""
        if self.range_by == "timesteps":
            return percent_timestep(self.end, train_steps) <= t <= percent_timestep(self.start, train_steps)
        return not (i / n < self.start or (i + 1) / n > self.end)


def _fingerprint(source: str, config: str | None = None, **_: Any) -> str:
    return component_source(source, "controlnet", config).fingerprint


@node(category="loaders", version=1, cache=CachePolicy.reads(_fingerprint, "source", "config", memory=False),
      check=check_component_source)
def LoadControlNet(
    source: ComponentSource,
    dtype: DType = "auto",
    device: Device = "auto",
    config: Annotated[str, MODEL_SOURCE, Field(description="for a single-file ControlNet: a ControlNet folder "
                                                           "whose config.json describes it")] | None = None,
) -> ControlNetHandle:
    """Load an SDXL ControlNet lazily: a diffusers ControlNet folder or hub repo, or one .safetensors file
    (converted once; its config from ``config`` or inferred by diffusers)."""
    src = component_source(source, "controlnet", config)
    cfg = _read_json(Path(src.path) / "controlnet" / "config.json")
    if cfg.get("addition_embed_type") != "text_time":
        raise SourceError(f"{source}: not an SDXL ControlNet (no text_time conditioning in its config)")
    dev = resolve_device(device)
    return ControlNetHandle(ModelRef(src, choose_dtypes(dtype, dev)[0], dev),
                            int(cfg.get("conditioning_channels", 3)))


def _check_range(start_percent: float = 0.0, end_percent: float = 1.0, **_: Any) -> list[tuple[str | None, str]]:
    if start_percent >= end_percent:
        return [("start_percent", f"start_percent {start_percent} must be below end_percent {end_percent}")]
    return []


def _hint(controlnet: ControlNetHandle, image: torch.Tensor, strength: float, start: float, end: float,
          range_by: RangeBy) -> ControlHint:
    if image.shape[-1] != controlnet.conditioning_channels:
        raise ValueError(f"the control image has {image.shape[-1]} channels; this ControlNet takes "
                         f"{controlnet.conditioning_channels}")
    return ControlHint(controlnet, image, float(strength), float(start), float(end), range_by)


def _attach(cond: Conditioning, hint: ControlHint) -> Conditioning:
    import dataclasses

    return dataclasses.replace(cond, control=(*cond.control, hint))


class ControlledPair(NamedTuple):
    positive: Conditioning
    negative: Conditioning


@node(category="conditioning", version=1, check=_check_range)
def ApplyControlNet(positive: Conditioning, negative: Conditioning, control_net: ControlNetHandle, image: Image,
                    strength: Strength = 1.0, start_percent: Percent = 0.0, end_percent: Percent = 1.0,
                    range_by: RangeInput = "steps") -> ControlledPair:
    """Guide sampling with a ControlNet and a control image (e.g. from Canny) on both sides of CFG.

    Chain several for stacked ControlNets. The image is resized to the latent's pixel size if it differs.
    start_percent / end_percent: where it applies, as a fraction of the steps (range_by=steps, diffusers'
    control_guidance_*) or of the model's timesteps (range_by=timesteps, ComfyUI's start/end_percent).
    """
    hint = _hint(control_net, image, strength, start_percent, end_percent, range_by)
    return ControlledPair(_attach(positive, hint), _attach(negative, hint))


@node(category="conditioning", version=1, check=_check_range)
def ControlConditioning(conditioning: Conditioning, control_net: ControlNetHandle, image: Image,
                        strength: Strength = 1.0, start_percent: Percent = 0.0, end_percent: Percent = 1.0,
                        range_by: RangeInput = "steps") -> Conditioning:
    """A ControlNet on one conditioning only (ComfyUI's ControlNetApply: usually the positive prompt, so
    the unconditional half of CFG runs without it)."""
    return _attach(conditioning, _hint(control_net, image, strength, start_percent, end_percent, range_by))


# --- the sampler's side -----------------------------------------------------------------------------------------

class _Group(NamedTuple):
    hint: ControlHint
    model: Any
    image: torch.Tensor  # [rows, C, H, W] on the device
    rows: torch.Tensor | None  # [rows, 1, 1, 1] 1 where the hint applies; None: every row


class ControlledUNet:
    """The UNet with ControlNet residuals added: called like the UNet, once per sampler step."""

    def __init__(self, unet: Any, groups: list[_Group], steps: int, train_steps: int = 1000) -> None:
        self.unet, self.groups, self.steps, self.calls = unet, groups, steps, 0
        self.train_steps = train_steps

    def __getattr__(self, name: str) -> Any:  # config, dtype, device ... of the wrapped UNet
        return getattr(self.unet, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *args: Any, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        i, self.calls = self.calls, self.calls + 1
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        latents = x[:, :4]  # a 9-channel UNet's input: [latents, mask, masked-image latents]
        for g in self.groups:
            if not g.hint.active(i, self.steps, float(t), self.train_steps):
                continue  # diffusers runs it with scale 0: adding zeros changes nothing
            # A ControlNet may compute in another dtype than the UNet (loaded on its own): inputs go in its
            # dtype, residuals come back in the UNet's.
            cn = g.image.dtype
            added = {k: v.to(cn) for k, v in added_cond_kwargs.items()}
            d, m = g.model(latents.to(cn), t, encoder_hidden_states=encoder_hidden_states.to(cn),
                           controlnet_cond=g.image, conditioning_scale=g.hint.strength, added_cond_kwargs=added,
                           return_dict=False)
            if g.rows is not None:
                d, m = [r * g.rows for r in d], m * g.rows
            d, m = [r.to(x.dtype) for r in d], m.to(x.dtype)
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is not None:
            kwargs["down_block_additional_residuals"] = down
            kwargs["mid_block_additional_residual"] = mid
        return self.unet(x, t, *args, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=added_cond_kwargs, **kwargs)


def _control_image(image: torch.Tensor, rows: int, size: tuple[int, int], device: Any, dtype: Any) -> torch.Tensor:
    import torch

    img = image.movedim(-1, 1).to(torch.float32)
    if tuple(img.shape[-2:]) != size:
        img = torch.nn.functional.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    if rows % img.shape[0]:
        raise ValueError(f"control image batch {img.shape[0]} does not divide the sampler's {rows} rows")
    return img.repeat(rows // img.shape[0], 1, 1, 1).to(device, dtype)


def with_control(unet: Any, ctx: RunContext, sides: list[tuple[tuple[ControlHint, ...], int]], steps: int,
                 size: tuple[int, int], train_steps: int = 1000) -> Any:
    """Wrap the UNet so each call adds the residuals of the ControlNets in ``sides``.

    sides: for each block of rows the UNet is called with (e.g. [negative, positive] under CFG), the hints
    of that side's conditioning and its number of rows. size: the image size in pixels (latent x 8).
    """
    import torch

    hints: list[ControlHint] = []
    for side_hints, _ in sides:
        hints.extend(h for h in side_hints if all(h is not k for k in hints))
    if not hints:
        return unet
    total = sum(n for _, n in sides)
    models = manager(ctx)
    groups = []
    for hint in hints:
        model = models.get(hint.controlnet.ref, "controlnet", ctx)
        dtype = hint.controlnet.ref.torch_dtype
        mask = torch.cat([torch.full((n, 1, 1, 1), float(any(h is hint for h in side_hints)))
                          for side_hints, n in sides])
        rows = None if bool(mask.all()) else mask.to(hint.controlnet.ref.device, dtype)
        groups.append(_Group(hint, model, _control_image(hint.image, total, size, hint.controlnet.ref.device, dtype),
                             rows))
    return ControlledUNet(unet, groups, steps, train_steps)
