"""Socket types and the rules for connecting them.

A socket type is a short upper-case name ("IMAGE", "LATENT", ...). Python annotations map onto socket
types in two ways: a class that carries a ``__socket__`` name, or ``Annotated[T, Socket("NAME")]`` for
types that cannot carry attributes (raw tensors). Plain literals (int, float, str, bool, Literal[...])
map onto the primitive sockets, so a literal input can also be fed by a link from a primitive output.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

ANY = "*"
PRIMITIVES: dict[type, str] = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


@dataclass(frozen=True)
class Socket:
    """Marker used inside ``Annotated`` to name the socket type of an annotation.

    literal: the input also takes a literal of the annotated type (a SIGMAS list written out by hand).
    """

    name: str
    literal: bool = False


def takes_literal(annotation: Any) -> bool:
    """Whether a socket input may also be written as a literal (``Socket(..., literal=True)``)."""
    annotation = strip_optional(annotation)
    if get_origin(annotation) is typing.Annotated:
        return any(isinstance(extra, Socket) and extra.literal for extra in annotation.__metadata__)
    return False


def socket_of(annotation: Any) -> str | None:
    """The socket type named by an annotation, or None when it is a plain literal type."""
    annotation = strip_optional(annotation)
    if get_origin(annotation) is typing.Annotated:
        for extra in annotation.__metadata__:
            if isinstance(extra, Socket):
                return extra.name
        return socket_of(get_args(annotation)[0])
    name = getattr(annotation, "__socket__", None)
    return name if isinstance(name, str) else None


def primitive_of(annotation: Any) -> str | None:
    """The primitive socket type ("INT", "STRING", ...) a literal annotation accepts from a link."""
    annotation = strip_optional(annotation)
    if get_origin(annotation) is typing.Annotated:
        return primitive_of(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        kinds = {PRIMITIVES.get(type(v)) for v in values}
        return kinds.pop() if len(kinds) == 1 else None
    return PRIMITIVES.get(annotation)


def strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return (origin is Union or origin is types.UnionType) and type(None) in get_args(annotation)


def can_connect(output_type: str, input_type: str) -> bool:
    """Whether an output of ``output_type`` may feed an input of ``input_type``."""
    if output_type == input_type or ANY in (output_type, input_type):
        return True
    # An integer is a valid float everywhere a user would write one.
    return output_type == "INT" and input_type == "FLOAT"


@dataclass(frozen=True)
class FileRole:
    """Marker inside ``Annotated[str, ...]`` for a literal input that names a file or folder.

    Validation resolves such paths (relative ones against the workflow's base folder or the output
    directory) and checks them against the run's ``PathPolicy``: ``read`` inputs must lie under the read
    roots, ``write`` inputs (a path or a file-name prefix) under the write roots.
    """

    access: Literal["read", "write"]
    # A model source may also be a hub id ("org/name") or a scheme ("builtin:..."): such a value that
    # names no local file is not a path, and the policy does not apply to it.
    hub_ok: bool = False


READ_PATH = FileRole("read")
WRITE_PATH = FileRole("write")
MODEL_SOURCE = FileRole("read", hub_ok=True)


def file_role_of(annotation: Any) -> FileRole | None:
    """The FileRole an input's annotation carries, if any."""
    annotation = strip_optional(annotation)
    if get_origin(annotation) is typing.Annotated:
        for extra in annotation.__metadata__:
            if isinstance(extra, FileRole):
                return extra
    return None
