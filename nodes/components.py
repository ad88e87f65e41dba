"""Separate components: LoadVAE and LoadUNet (a VAE or UNet other than the checkpoint's), SetClipLastLayer.

A component source is a whole pipeline (diffusers folder, hub id, ``builtin:``), whose ``vae/`` or ``unet/``
is used, or a bare diffusers component folder (``config.json`` + safetensors weights, e.g. an fp16-safe
SDXL VAE). A bare folder is reached through a small wrapper folder in the state directory (a link named
``vae`` or ``unet``), so the model manager loads it like any pipeline's part; its key is its content.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from nodegraph import node
from nodegraph.files import atomic_folder
from nodegraph.node import CachePolicy
from nodegraph.settings import active_settings
from nodegraph.types import MODEL_SOURCE
from nodes.memory import choose_dtypes
from nodes.models import (
    ClipHandle,
    Device,
    DType,
    ModelRef,
    UNetHandle,
    VaeHandle,
    _read_json,
    resolve_device,
    unet_handle,
    vae_handle,
)
from nodes.sources import ModelSource, SourceError, check_source, fingerprint, resolve

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "diffusers")
Part = Literal["unet", "vae", "controlnet"]
ComponentSource = Annotated[str, MODEL_SOURCE, Field(description="a diffusers pipeline folder, hub id or builtin: "
                                                                 "(its part is used), or a bare diffusers "
                                                                 "component folder (config.json + weights)")]


def _bare_folder(source: str, part: Part) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and not (path / part).is_dir():
        return path
    return None


def _hub_component(repo_id: str, part: Part) -> Path:
    """A hub repo holding the component bare (config.json + weights at its root, as e.g. the fp16-fix SDXL
    VAE) or as a pipeline's ``<part>/``: only those files are fetched, never the rest of a pipeline."""
    from huggingface_hub import snapshot_download

    allow = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
             "diffusion_pytorch_model-*.safetensors", "model_index.json", "scheduler/*", f"{part}/config.json",
             f"{part}/diffusion_pytorch_model.safetensors", f"{part}/diffusion_pytorch_model.safetensors.index.json",
             f"{part}/diffusion_pytorch_model-*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow))
    except Exception as exc:
        raise SourceError(f"cannot fetch hub model {repo_id!r}: {exc}. Download it once while online, or give "
                          "a local folder") from None


def component_source(source: str, part: Part, config: str | None = None) -> ModelSource:
    """The ModelSource whose ``<part>/`` folder holds the component ``source`` names.

    config: for a single-file VAE, a VAE (folder, hub id or pipeline) whose config describes it; default
    the SDXL 1.0 VAE config shipped in this package.
    """
    bare = _bare_folder(source, part)
    if bare is None and check_source(source) == "hub":
        folder = _hub_component(source, part)
        if (folder / part / "config.json").is_file():
            return ModelSource(str(folder), "diffusers", _part_fingerprint(folder / part))
        if not (folder / "config.json").is_file():
            raise SourceError(f"{source}: neither a {part} (config.json at its root) nor a model with {part}/")
        bare = folder
    if bare is None:
        src = resolve(source)
        if src.kind == "single_file" and part in ("vae", "controlnet"):
            return _converted(src, part, config)
        if src.kind != "diffusers":
            raise SourceError(f"{source}: single-file {part} weights are not supported; give a diffusers folder "
                              f"(config.json + diffusion_pytorch_model.safetensors) or a whole pipeline")
        if not (Path(src.path) / part / "config.json").is_file():
            raise SourceError(f"{source}: this model has no {part}/ folder")
        return src
    real = bare.resolve()
    wrapper = active_settings().state_root / "components" / (
        f"{part}-" + hashlib.blake2b(str(real).encode(), digest_size=12).hexdigest())
    link = wrapper / part
    if not link.is_dir():
        wrapper.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(real, target_is_directory=True)
        except FileExistsError:
            pass  # another process made the same link
    return ModelSource(str(wrapper), "diffusers", _part_fingerprint(link))


def _converted(src: ModelSource, part: Part, config: str | None) -> ModelSource:
    """A single-file VAE or ControlNet (original or diffusers key names, as ComfyUI's models/ files) converted
    once by diffusers' from_single_file into a diffusers folder in the state directory, keyed by the file's
    content. Configs: ``config``'s; else for a VAE the SDXL VAE config shipped here, for a ControlNet the
    one diffusers infers from the keys (fetched from the hub once)."""
    import shutil
    import tempfile

    from diffusers import AutoencoderKL, ControlNetModel

    from nodes.tiny import CONFIG_DIR

    conf = component_source(config, part) if config is not None else None
    name = f"{part}-{src.fingerprint}" + (f"-{conf.fingerprint[:16]}" if conf is not None else "")
    target = active_settings().state_root / "converted" / name
    digest = src.fingerprint if conf is None else f"{src.fingerprint}+{conf.fingerprint}"
    if (target / part / "config.json").is_file():
        return ModelSource(str(target), "diffusers", digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".config-", dir=target.parent) as scratch, atomic_folder(target) as work:
        config_args: dict[str, Any] = {}
        if conf is not None:
            config_args = {"config": conf.path, "subfolder": part}
        elif part == "vae":
            (Path(scratch) / "vae").mkdir(parents=True)
            shutil.copyfile(CONFIG_DIR / "vae.json", Path(scratch) / "vae" / "config.json")
            config_args = {"config": scratch, "subfolder": "vae"}
        logger.warning("converting the %s %s to diffusers format once (cached in %s)", part, src.path, target)
        cls: Any = AutoencoderKL if part == "vae" else ControlNetModel
        try:
            model = cls.from_single_file(src.path, local_files_only=conf is not None or part == "vae", **config_args)
        except Exception as exc:
            raise SourceError(f"{src.path}: could not read this single-file {part}: {exc}"
                              + ("" if config else "; name a folder with its config.json in 'config'")) from exc
        model.save_pretrained(work / part, safe_serialization=True)
    return ModelSource(str(target), "diffusers", digest)


