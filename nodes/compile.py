"""LoadCheckpoint's ``compile`` option: torch.compile the UNet (``unet``) or the UNet and the VAE (``all``).

Shapes are static (``dynamic=False``): each image size compiles once, which is slow (a warning says so on
the first call of each size) and then runs faster. Inductor's compiled code is kept by torch in its own
on-disk cache, so a later process pays much less for the same model and size. Where torch.compile cannot
run here (no C++ compiler for the CPU backend, a Python torch.compile does not support) or fails on the
first call, the component runs eagerly with a warning: compiling is an optimisation, never a new error.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Compile = Literal["none", "unet", "all"]
COMPILED: dict[str, tuple[str, ...]] = {"none": (), "unet": ("unet",), "all": ("unet", "vae_encoder", "vae_decoder")}
# The submodule that does the work in each component (a VAE half's wrapper methods stay eager).
_TARGET = {"unet": None, "vae_encoder": "encoder", "vae_decoder": "decoder"}


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot run on this machine for this device, or None when it can."""
    import torch

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} here"
    if device == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile's CPU backend needs a C++ compiler (c++ or g++ on PATH)"
    return None


def _shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    import torch

    def one(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return (tuple(v.shape), v.dtype)
        if isinstance(v, dict):
            return tuple(sorted((k, one(x)) for k, x in v.items()))
        return None

    return tuple(one(a) for a in args) + tuple(sorted((k, one(v)) for k, v in kwargs.items()))


class CompiledForward:
    """A module's forward, compiled; falls back to the eager forward (once, with a warning) if compiling fails."""

    def __init__(self, eager: Callable[..., Any], name: str, backend: str | Callable[..., Any] = "inductor") -> None:
        import torch

        self.eager = eager
        self.name = name
        self.compiled = torch.compile(eager, dynamic=False, backend=backend)
        self.failed = False
        self.seen: set[tuple[Any, ...]] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        shapes = _shapes(args, kwargs)
        if shapes not in self.seen:
            logger.warning("compile: compiling the %s for a new input size; this first call is slow (minutes for "
                           "a full-size UNet on a CPU), later calls of this size are faster", self.name)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager still gives the right answer
            self.failed = True
            logger.warning("compile: torch.compile failed for the %s (%s: %s); running it eagerly",
                           self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return self.eager(*args, **kwargs)
        self.seen.add(shapes)
        return out


def compile_component(model: Any, component: str, how: str, device: str,
                      backend: str | Callable[..., Any] = "inductor") -> Any:
    """Compile ``model`` in place when ``how`` covers ``component``; the same object is returned."""
    if component not in COMPILED.get(how, ()):
        return model
    problem = compile_problem(device)
    if problem is not None:
        logger.warning("compile=%r: %s; the %s runs eagerly", how, problem, component)
        return model
    attr = _TARGET.get(component)
    target: torch.nn.Module | None = model if attr is None else getattr(model, attr, None)
    if target is None:
        return model
    # An instance attribute shadows the class's forward: nn.Module.__call__ (hooks included) stays as it is.
    target.forward = CompiledForward(target.forward, component, backend)  # type: ignore[method-assign]
    return model
