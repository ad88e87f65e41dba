"""LoRA: LoadLora, LoadLoraModelOnly and LoadLoraClipOnly patch model handles with a LoRA file.

Patching is lazy, like every handle: the node only records the LoRA (its content digest, path and
strength) on the handle's ``ModelRef.patches``. When a node later fetches the UNet or a text encoder,
the ModelManager calls ``activate_patches``, which injects the LoRA into the shared base model once as a
PEFT adapter (diffusers' own ``lora_state_dict`` / ``load_lora_into_unet`` / ``load_lora_into_text_encoder``,
which read both the diffusers/PEFT layout and kohya's) and then activates exactly this handle's adapters
at their strengths -- or switches all adapters off for a handle without LoRAs. The base weights are never
modified (nothing is fused), so graphs with and without a LoRA share one loaded model and give the images
each gives alone.

Cache keys: the LoRA's content digest and the strengths that matter enter the node's key (the source path
does not), so everything downstream is keyed by them. A strength whose component the LoRA has no weights
for is left out, so e.g. a UNet-only LoRA never invalidates text encodings.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from pydantic import Field

from nodegraph import node
from nodegraph.node import CachePolicy
from nodegraph.types import MODEL_SOURCE
from nodes.models import ClipHandle, LoraPatch, ModelRef, UNetHandle, _read_json
from nodes.sources import SourceError, check_source, resolve, resolve_path

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "diffusers", "peft")
PATCHABLE = ("unet", "text_encoder", "text_encoder_2")
Strength = Annotated[float, Field(ge=-100.0, le=100.0, description="how strongly the LoRA applies (1.0 = as "
                                                                  "trained; 0 = off; negative inverts it)")]
LoraSource = Annotated[str, MODEL_SOURCE, Field(description="a LoRA .safetensors file (diffusers/PEFT or kohya "
                                                            "layout)")]


def _lora_file(source: str) -> Path:
    if check_source(source) != "single_file":
        raise SourceError(f"{source}: a LoRA is one .safetensors file")
    return resolve_path(source)[0]


@lru_cache(maxsize=64)
def _components_of(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    """Which of unet / text_encoder / text_encoder_2 a LoRA file has weights for (header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError) as exc:
        raise SourceError(f"{path}: cannot read the LoRA ({exc}); the file is corrupt or not safetensors") from None
    found = set()
    for key in keys:
        if key.startswith(("unet.", "lora_unet_")):
            found.add("unet")
        elif key.startswith(("text_encoder_2.", "lora_te2_")):
            found.add("text_encoder_2")
        elif key.startswith(("text_encoder.", "lora_te1_", "lora_te_")):
            found.add("text_encoder")
    if not found:
        raise SourceError(f"{path}: no LoRA weights for an SDXL UNet or text encoder in this file")
    return frozenset(found)


def lora_components(source: str) -> frozenset[str]:
    path = _lora_file(source)
    st = path.stat()
    return _components_of(str(path), st.st_size, st.st_mtime_ns)


def _fingerprint(source: str, **strengths: float) -> list[Any]:
    """The LoRA's content digest and only the strengths of the parts it patches (see the module doc)."""
    parts = lora_components(source)
    return [resolve(source).fingerprint, strengths.get("strength_unet", 1.0) if "unet" in parts else None,
            strengths.get("strength_clip", 1.0) if parts & {"text_encoder", "text_encoder_2"} else None]


def _check(source: str | None = None, **_: Any) -> list[tuple[str | None, str]]:
    if source is None:
        return []
    try:
        if check_source(source) != "single_file":
            return [("source", f"{source}: a LoRA is one .safetensors file")]
    except SourceError as exc:
        return [("source", str(exc))]
    return []


def _patched(ref: ModelRef, source: str, strength: float) -> ModelRef:
    """ref with the LoRA added; the same LoRA twice adds its strengths (LoRA deltas are linear in them)."""
    src = resolve(source)
    name = "lora_" + src.fingerprint[:20]
    patches = list(ref.patches)
    for i, p in enumerate(patches):
        if p.name == name:
            patches[i] = dataclasses.replace(p, strength=p.strength + strength)
            break
    else:
        patches.append(LoraPatch(name, src.path, float(strength)))
    return dataclasses.replace(ref, patches=tuple(patches))


def patch_unet(unet: UNetHandle, source: str, strength: float) -> UNetHandle:
    if "unet" not in lora_components(source):
        return unet
    return dataclasses.replace(unet, ref=_patched(unet.ref, source, strength))


