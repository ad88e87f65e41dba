"""Workflow files: load (native v1, ComfyUI API or UI format, or a PNG that carries one), validate shape, save.

Native format v1 (docs/workflow-format.md)::

    {"version": 1, "nodes": {"<id>": {"type": "<NodeType>", "inputs": {"<name>": <literal or link>}}}}

A link is ``["<node id>", "<output name or index>"]``; a literal that would read as a link (or as an
escape) is written ``{"value": <literal>}``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from nodegraph.errors import Issue, WorkflowError, short_repr
from nodegraph.files import atomic_write_bytes
from nodegraph.graph import Graph, Link, NodeInstance
from nodegraph.node import REGISTRY, Registry

FORMAT_VERSION = 1
MAX_FILE_BYTES = 32 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_KEY = "nodegraph_workflow"
# Recorded in the metadata of a workflow embedded in a PNG: the folder its relative paths resolved against.
BASE_DIR_KEY = "base_dir"


class NodeEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="Node type, as listed by `nodegraph nodes`.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Literal values and links by input name.")


class WorkflowFile(BaseModel):
    """The on-disk shape of a native workflow (checked before the graph itself is validated)."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(description=f"Format version; this engine reads {FORMAT_VERSION}.")
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, NodeEntry]


# ---- reading ------------------------------------------------------------------------------------
def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(key)


def parse_json_text(text: str, source: str = "<workflow>") -> Any:
    """JSON with errors that say where: line and column, duplicate keys, absurd nesting."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise WorkflowError([Issue(kind="invalid_json", found=source,
                                   message=f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    except _DuplicateKey as exc:
        raise WorkflowError([Issue(kind="duplicate_id", found=exc.key,
                                   message=f"{source}: key {exc.key!r} appears twice in one object "
                                           "(a node id or input name may be used once)")]) from None
    except RecursionError:
        raise WorkflowError([Issue(kind="invalid_json", found=source,
                                   message=f"{source}: JSON is nested too deeply")]) from None


def _file_issue(p: Path, message: str) -> WorkflowError:
    return WorkflowError([Issue(kind="invalid_file", found=str(p), message=f"{p}: {message}")])


def read_workflow_bytes(path: str | os.PathLike[str]) -> bytes:
    """A workflow file's bytes: a regular file of at most ``MAX_FILE_BYTES`` (never a device, FIFO or
    directory, which could block or never end), else a structured error naming the file."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise _file_issue(p, "no such file") from None
    except PermissionError:
        raise _file_issue(p, "permission denied") from None
    except OSError as exc:
        raise _file_issue(p, f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _file_issue(p, "is a directory, not a workflow file")
    if not stat.S_ISREG(st.st_mode):
        raise _file_issue(p, "is not a regular file (a device, pipe or socket); give a workflow file")
    if st.st_size > MAX_FILE_BYTES:
        raise _file_issue(p, f"{st.st_size} bytes is too large for a workflow (limit {MAX_FILE_BYTES})")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows after the check
    except PermissionError:
        raise _file_issue(p, "permission denied") from None
    except OSError as exc:
        raise _file_issue(p, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _file_issue(p, f"too large for a workflow (limit {MAX_FILE_BYTES} bytes)")
    return raw


def is_png(path: str | os.PathLike[str]) -> bool:
    """Whether a workflow file is a PNG (whose embedded workflow is untrusted input)."""
    return read_workflow_bytes(path).startswith(PNG_MAGIC)


def read_workflow_data(path: str | os.PathLike[str]) -> Any:
    """The JSON document of a workflow file, or of the workflow embedded in a PNG we wrote."""
    p = Path(path)
    raw = read_workflow_bytes(p)
    if raw.startswith(PNG_MAGIC):
        return parse_json_text(_png_workflow_text(p), f"{p} (embedded workflow)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowError([Issue(kind="invalid_file", found=str(p),
                                   message=f"{p}: not a UTF-8 text file (byte {exc.start}) nor a PNG with a workflow")]) from None
    return parse_json_text(text, str(p))


