"""Memory and speed options for loaded components: offload, quantization, attention backend, VAE
tiling/slicing, and the precision ``dtype=auto`` picks for this machine.

Each option keeps the reference behaviour reachable (all off by default) and says clearly when this
machine cannot do it: offload and bitsandbytes need CUDA, quanto's int8/fp8 need optimum-quanto.
See docs/memory.md for what each option saves and costs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nodegraph.files import atomic_folder

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Offload = Literal["none", "model", "sequential", "group"]
Attention = Literal["auto", "sdpa", "math", "sliced"]
Quantize = Literal["none", "int8", "nf4", "fp8"]
QUANTIZED_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class MemoryOptions:
    offload: Offload = "none"
    attention: Attention = "auto"
    vae_tiling: bool = False
    vae_slicing: bool = False
    quantize: Quantize = "none"


def cuda_available() -> bool:
    """Whether a CUDA device can be used, answered without importing torch when it is not loaded yet.

    Validation runs without torch, so it asks the driver (a loaded NVIDIA kernel module) and the installed
    torch build (a "+cpu" build has no CUDA); once torch is imported, torch answers exactly.
    """
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return bool(loaded.cuda.is_available())
    if not Path("/proc/driver/nvidia/version").is_file():
        return False
    try:
        return "+cpu" not in metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False


def option_problems(options: MemoryOptions, device: str) -> list[tuple[str, str]]:
    """(input, why) for each option this machine cannot run; checked before anything runs."""
    cuda = cuda_available()
    on_cpu = device == "cpu" or (device == "auto" and not cuda)
    problems = []
    if options.offload != "none" and (not cuda or on_cpu):
        problems.append(("offload", f"offload={options.offload!r} moves weights between CPU and a CUDA device; "
                                    "this machine has no CUDA device (use offload='none')"))
    if options.quantize == "nf4":
        if not cuda or on_cpu:
            problems.append(("quantize", "quantize='nf4' uses bitsandbytes, which needs a CUDA device; on CPU use "
                                         "quantize='int8' (optimum-quanto)"))
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(("quantize", "quantize='nf4' needs bitsandbytes: pip install bitsandbytes"))
    if options.quantize in ("int8", "fp8"):
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            problems.append(("quantize", f"quantize={options.quantize!r} needs optimum-quanto: "
                                         "pip install optimum-quanto"))
        if options.offload != "none":
            problems.append(("quantize", f"quantize={options.quantize!r} cannot be combined with offload: quanto's "
                                         "quantized weights cannot be moved between devices by offload hooks"))
    return problems


def quantize_module(model: Any, how: str) -> Any:
    """Weight-only quantization with optimum-quanto (int8 or float8 weights, activations unchanged),
    in place on the device the weights are on (quanto's frozen weights cannot be moved afterwards)."""
    from optimum.quanto import freeze, qfloat8, qint8, quantize

    quantize(model, weights={"int8": qint8, "fp8": qfloat8}[how])
    freeze(model)
    model.nodegraph_quantized = how
    return model


def save_quantized(model: Any, folder: Path) -> None:
    """Keep quanto weights on disk (safetensors + the quantization map) so later loads skip the
    full-precision copy. Written to a temp folder and renamed: a crash never leaves half an entry."""
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    try:
        with atomic_folder(folder) as work:
            state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(work / "weights.safetensors"))
            (work / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    except OSError as exc:
        logger.warning("could not keep quantized weights in %s: %s", folder, exc)


def load_quantized(empty_model: Any, folder: Path, device: str, how: str) -> Any | None:
    """Materialise a meta-device model from kept quanto weights; None when there are none (or bad ones)."""
    import torch
    from optimum.quanto import requantize
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / "weights.safetensors"))
        qmap = json.loads((folder / "quantization_map.json").read_text())
    except (OSError, ValueError) as exc:
        if folder.exists():
            logger.warning("ignoring unreadable quantized weights in %s (%s)", folder, exc)
        return None
    requantize(empty_model, state, qmap, device=torch.device(device))
    missing = set(empty_model.state_dict()) - set(state)
    if missing:  # requantize loads non-strictly: anything missing would be uninitialised memory
        logger.warning("quantized weights in %s lack %d tensors; re-quantizing", folder, len(missing))
        return None
    empty_model.nodegraph_quantized = how
    return empty_model.eval().requires_grad_(False)


def nf4_config(library: Literal["diffusers", "transformers"]) -> Any:
    """bitsandbytes 4-bit NF4 config for from_pretrained (weights quantized while loading)."""
    import torch

    config_cls: Any
    if library == "diffusers":
        from diffusers import BitsAndBytesConfig as config_cls
    else:
        from transformers import BitsAndBytesConfig as config_cls
    return config_cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)


def place(model: Any, component: str, device: str, options: MemoryOptions) -> tuple[Any, Any]:
    """Put a loaded component where it runs; returns (model, hook) where hook can move it off the GPU."""
    import torch

    if not isinstance(model, torch.nn.Module):  # tokenizers live nowhere in particular
        return model, None
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "nodegraph_quantized", None):
        return model, None  # quantized where it runs (bitsandbytes while loading; quanto in place)
    if options.offload == "none" or device == "cpu":
        return model.to(device), None
    if options.offload == "model":
        from accelerate import cpu_offload_with_hook

        model, hook = cpu_offload_with_hook(model.to("cpu"), execution_device=torch.device(device))
        return model, hook
    if options.offload == "sequential":
        from accelerate import cpu_offload

        cpu_offload(model.to("cpu"), execution_device=torch.device(device))
        return model, None
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(model.to("cpu"), onload_device=torch.device(device), offload_type="block_level",
                           num_blocks_per_group=1)
    return model, None


