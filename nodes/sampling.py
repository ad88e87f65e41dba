"""Sample: the denoising loop of SDXL (inpainting with 9- or 4-channel UNets, img2img, text-to-image).

Shaped like k-diffusion's samplers: prepare the conditioning rows, make the initial latents and noise,
build a *guided denoiser* (a closure from latents and a timestep to the guided noise prediction: CFG,
per-encoder guidance, guidance rescale, the 9-channel concat; ControlNet residuals plug in here later),
and run a short loop over the schedule with the 4-channel inpainting blend as a step callback.

With a named schedule it mirrors diffusers' StableDiffusionXLInpaintPipeline step for step (timesteps cut
by strength or denoising_start/end, CFG batched as [negative, positive], guidance rescale, text-time ids,
per-step blending for 4-channel UNets). Noise is drawn on the CPU by one generator per sample seeded
``seed + i``, so sample i of a batch equals a single run with that seed.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from pydantic import Field

from nodegraph import RunContext, node
from nodegraph.node import PERSIST
from nodes.models import UNetHandle, manager
from nodes.payloads import Conditioning, Latent
from nodes.preview import latent_preview
from nodes.schedulers import (
    COMPUTED_SCHEDULES,
    BetaSchedule,
    SamplerName,
    ScheduleName,
    combination_problem,
    make_scheduler,
    sampler_info,
)
from nodes.schedules import Sigmas, computed_schedule, percent_timestep, sigmas_to_timesteps

if TYPE_CHECKING:
    import torch

NODE_DEPENDS = ("torch", "diffusers")
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Scale = Annotated[float, Field(ge=0.0, le=100.0)]
SEED_MAX = 2**64 - 1
Denoiser = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def cut_timesteps(scheduler: Any, steps: int, strength: float, denoising_start: float | None) -> torch.Tensor:
    """The timesteps a run visits: the last ``strength`` of the schedule, or those below denoising_start."""
    if denoising_start is None:
        init = min(int(steps * strength), steps)
        start = max(steps - init, 0)
        timesteps = scheduler.timesteps[start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        return timesteps
    total = scheduler.config.num_train_timesteps
    cutoff = int(round(total - denoising_start * total))
    count = int((scheduler.timesteps < cutoff).sum().item())
    if scheduler.order == 2 and count % 2 == 0:
        count += 1  # never stop between the two evaluations of a second-order step
    start = len(scheduler.timesteps) - count
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def rescale_guidance(cfg: torch.Tensor, text: torch.Tensor, amount: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4): pull the guided prediction's std back to the text one's."""
    dims = list(range(1, text.ndim))
    rescaled = cfg * (text.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True))
    return amount * rescaled + (1 - amount) * cfg


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (guidance_scale - 1) for guidance-distilled UNets (LCM)."""
    import torch

    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def _to_batch(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"{what} has batch {x.shape[0]}, which does not divide batch_size {batch}")
    return x.repeat(batch // x.shape[0], *([1] * (x.ndim - 1)))


def _match_length(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative encodings of different chunk counts: repeat the shorter (as ComfyUI does)."""
    if a.shape[1] == b.shape[1]:
        return a, b
    n = max(a.shape[1], b.shape[1])
    fix = lambda t: t.repeat(1, -(-n // t.shape[1]), 1)[:, :n]  # noqa: E731
    return fix(a), fix(b)


def clip_l_width(unet: UNetHandle) -> int:
    """How many leading features of a Conditioning's embeds come from CLIP ViT-L (the rest are bigG's)."""
    config = Path(str(unet.ref.source.path)) / "text_encoder" / "config.json"
    try:
        return int(json.loads(config.read_text())["hidden_size"])
    except (OSError, KeyError, ValueError):
        return 768  # SDXL's CLIP ViT-L


@dataclass(frozen=True)
class GuidanceRows:
    """The conditioning rows the UNet sees per step (each ``batch`` long, stacked) and how to mix them.

    rows = 1: the prediction as is; 2: [uncond, cond] with CFG scale ``scales[0]``; 3: [uncond, mixed, cond]
    with per-encoder scales (g, l): uncond + g (mixed - uncond) + l (cond - mixed).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    rows: int
    scales: tuple[float, ...]
    regions: Regions | None = None  # several entries (areas, masks, time ranges): see regional_rows


@dataclass(frozen=True)
class Regions:
    """Per-entry weights for conditioning with several entries, regions or time ranges (ComfyUI's way).

    Rows hold ``negatives`` unconditional entries, then the conditional ones, each ``batch`` long; entry i
    weighs its prediction by ``weights[i]`` ([batch, 1, h, w]) while ``low[i] <= t <= high[i]``, and each
    side's prediction is the weighted average of its active entries.
    """

    negatives: int
    weights: tuple[torch.Tensor, ...]
    high: tuple[float, ...]
    low: tuple[float, ...]

    def combine(self, pred: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """[uncond, cond] (or [cond] without negatives) from the stacked per-entry predictions."""
        import torch

        chunks = pred.chunk(len(self.weights))
        sides = [range(self.negatives), range(self.negatives, len(self.weights))] if self.negatives else [
            range(len(self.weights))]
        out = []
        for side in sides:
            total = torch.zeros_like(chunks[0])
            count = torch.full_like(chunks[0][:, :1], 1e-37)  # no active entry: a zero prediction, not NaN
            for i in side:
                if self.low[i] <= float(t) <= self.high[i]:
                    total = total + chunks[i] * self.weights[i]
                    count = count + self.weights[i]
            out.append(total / count)
        return out


def prepare_conditioning(unet: UNetHandle, positive: Conditioning, negative: Conditioning | None, batch: int,
                         scale_g: float, scale_l: float, ids: tuple[float, ...], neg_ids: tuple[float, ...],
                         device: torch.device, dtype: torch.dtype, latent_size: tuple[int, int]) -> GuidanceRows:
    """Stack the rows the guided denoiser evaluates; equal scales take diffusers' 2-row CFG exactly."""
    import torch

    if not positive.plain or (negative is not None and not negative.plain):
        return regional_rows(unet, positive, negative, batch, scale_g, scale_l, ids, neg_ids, device, dtype,
                             latent_size)
    embeds = _to_batch(positive.embeds, batch, "positive").to(device, dtype)
    pooled = _to_batch(positive.pooled, batch, "positive pooled").to(device, dtype)
    time_ids = torch.tensor([ids], dtype=dtype, device=device).repeat(batch, 1)
    per_encoder = scale_g != scale_l
    if unet.time_cond_proj_dim is not None or (not per_encoder and scale_g <= 1.0):
        return GuidanceRows(embeds, pooled, time_ids, 1, ())
    if negative is None:
        if not unet.force_zeros_for_empty_prompt:
            raise ValueError("this model does not use zero embeddings for an empty negative prompt: connect "
                             "an EncodePrompt (of \"\" for no negative prompt) to 'negative'")
        neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        neg_embeds = _to_batch(negative.embeds, batch, "negative").to(device, dtype)
        neg_pooled = _to_batch(negative.pooled, batch, "negative pooled").to(device, dtype)
        neg_embeds, embeds = _match_length(neg_embeds, embeds)
    neg_time_ids = torch.tensor([neg_ids], dtype=dtype, device=device).repeat(batch, 1)
    if not per_encoder:
        return GuidanceRows(torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled]),
                            torch.cat([neg_time_ids, time_ids]), 2, (scale_g,))
    # The mixed row: the prompt through bigG (its tokens and the pooled embedding), CLIP-L unconditional.
    width = clip_l_width(unet)
    if not 0 < width < embeds.shape[-1]:
        raise ValueError(f"per-encoder guidance: conditioning has {embeds.shape[-1]} features, CLIP-L {width}")
    mixed = torch.cat([neg_embeds[..., :width], embeds[..., width:]], dim=-1)
    return GuidanceRows(torch.cat([neg_embeds, mixed, embeds]), torch.cat([neg_pooled, pooled, pooled]),
                        torch.cat([neg_time_ids, time_ids, time_ids]), 3, (scale_g, scale_l))


def _entry_weight(entry: Conditioning, unet: UNetHandle, batch: int, size: tuple[int, int],
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """strength x (area box or resized mask) over the latent, [batch, 1, h, w]."""
    import torch

    h, w = size
    weight = torch.full((1, 1, h, w), float(entry.strength), device=device, dtype=dtype)
    if entry.area is not None:
        x, y, aw, ah = entry.area
        if entry.area_in_pixels:
            f = unet.vae_scale_factor
            box = (int(x) // f, int(y) // f, int(aw) // f, int(ah) // f)
        else:
            box = (round(x * w), round(y * h), round(aw * w), round(ah * h))
        region = torch.zeros_like(weight)
        region[..., box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = 1
        weight = weight * region
    if entry.mask is not None:
        mask = entry.mask.to(device, torch.float32).reshape(1, 1, *entry.mask.shape[-2:])
        weight = weight * torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear").to(dtype)
    return weight.repeat(batch, 1, 1, 1)


def regional_rows(unet: UNetHandle, positive: Conditioning, negative: Conditioning | None, batch: int,
                  scale_g: float, scale_l: float, ids: tuple[float, ...], neg_ids: tuple[float, ...],
                  device: torch.device, dtype: torch.dtype, latent_size: tuple[int, int]) -> GuidanceRows:
    """Every entry of both sides as rows of one UNet call (tokens repeated to a common length)."""
    import torch

    if scale_g != scale_l:
        raise ValueError("per-encoder guidance (guidance_scale_g != guidance_scale_l) does not combine with "
                         "conditioning of several entries, areas, masks or time ranges yet")
    cfg = scale_g > 1.0 and unet.time_cond_proj_dim is None
    sides: list[tuple[list[Conditioning], tuple[float, ...]]] = []
    if cfg:
        if negative is None:
            if not unet.force_zeros_for_empty_prompt:
                raise ValueError("this model does not use zero embeddings for an empty negative prompt: connect "
                                 "an EncodePrompt (of \"\" for no negative prompt) to 'negative'")
            first = positive.entries()[0]
            negative = Conditioning(torch.zeros_like(first.embeds), torch.zeros_like(first.pooled))
        sides.append((negative.entries(), neg_ids))
    sides.append((positive.entries(), ids))
    length = max(e.embeds.shape[1] for entries, _ in sides for e in entries)
    total = unet.train_steps
    embeds, pooled, time_ids, weights, high, low = [], [], [], [], [], []
    for entries, entry_ids in sides:
        for e in entries:
            emb = _to_batch(e.embeds, batch, "conditioning").to(device, dtype)
            embeds.append(emb.repeat(1, -(-length // emb.shape[1]), 1)[:, :length])
            pooled.append(_to_batch(e.pooled, batch, "conditioning pooled").to(device, dtype))
            time_ids.append(torch.tensor([entry_ids], dtype=dtype, device=device).repeat(batch, 1))
            weights.append(_entry_weight(e, unet, batch, latent_size, device, torch.float32))
            high.append(percent_timestep(e.start, total))
            low.append(percent_timestep(e.end, total))
    regions = Regions(len(sides[0][0]) if cfg else 0, tuple(weights), tuple(high), tuple(low))
    return GuidanceRows(torch.cat(embeds), torch.cat(pooled), torch.cat(time_ids), len(weights),
                        (scale_g,) if cfg else (), regions)


def control_sides(cond: GuidanceRows, positive: Conditioning, negative: Conditioning | None,
                  batch: int) -> list[tuple[tuple[Any, ...], int]]:
    """The ControlNet hints of each block of ``batch`` rows the denoiser evaluates (negative rows, then the
    mixed and positive ones); an unconnected negative takes the positive's, as diffusers does."""
    neg = positive.control if negative is None else negative.control
    if cond.regions is not None:
        n = len(cond.regions.weights)
        return [(neg, batch)] * cond.regions.negatives + [(positive.control, batch)] * (n - cond.regions.negatives)
    return [(neg, batch)] * (cond.rows > 1) + [(positive.control, batch)] * max(cond.rows - 1, 1)


def guided_denoiser(model: Any, scheduler: Any, cond: GuidanceRows, *, concat: torch.Tensor | None = None,
                    timestep_cond: torch.Tensor | None = None, rescale: float = 0.0) -> Denoiser:
    """A closure (latents, t) -> the guided noise prediction, all rows in one UNet call.

    concat: what a 9-channel inpainting UNet takes besides the latents (mask and masked-image latents),
    already repeated for every row.
    """
    import torch

    added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}

    def denoise(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([latents] * cond.rows) if cond.rows > 1 else latents
        x = scheduler.scale_model_input(x, t).to(cond.embeds.dtype)
        if concat is not None:
            x = torch.cat([x, concat], dim=1)
        # Latents and the guidance arithmetic stay float32 whatever the UNet computes in (as ComfyUI keeps
        # them): a bf16 UNet then costs only its own rounding, not a rounding of the latents every step.
        pred = model(x, t, encoder_hidden_states=cond.embeds, timestep_cond=timestep_cond,
                     added_cond_kwargs=added, return_dict=False)[0].to(latents.dtype)
        if cond.regions is not None:
            sides = cond.regions.combine(pred, t)
            if len(sides) == 1:
                return sides[0]
            uncond, text = sides
            pred = uncond + cond.scales[0] * (text - uncond)
        elif cond.rows == 1:
            return pred
        elif cond.rows == 2:
            uncond, text = pred.chunk(2)
            pred = uncond + cond.scales[0] * (text - uncond)
        else:
            uncond, mixed, text = pred.chunk(3)
            pred = uncond + cond.scales[0] * (mixed - uncond) + cond.scales[1] * (text - mixed)
        return rescale_guidance(pred, text, rescale) if rescale > 0 else pred

    return denoise


def set_schedule(sched: Any, sampler: str, scheduler: str, steps: int, strength: float,
                 denoising_start: float | None, denoising_end: float | None, sigmas: list[float] | None,
                 timesteps: list[float] | None, beta_schedule: BetaSchedule, device: torch.device) -> torch.Tensor:
    """Set the scheduler's steps and return the timesteps this run visits."""
    config = dict(sched.config)
    if sigmas is None and timesteps is None and scheduler in COMPUTED_SCHEDULES:
        sigmas = computed_schedule(scheduler, steps, config, beta_schedule)
    if sigmas is None and timesteps is None:
        sched.set_timesteps(steps, device=device)
        visited = cut_timesteps(sched, steps, strength, denoising_start)
        if denoising_end is not None:
            cutoff = int(round(sched.config.num_train_timesteps * (1 - denoising_end)))
            visited = visited[: int((visited >= cutoff).sum().item())]
        return visited
    info = sampler_info(sampler)
    if sigmas is not None and info is not None and info.sigmas:
        sched.set_timesteps(sigmas=sigmas, device=device)
    else:  # timesteps were given, or the sampler takes only timesteps: convert in log sigma
        if timesteps is None:
            timesteps = sigmas_to_timesteps(list(sigmas or []), config)
        sched.set_timesteps(timesteps=timesteps, device=device)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    return sched.timesteps


def differential_mask(mask: torch.Tensor, t: float, t_start: float, t_end: float = 0.0,
                      strength: float = 1.0) -> torch.Tensor:
    """Differential diffusion (Levin & Fried 2023), as ComfyUI's node computes it: at timestep ``t`` of a run
    from ``t_start`` down to ``t_end``, a cell is repainted when its mask value is at least
    (t - t_end) / (t_start - t_end); a cell of 0.3 joins once 70% of the run's timesteps are behind.
    ``strength`` < 1 mixes the soft mask back in."""
    threshold = (t - t_end) / (t_start - t_end) if t_start > t_end else 0.0
    binary = (mask >= threshold).to(mask.dtype)
    return binary if strength >= 1.0 else strength * binary + (1 - strength) * mask


def _blend_callback(sched: Any, image: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                    timesteps: torch.Tensor, final_sigma: float, differential: float | None = None,
                    t_end: float = 0.0) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """4-channel inpainting: outside the mask, follow the original re-noised to the next step's level.

    differential: the blend after step i prepares the input of step i + 1, so it uses the mask ComfyUI's
    DifferentialDiffusion gives that step (``differential_mask`` at its timestep; after the last step, the
    last step's mask, so a cell of mask 0 always ends as the original). t_end: the timestep the run stops at.
    """
    import torch

    t_start = float(timesteps[0])

    def blend(i: int, latents: torch.Tensor) -> torch.Tensor:
        last = i == len(timesteps) - 1
        if not last:
            init = sched.add_noise(image, noise, torch.tensor([timesteps[i + 1]]))
        else:  # a schedule cut before 0 (SplitSchedule's first half) ends at a noise level, not the image
            init = image + noise * final_sigma if final_sigma > 0 else image
        m = mask
        if differential is not None:
            m = differential_mask(mask, float(timesteps[i if last else i + 1]), t_start, t_end, differential)
        return (1 - m) * init + m * latents

    return blend


def _check(sampler: str | None = None, scheduler: str = "normal", denoising_start: float | None = None, denoising_end: float | None = None,
           sigmas: list[float] | None = None, timesteps: list[float] | None = None, steps: int = 30,
           strength: float = 0.9999, **_: Any) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    if denoising_start is None and sigmas is None and timesteps is None and int(steps * strength) < 1:
        # the same cut as cut_timesteps: found here rather than after the models have loaded
        problems.append(("steps", f"strength {strength} with {steps} steps leaves no step to run "
                                  f"(int(steps x strength) = 0): raise steps or strength"))
    custom = sigmas is not None or timesteps is not None
    # A sampler linked from SamplerSelect is checked when it runs (validation sees literals only).
    why = None if sampler is None else combination_problem(sampler, scheduler, custom=custom)
    if why:
        problems.append(("sigmas" if custom else "scheduler", why))
    if sigmas is not None and timesteps is not None:
        problems.append(("timesteps", "give sigmas or timesteps, not both"))
    for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
        if values is not None and (len(values) < (2 if name == "sigmas" else 1)
                                   or any(a < b for a, b in zip(values, values[1:], strict=False))):
            problems.append((name, f"{name} must be a descending list of at least {2 if name == 'sigmas' else 1} "
                                   "value(s) (sigmas: steps + 1 values)"))
    if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
        problems.append(("denoising_start", f"denoising_start {denoising_start} must be below denoising_end "
                                            f"{denoising_end}"))
    return problems


# ComfyUI's KSampler / KSamplerAdvanced map onto Sample in nodes/comfyui.py.
# version 3: latents stay float32 around any UNet dtype; timed conditioning on ComfyUI's 999 scale
@node(category="sampling", version=3, cache=PERSIST, check=_check)
def Sample(
    unet: UNetHandle,
    positive: Conditioning,
    latent: Latent,
    ctx: RunContext,
    negative: Conditioning | None = None,
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0,
    batch_size: Annotated[int, Field(ge=1, le=64)] = 1,
    steps: Annotated[int, Field(ge=1, le=1000)] = 30,
    guidance_scale: Scale = 7.5,
    guidance_scale_g: Scale | None = None,
    guidance_scale_l: Scale | None = None,
    guidance_rescale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
    sampler: SamplerName = "euler",
    scheduler: ScheduleName = "normal",
    beta_schedule: BetaSchedule = "model",
    sigmas: Sigmas | None = None,
    timesteps: list[Annotated[float, Field(ge=0.0)]] | None = None,
    add_noise: bool = True,
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9999,
    denoising_start: Fraction | None = None,
    denoising_end: Fraction | None = None,
    original_size: tuple[int, int] | None = None,
    target_size: tuple[int, int] | None = None,
    crop_top_left: tuple[int, int] = (0, 0),
    aesthetic_score: float = 6.0,
    negative_aesthetic_score: float = 2.5,
    eta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
) -> Latent:
    """Denoise a latent with the UNet, guided by the prompt encodings.

    negative unconnected = zero embeddings (diffusers' negative_prompt=None, for models with
    force_zeros_for_empty_prompt); an EncodePrompt of "" = the encoded empty string. Sample i of the batch
    uses seed + i. strength < 1 keeps that much of the input; strength 1.0 starts from pure noise.
    denoising_start/denoising_end (0..1) split a run across two Sample nodes (base + refiner).
    guidance_scale_g / guidance_scale_l: separate scales for the bigG and CLIP-L encoders (default
    guidance_scale); when they differ each step evaluates uncond, a bigG-only mix and the full prompt.
    sigmas (a list, or a link from Schedule/KarrasSchedule/SplitSchedule...) or timesteps define the
    schedule instead of steps/scheduler/strength; add_noise=false continues from the latent as it is.
    beta_schedule replaces the training noise schedule of the model's scheduler config.
    original_size, target_size and crop_top_left are (height, width) / (top, left), as in diffusers;
    they default to the latent's pixel size.
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    model = manager(ctx).get(unet.ref, "unet", ctx)
    device, dtype = torch.device(unet.ref.device), unet.ref.torch_dtype
    named = "normal" if sigmas is not None or timesteps is not None else scheduler
    sched = make_scheduler(sampler, named if named not in COMPUTED_SCHEDULES else "normal", unet.scheduler_config,
                           beta_schedule, seed=seed)
    visited = set_schedule(sched, sampler, scheduler, steps, strength, denoising_start, denoising_end, sigmas,
                           timesteps, beta_schedule, device)
    if len(visited) < 1:
        raise ValueError(f"strength {strength} with {steps} steps leaves no step to run; raise steps or strength")

    # Initial latents and noise.
    batch = batch_size * latent.samples.shape[0] if latent.samples.shape[0] > 1 else batch_size
    work = torch.float32  # latents, noise, masks and scheduler arithmetic; the UNet's inputs take its dtype
    image_latents = _to_batch(latent.samples, batch, "latent").to(device, work)
    h, w = image_latents.shape[-2:]
    generators = [torch.Generator("cpu").manual_seed((seed + i) % (SEED_MAX + 1)) for i in range(batch)]
    noise = randn_tensor((batch, 4, h, w), generator=generators, device=torch.device("cpu"), dtype=torch.float32)
    noise = noise.to(device, work)
    if denoising_start is not None or not add_noise:
        latents = image_latents  # continuing a run that stopped early: no new noise
    elif latent.empty or strength == 1.0:
        latents = noise * sched.init_noise_sigma
    else:
        latents = sched.add_noise(image_latents, noise, visited[:1].repeat(batch))

    nine_channel = unet.in_channels == 9
    mask = masked = None
    if nine_channel:
        if latent.mask is None or latent.masked is None:
            raise ValueError("this is a 9-channel inpainting UNet: its latent needs the masked image and a mask "
                             "(VAEEncode with a mask, then DownsampleMask)")
        if latent.empty:
            raise ValueError("a 9-channel inpainting UNet needs an image to inpaint, not an EmptyLatent")
        masked = _to_batch(latent.masked, batch, "masked latents").to(device, work)
    if latent.mask is not None:
        mask = _to_batch(latent.mask, batch, "mask").to(device, work)

    # Conditioning and the guided denoiser.
    height, width = h * unet.vae_scale_factor, w * unet.vae_scale_factor
    orig = tuple(original_size) if original_size else (height, width)
    target = tuple(target_size) if target_size else (height, width)
    crop = tuple(crop_top_left)
    if unet.requires_aesthetics_score:
        ids, neg_ids = orig + crop + (aesthetic_score,), orig + crop + (negative_aesthetic_score,)
    else:
        ids = neg_ids = orig + crop + target
    scale_g = guidance_scale if guidance_scale_g is None else guidance_scale_g
    scale_l = guidance_scale if guidance_scale_l is None else guidance_scale_l
    cond = prepare_conditioning(unet, positive, negative, batch, scale_g, scale_l, ids, neg_ids, device, dtype,
                                (h, w))
    concat = None
    if nine_channel:
        concat = torch.cat([mask, masked], dim=1).to(dtype).repeat(cond.rows, 1, 1, 1)  # type: ignore[list-item]
    timestep_cond = None
    if unet.time_cond_proj_dim is not None:
        w_embed = torch.tensor(guidance_scale - 1).repeat(batch)
        timestep_cond = guidance_embedding(w_embed, unet.time_cond_proj_dim).to(device, dtype)
    if positive.control or (negative is not None and negative.control):  # ControlNets (nodes.controlnet)
        from nodes.controlnet import with_control

        # Step ranges count the schedule before denoising_end cuts it, as diffusers does.
        begin = getattr(sched, "begin_index", None) or 0
        model = with_control(model, ctx, control_sides(cond, positive, negative, batch),
                             len(sched.timesteps) - begin, (height, width),
                             unet.train_steps)
    denoise = guided_denoiser(model, sched, cond, concat=concat, timestep_cond=timestep_cond,
                              rescale=guidance_rescale)
    step_params = inspect.signature(sched.step).parameters
    step_kwargs: dict[str, Any] = {}
    if "eta" in step_params:
        step_kwargs["eta"] = eta
    if "generator" in step_params:
        step_kwargs["generator"] = generators
    on_step = None
    if not nine_channel and mask is not None:
        final_sigma = float(sigmas[-1]) if sigmas is not None else 0.0
        t_end = 0.0
        if unet.differential is not None and final_sigma > 0:  # a run that stops above sigma 0 (a first half)
            t_end = sigmas_to_timesteps([final_sigma], json.loads(unet.scheduler_config), beta_schedule)[0]
        on_step = _blend_callback(sched, image_latents, noise, mask, visited, final_sigma, unet.differential, t_end)
    elif unet.differential is not None:
        raise ValueError("DifferentialDiffusion works on the mask blend of a 4-channel UNet (a base model with "
                         "SetLatentNoiseMask / DownsampleMask); this sampler has "
                         + ("a 9-channel inpainting UNet, which takes the mask as input" if nine_channel
                            else "no mask on its latent"))

    max_size = ctx.previews.max_size if ctx.previews is not None else 512
    progress = ctx.progress(len(visited))
    with torch.no_grad():
        for i, t in enumerate(visited):
            out = sched.step(denoise(latents, t), t, latents, **step_kwargs, return_dict=False)
            latents = out[0]
            if on_step is not None:
                latents = on_step(i, latents)
            # The scheduler's estimate of the clean latents when it gives one (Euler, DDIM...), else the latents.
            shown = out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) else latents
            progress.update(1, preview=partial(latent_preview, shown, max_size))
    return latent.replace(samples=latents.contiguous(), empty=False)


@node(category="sampling/inpaint", version=1)
def DifferentialDiffusion(unet: UNetHandle, strength: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
                          ) -> UNetHandle:
    """Soft-mask inpainting: with a soft mask (DownsampleMask mode=area, a feathered or blurred mask) each
    latent cell joins the repainting when the noise level falls below its mask value, so mask 0.3 changes a
    little and late, mask 1 fully (4-channel UNets). strength < 1 mixes the soft mask back in."""
    import dataclasses

    return dataclasses.replace(unet, differential=float(strength))


# ---- ComfyUI's custom sampling: a sampler, noise and a guider as values, then SampleCustom ------------

@dataclass(frozen=True)
class NoiseSpec:
    """NOISE: where the initial noise comes from (one CPU generator per sample, seeded seed + i), or none."""

    __socket__ = "NOISE"
    seed: int = 0
    add: bool = True


@dataclass(frozen=True)
class GuiderSpec:
    """GUIDER: the model and conditioning a sampler is guided by (classifier-free when negative is set)."""

    __socket__ = "GUIDER"
    unet: UNetHandle
    positive: Conditioning
    negative: Conditioning | None = None
    guidance_scale: float = 1.0
    guidance_scale_g: float | None = None
    guidance_scale_l: float | None = None


class SelectedSampler(NamedTuple):
    sampler: str


@node(category="sampling/custom", version=1)
def SamplerSelect(sampler: SamplerName = "euler") -> SelectedSampler:
    """A sampler name as a value, for SampleCustom (and Sample's sampler input)."""
    return SelectedSampler(sampler)


@node(category="sampling/custom", version=1)
def Noise(seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0, add: bool = True) -> NoiseSpec:
    """Seeded initial noise (add=false: start from the latent as it is, e.g. the second half of a split)."""
    return NoiseSpec(seed, add)


def _comfy_cfg_guider(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ours = {"unet": inputs["model"], "positive": inputs["positive"], "negative": inputs.get("negative"),
            "guidance_scale": inputs.get("cfg", 8.0)}
    return {"": {"type": "Guider", "inputs": {k: v for k, v in ours.items() if v is not None}}}


@node(category="sampling/custom", version=1)
def Guider(unet: UNetHandle, positive: Conditioning, negative: Conditioning | None = None,
           guidance_scale: Scale = 7.5, guidance_scale_g: Scale | None = None,
           guidance_scale_l: Scale | None = None) -> GuiderSpec:
    """The model, prompts and guidance scales a SampleCustom is guided by (scale 1: no guidance)."""
    return GuiderSpec(unet, positive, negative, guidance_scale, guidance_scale_g, guidance_scale_l)


def _comfy_sampler_custom(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    add = inputs.get("add_noise", True) not in (False, "disable")
    ours = {"unet": inputs["model"], "positive": inputs["positive"], "negative": inputs.get("negative"),
            "guidance_scale": inputs.get("cfg", 8.0), "seed": inputs.get("noise_seed", 0), "add_noise": add,
            "sampler": inputs["sampler"], "sigmas": inputs["sigmas"], "latent": inputs["latent_image"]}
    return {"": {"type": "Sample", "inputs": {k: v for k, v in ours.items() if v is not None}}}


def _comfy_sampler_custom_advanced(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ours = {"noise": inputs["noise"], "guider": inputs["guider"], "sampler": inputs["sampler"],
            "sigmas": inputs["sigmas"], "latent": inputs["latent_image"]}
    return {"": {"type": "SampleCustom", "inputs": ours}}


@node(category="sampling/custom", version=2, cache=PERSIST)  # runs Sample (its version 3)
def SampleCustom(noise: NoiseSpec, guider: GuiderSpec, sigmas: Sigmas, latent: Latent, ctx: RunContext,
                 sampler: SamplerName = "euler") -> Latent:
    """Sample from parts: noise, a guider, a sampler and an explicit schedule (ComfyUI's custom sampling)."""
    why = combination_problem(sampler, "normal", custom=True)
    if why:
        raise ValueError(why)
    return Sample(unet=guider.unet, positive=guider.positive, negative=guider.negative, latent=latent, ctx=ctx,
                  seed=noise.seed, add_noise=noise.add, sigmas=sigmas, sampler=sampler,
                  guidance_scale=guider.guidance_scale, guidance_scale_g=guider.guidance_scale_g,
                  guidance_scale_l=guider.guidance_scale_l)