def patch_clip(clip: ClipHandle, source: str, strength: float) -> ClipHandle:
    if not lora_components(source) & {"text_encoder", "text_encoder_2"}:
        return clip
    return dataclasses.replace(clip, ref=_patched(clip.ref, source, strength))


class LoraModels(NamedTuple):
    unet: UNetHandle
    clip: ClipHandle


_CACHE = CachePolicy.reads(_fingerprint, "source", "strength_unet", "strength_clip", memory=False)
_UNET_CACHE = CachePolicy.reads(_fingerprint, "source", "strength_unet", memory=False)
_CLIP_CACHE = CachePolicy.reads(_fingerprint, "source", "strength_clip", memory=False)


# Handles are cheap and name local state (paths): the LoRA nodes run every time, keyed by content.
@node(category="loaders", version=1, cache=_CACHE, check=_check)
def LoadLora(unet: UNetHandle, clip: ClipHandle, source: LoraSource, strength_unet: Strength = 1.0,
             strength_clip: Strength = 1.0) -> LoraModels:
    """Apply a LoRA to the UNet and both text encoders (chain several for stacked LoRAs).

    Lazy: nothing is read until a node runs the patched model; the base model stays shared and unmodified.
    Changing either strength re-keys both outputs; LoadLoraModelOnly + LoadLoraClipOnly key them apart.
    """
    return LoraModels(patch_unet(unet, source, strength_unet), patch_clip(clip, source, strength_clip))


@node(category="loaders", version=1, cache=_UNET_CACHE, check=_check)
def LoadLoraModelOnly(unet: UNetHandle, source: LoraSource, strength_unet: Strength = 1.0) -> UNetHandle:
    """Apply a LoRA to the UNet only (its text-encoder weights, if any, are ignored)."""
    return patch_unet(unet, source, strength_unet)


@node(category="loaders", version=1, cache=_CLIP_CACHE, check=_check)
def LoadLoraClipOnly(clip: ClipHandle, source: LoraSource, strength_clip: Strength = 1.0) -> ClipHandle:
    """Apply a LoRA to the text encoders only (its UNet weights, if any, are ignored)."""
    return patch_clip(clip, source, strength_clip)


# --- applying patches to loaded models (called by ModelManager.get) -------------------------------------------

def _unet_config(ref: ModelRef, model: Any, component: str) -> Any:
    """The UNet config kohya files need to map their block names; for a text encoder, read it from disk."""
    if component == "unet":
        return model.config
    from pathlib import Path

    path = Path(ref.source.path) / "unet" / "config.json"
    return SimpleNamespace(**_read_json(path)) if path.is_file() else None


def _inject(model: Any, component: str, ref: ModelRef, patch: LoraPatch) -> bool:
    """Load one LoRA into a component as a PEFT adapter; False when the file has no weights for it."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin as Loader

    state, alphas = Loader.lora_state_dict(patch.path, unet_config=_unet_config(ref, model, component))
    if component == "unet":
        if not any(k.startswith("unet.") for k in state):
            return False
        Loader.load_lora_into_unet(state, alphas, model, adapter_name=patch.name)
    else:
        if not any(k.startswith(component + ".") for k in state):
            return False
        Loader.load_lora_into_text_encoder(state, alphas, model, prefix=component, adapter_name=patch.name)
    logger.info("LoRA %s loaded into %s", patch.path, component)
    return True


def activate_patches(model: Any, component: str, ref: ModelRef, loaded: dict[str, bool]) -> None:
    """Make ``model`` compute with exactly ``ref.patches`` active (none: every adapter switched off).

    ``loaded`` is the ModelManager's record of the adapters already injected into this model.
    """
    if component not in PATCHABLE:
        return
    if ref.patches and ref.options.quantize != "none":
        raise ValueError(f"LoRA on a quantized model (quantize={ref.options.quantize!r}) is not supported; "
                         "load the checkpoint with quantize='none'")
    for patch in ref.patches:
        if patch.name not in loaded:
            loaded[patch.name] = _inject(model, component, ref, patch)
    if not any(loaded.values()):
        return
    active = [p for p in ref.patches if loaded.get(p.name)]
    if component == "unet":
        if active:
            model.enable_lora()
            model.set_adapters([p.name for p in active], [p.strength for p in active])
        else:
            model.disable_lora()
        return
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    if active:
        enable_lora_for_text_encoder(model)
        set_adapters_for_text_encoder([p.name for p in active], model, [p.strength for p in active])
    else:
        disable_lora_for_text_encoder(model)