def configure(model: Any, component: str, options: MemoryOptions) -> Any:
    """Options that change how a placed component computes: attention backend, VAE tiling and slicing."""
    if component == "unet" and options.attention == "sliced":
        logger.warning("attention='sliced' computes attention in slices to cut peak memory; with PyTorch's SDPA "
                       "this mostly costs time (use it only when attention itself runs out of memory)")
        model.set_attention_slice("auto")
    if component in ("unet", "vae_encoder", "vae_decoder") and options.attention in ("auto", "math"):
        model.set_attn_processor(MeasuredAttention("math" if options.attention == "math" else None))
    if component in ("vae_encoder", "vae_decoder"):
        if options.vae_tiling:
            model.enable_tiling()
        if options.vae_slicing:
            model.enable_slicing()
    return model


def _tensor_bytes(t: torch.Tensor) -> int:
    import torch

    # quanto's quantized weights are tensor subclasses that report their float dtype; count what they hold
    inner = [getattr(t, name) for name in ("_data", "_scale", "_shift") if isinstance(getattr(t, name, None),
                                                                                     torch.Tensor)]
    if inner:
        return sum(_tensor_bytes(x) for x in inner)
    return 0 if t.device.type == "meta" else t.numel() * t.element_size()


def module_bytes(model: Any) -> int:
    """Bytes held by a module's parameters and buffers (0 for tokenizers)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0
    return sum(_tensor_bytes(t) for t in list(model.parameters()) + list(model.buffers()))


# --- precision and attention backend choice (issue 15) ---------------------------------------------------

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16 / AMX, aarch64 BF16 (FEAT_BF16)


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is not available)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (so a bf16 matmul is faster than fp32, not emulated).

    Without those instructions oneDNN emulates bf16 and it is slower than fp32 (docs/memory.md).
    """
    found = cpu_flags() if flags is None else frozenset(flags)
    if not BF16_FLAGS & found:
        return False
    loaded = sys.modules.get("torch")
    return loaded is None or bool(loaded.backends.mkldnn.is_available())


def choose_dtypes(dtype: str, device: str, *, bf16: bool | None = None) -> tuple[str, str]:
    """(UNet and text encoder dtype, VAE dtype) for a LoadCheckpoint ``dtype``.

    ``auto``: float16 on accelerators, bfloat16 on CPUs with native bf16 (``bf16=None`` asks this CPU),
    float32 on other CPUs; the VAE stays float32 (SDXL's VAE overflows in float16 and loses detail in bf16).
    An explicit dtype applies to every component; float32 is the reference.
    """
    if dtype != "auto":
        return dtype, dtype
    if device != "cpu":
        return "float16", "float32"
    if native_bf16() if bf16 is None else bf16:
        return "bfloat16", "float32"
    return "float32", "float32"


_FASTEST: dict[tuple[Any, ...], Any] = {}


def _candidates(device_type: str) -> list[Any]:
    from torch.nn.attention import SDPBackend

    if device_type == "cuda":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


def fastest_backend(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, dtype: torch.dtype,
                    device: torch.device) -> Any:
    """The SDPA backend that ran this attention shape fastest here, measured once per shape and process.

    A few milliseconds per new shape (a UNet has a handful: self and cross attention at each level).
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    key = (device.type, device.index, dtype, batch, heads, q_len, kv_len, head_dim)
    found = _FASTEST.get(key)
    if found is not None:
        return found
    q = torch.randn(batch, heads, q_len, head_dim, dtype=dtype, device=device)
    kv = torch.randn(batch, heads, kv_len, head_dim, dtype=dtype, device=device)
    timings = []
    for backend in _candidates(device.type):
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, kv, kv)  # warm-up; raises where the backend cannot run
                best = float("inf")
                for _ in range(3):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    F.scaled_dot_product_attention(q, kv, kv)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    best = min(best, time.perf_counter() - start)
        except RuntimeError:
            continue
        timings.append((best, backend))
    chosen = min(timings, key=lambda t: t[0])[1] if timings else None
    logger.debug("attention %s: fastest SDPA backend %s (%s)", key, chosen, timings)
    _FASTEST[key] = chosen
    return chosen


class MeasuredAttention:
    """A diffusers attention processor: PyTorch SDPA restricted to one backend per call.

    ``backend=None`` (``attention='auto'``) uses the backend measured fastest for each shape on this device;
    ``"math"`` always uses the plain math kernel (``attention='math'``). Calls with an attention mask are
    left to PyTorch's own choice (not every backend takes a mask).
    """

    def __init__(self, backend: Literal["math"] | None = None) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.backend = backend
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if attention_mask is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.backend == "math":
            chosen = SDPBackend.MATH
        else:
            batch = hidden_states.shape[0]
            q_len = hidden_states.shape[2] * hidden_states.shape[3] if hidden_states.ndim == 4 else hidden_states.shape[1]
            kv_len = q_len if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            chosen = fastest_backend(batch, attn.heads, q_len, kv_len, attn.to_q.out_features // attn.heads,
                                     hidden_states.dtype, hidden_states.device)
        if chosen is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        with sdpa_kernel(chosen):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