def _png_workflow_text(path: Path) -> str:
    """Ours first; else ComfyUI's chunks: ``prompt`` (API format, what ran) before ``workflow`` (the editor's)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            chunks = getattr(img, "text", {})
    except Exception as exc:
        raise WorkflowError([Issue(kind="invalid_file", found=str(path), message=f"{path}: unreadable PNG: {exc}")]) from None
    for key in (PNG_TEXT_KEY, "prompt", "workflow"):
        if chunks.get(key):
            return str(chunks[key])
    raise WorkflowError([Issue(kind="invalid_file", found=str(path),
                               message=f"{path}: this PNG carries no workflow (no '{PNG_TEXT_KEY}' text chunk, nor "
                                       "ComfyUI's 'prompt' or 'workflow')")])


def _decode_input(value: Any, node_id: str, name: str, issues: list[Issue]) -> Any:
    if isinstance(value, dict) and set(value) == {"value"}:
        return value["value"]
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], (str, int)) and not isinstance(value[1], bool):
        target = value[0]
        if isinstance(target, str):
            return Link(target, value[1])
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            issues.append(Issue(kind="invalid_id", node=node_id, input=name, found=target,
                                message=f"link target {target!r} must be a node id string, e.g. [\"{target}\", ...]"))
            return None
    return value


def apply_override(graph: Graph, target: str, value: Any, base_dir: Path | None = None) -> None:
    """Set ``NODE.INPUT`` to a JSON value, as written in a workflow file: ``["node", "output"]`` links,
    ``{"value": ...}`` escapes. One code path for ``nodegraph run --set`` and batch jobs.

    ``base_dir``: where a relative path given for a file-reading input is relative to (the current
    directory for ``--set`` on a command line), rather than the workflow file's folder."""
    node_id, dot, input_name = target.rpartition(".")
    if not dot or not node_id or not input_name:
        raise WorkflowError([Issue(kind="invalid_value", found=target,
                                   message=f"override {target!r}: name the input as NODE.INPUT")])
    issues: list[Issue] = []
    decoded = _decode_input(value, node_id, input_name, issues)
    if issues:
        raise WorkflowError(issues)
    if base_dir is not None and isinstance(decoded, str):
        decoded = _anchor_read_path(graph, node_id, input_name, decoded, base_dir)
    graph.set_input(node_id, input_name, decoded)


def _anchor_read_path(graph: Graph, node_id: str, input_name: str, value: str, base_dir: Path) -> str:
    """A relative path for an input that reads a file, made absolute against ``base_dir``; a model
    source only when it names something there (else it may be a hub id like ``org/name``)."""
    from nodegraph.types import file_role_of

    instance = graph.nodes.get(node_id)
    spec = graph.registry.get(instance.type) if instance is not None else None
    inp = spec.inputs.get(input_name) if spec is not None else None
    role = file_role_of(inp.annotation) if inp is not None else None
    if role is None or role.access != "read" or not value or Path(value).expanduser().is_absolute():
        return value
    anchored = base_dir / value
    if role.hub_ok and not anchored.exists():
        return value
    return str(anchored)


