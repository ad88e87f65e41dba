"""LoadCheckpoint, the lazy model handles it returns, and the model manager that loads components.

Handles are small frozen values (a source, a dtype, a device and a few config facts read from JSON), so
LoadCheckpoint costs nothing; each component (unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
vae_encoder, vae_decoder) is read from disk the first time a node that needs it actually runs, and kept by
the engine's ModelManager for later runs in the same process.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import Field

from nodegraph import RunContext, node
from nodegraph.node import CachePolicy
from nodegraph.settings import active_settings
from nodegraph.types import MODEL_SOURCE
from nodes.compile import Compile, compile_component
from nodes.memory import (
    QUANTIZED_COMPONENTS,
    Attention,
    MemoryOptions,
    Offload,
    Quantize,
    choose_dtypes,
    configure,
    cuda_available,
    load_quantized,
    module_bytes,
    nf4_config,
    option_problems,
    place,
    quantize_module,
    save_quantized,
)
from nodes.sources import ModelSource, SourceError, check_source, resolve

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "diffusers", "transformers")
DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA applied to a component (nodes.lora): its content digest names it, not its path."""

    name: str  # PEFT adapter name, derived from the file's content digest
    path: str
    strength: float


@dataclass(frozen=True)
class ModelRef:
    """What every handle shares: where the weights are, and how to place them.

    patches: LoRAs to activate on the component (UNet or text encoders) each time it is fetched; the loaded
    base model is shared by refs that differ only in patches (ModelManager keys leave them out).
    """

    source: ModelSource
    dtype: str  # resolved: float32 | float16 | bfloat16
    device: str  # resolved: cpu | cuda | cuda:N | mps
    options: MemoryOptions = MemoryOptions()
    patches: tuple[LoraPatch, ...] = ()
    compile: str = "none"  # none | unet | all (nodes/compile.py)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype = getattr(torch, self.dtype)
        assert isinstance(dtype, torch.dtype)
        return dtype


@dataclass(frozen=True)
class UNetHandle:
    __socket__ = "UNET"
    ref: ModelRef
    in_channels: int
    vae_scale_factor: int
    force_zeros_for_empty_prompt: bool
    requires_aesthetics_score: bool
    time_cond_proj_dim: int | None
    addition_time_embed_dim: int
    scheduler_config: str  # JSON text (frozen and hashable)
    # Differential diffusion's strength (nodes.sampling.DifferentialDiffusion); None: the mask as it is.
    differential: float | None = None

    @property
    def train_steps(self) -> int:
        """The model's training timesteps (the scale of timestep ranges)."""
        return int(json.loads(self.scheduler_config).get("num_train_timesteps", 1000))


@dataclass(frozen=True)
class ClipHandle:
    __socket__ = "CLIP"
    ref: ModelRef
    # Which hidden layer EncodePrompt reads when its clip_skip is unset (ComfyUI's CLIPSetLastLayer, by
    # hidden-state index): SDXL reads the penultimate one.
    last_layer: int = -2


@dataclass(frozen=True)
class VaeHandle:
    __socket__ = "VAE"
    ref: ModelRef
    scaling_factor: float
    vae_scale_factor: int
    force_upcast: bool


