"""Sample: the denoising loop of SDXL (inpainting with 9- or 4-channel UNets, img2img, text-to-image).

Mirrors diffusers' StableDiffusionXLInpaintPipeline step for step (timesteps cut by strength or
denoising_start/end, CFG batched as [negative, positive], guidance rescale, text-time ids, per-step
blending for 4-channel UNets), with noise drawn on the CPU by one generator per sample seeded
``seed + i``, so sample i of a batch equals a single run with that seed.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from pydantic import Field

from nodegraph import RunContext, node
from nodes.models import UNetHandle, manager
from nodes.payloads import Conditioning, Latent
from nodes.schedulers import SamplerName, ScheduleName, combination_problem, make_scheduler

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
SEED_MAX = 2**64 - 1


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


def _check(sampler: str, scheduler: str, denoising_start: float | None = None,
           denoising_end: float | None = None, **_: Any) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    why = combination_problem(sampler, scheduler)
    if why:
        problems.append(("scheduler", why))
    if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
        problems.append(("denoising_start", f"denoising_start {denoising_start} must be below denoising_end "
                                            f"{denoising_end}"))
    return problems


@node(category="sampling", version=1, outputs={"latent": Latent}, persist=True, check=_check)
def Sample(
    unet: UNetHandle,
    positive: Conditioning,
    latent: Latent,
    ctx: RunContext,
    negative: Conditioning | None = None,
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0,
    batch_size: Annotated[int, Field(ge=1, le=64)] = 1,
    steps: Annotated[int, Field(ge=1, le=1000)] = 30,
    guidance_scale: Annotated[float, Field(ge=0.0, le=100.0)] = 7.5,
    guidance_rescale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
    sampler: SamplerName = "euler",
    scheduler: ScheduleName = "normal",
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
    original_size, target_size and crop_top_left are (height, width) / (top, left), as in diffusers;
    they default to the latent's pixel size.
    """
    model = manager(ctx).get(unet.ref, "unet", ctx)
    device, dtype = torch.device(unet.ref.device), unet.ref.torch_dtype
    sched = make_scheduler(sampler, scheduler, unet.scheduler_config)
    sched.set_timesteps(steps, device=device)
    timesteps = cut_timesteps(sched, steps, strength, denoising_start)
    if denoising_end is not None:
        cutoff = int(round(sched.config.num_train_timesteps * (1 - denoising_end)))
        timesteps = timesteps[: int((timesteps >= cutoff).sum().item())]
    if len(timesteps) < 1:
        raise ValueError(f"strength {strength} with {steps} steps leaves no step to run; raise steps or strength")

    batch = batch_size * latent.samples.shape[0] if latent.samples.shape[0] > 1 else batch_size
    image_latents = _to_batch(latent.samples, batch, "latent").to(device, dtype)
    h, w = image_latents.shape[-2:]
    generators = [torch.Generator("cpu").manual_seed((seed + i) % (SEED_MAX + 1)) for i in range(batch)]
    noise = randn_tensor((batch, 4, h, w), generator=generators, device=torch.device("cpu"), dtype=torch.float32)
    noise = noise.to(device, dtype)
    if denoising_start is not None:
        latents = image_latents  # continuing a run that stopped at denoising_end: no new noise
    elif latent.empty or strength == 1.0:
        latents = noise * sched.init_noise_sigma
    else:
        latents = sched.add_noise(image_latents, noise, timesteps[:1].repeat(batch))

    nine_channel = unet.in_channels == 9
    mask = masked = None
    if nine_channel:
        if latent.mask is None or latent.masked is None:
            raise ValueError("this is a 9-channel inpainting UNet: its latent needs the masked image and a mask "
                             "(VAEEncode with a mask, then DownsampleMask)")
        masked = _to_batch(latent.masked, batch, "masked latents").to(device, dtype)
    if latent.mask is not None:
        mask = _to_batch(latent.mask, batch, "mask").to(device, dtype)
    if nine_channel and latent.empty:
        raise ValueError("a 9-channel inpainting UNet needs an image to inpaint, not an EmptyLatent")

    cfg = guidance_scale > 1.0 and unet.time_cond_proj_dim is None
    embeds = _to_batch(positive.embeds, batch, "positive").to(device, dtype)
    pooled = _to_batch(positive.pooled, batch, "positive pooled").to(device, dtype)
    height, width = h * unet.vae_scale_factor, w * unet.vae_scale_factor
    orig = tuple(original_size) if original_size else (height, width)
    target = tuple(target_size) if target_size else (height, width)
    crop = tuple(crop_top_left)
    if unet.requires_aesthetics_score:
        ids, neg_ids = orig + crop + (aesthetic_score,), orig + crop + (negative_aesthetic_score,)
    else:
        ids = neg_ids = orig + crop + target
    time_ids = torch.tensor([ids], dtype=dtype, device=device).repeat(batch, 1)
    if cfg:
        if negative is None:
            if not unet.force_zeros_for_empty_prompt:
                raise ValueError("this model does not use zero embeddings for an empty negative prompt: connect "
                                 "an EncodePrompt (of \"\" for no negative prompt) to 'negative'")
            neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            neg_embeds = _to_batch(negative.embeds, batch, "negative").to(device, dtype)
            neg_pooled = _to_batch(negative.pooled, batch, "negative pooled").to(device, dtype)
            neg_embeds, embeds = _match_length(neg_embeds, embeds)
        embeds = torch.cat([neg_embeds, embeds])
        pooled = torch.cat([neg_pooled, pooled])
        time_ids = torch.cat([torch.tensor([neg_ids], dtype=dtype, device=device).repeat(batch, 1), time_ids])
        if nine_channel:
            mask_in, masked_in = torch.cat([mask, mask]), torch.cat([masked, masked])  # type: ignore[list-item]
    elif nine_channel:
        mask_in, masked_in = mask, masked
    timestep_cond = None
    if unet.time_cond_proj_dim is not None:
        w_embed = torch.tensor(guidance_scale - 1).repeat(batch)
        timestep_cond = guidance_embedding(w_embed, unet.time_cond_proj_dim).to(device, dtype)

    step_params = inspect.signature(sched.step).parameters
    step_kwargs: dict[str, Any] = {}
    if "eta" in step_params:
        step_kwargs["eta"] = eta
    if "generator" in step_params:
        step_kwargs["generator"] = generators
    added = {"text_embeds": pooled, "time_ids": time_ids}
    progress = ctx.progress(len(timesteps))
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            x = torch.cat([latents] * 2) if cfg else latents
            x = sched.scale_model_input(x, t)
            if nine_channel:
                x = torch.cat([x, mask_in, masked_in], dim=1)
            pred = model(x, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
                         added_cond_kwargs=added, return_dict=False)[0]
            if cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
                if guidance_rescale > 0:
                    pred = rescale_guidance(pred, text, guidance_rescale)
            latents = sched.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            if not nine_channel and mask is not None:
                # 4-channel inpainting: outside the mask, follow the original re-noised to the next step.
                init = image_latents
                if i < len(timesteps) - 1:
                    init = sched.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
                latents = (1 - mask) * init + mask * latents
            progress.update()
    return latent.replace(samples=latents.float().contiguous(), empty=False)
