"""Tiny random-weight SDXL-architecture pipelines, built from configs, deterministic from a seed.

They have every part of a real SDXL inpainting model (two CLIP text encoders with a byte-level BPE
tokenizer, a UNet with text-time conditioning, a VAE with an 8x scale factor, an Euler scheduler) at a
few MB, so the whole graph can be tested on a CPU with nothing downloaded. The images they make are
noise: the weights are random.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nodes.vocab import byte_alphabet

TINY_SEED = 0
BUILTINS = {"tiny-sdxl-inpaint": 9, "tiny-sdxl": 4}
BUILD_VERSION = 2  # bump when the tiny model changes (architecture, vocabulary): renames the built-in folder

SDXL_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon", "interpolation_type": "linear",
    "use_karras_sigmas": False, "sample_max_value": 1.0, "clip_sample": False, "set_alpha_to_one": False,
    "skip_prk_steps": True,
}


TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>"), ("o", "f</w>"), ("r", "e"),
               ("re", "d</w>"), ("i", "n"), ("a", "n"), ("o", "n</w>")]


def write_tiny_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> int:
    """vocab.json + merges.txt for a byte-level CLIP BPE; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    for a, b in TINY_MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in TINY_MERGES) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token,
        "do_lower_case": True}))
    return len(vocab)


def tiny_configs(in_channels: int) -> dict[str, dict[str, Any]]:
    """The architecture of the tiny model (same shape of network as SDXL, far narrower)."""
    text = {"hidden_size": 32, "intermediate_size": 37, "layer_norm_eps": 1e-5, "num_attention_heads": 4,
            "num_hidden_layers": 5, "hidden_act": "gelu", "max_position_embeddings": 77}
    return {
        "text_encoder": {**text, "projection_dim": 32},
        # A different width from encoder 1, as in SDXL (768 vs 1280): single-file loaders tell them apart by it.
        "text_encoder_2": {**text, "hidden_size": 48, "projection_dim": 32},
        "unet": {
            "sample_size": 8, "in_channels": in_channels, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "transformer_layers_per_block": [1, 1], "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "cross_attention_dim": 32 + 48, "norm_num_groups": 8,
        },
        "vae": {
            "block_out_channels": [8, 16, 16, 16], "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 0.13025,
            "force_upcast": True,
        },
    }


def make_tiny_model(folder: str | os.PathLike[str], in_channels: int = 9, seed: int = TINY_SEED) -> Path:
    """Write a tiny random-weight SDXL pipeline in diffusers format (safetensors) to ``folder``.

    Built in a temporary folder beside the target and renamed into place, so a crash never leaves half
    a model and two processes building the same one both end with a whole one.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if in_channels not in (4, 9):
        raise ValueError(f"in_channels must be 4 (base) or 9 (inpainting), not {in_channels}")
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        vocab_size = 0
        for sub in ("tokenizer", "tokenizer_2"):
            vocab_size = write_tiny_tokenizer(work / sub)
        configs = tiny_configs(in_channels)
        eos = vocab_size - 1
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
                cfg = CLIPTextConfig(**configs[sub], vocab_size=vocab_size, bos_token_id=eos - 1, eos_token_id=eos,
                                     pad_token_id=eos)
                cls(cfg).eval().save_pretrained(work / sub, safe_serialization=True)
            unet: Any = UNet2DConditionModel(**configs["unet"])  # diffusers' mixins are invisible to mypy
            unet.save_pretrained(work / "unet", safe_serialization=True)
            vae: Any = AutoencoderKL(**configs["vae"])
            vae.save_pretrained(work / "vae", safe_serialization=True)
        finally:
            torch.random.set_rng_state(generator_state)
        (work / "scheduler").mkdir()
        (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "EulerDiscreteScheduler", **SDXL_SCHEDULER}, indent=2))
        pipeline_class = "StableDiffusionXLInpaintPipeline" if in_channels == 9 else "StableDiffusionXLPipeline"
        index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1", "force_zeros_for_empty_prompt": True,
                 "requires_aesthetics_score": False,
                 "text_encoder": ["transformers", "CLIPTextModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
        (work / "model_index.json").write_text(json.dumps(index, indent=2))
        (work / "README.md").write_text(
            f"# Tiny random-weight SDXL ({'inpainting, 9' if in_channels == 9 else 'base, 4'}-channel UNet)\n\n"
            f"RANDOM WEIGHTS (seed {seed}), built by `nodegraph make-tiny-model` for tests and demos. "
            "Its images are noise.\n")
        if target.exists():
            shutil.rmtree(work)  # someone else finished first; theirs is identical
        else:
            try:
                os.replace(work, target)
            except OSError:
                shutil.rmtree(work, ignore_errors=True)
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


CONFIG_DIR = Path(__file__).parent / "configs" / "sdxl"


def sdxl_configs(in_channels: int) -> dict[str, dict[str, Any]]:
    """The real SDXL 1.0 architecture (base: 4 input channels; inpainting 0.1: 9), shipped in the package."""
    configs = {name: json.loads((CONFIG_DIR / f"{name}.json").read_text())
               for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    configs["unet"]["in_channels"] = in_channels
    return configs


def _fill_random(model: Any, generator: Any, dtype: Any) -> Any:
    """Materialise a meta-device model in ``dtype`` with small random weights (norms at 1, biases at 0).

    Initialising 3.5 billion float32 parameters the usual way needs 14 GB and minutes; this writes each
    tensor once, directly in the target dtype.
    """
    import torch

    model = model.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=generator) * (fan_in ** -0.5))
        for _, b in model.named_buffers():  # e.g. CLIP position ids: recompute as arange
            if b.dtype in (torch.int64, torch.int32):
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    return model.eval()


def make_full_size_model(folder: str | os.PathLike[str], in_channels: int = 9, seed: int = TINY_SEED,
                         dtype: str = "float16") -> Path:
    """A random-weight model with the real SDXL architecture (about 2.6 B UNet parameters), for benchmarks.

    Tokenizers use the real CLIP vocabulary (nodes.vocab).
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    target = Path(folder)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    configs = sdxl_configs(in_channels)
    generator = torch.Generator().manual_seed(seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from nodes.vocab import write_clip_tokenizer

        for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
            write_clip_tokenizer(work / sub, pad_token=pad)
        for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            cfg = {k: v for k, v in configs[sub].items() if k != "architectures"}
            with init_empty_weights():
                model = cls(CLIPTextConfig(**cfg))
            _fill_random(model, generator, torch_dtype).save_pretrained(work / sub, safe_serialization=True)
            del model
        for sub, model_cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            cfg = {k: v for k, v in configs[sub].items() if not k.startswith("_")}
            with init_empty_weights():
                component: Any = model_cls(**cfg)
            component = _fill_random(component, generator, torch.float32 if sub == "vae" else torch_dtype)
            component.save_pretrained(work / sub, safe_serialization=True)
            del component
        (work / "scheduler").mkdir()
        (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2))
        (work / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionXLInpaintPipeline" if in_channels == 9 else "StableDiffusionXLPipeline",
            "force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}, indent=2))
        (work / "README.md").write_text(f"# Full-size SDXL architecture, RANDOM WEIGHTS (seed {seed}, {dtype})\n\n"
                                        "For benchmarks only: its images are noise.\n")
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target
