"""``GET /object_info``: ComfyUI-shaped node definitions, generated from the one node declaration.

``nodegraph.comfy_spec`` builds the entries (mapped ComfyUI class_types with ComfyUI's own inputs, and
every native node as ``nodegraph.<Name>``); the server supplies what only it knows: the file names its
combos offer (checkpoints, LoRAs, VAEs, UNets and ControlNets under the models directories, images under the
input directory), and turns the names a prompt picked from those combos back into paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodegraph.model_files import MODEL_FOLDERS
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


def object_info(registry: Registry, settings: EngineSettings) -> dict[str, dict[str, Any]]:
    from nodegraph.comfy_spec import comfy_object_info

    return comfy_object_info(registry, server_files(settings))
