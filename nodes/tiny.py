"""Tiny random-weight SDXL-architecture pipelines, built from configs, deterministic from a seed.

They have every part of a real SDXL inpainting model (two CLIP text encoders with a byte-level BPE
tokenizer, a UNet with text-time conditioning, a VAE with an 8x scale factor, an Euler scheduler) at a
few MB, so the whole graph can be tested on a CPU with nothing downloaded. The images they make are
noise: the weights are random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nodegraph.files import atomic_folder
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
    with atomic_folder(target) as work:  # another process building the same model concurrently: one wins
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
    with atomic_folder(target) as work:
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
    return target


# --- Add-ons for the tiny model: a random LoRA (two file layouts) and a random SDXL ControlNet ---------------

LORA_LAYOUTS = ("peft", "kohya")
_UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _sgm_name(module: str, layers_per_block: int) -> str:
    """diffusers UNet module path -> the original (sgm) path kohya's SDXL LoRAs are named by."""
    parts = module.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        head = ["input_blocks", str(1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])), "1"]
    elif parts[0] == "up_blocks" and parts[2] == "attentions":
        head = ["output_blocks", str(int(parts[1]) * (layers_per_block + 1) + int(parts[3])), "1"]
    elif parts[0] == "mid_block" and parts[1] == "attentions":
        head = ["middle_block", "1"]
    else:
        raise ValueError(f"no sgm name for {module}")
    tail = parts[4:] if parts[0] != "mid_block" else parts[3:]
    return "_".join(head + tail)


def _lora_modules(in_channels: int) -> dict[str, list[tuple[str, int, int]]]:
    """{component: [(module path, in_features, out_features)]} of the linear layers a tiny LoRA patches."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = tiny_configs(in_channels)
    with init_empty_weights():
        models: dict[str, Any] = {"unet": UNet2DConditionModel(**configs["unet"])}
        for sub, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            models[sub] = cls(CLIPTextConfig(**configs[sub], vocab_size=600))
    found: dict[str, list[tuple[str, int, int]]] = {}
    for sub, model in models.items():
        targets = _UNET_LORA_TARGETS if sub == "unet" else _TEXT_LORA_TARGETS
        found[sub] = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and name.endswith(targets)]
    return found


def make_tiny_lora(path: str | os.PathLike[str], layout: str = "peft", seed: int = 1, rank: int = 4,
                   components: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2"),
                   in_channels: int = 9, alpha: float | None = None) -> Path:
    """Write a random LoRA for the tiny model to ``path`` (one .safetensors file).

    layout ``peft``: diffusers' own names (``unet.<module>.lora_A.weight``), as ``save_lora_weights`` writes.
    layout ``kohya``: ``lora_unet_input_blocks_..`` / ``lora_te1_..`` names with ``lora_down``/``lora_up`` and
    an ``alpha`` per module, the layout most published SDXL LoRAs use. Both down and up matrices are random
    (a trained LoRA's up matrix is not zero), so the LoRA visibly changes every patched layer.
    """
    import torch
    from safetensors.torch import save_file

    if layout not in LORA_LAYOUTS:
        raise ValueError(f"layout must be one of {LORA_LAYOUTS}, not {layout!r}")
    unknown = set(components) - {"unet", "text_encoder", "text_encoder_2"}
    if unknown:
        raise ValueError(f"unknown LoRA components {sorted(unknown)}")
    generator = torch.Generator().manual_seed(seed)
    layers_per_block = int(tiny_configs(in_channels)["unet"]["layers_per_block"])
    tensors: dict[str, torch.Tensor] = {}
    for sub, modules in _lora_modules(in_channels).items():
        if sub not in components:
            continue
        for name, fan_in, fan_out in modules:
            down = torch.randn(rank, fan_in, generator=generator) * (fan_in ** -0.5)
            up = torch.randn(fan_out, rank, generator=generator) * (0.5 / rank ** 0.5)
            if layout == "peft":
                tensors[f"{sub}.{name}.lora_A.weight"] = down
                tensors[f"{sub}.{name}.lora_B.weight"] = up
            else:
                if sub == "unet":
                    stem = "lora_unet_" + _sgm_name(name, layers_per_block).replace(".", "_")
                else:
                    stem = ("lora_te1_" if sub == "text_encoder" else "lora_te2_") + name.replace(".", "_")
                tensors[f"{stem}.lora_down.weight"] = down
                tensors[f"{stem}.lora_up.weight"] = up
                tensors[f"{stem}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank / 2))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry: safetensors writes a map's entries in no fixed order, and the file must be
    # byte-identical from the same seed.
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata={"format": "pt"})
    return target


def make_tiny_controlnet(folder: str | os.PathLike[str], seed: int = 2, in_channels: int = 9) -> Path:
    """Write a random SDXL ControlNet matching the tiny UNet (diffusers format) to ``folder``.

    ControlNetModel zero-initialises its output convolutions (so an untrained ControlNet adds nothing);
    here they are random too, so the residuals it feeds the UNet are not zero and tests can see them.
    """
    import torch
    from diffusers import ControlNetModel

    unet_cfg = tiny_configs(in_channels)["unet"]
    keep = ("down_block_types", "block_out_channels", "layers_per_block", "attention_head_dim",
            "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
            "transformer_layers_per_block", "projection_class_embeddings_input_dim", "cross_attention_dim",
            "norm_num_groups")
    config = {k: unet_cfg[k] for k in keep}
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model: Any = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 8, 16, 16), **config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            zeroed = [model.controlnet_cond_embedding.conv_out, *model.controlnet_down_blocks,
                      model.controlnet_mid_block]
            for conv in zeroed:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.01)
    finally:
        torch.random.set_rng_state(generator_state)
    target = Path(folder)
    model.save_pretrained(target, safe_serialization=True)
    (target / "README.md").write_text(f"# Tiny random-weight SDXL ControlNet\n\nRANDOM WEIGHTS (seed {seed}), "
                                      "built by `nodegraph make-tiny-model` for tests and demos.\n")
    return target