def graph_from_data(data: Any, registry: Registry | None = None, source: str = "<workflow>",
                    models_dirs: tuple[Path, ...] = ()) -> Graph:
    """Build a Graph from a parsed JSON document in either supported format.

    models_dirs: ComfyUI models directories; a ComfyUI workflow's model names (``ckpt_name`` ...) that name
    files there become their paths (nodegraph.model_files).
    """
    registry = registry or REGISTRY
    from nodegraph.comfy_ui import is_ui_workflow
    from nodegraph.model_files import resolve_model_names

    if is_ui_workflow(data):
        from nodegraph.comfy import graph_from_comfy
        from nodegraph.comfy_ui import ui_to_api

        api = resolve_model_names(ui_to_api(data, registry), registry, models_dirs)
        graph = graph_from_comfy(api, registry)
        graph.metadata["imported_from"] = "comfyui-ui"
        return graph
    if isinstance(data, dict) and "version" not in data and "nodes" not in data and data and all(
        isinstance(v, dict) and "class_type" in v for v in data.values()
    ):
        from nodegraph.comfy import graph_from_comfy

        return graph_from_comfy(resolve_model_names(data, registry, models_dirs), registry)
    if not isinstance(data, dict) or "nodes" not in data or "version" not in data:
        found = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(data)[:8]}"
        raise WorkflowError([Issue(kind="invalid_file", found=found,
                                   message=f"{source}: not a workflow: expected an object with 'version' and 'nodes' "
                                           "(native format), ComfyUI API format ({id: {class_type, inputs}}) or a "
                                           "ComfyUI UI-format file (nodes, links, version)")])
    if data.get("version") != FORMAT_VERSION:
        raise WorkflowError([Issue(kind="unsupported_version", expected=FORMAT_VERSION, found=data.get("version"),
                                   message=f"{source}: workflow format version {data.get('version')!r} is not "
                                           f"supported; this engine reads version {FORMAT_VERSION}")])
    try:
        parsed = WorkflowFile.model_validate(data)
    except PydanticValidationError as exc:
        shape_issues: list[Issue] = []
        for err in exc.errors():
            loc = [str(x) for x in err["loc"]]
            node = loc[1] if len(loc) > 1 and loc[0] == "nodes" else None
            field_name = ".".join(loc[2:]) if node is not None else ".".join(loc)
            shape_issues.append(Issue(kind="invalid_file", node=node, input=field_name or None,
                                      message=f"{source}: {'.'.join(loc)}: {err['msg']}",
                                      found=short_repr(err.get("input"))))
        raise WorkflowError(shape_issues) from None
    issues: list[Issue] = []
    nodes: dict[str, NodeInstance] = {}
    for node_id, entry in parsed.nodes.items():
        inputs = {name: _decode_input(v, node_id, name, issues) for name, v in entry.inputs.items()}
        nodes[node_id] = NodeInstance(entry.type, inputs)
    if issues:
        raise WorkflowError(issues)
    return Graph(nodes, name=parsed.name, description=parsed.description, metadata=parsed.metadata,
                 registry=registry)


def load_workflow(path: str | os.PathLike[str], registry: Registry | None = None,
                  models_dirs: tuple[Path, ...] = ()) -> Graph:
    """Read a workflow file (native, ComfyUI API format, or a PNG we wrote) into a Graph."""
    return graph_from_data(read_workflow_data(path), registry, str(path), models_dirs)


# ---- writing ------------------------------------------------------------------------------------
def _encode_input(value: Any) -> Any:
    if isinstance(value, Link):
        return [value.node, value.output]
    looks_like_link = isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and \
        isinstance(value[1], (str, int)) and not isinstance(value[1], bool)
    if looks_like_link or (isinstance(value, dict) and set(value) == {"value"}):
        return {"value": list(value) if isinstance(value, tuple) else value}
    return list(value) if isinstance(value, tuple) else value


def graph_to_dict(graph: Graph) -> dict[str, Any]:
    out: dict[str, Any] = {"version": FORMAT_VERSION}
    if graph.name is not None:
        out["name"] = graph.name
    if graph.description is not None:
        out["description"] = graph.description
    if graph.metadata:
        out["metadata"] = graph.metadata
    out["nodes"] = {
        node_id: {"type": inst.type, "inputs": {k: _encode_input(v) for k, v in inst.inputs.items()}}
        for node_id, inst in graph.nodes.items()
    }
    return out


def save_workflow(graph: Graph, path: str | os.PathLike[str]) -> None:
    atomic_write_bytes(path, (graph.to_json() + "\n").encode())
