"""ComfyUI's models layout: ``<models>/checkpoints``, ``loras``, ``vae``, ``diffusion_models`` (``unet``),
``controlnet``. A ComfyUI workflow names its model files relative to those folders (``ckpt_name:
"sdxl/base.safetensors"``); with models directories given (``nodegraph serve --models-dir``, ``nodegraph run
--models-dir``) such names are turned into paths before the import, using the folder each input's
declaration lists its choices from.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from nodegraph.node import Registry

# ComfyUI's folders under a models directory, for each list a model combo of object_info is filled from
# (``diffusion_models`` was called ``unet`` in older ComfyUI layouts).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",), "loras": ("loras",), "vae": ("vae",),
    "diffusion_models": ("diffusion_models", "unet"), "controlnet": ("controlnet",)}


def find_model_file(name: str, kind: str, models_dirs: tuple[Path, ...]) -> Path | None:
    """The file a model combo value names (``object_info``'s listing: relative to ``<models>/<folder>``),
    or None when it names none there. Names that climb out (``..``, absolute paths) name nothing."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:  # "" and "." name the folder itself
        return None
    for models in models_dirs:
        for folder in MODEL_FOLDERS.get(kind, ()):
            path = models / folder / Path(*rel.parts)
            if path.exists():  # a file as ComfyUI has them, or a diffusers folder
                return path
    return None


def resolve_model_names(prompt: dict[str, Any], registry: Registry, models_dirs: tuple[Path, ...]
                        ) -> dict[str, Any]:
    """The prompt with every model combo value that names a file under the models directories (a
    ``ckpt_name`` picked in the editor, a ``lora_name`` ...) replaced by that file's path; the rest as is.

    Done before the import, so the graph (and the journal) holds paths the path policy then checks.
    """
    from nodegraph.comfy_spec import ComfyClass

    resolved: dict[str, Any] = {}
    for cid, entry in prompt.items():
        cls = registry.comfy.get(entry.get("class_type", "")) if isinstance(entry, dict) else None
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        if not isinstance(cls, ComfyClass) or not isinstance(inputs, dict):
            resolved[cid] = entry
            continue
        changed = dict(inputs)
        for spec in cls.inputs:
            value = inputs.get(spec.name)
            if spec.choices_from in MODEL_FOLDERS and isinstance(value, str):
                found = find_model_file(value, spec.choices_from, models_dirs)
                if found is not None:
                    changed[spec.name] = str(found)
        resolved[cid] = {**entry, "inputs": changed} if changed != inputs else entry
    return resolved
