"""EncodePrompt: SDXL's two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG) -> one Conditioning."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from nodegraph import RunContext, node
from nodegraph.node import PERSIST
from nodes.models import ClipHandle, manager
from nodes.payloads import Conditioning, require_finite
from nodes.prompt_syntax import PromptWeightError, has_weighting, parse_weighted

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "transformers")


def _hidden(encoder: Any, ids: torch.Tensor, clip_skip: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate -- or clip_skip-adjusted -- hidden states, first output) as SDXL uses them."""
    out = encoder(ids.to(encoder.device), output_hidden_states=True)
    layer = -2 if clip_skip is None else -(clip_skip + 2)
    return out.hidden_states[layer], out[0]


def _encode_reference(tokenizer: Any, encoder: Any, text: str, clip_skip: int | None):
    """Exactly diffusers' path: one 77-token window, truncated (with a warning) if longer."""
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    full = tokenizer(text, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        dropped = tokenizer.batch_decode(full[:, tokenizer.model_max_length - 1: -1])
        logger.warning("prompt truncated to %d tokens (set weighting=true to encode long prompts in chunks); "
                       "dropped: %s", tokenizer.model_max_length, dropped)
    return _hidden(encoder, ids, clip_skip)


def _encode_chunked(tokenizer: Any, encoder: Any, text: str, clip_skip: int | None):
    """Weighted prompt in 75-token chunks, each framed by BOS/EOS and padded to 77; weights scale the
    hidden states, then the chunk is rescaled to keep its original mean (the A1111 convention)."""
    import torch

    window = tokenizer.model_max_length - 2
    ids: list[int] = []
    weights: list[float] = []
    for segment, weight in parse_weighted(text):
        seg_ids = tokenizer(segment, add_special_tokens=False).input_ids
        ids += seg_ids
        weights += [weight] * len(seg_ids)
    chunks = [(ids[i:i + window], weights[i:i + window]) for i in range(0, max(len(ids), 1), window)]
    hidden_chunks, first = [], None
    for chunk_ids, chunk_weights in chunks:
        pad = window - len(chunk_ids)
        row = [tokenizer.bos_token_id, *chunk_ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
        w = torch.tensor([1.0, *chunk_weights, 1.0] + [1.0] * pad)
        hidden, out0 = _hidden(encoder, torch.tensor([row]), clip_skip)
        if first is None:
            first = out0  # pooled output comes from the first chunk
        if bool((w != 1.0).any()):
            before = hidden.mean()
            hidden = hidden * w.to(hidden)[None, :, None]
            hidden = hidden * (before / hidden.mean())
        hidden_chunks.append(hidden)
    return torch.cat(hidden_chunks, dim=1), first


def _check(prompt: str | None = None, prompt_2: str | None = None, weighting: bool = True,
           **_: Any) -> list[tuple[str | None, str]]:
    """Prompt weights that would overflow are refused before anything runs."""
    problems: list[tuple[str | None, str]] = []
    for name, text in (("prompt", prompt), ("prompt_2", prompt_2)):
        if weighting and text is not None and has_weighting(text):
            try:
                parse_weighted(text)
            except PromptWeightError as exc:
                problems.append((name, str(exc)))
    return problems


@node(category="conditioning", version=1, cache=PERSIST, check=_check)
def EncodePrompt(
    clip: ClipHandle,
    prompt: Annotated[str, Field(description="the text for CLIP ViT-L (and for ViT-bigG unless prompt_2 is set)")],
    ctx: RunContext,
    prompt_2: Annotated[str, Field(description="the text for OpenCLIP ViT-bigG")] | None = None,
    clip_skip: Annotated[int, Field(ge=0, le=10, description="skip this many final CLIP layers")] | None = None,
    weighting: Annotated[bool, Field(description="read (word:1.3) emphasis and encode long prompts in chunks")]
    = True,
) -> Conditioning:
    """Encode a prompt with both SDXL text encoders.

    prompt feeds CLIP ViT-L; prompt_2 feeds OpenCLIP ViT-bigG and defaults to prompt. Use one EncodePrompt
    for the positive and one for the negative prompt. With weighting on, `(word:1.3)`, `(word)` and
    `[word]` set emphasis and prompts over 75 tokens are encoded in chunks; a prompt using neither is
    encoded exactly as diffusers does. With weighting off, long prompts are truncated (with a warning).
    """
    import torch

    models = manager(ctx)
    if clip_skip is None and clip.last_layer != -2:  # SetClipLastLayer: hidden_states[last_layer]
        clip_skip = -clip.last_layer - 2
    hidden_list, pooled = [], None
    with torch.no_grad():
        for text, tok_name, enc_name in ((prompt, "tokenizer", "text_encoder"),
                                         (prompt_2 if prompt_2 is not None else prompt, "tokenizer_2",
                                          "text_encoder_2")):
            tokenizer = models.get(clip.ref, tok_name, ctx)
            encoder = models.get(clip.ref, enc_name, ctx)
            too_long = len(tokenizer(text, add_special_tokens=False).input_ids) > tokenizer.model_max_length - 2
            if weighting and (has_weighting(text) or too_long):
                hidden, first = _encode_chunked(tokenizer, encoder, text, clip_skip)
            else:
                hidden, first = _encode_reference(tokenizer, encoder, text, clip_skip)
            hidden_list.append(hidden)
            if first.ndim == 2:  # CLIPTextModelWithProjection: text_embeds, the pooled output SDXL uses
                pooled = first
    if pooled is None:
        raise ValueError("the second text encoder gave no pooled output (is text_encoder_2 a "
                         "CLIPTextModelWithProjection?)")
    lengths = {h.shape[1] for h in hidden_list}
    if len(lengths) > 1:  # the two prompts chunked to different lengths: repeat the shorter's padding
        longest = max(lengths)
        hidden_list = [_pad_chunks(h, longest) for h in hidden_list]
    embeds = torch.cat(hidden_list, dim=-1).to(clip.ref.torch_dtype)
    pooled = pooled.to(clip.ref.torch_dtype)
    # after the cast: a weighted state that fits float32 can still overflow float16
    require_finite("EncodePrompt", hidden_states=embeds, pooled_embedding=pooled)
    return Conditioning(embeds, pooled)


def _pad_chunks(hidden: torch.Tensor, length: int) -> torch.Tensor:
    reps = -(-length // hidden.shape[1])
    return hidden.repeat(1, reps, 1)[:, :length]