class ModelManager:
    """Loaded components, one copy per process, kept under an optional memory budget.

    Components are keyed by (content fingerprint, component, dtype, device, options). With a budget
    (``EngineSettings.model_budget_bytes``; the CLI reads ``NODEGRAPH_MODEL_BUDGET``, e.g. ``6GiB``), loading a component first unloads the least recently
    used others until it fits. With ``offload='model'`` only the component in use stays on the GPU.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._loaded: OrderedDict[tuple[Any, ...], tuple[Any, int, Any]] = OrderedDict()
        self.unloaded: list[str] = []
        # LoRA adapters injected into a loaded component: {key: {adapter name: has weights for it}}
        self.adapters: dict[tuple[Any, ...], dict[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self._loaded.values())

    def loaded_components(self) -> list[str]:
        return [key[1] for key in self._loaded]

    def get(self, ref: ModelRef, component: str, ctx: RunContext | None = None) -> Any:
        key = (ref.source.fingerprint, component, ref.dtype, ref.device, ref.options, ref.compile)
        entry = self._loaded.get(key)
        if entry is None:
            model = load_component(ref, component)
            self._make_room(module_bytes(model), keep=key)  # before it reaches the device
            model, hook = place(model, component, ref.device, ref.options)
            model = configure(model, component, ref.options)
            model = compile_component(model, component, ref.compile, ref.device)
            entry = (model, module_bytes(model), hook)
            self._loaded[key] = entry
            if ctx is not None:
                ctx.record_loaded(component)
        self._loaded.move_to_end(key)
        if ref.patches or key in self.adapters:  # set (or switch off) this ref's LoRAs on the shared model
            from nodes.lora import activate_patches

            activate_patches(entry[0], component, ref, self.adapters.setdefault(key, {}))
        if ref.options.offload == "model":  # one component on the GPU at a time
            for other, (_, _, hook) in self._loaded.items():
                if other != key and hook is not None:
                    hook.offload()
        return entry[0]

    def _make_room(self, size: int, keep: tuple[Any, ...]) -> None:
        if self.budget_bytes is None:
            return
        while self._loaded and self.bytes + size > self.budget_bytes:
            victim = next(k for k in self._loaded if k != keep)
            del self._loaded[victim]
            self.adapters.pop(victim, None)
            self.unloaded.append(victim[1])
            logger.info("model budget: unloaded %s to make room", victim[1])
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def manager(ctx: RunContext) -> ModelManager:
    """The engine's model manager, with the budget of the engine's settings."""
    return ctx.resource(ModelManager, lambda: ModelManager(ctx.settings.model_budget_bytes))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceError(f"{path}: missing (is this a complete diffusers SDXL folder?)") from None
    except ValueError as exc:
        raise SourceError(f"{path}: corrupt JSON: {exc}") from None


def _weights_file(folder: Path, variant: str | None) -> Path:
    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    return folder / name


def _load_vae_half(ref: ModelRef, half: Literal["encoder", "decoder"]) -> Any:
    """Only the encoder (or decoder) half of the VAE: a run that only decodes never reads the encoder.

    diffusers' from_pretrained always reads the whole VAE; we build it on the meta device and fill just
    the half we need from the safetensors file. Checkpoints with legacy key names fall back to the
    whole-model loader.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from safetensors import SafetensorError, safe_open

    folder = Path(ref.source.path) / "vae"
    weights = _weights_file(folder, ref.source.variant)
    parts = ("encoder", "quant_conv") if half == "encoder" else ("decoder", "post_quant_conv")
    if weights.is_file():
        with init_empty_weights():
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
        try:
            with safe_open(weights, framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys() if k.split(".")[0] in parts}
        except (OSError, SafetensorError) as exc:
            raise SourceError(f"{weights}: cannot read the VAE weights ({exc}); the file is corrupt or "
                              "truncated") from None
        vae.load_state_dict(state, strict=False, assign=True)
        wanted = [m for name, m in vae.named_children() if name in parts]
        if all(p.device.type != "meta" for m in wanted for p in m.parameters()):
            other = ("decoder", "post_quant_conv") if half == "encoder" else ("encoder", "quant_conv")
            for name in other:  # the half we did not read: gone, not left on the meta device
                setattr(vae, name, None)
            if next(vae.parameters()).dtype != ref.torch_dtype:
                vae = vae.to(dtype=ref.torch_dtype)
            return vae.eval().requires_grad_(False)
        logger.debug("VAE weights use legacy names; loading the whole VAE")
    vae = AutoencoderKL.from_pretrained(ref.source.path, subfolder="vae", torch_dtype=ref.torch_dtype,
                                        variant=ref.source.variant, use_safetensors=True)
    return vae.eval().requires_grad_(False)


