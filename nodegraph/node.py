"""How a node is declared, and the registry that finds node packages.

A node is one typed Python function. Its signature is the single source of truth for validation, the
``nodes`` listing, the JSON schema and the docs:

    @node(category="conditioning", version=1, outputs={"conditioning": Conditioning})
    def EncodePrompt(clip: Clip, prompt: str, prompt_2: str | None = None) -> Conditioning: ...

Inputs annotated with a socket type are links; everything else is a literal validated by pydantic
(``Annotated[int, Field(ge=1)]`` for ranges, ``Literal[...]`` for choices). A parameter annotated with
``RunContext`` receives the run's context (progress, cancellation, model loading) and is not an input.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from nodegraph.types import is_optional, primitive_of, socket_of, takes_literal

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodegraph.nodes"
SAMPLER_ENTRY_POINT_GROUP = "nodegraph.samplers"
_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type."""

    name: str
    socket: str | None  # the socket type a link must carry (primitive type for literals)
    is_link_only: bool  # a socket input (IMAGE, ...) that cannot be written as a literal
    required: bool
    default: Any
    annotation: Any
    adapter: TypeAdapter[Any] | None = field(default=None, compare=False, repr=False)

    def validate(self, value: Any) -> Any:
        """The validated, normalised literal (raises ValueError with pydantic's reason)."""
        if self.adapter is None:
            raise ValueError(f"input {self.name!r} takes a link to a {self.socket} output, not a literal")
        if value is None and not self.required and self.default is None:
            return None
        try:
            return self.adapter.validate_python(value)
        except PydanticValidationError as exc:
            raise ValueError("; ".join(e["msg"] for e in exc.errors())) from None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for listings and schemas."""
        out: dict[str, Any] = {"type": self.socket or "*", "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.adapter is not None:
            schema = self.adapter.json_schema()
            for key in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "description"):
                if key in schema:
                    out[{"enum": "choices"}.get(key, key)] = schema[key]
            if "anyOf" in schema:
                for option in schema["anyOf"]:
                    for key in ("enum", "minimum", "maximum"):
                        if key in option:
                            out[{"enum": "choices"}.get(key, key)] = option[key]
        else:
            out["link_only"] = True
        return out


@dataclass(frozen=True)
class ComfyMapping:
    """How a ComfyUI API-format ``class_type`` maps onto nodes of ours.

    ``expand`` receives the ComfyUI node's inputs (literals as given, links already translated to our
    ``[node_id, output_name]`` form) and returns ``{suffix: {"type": T, "inputs": {...}}}``; the node
    with suffix ``""`` is the primary one. Inside ``expand`` a link to a sibling is ``[suffix, output]``
    with the suffix prefixed by ``"@"``. ``outputs`` maps each ComfyUI output index onto
    ``(suffix, our_output_name)``; a suffix ``"=<input>"`` passes through whatever fed that input
    (for ComfyUI nodes that hand a conditioning on unchanged).
    """

    class_type: str
    expand: Callable[[dict[str, Any]], dict[str, dict[str, Any]]]
    outputs: tuple[tuple[str, str], ...] = ()


def rename_mapping(
    class_type: str, node_type: str, inputs: Mapping[str, str], outputs: tuple[str, ...], **fixed: Any
) -> ComfyMapping:
    """The common case: one ComfyUI node onto one of ours with inputs renamed (unlisted ones dropped)."""

    def expand(comfy_inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        ours = {inputs[k]: v for k, v in comfy_inputs.items() if k in inputs}
        ours.update(fixed)
        return {"": {"type": node_type, "inputs": ours}}

    return ComfyMapping(class_type, expand, tuple(("", o) for o in outputs))


@dataclass(frozen=True)
class NodeSpec:
    """Everything the engine knows about one node type."""

    name: str
    fn: Callable[..., Any]
    category: str
    version: int
    inputs: dict[str, InputSpec]
    outputs: dict[str, str]
    doc: str
    is_output: bool
    persist: bool
    context_param: str | None
    fingerprint: Callable[..., Any] | None = None
    comfy: tuple[ComfyMapping, ...] = ()
    check: Callable[..., list[tuple[str | None, str]]] | None = None
    content_inputs: tuple[str, ...] = ()
    always_run: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "category": self.category,
            "version": self.version,
            "doc": self.doc,
            "output_node": self.is_output,
            "persist": self.persist,
            "inputs": {name: spec.describe() for name, spec in self.inputs.items()},
            "outputs": dict(self.outputs),
            "comfyui": sorted(m.class_type for m in self.comfy),
        }


@dataclass(frozen=True)
class SamplerEntry:
    """A sampler added by a user: a scheduler class (diffusers' interface) and overrides of its config."""

    cls: type
    config: Mapping[str, Any]


class Registry:
    """Node types, ComfyUI class_types, storable payload types and user samplers by name: the one global
    mutable state."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeSpec] = {}
        self.comfy: dict[str, ComfyMapping] = {}
        self.payloads: dict[str, type] = {}  # dataclasses the disk cache may rebuild (nodegraph.codec)
        self.samplers: dict[str, SamplerEntry] = {}
        self._entry_points_loaded = False
        self._sampler_entry_points_loaded = False

    def add_sampler(self, name: str, cls: type, **config_overrides: Any) -> None:
        for method in ("set_timesteps", "step", "scale_model_input", "from_config"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"sampler {name!r}: {cls.__name__} has no {method}() (not a diffusers scheduler)")
        self.samplers[name] = SamplerEntry(cls, dict(config_overrides))

    def sampler(self, name: str) -> SamplerEntry | None:
        self._load_sampler_entry_points()
        return self.samplers.get(name)

    def sampler_names(self) -> list[str]:
        self._load_sampler_entry_points()
        return list(self.samplers)

    def _load_sampler_entry_points(self) -> None:
        """Each entry point of group ``nodegraph.samplers`` names a scheduler class; its name is the sampler's."""
        if self._sampler_entry_points_loaded:
            return
        self._sampler_entry_points_loaded = True
        for ep in metadata.entry_points(group=SAMPLER_ENTRY_POINT_GROUP):
            try:
                self.add_sampler(ep.name, ep.load())
            except Exception:  # a broken third-party sampler must not take the engine down
                logger.exception("could not load sampler %r (%s)", ep.name, ep.value)

    def add(self, spec: NodeSpec) -> None:
        existing = self.nodes.get(spec.name)
        if existing is not None and existing.fn.__module__ != spec.fn.__module__:
            raise ValueError(
                f"node type {spec.name!r} is declared twice: in {existing.fn.__module__} and {spec.fn.__module__}"
            )
        self.nodes[spec.name] = spec
        for mapping in spec.comfy:
            self.comfy[mapping.class_type] = mapping

    def get(self, name: str) -> NodeSpec | None:
        self.load_entry_points()
        return self.nodes.get(name)

    def all(self) -> dict[str, NodeSpec]:
        self.load_entry_points()
        return dict(sorted(self.nodes.items()))

    def comfy_mapping(self, class_type: str) -> ComfyMapping | None:
        self.load_entry_points()
        return self.comfy.get(class_type)

    def load_entry_points(self) -> None:
        """Import every installed node package (entry-point group ``nodegraph.nodes``) once."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception:  # a broken third-party pack must not take the engine down
                logger.exception("could not load node package %r (%s)", ep.name, ep.value)


REGISTRY = Registry()


def register_sampler(name: str, cls: type, *, registry: Registry | None = None, **config_overrides: Any) -> None:
    """Make a diffusers-style scheduler class a sampler choice (validation, listings, schema, ComfyUI).

    config_overrides are applied on top of the model's scheduler config, as for the built-in samplers.
    """
    (registry or REGISTRY).add_sampler(name, cls, **config_overrides)


def node(
    *,
    category: str,
    version: int = 1,
    outputs: Mapping[str, Any] | None = None,
    output: bool = False,
    persist: bool = False,
    fingerprint: Callable[..., Any] | None = None,
    comfy: tuple[ComfyMapping, ...] | ComfyMapping = (),
    check: Callable[..., list[tuple[str | None, str]]] | None = None,
    content_inputs: tuple[str, ...] = (),
    always_run: bool = False,
    name: str | None = None,
    registry: Registry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a function as a node type and register it.

    outputs: ``{name: socket annotation}`` in order; defaults to the return annotation, named after its
        socket type in lower case. Output nodes (``output=True``) return the list of files they wrote.
    persist: whether outputs may be written to the disk cache (encodings and latents: yes; handles: no).
    fingerprint: ``fingerprint(**literal_inputs)`` -> something msgpack-able naming the external content
        a source node reads (a file digest), so the cache key changes when that content changes.
    check: ``check(**literal_inputs)`` -> ``[(input name or None, message)]`` for combinations of values
        that are each valid but cannot work together; reported at validation time, before anything runs.
    content_inputs: literal inputs (paths) left out of the cache key because ``fingerprint`` covers what
        they point to: the same file content at another path, or on another machine, gives the same key.
    always_run: never serve this node from the memory tier (cheap nodes whose outputs name local paths).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = _build_spec(fn, name or fn.__name__, category, version, outputs, output, persist, fingerprint, comfy,
                           check, content_inputs, always_run)
        (registry or REGISTRY).add(spec)
        fn.__node_spec__ = spec  # type: ignore[attr-defined]
        return fn

    return register


def _build_spec(
    fn: Callable[..., Any],
    name: str,
    category: str,
    version: int,
    outputs: Mapping[str, Any] | None,
    is_output: bool,
    persist: bool,
    fingerprint: Callable[..., Any] | None,
    comfy: tuple[ComfyMapping, ...] | ComfyMapping,
    check: Callable[..., list[tuple[str | None, str]]] | None,
    content_inputs: tuple[str, ...],
    always_run: bool,
) -> NodeSpec:
    from nodegraph.context import RunContext

    hints = typing.get_type_hints(fn, include_extras=True)
    inputs: dict[str, InputSpec] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, Any)
        if annotation is RunContext:
            context_param = param.name
            continue
        socket = socket_of(annotation)
        required = param.default is _MISSING
        default = None if required else param.default
        if socket is not None and not takes_literal(annotation):
            inputs[param.name] = InputSpec(param.name, socket, True, required, default, annotation)
        elif socket is not None:
            inputs[param.name] = InputSpec(param.name, socket, False, required, default, annotation,
                                           TypeAdapter(annotation))
        else:
            adapter: TypeAdapter[Any] = TypeAdapter(annotation)
            if not required and default is not None:
                adapter.validate_python(default)  # a bad default is the declarer's bug: fail at import
            if not required and default is None and not is_optional(annotation):
                raise TypeError(f"{name}.{param.name}: default None needs an Optional annotation")
            inputs[param.name] = InputSpec(
                param.name, primitive_of(annotation), False, required, default, annotation, adapter
            )
    if outputs is None:
        ret = hints.get("return")
        socket = socket_of(ret) if ret is not None else None
        out_types = {socket.lower(): socket} if socket else {}
    else:
        out_types = {}
        for out_name, ann in outputs.items():
            socket = ann if isinstance(ann, str) else socket_of(ann) or primitive_of(ann)
            if socket is None:
                raise TypeError(f"{name}: output {out_name!r} has no socket type")
            out_types[out_name] = socket
    if content_inputs and fingerprint is None:
        raise TypeError(f"{name}: content_inputs need a fingerprint that covers their content")
    unknown = set(content_inputs) - set(inputs)
    if unknown:
        raise TypeError(f"{name}: content_inputs {sorted(unknown)} are not inputs")
    if not out_types and not is_output:
        raise TypeError(f"{name}: a node without outputs must be declared output=True")
    doc = inspect.cleandoc(fn.__doc__ or "").strip()
    mappings = (comfy,) if isinstance(comfy, ComfyMapping) else tuple(comfy)
    return NodeSpec(
        name, fn, category, version, inputs, out_types, doc, is_output, persist, context_param, fingerprint, mappings,
        check, tuple(content_inputs), always_run,
    )
