"""The engine's settings: one explicit, typed object handed to ``Engine`` and reachable from ``RunContext``.

Environment variables are read here once, at the edge (``EngineSettings.from_env``, called by the CLI,
the server and the batch runner at start-up), never from inside the engine or a node.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_MEMORY_BYTES = 4 * 1024**3
DEFAULT_DISK_BYTES = 10 * 1024**3
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # input images: 8192 x 8192; Pillow's own bomb limit is ~179 MP


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$NODEGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/nodegraph``, else ``~/.cache/nodegraph``."""
    env = os.environ if env is None else env
    if env.get("NODEGRAPH_CACHE_DIR"):
        return Path(env["NODEGRAPH_CACHE_DIR"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "nodegraph"


@dataclass(frozen=True)
class PathPolicy:
    """Which files a workflow may read and write (checked at validation, with the node and input named).

    ``read_roots``: ``None`` means any readable path (a trusted local workflow); otherwise a path a node
    reads must resolve (``..`` and symlinks followed) inside one of them. ``write_roots``: a path a node
    writes must resolve inside one of them unless ``allow_outside_writes``. Relative paths resolve against
    ``base_dir`` (reads; the workflow file's folder for a local file, the input directory over HTTP) and
    the first write root (writes).
    """

    write_roots: tuple[Path, ...]
    read_roots: tuple[Path, ...] | None = None
    base_dir: Path | None = None
    allow_outside_writes: bool = False


@dataclass(frozen=True)
class EngineSettings:
    """Everything an ``Engine`` and its nodes may need to know about where things live and how big."""

    cache_dir: Path | None = None  # None: no disk tier (``--no-cache``)
    disk_cache_bytes: int = DEFAULT_DISK_BYTES
    memory_cache_bytes: int = DEFAULT_MEMORY_BYTES
    model_budget_bytes: int | None = None  # None: no limit on loaded model components
    output_dir: Path = Path(".")
    input_dir: Path | None = None
    models_dirs: tuple[Path, ...] = ()
    max_input_pixels: int = DEFAULT_MAX_PIXELS
    # Where built-in tiny models, converted single files and fingerprint memos live (the cache dir's
    # ``models/`` by default, also when the disk tier of node outputs is off).
    state_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def state_root(self) -> Path:
        """Where state kept between runs lives: ``models/``, ``converted/``, ``fingerprints/``, ...

        Falls back to the default cache directory only for settings built without any directory.
        """
        return self.state_dir or self.cache_dir or default_cache_dir()

    @property
    def models_state_dir(self) -> Path:
        return self.state_root / "models"

    def with_(self, **changes: object) -> EngineSettings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EngineSettings:
        """Read ``NODEGRAPH_CACHE_DIR`` / ``NODEGRAPH_MODEL_BUDGET`` once; explicit overrides win."""
        from nodegraph.cache import parse_size

        env = os.environ if env is None else env
        budget = env.get("NODEGRAPH_MODEL_BUDGET")
        cache_dir = default_cache_dir(env)
        base = cls(cache_dir=cache_dir, state_dir=cache_dir,
                   model_budget_bytes=parse_size(budget) if budget else None)
        return replace(base, **overrides)  # type: ignore[arg-type]


_ACTIVE: contextvars.ContextVar[EngineSettings | None] = contextvars.ContextVar("nodegraph_settings", default=None)


@contextlib.contextmanager
def use_settings(settings: EngineSettings) -> Iterator[EngineSettings]:
    """Make ``settings`` the active ones for code running in this context (the engine wraps each run).

    A context variable, not a global: two engines running in two threads each see their own settings.
    """
    token = _ACTIVE.set(settings)
    try:
        yield settings
    finally:
        _ACTIVE.reset(token)


def active_settings() -> EngineSettings:
    """The settings of the engine running in this context.

    For helpers deep inside a node (a model resolver called from a fingerprint hook, say) that have no
    ``RunContext`` to ask; nodes that have one use ``ctx.settings``. Outside any run this is a default
    ``EngineSettings()``.
    """
    return _ACTIVE.get() or EngineSettings()