def load_component(ref: ModelRef, component: str) -> Any:
    """Read one component from disk (safetensors only), on the CPU; ModelManager places it."""
    from diffusers import UNet2DConditionModel
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if ref.source.kind != "diffusers":
        raise SourceError(f"{ref.source.path}: single-file checkpoints must be converted first")
    path, variant = ref.source.path, ref.source.variant
    quantize = ref.options.quantize if component in QUANTIZED_COMPONENTS else "none"
    extra: dict[str, Any] = {}
    if quantize == "nf4":
        extra["quantization_config"] = nf4_config("diffusers" if component == "unet" else "transformers")
    kept = None
    if component == "unet" and quantize in ("int8", "fp8"):
        # The UNet's quantized weights are kept on disk, so a later load never holds the full-precision copy.
        kept = active_settings().state_root / "quantized" / f"{ref.source.fingerprint}-unet-{ref.dtype}-{quantize}"
        from accelerate import init_empty_weights

        with init_empty_weights():
            empty = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path, subfolder="unet"))
        model = load_quantized(empty.to(ref.torch_dtype), kept, ref.device, quantize)
        if model is not None:
            return model
    try:
        if component in ("tokenizer", "tokenizer_2"):
            return CLIPTokenizer.from_pretrained(path, subfolder=component)
        if component == "unet":
            model = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=ref.torch_dtype,
                                                         variant=variant, use_safetensors=True, **extra)
        elif component == "text_encoder":
            model = CLIPTextModel.from_pretrained(path, subfolder=component, dtype=ref.torch_dtype,
                                                  variant=variant, use_safetensors=True, **extra)
        elif component == "text_encoder_2":
            model = CLIPTextModelWithProjection.from_pretrained(path, subfolder=component, dtype=ref.torch_dtype,
                                                                variant=variant, use_safetensors=True, **extra)
        elif component in ("vae_encoder", "vae_decoder"):
            return _load_vae_half(ref, "encoder" if component == "vae_encoder" else "decoder")
        elif component == "controlnet":  # nodes.controlnet (LoadControlNet)
            from diffusers import ControlNetModel

            model = ControlNetModel.from_pretrained(path, subfolder="controlnet", torch_dtype=ref.torch_dtype,
                                                    variant=variant, use_safetensors=True)
        else:
            raise ValueError(f"unknown model component {component!r}")
    except (OSError, SafetensorError) as exc:
        raise SourceError(f"{path}: cannot load {component}: {exc}") from exc
    model = model.eval().requires_grad_(False)
    if quantize in ("int8", "fp8"):
        model = quantize_module(model.to(ref.device), quantize)
        if kept is not None:
            save_quantized(model, kept)
    return model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but is not available here")
    return device


def _source_fingerprint(source: str, variant: str | None = None, config: str | None = None, **_: Any) -> str:
    digest = resolve(source, variant).fingerprint
    return digest if config is None else f"{digest}+{resolve(config).fingerprint}"


def _check(source: str | None = None, device: str = "auto", offload: str = "none", attention: str = "sdpa",
           vae_tiling: bool = False, vae_slicing: bool = False, quantize: str = "none", config: str | None = None,
           **_: Any) -> list[tuple[str | None, str]]:
    """Refused at validation: a missing or pickle source (cheap checks: nothing is hashed, built or
    downloaded) and memory options this machine cannot run."""
    problems: list[tuple[str | None, str]] = []
    for name, value in (("source", source), ("config", config)):
        if value is not None:
            try:
                check_source(value)
            except SourceError as exc:
                problems.append((name, str(exc)))
    if device.startswith("cuda") and not cuda_available():
        problems.append(("device", "device 'cuda' was requested but this machine has no CUDA device"))
    options = MemoryOptions(offload, attention, vae_tiling, vae_slicing, quantize)  # type: ignore[arg-type]
    problems.extend(option_problems(options, device))
    return problems


class Checkpoint(NamedTuple):
    unet: UNetHandle
    clip: ClipHandle
    vae: VaeHandle


# Handles are cheap and name local state (paths): LoadCheckpoint runs every time, keyed by content.
@node(category="loaders", version=2, cache=CachePolicy.reads(_source_fingerprint, "source", "config", memory=False),
      check=_check)
