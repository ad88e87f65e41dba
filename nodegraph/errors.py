"""The error vocabulary shared by validation, the executor and the CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

IssueKind = Literal[
    "invalid_file",
    "invalid_json",
    "unsupported_version",
    "duplicate_id",
    "invalid_id",
    "unknown_node_type",
    "unknown_comfy_type",
    "unknown_input",
    "missing_input",
    "invalid_value",
    "invalid_link",
    "missing_node",
    "missing_output",
    "type_mismatch",
    "cycle",
    "no_output_node",
    "unsupported_option",
    "path_not_allowed",
]


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() cut to a length that fits an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Issue(BaseModel):
    """One problem found in a workflow, located as precisely as the problem allows."""

    kind: IssueKind
    message: str
    node: str | None = None
    input: str | None = None
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        where = ""
        if self.node is not None:
            where = f"node {self.node!r}"
            if self.input is not None:
                where += f", input {self.input!r}"
            where += ": "
        return f"{where}{self.message}"


class WorkflowError(Exception):
    """A workflow that cannot run; carries every problem found, not only the first."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class NodeExecutionError(Exception):
    """A node raised while running; names the node so the user knows where to look."""

    def __init__(self, node_id: str, node_type: str, cause: BaseException):
        self.node_id = node_id
        self.node_type = node_type
        self.cause = cause
        super().__init__(f"node {node_id!r} ({node_type}) failed: {type(cause).__name__}: {cause}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "type": self.node_type,
            "exception": type(self.cause).__name__,
            "message": str(self.cause),
        }


class Interrupted(Exception):
    """The run was cancelled (Ctrl-C or a cancel request) between two steps."""
