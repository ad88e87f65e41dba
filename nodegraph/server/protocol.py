"""The wire shapes of ComfyUI's protocol: requests, replies, websocket messages and binary frames.

Every body that crosses the socket is a pydantic model here, so the field names and their order (which
some clients print or compare) live in one place. Extra fields in requests are tolerated, as ComfyUI does:
newer frontends send keys older servers do not know.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64

PREVIEW_IMAGE = 1  # binary event type: preview image (4-byte format, then the image)
PREVIEW_IMAGE_WITH_METADATA = 4  # binary event type: 4-byte length, JSON metadata, then the image
IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def now_ms() -> int:
    return int(time.time() * 1000)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests -----------------------------------------------------------------------------------
class PromptRequest(_Lenient):
    prompt: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None  # a native v1 workflow (our extension)
    client_id: str | None = None
    prompt_id: str | None = None
    number: float | None = None
    front: bool = False
    extra_data: dict[str, Any] = Field(default_factory=dict)
    partial_execution_targets: list[str] | None = None


class ClearOrDelete(_Lenient):
    """Body of ``POST /queue`` and ``POST /history``."""

    clear: bool = False
    delete: list[str] = Field(default_factory=list)


class InterruptRequest(_Lenient):
    prompt_id: str | None = None


class FreeRequest(_Lenient):
    unload_models: bool = False
    free_memory: bool = False


class JobsCancelRequest(_Lenient):
    job_ids: list[str] = Field(default_factory=list)


# ---- replies ------------------------------------------------------------------------------------
class PromptAccepted(BaseModel):
    prompt_id: str
    number: float
    node_errors: dict[str, Any] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class NodeErrors(BaseModel):
    errors: list[ErrorDetail]
    dependent_outputs: list[str] = Field(default_factory=list)
    class_type: str | None = None


class PromptRejected(BaseModel):
    error: ErrorDetail
    node_errors: dict[str, NodeErrors] = Field(default_factory=dict)


class ExecInfo(BaseModel):
    queue_remaining: int


class StatusBody(BaseModel):
    exec_info: ExecInfo


class ImageRef(BaseModel):
    filename: str
    subfolder: str = ""
    type: Literal["input", "output", "temp"] = "output"


class UploadReply(BaseModel):
    name: str
    subfolder: str
    type: str


class Job(BaseModel):
    id: str
    status: Literal["pending", "in_progress", "completed", "failed", "cancelled"]
    create_time: int
    execution_start_time: int | None = None
    execution_end_time: int | None = None
    outputs_count: int = 0
    previewable_outputs_count: int | None = None  # the editor's schema requires the key (null allowed)
    preview_output: dict[str, Any] | None = None  # an image ref plus the editor's nodeId and mediaType
    execution_error: dict[str, Any] | None = None
    priority: float | None = None
    # only in GET /jobs/{id}: what the editor's queue panel opens
    outputs: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None


class Pagination(BaseModel):
    offset: int
    limit: int | None
    total: int
    has_more: bool


class JobList(BaseModel):
    jobs: list[Job]
    pagination: Pagination


# ---- websocket messages (JSON frames are {"type": T, "data": {...}}) -------------------------------
class StatusData(BaseModel):
    status: StatusBody
    sid: str | None = None


class ExecutionStart(BaseModel):
    prompt_id: str
    timestamp: int


class ExecutionCached(BaseModel):
    nodes: list[str]
    prompt_id: str
    timestamp: int


class Executing(BaseModel):
    node: str | None
    display_node: str | None = None
    prompt_id: str


class ProgressData(BaseModel):
    value: int
    max: int
    prompt_id: str
    node: str


class Executed(BaseModel):
    node: str
    display_node: str
    output: dict[str, list[ImageRef]]
    prompt_id: str


class ExecutionSuccess(BaseModel):
    prompt_id: str
    timestamp: int


class ExecutionError(BaseModel):
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: list[str]
    exception_message: str
    exception_type: str
    traceback: list[str] = Field(default_factory=list)  # kept empty: tracebacks name server paths
    current_inputs: dict[str, Any] = Field(default_factory=dict)
    current_outputs: list[str] = Field(default_factory=list)
    timestamp: int  # last, as ComfyUI appends it


class ExecutionInterrupted(BaseModel):
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: list[str]
    timestamp: int


MessageData = (StatusData | ExecutionStart | ExecutionCached | Executing | ProgressData | Executed
               | ExecutionSuccess | ExecutionError | ExecutionInterrupted)


def message(kind: str, data: BaseModel | dict[str, Any]) -> str:
    """One JSON websocket frame. ``executing`` keeps ``node: null`` (clients wait for exactly that)."""
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    if isinstance(data, StatusData) and data.sid is None:
        body.pop("sid")
    if isinstance(data, Executing) and data.node is None:
        body.pop("display_node")  # ComfyUI's "done" signal is exactly {node: null, prompt_id}
    return json.dumps({"type": kind, "data": body})


def preview_frame(image_format: str, data: bytes) -> bytes:
    """ComfyUI's binary preview: big-endian event type 1, big-endian image format (1 JPEG, 2 PNG), bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[image_format]) + data


class PreviewMetadata(BaseModel):
    """Which node a type-4 preview belongs to (ComfyUI's fields; we have no subgraph parents)."""

    node_id: str
    display_node_id: str
    parent_node_id: str | None = None
    real_node_id: str
    prompt_id: str
    image_type: str


def preview_frame_with_metadata(image_format: str, data: bytes, node_id: str, prompt_id: str) -> bytes:
    """ComfyUI's type-4 preview, for clients that announce ``supports_preview_metadata``: big-endian event
    type 4, big-endian length of the JSON metadata, the metadata, then the image bytes."""
    meta = PreviewMetadata(node_id=node_id, display_node_id=node_id, real_node_id=node_id, prompt_id=prompt_id,
                           image_type=MIME_TYPES[image_format]).model_dump_json().encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + data


class PreviewFrames(BaseModel):
    """One preview in both encodings: each socket gets the one it asked for (feature_flags)."""

    legacy: bytes
    with_metadata: bytes


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed request body, stopping once past ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    deepest = 0
    while stack and deepest <= limit:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((v, depth + 1) for v in children)
    return deepest
