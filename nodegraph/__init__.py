"""nodegraph: a typed node-graph workflow engine (this package knows nothing about diffusion)."""

from nodegraph.cache import DiskCache, MemoryCache
from nodegraph.codec import payload
from nodegraph.context import CancelToken, RunContext
from nodegraph.errors import Interrupted, Issue, NodeExecutionError, WorkflowError
from nodegraph.executor import Engine, RunResult
from nodegraph.graph import Graph, Link
from nodegraph.node import REGISTRY, ComfyMapping, node, register_sampler, rename_mapping
from nodegraph.plan import Plan
from nodegraph.settings import EngineSettings, PathPolicy
from nodegraph.types import Socket
from nodegraph.validation import validate
from nodegraph.workflow import load_workflow

__all__ = [
    "REGISTRY", "CancelToken", "ComfyMapping", "DiskCache", "Engine", "EngineSettings", "Graph", "Interrupted",
    "Issue", "Link", "MemoryCache", "NodeExecutionError", "PathPolicy", "Plan", "RunContext", "RunResult", "Socket",
    "WorkflowError", "load_workflow", "node", "payload", "register_sampler", "rename_mapping", "validate",
]
__version__ = "0.1.0"
