"""``GET /object_info``: ComfyUI-shaped node definitions, generated from the one node declaration.

``nodegraph.comfy_spec`` builds the entries (mapped ComfyUI class_types with ComfyUI's own inputs, and
every native node as ``nodegraph.<Name>``); the server supplies what only it knows: the file names its
combos offer (checkpoints, LoRAs, VAEs, UNets and ControlNets under the models directories, images under the
input directory), and turns the names a prompt picked from those combos back into paths.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from nodegraph.node import Registry
from nodegraph.settings import EngineSettings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_LISTED = 10_000  # a huge folder must not make every object_info request crawl


def _listing(root: Path, suffixes: set[str]) -> list[str]:
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if path.suffix.lower() in suffixes and path.is_file():
            found.append(path.relative_to(root).as_posix())
            if len(found) >= MAX_LISTED:
                break
    return sorted(found)


# ComfyUI's folders under a models directory, for each list a model combo of object_info is filled from
# (``diffusion_models`` was called ``unet`` in older ComfyUI layouts).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",), "loras": ("loras",), "vae": ("vae",),
    "diffusion_models": ("diffusion_models", "unet"), "controlnet": ("controlnet",)}


def server_files(settings: EngineSettings) -> dict[str, list[str]]:
    """``{"checkpoints": [...], "loras": [...], ..., "input_images": [...]}`` for the combos of
    ``object_info``: file names relative to their folder, as ComfyUI lists them."""
    files: dict[str, list[str]] = {kind: [] for kind in MODEL_FOLDERS}
    try:  # the built-in tiny models, when the SDXL node package is installed
        from nodes.tiny import BUILTINS

        files["checkpoints"] += [f"builtin:{name}" for name in BUILTINS]
    except ImportError:
        pass
    for models in settings.models_dirs:  # ComfyUI's convention: <models>/checkpoints/*.safetensors
        for kind, folders in MODEL_FOLDERS.items():
            for folder in folders:
                files[kind] += _listing(models / folder, {".safetensors"})
    images = _listing(settings.input_dir, IMAGE_SUFFIXES) if settings.input_dir is not None else []
    return {**files, "input_images": images}


def find_model_file(name: str, kind: str, models_dirs: tuple[Path, ...]) -> Path | None:
    """The file a model combo value names (``object_info``'s listing: relative to ``<models>/<folder>``),
    or None when it names none there. Names that climb out (``..``, absolute paths) name nothing."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts:
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


def object_info(registry: Registry, settings: EngineSettings) -> dict[str, dict[str, Any]]:
    from nodegraph.comfy_spec import comfy_object_info

    return comfy_object_info(registry, server_files(settings))