def _part_fingerprint(folder: Path) -> str:
    """Content digest of one component folder (configs and safetensors; each file's digest is memoised)."""
    h = hashlib.blake2b(digest_size=20)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            h.update(f.name.encode() + b"\0" + fingerprint(f, "single_file").encode() + b"\0")
    return h.hexdigest()


def check_component_source(source: str | None = None, **_: Any) -> list[tuple[str | None, str]]:
    """Validation hook of the single-component loaders: a bare component folder, else any model source."""
    if source is None or (Path(source).expanduser() / "config.json").is_file():
        return []
    try:
        check_source(source)
    except SourceError as exc:
        return [("source", str(exc))]
    return []


def _vae_fingerprint(source: str, config: str | None = None, **_: Any) -> str:
    return component_source(source, "vae", config).fingerprint


def _unet_fingerprint(source: str, **_: Any) -> str:
    return component_source(source, "unet").fingerprint


@node(category="loaders", version=1, cache=CachePolicy.reads(_vae_fingerprint, "source", "config", memory=False),
      check=check_component_source)
def LoadVAE(
    source: ComponentSource,
    dtype: DType = "auto",
    device: Device = "auto",
    config: Annotated[str, MODEL_SOURCE, Field(description="for a single-file VAE of another architecture than "
                                                           "SDXL's: a VAE folder whose config.json describes it")]
    | None = None,
) -> VaeHandle:
    """Load a VAE to use instead of the checkpoint's (lazily, like every handle).

    source: a diffusers VAE folder or hub repo, a pipeline whose vae/ is used, or a single .safetensors VAE
    (ComfyUI's models/vae files; converted once, with the SDXL VAE config unless ``config`` says otherwise).
    dtype auto: float32 on the CPU (bf16 loses detail in a VAE); on an accelerator float16 when the VAE's
    config says it is safe in float16 (``force_upcast: false``, e.g. the fp16-fix SDXL VAE), else float32.
    """
    src = component_source(source, "vae", config)
    cfg = _read_json(Path(src.path) / "vae" / "config.json")
    dev = resolve_device(device)
    model_dtype, vae_dtype = choose_dtypes(dtype, dev)
    if dtype == "auto" and model_dtype == "float16" and not cfg.get("force_upcast", True):
        vae_dtype = "float16"  # a VAE fixed for float16 (fp16-fix) runs in it on accelerators
    if vae_dtype == "float16" and cfg.get("force_upcast", True):
        vae_dtype = "float32"  # SDXL's own VAE overflows in float16
    return vae_handle(ModelRef(src, vae_dtype, dev), cfg)


@node(category="loaders", version=1, cache=CachePolicy.reads(_unet_fingerprint, "source", memory=False), check=check_component_source)
def LoadUNet(source: ComponentSource, dtype: DType = "auto", device: Device = "auto") -> UNetHandle:
    """Load a UNet to use instead of the checkpoint's (lazily).

    From a pipeline, its scheduler and model_index settings come along; a bare UNet folder gets SDXL's
    (Euler, the scaled-linear betas, zero embeddings for an empty negative prompt).
    """
    from nodes.tiny import SDXL_SCHEDULER

    src = component_source(source, "unet")
    folder = Path(src.path)
    unet_cfg = _read_json(folder / "unet" / "config.json")
    vae_cfg = _read_json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else None
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = _read_json(sched_path) if sched_path.is_file() else {"_class_name": "EulerDiscreteScheduler",
                                                                      **SDXL_SCHEDULER}
    dev = resolve_device(device)
    return unet_handle(ModelRef(src, choose_dtypes(dtype, dev)[0], dev), unet_cfg, vae_cfg, index, sched_cfg)


@node(category="conditioning", version=1)
def SetClipLastLayer(
    clip: ClipHandle,
    last_layer: Annotated[int, Field(ge=-24, le=-1, description="-1 = the last layer's hidden states, -2 = the "
                                                                "penultimate (what SDXL uses without this node)")]
    = -1,
) -> ClipHandle:
    """Which CLIP hidden layer EncodePrompt reads (ComfyUI's CLIPSetLastLayer); an explicit clip_skip on
    EncodePrompt still wins. last_layer -k equals diffusers' clip_skip = k - 2."""
    import dataclasses

    return dataclasses.replace(clip, last_layer=last_layer)