def LoadCheckpoint(
    source: Annotated[str, MODEL_SOURCE, Field(description="a diffusers folder, a .safetensors file, a hub id "
                                                           "or builtin:tiny-sdxl-inpaint")],
    dtype: DType = "auto",
    device: Device = "auto",
    variant: str | None = None,
    offload: Offload = "none",
    attention: Attention = "sdpa",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    quantize: Quantize = "none",
    config: Annotated[str, MODEL_SOURCE, Field(description="configs for a single-file checkpoint of another "
                                                           "architecture")] | None = None,
    compile: Compile = "none",
) -> Checkpoint:
    """Load an SDXL checkpoint lazily: returns handles; weights are read when a node first needs them.

    source: a diffusers folder, a .safetensors file, a hub id (e.g. diffusers/stable-diffusion-xl-1.0-inpainting-0.1),
    or builtin:tiny-sdxl-inpaint / builtin:tiny-sdxl (random weights, for tests and demos).
    dtype auto: float16 on CUDA and bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX), float32 on other
    CPUs; the VAE stays float32. float32 is the reference. attention auto (the SDPA kernel measured fastest
    per device and size) | sdpa (PyTorch's choice) | math | sliced. compile none|unet|all: torch.compile the
    UNet (all: and the VAE), slow first call per size, eager with a warning where unsupported.
    Memory options (docs/memory.md): offload none|model|sequential|group (CUDA),
    vae_tiling, vae_slicing, quantize none|int8|fp8 (optimum-quanto, CPU too)|nf4 (bitsandbytes, CUDA)
    for the UNet and both text encoders. config: for a single-file checkpoint of another architecture than
    SDXL 1.0, a diffusers folder (or hub id) whose configs and tokenizers describe it.
    """
    src = resolve(source, variant)
    if src.kind == "single_file":
        from nodes.single_file import convert_single_file

        src = convert_single_file(src, resolve(config) if config is not None else None)
    elif config is not None:
        raise SourceError(f"config={config!r} only applies to single-file checkpoints; {source} is a folder")
    folder = Path(src.path)
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    unet_cfg = _read_json(folder / "unet" / "config.json")
    vae_cfg = _read_json(folder / "vae" / "config.json")
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    dev = resolve_device(device)
    model_dtype, vae_dtype = choose_dtypes(dtype, dev)
    if vae_dtype == "float16" and vae_cfg.get("force_upcast", True):
        vae_dtype = "float32"  # SDXL's VAE overflows in float16; diffusers upcasts it for the same reason
    options = MemoryOptions(offload, attention, vae_tiling, vae_slicing, quantize)
    unet = unet_handle(ModelRef(src, model_dtype, dev, options, compile=compile), unet_cfg, vae_cfg, index, sched_cfg)
    clip = ClipHandle(ModelRef(src, model_dtype, dev, options))
    vae = vae_handle(ModelRef(src, vae_dtype, dev, options, compile=compile), vae_cfg)
    return Checkpoint(unet, clip, vae)


def _vae_scale(vae_cfg: dict[str, Any]) -> int:
    return int(2 ** (len(vae_cfg.get("block_out_channels", [0, 0, 0, 0])) - 1))


def unet_handle(ref: ModelRef, unet_cfg: dict[str, Any], vae_cfg: dict[str, Any] | None, index: dict[str, Any],
                sched_cfg: dict[str, Any]) -> UNetHandle:
    """The UNet handle from the configs (LoadCheckpoint, LoadUNet); no VAE config: SDXL's 8x."""
    in_channels = int(unet_cfg.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise SourceError(f"{ref.source.path}: UNet has {in_channels} input channels; SDXL inpainting needs 4 "
                          "(base model, blended) or 9 (inpainting model)")
    return UNetHandle(
        ref, in_channels, _vae_scale(vae_cfg) if vae_cfg is not None else 8,
        bool(index.get("force_zeros_for_empty_prompt", True)), bool(index.get("requires_aesthetics_score", False)),
        unet_cfg.get("time_cond_proj_dim"), int(unet_cfg.get("addition_time_embed_dim") or 256),
        json.dumps(sched_cfg, sort_keys=True))


def vae_handle(ref: ModelRef, vae_cfg: dict[str, Any]) -> VaeHandle:
    """The VAE handle from its config (LoadCheckpoint, LoadVAE)."""
    return VaeHandle(ref, float(vae_cfg.get("scaling_factor", 0.13025)), _vae_scale(vae_cfg),
                     bool(vae_cfg.get("force_upcast", True)))
