"""How a node is declared, and the registry that finds node packages.

A node is one typed Python function. Its signature is the single source of truth for validation, the
``nodes`` listing, the JSON schema and the docs:

    @node(category="conditioning", cache=PERSIST)
    def EncodePrompt(clip: ClipHandle, prompt: Annotated[str, Field(description="what to draw")]) -> Conditioning:

Inputs annotated with a socket type are links; everything else is a literal validated by pydantic
(``Annotated[int, Field(ge=1)]`` for ranges, ``Literal[...]`` for choices). ``Field(description=...)``
describes an input. A parameter annotated with ``RunContext`` receives the run's context (progress,
cancellation, model loading, settings) and is not an input. The return annotation declares the outputs:
one socket type, or a ``NamedTuple`` of them. docs/writing-nodes.md has a whole node pack.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo

from nodegraph.types import file_role_of, is_optional, primitive_of, socket_of, strip_optional, takes_literal

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodegraph.nodes"
SAMPLER_ENTRY_POINT_GROUP = "nodegraph.samplers"
_MISSING = inspect.Parameter.empty
F = TypeVar("F", bound=Callable[..., Any])


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
    description: str = ""  # from ``Field(description=...)`` in the annotation; shown in listings and schemas

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
        if self.description:
            out["description"] = self.description
        role = file_role_of(self.annotation)
        if role is not None:
            out["file"] = "model" if role.hub_ok else role.access
        if self.adapter is not None:
            schema = self.adapter.json_schema()
            for key in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
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


def description_of(annotation: Any) -> str:
    """The ``description`` of a pydantic ``Field`` inside an ``Annotated`` (Optional and nesting allowed)."""
    annotation = strip_optional(annotation)
    if typing.get_origin(annotation) is not typing.Annotated:
        return ""
    for extra in reversed(annotation.__metadata__):  # the outermost description wins
        if isinstance(extra, FieldInfo) and extra.description:
            return extra.description
    return description_of(typing.get_args(annotation)[0])


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


Hook = Callable[..., Any]


@dataclass(frozen=True)
class CachePolicy:
    """How the engine may reuse a node's outputs: one object instead of four interacting flags.

    memory: outputs may be served from the in-process memory tier (False: the node runs every time it is
        demanded -- cheap nodes whose outputs name local state, such as model handles).
    disk: outputs may be written to and served from the persistent disk tier (encodings, latents, images;
        never handles).
    fingerprint: ``fingerprint(**literal_inputs)`` -> something msgpack-able naming the external content
        the node reads (a file digest), so the cache key changes when that content changes.
    content_inputs: literal inputs (paths) left out of the cache key because ``fingerprint`` covers what
        they point to: the same file content at another path, or on another machine, gives the same key.

    Presets: ``MEMORY`` (the default), ``PERSIST`` (memory and disk), ``ALWAYS_RUN``, and
    ``CachePolicy.reads(fingerprint, "path")`` for nodes that read a file named by an input.
    """

    memory: bool = True
    disk: bool = False
    fingerprint: Hook | None = None
    content_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.content_inputs and self.fingerprint is None:
            raise TypeError("CachePolicy: content_inputs need a fingerprint that covers their content")

    @classmethod
    def reads(cls, fingerprint: Hook, *content_inputs: str, memory: bool = True, disk: bool = False) -> CachePolicy:
        """A source node: keyed by ``fingerprint``'s digest of what ``content_inputs`` point to, not the paths."""
        return cls(memory=memory, disk=disk, fingerprint=fingerprint, content_inputs=tuple(content_inputs))


MEMORY = CachePolicy()
PERSIST = CachePolicy(disk=True)
ALWAYS_RUN = CachePolicy(memory=False)


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
    context_param: str | None
    cache: CachePolicy = MEMORY
    comfy: tuple[ComfyMapping, ...] = ()
    check: Callable[..., list[tuple[str | None, str]]] | None = None
    depends: tuple[str, ...] = ()

    # Read-only views of ``cache`` for the executor (kept until it reads ``cache`` directly).
    @property
    def persist(self) -> bool:
        return self.cache.disk

    @property
    def always_run(self) -> bool:
        return not self.cache.memory

    @property
    def fingerprint(self) -> Hook | None:
        return self.cache.fingerprint

    @property
    def content_inputs(self) -> tuple[str, ...]:
        return self.cache.content_inputs

    @functools.cached_property
    def salt(self) -> str:
        """What persisted keys must include besides ``version``: the node pack's version and the major.minor
        of each library the node depends on, so an upgrade that changes the numbers misses old entries.
        Read from installed metadata (nothing is imported), memoised per process."""
        return environment_salt(self.fn.__module__.split(".")[0], tuple(sorted(set(self.depends))))

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "category": self.category,
            "version": self.version,
            "doc": self.doc,
            "output_node": self.is_output,
            "persist": self.cache.disk,
            "inputs": {name: spec.describe() for name, spec in self.inputs.items()},
            "outputs": dict(self.outputs),
            "depends": list(self.depends),
            "comfyui": sorted(m.class_type for m in self.comfy),
        }


@functools.cache
def _distributions_of(top_level: str) -> tuple[str, ...]:
    return tuple(metadata.packages_distributions().get(top_level, ()))


@functools.cache
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str | None) -> str:
    if version is None:
        return "none"
    return ".".join(version.split("+")[0].split(".")[:2])


@functools.cache
def environment_salt(top_level_package: str, depends: tuple[str, ...]) -> str:
    """``pack=<version>`` (the distribution that ships the package, else "0") and ``lib=<major.minor>``."""
    pack = next((v for d in _distributions_of(top_level_package) if (v := _version(d)) is not None), "0")
    parts = [f"{top_level_package}={pack}"] + [f"{lib}={_major_minor(_version(lib))}" for lib in sorted(depends)]
    return ";".join(parts)


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
    output: bool = False,
    cache: CachePolicy | None = None,
    check: Callable[..., list[tuple[str | None, str]]] | None = None,
    depends: tuple[str, ...] | None = None,
    comfy: tuple[ComfyMapping, ...] | ComfyMapping = (),
    name: str | None = None,
    registry: Registry | None = None,
    # Legacy spellings, accepted until nodes/sampling.py is converted; use the return annotation and cache=.
    outputs: Mapping[str, Any] | None = None,
    persist: bool | None = None,
    fingerprint: Hook | None = None,
    content_inputs: tuple[str, ...] | None = None,
    always_run: bool | None = None,
) -> Callable[[F], F]:
    """Declare a function as a node type and register it.

    Outputs come from the return annotation: a socket type (``-> Image``, ``-> Latent``) is one output
    named after the socket in lower case; a ``typing.NamedTuple`` declares several (or one renamed) outputs,
    its field names being the output names and its field annotations their sockets. Output nodes
    (``output=True``) return the list of files they wrote (``-> list[str]``).
    cache: a ``CachePolicy`` (default ``MEMORY``; ``PERSIST`` for outputs worth keeping on disk).
    check: ``check(**literal_inputs)`` -> ``[(input name or None, message)]`` for combinations of values
        that are each valid but cannot work together; reported at validation time, before anything runs.
    depends: the distributions whose upgrade may change this node's numbers (``("torch", "diffusers")``);
        defaults to the module's ``NODE_DEPENDS``. Their major.minor goes into the persistent cache key.
    Hook signatures are checked here: their parameters must be literal inputs of the node, and a hook that
    does not take them all needs ``**_``.
    """
    legacy = {"persist": persist, "fingerprint": fingerprint, "content_inputs": content_inputs,
              "always_run": always_run}
    if any(v is not None for v in legacy.values()):
        if cache is not None:
            raise TypeError("give either cache= or the legacy persist/fingerprint/content_inputs/always_run")
        cache = CachePolicy(memory=not always_run, disk=bool(persist), fingerprint=fingerprint,
                            content_inputs=tuple(content_inputs or ()))

    def register(fn: F) -> F:
        spec = _build_spec(fn, name or fn.__name__, category, version, outputs, output, cache or MEMORY, comfy,
                           check, depends)
        (registry or REGISTRY).add(spec)
        fn.__node_spec__ = spec  # type: ignore[attr-defined]
        return fn

    return register


def _is_named_tuple(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields")


def _socket_name(annotation: Any) -> str | None:
    return annotation if isinstance(annotation, str) else socket_of(annotation) or primitive_of(annotation)


def _declared_outputs(name: str, ret: Any, is_output: bool) -> dict[str, str]:
    """``{output name: socket}`` from a return annotation."""
    if ret is None or ret is type(None):
        return {}
    if _is_named_tuple(ret):
        fields = typing.get_type_hints(ret, include_extras=True)
        out: dict[str, str] = {}
        for field_name in ret._fields:
            socket = _socket_name(fields.get(field_name, Any))
            if socket is None:
                raise TypeError(f"{name}: output {field_name!r} of {ret.__name__} has no socket type "
                                f"(annotate it with a socket class or alias, or int/float/str/bool)")
            out[field_name] = socket
        return out
    socket = _socket_name(ret)
    if socket is None:
        if is_output:
            return {}  # an output node's list of written files is not an output socket
        raise TypeError(f"{name}: the return annotation {ret!r} names no socket type; annotate it with a socket "
                        "class or alias (-> Image), a primitive, or a NamedTuple of them for several outputs")
    return {socket.lower(): socket}


def _check_hook(name: str, role: str, hook: Hook, inputs: Mapping[str, InputSpec]) -> None:
    """A hook is called with every literal input as a keyword: its parameters must match, at import time."""
    if not callable(hook):
        raise TypeError(f"{name}: {role} must be callable, got {hook!r}")
    try:
        params = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check
    literals = {n for n, spec in inputs.items() if not spec.is_link_only}
    takes_rest = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named: set[str] = set()
    for p in params:
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{name}: {role} parameter {p.name!r} is positional-only; hooks get keywords")
        if p.name not in inputs:
            raise TypeError(f"{name}: {role} parameter {p.name!r} is not an input of the node "
                            f"(literal inputs: {sorted(literals)})")
        if p.name not in literals:
            raise TypeError(f"{name}: {role} parameter {p.name!r} is a link input; hooks get literal inputs only")
        named.add(p.name)
    if not takes_rest and literals - named:
        raise TypeError(f"{name}: {role} does not accept the literal inputs {sorted(literals - named)}; "
                        "add them or a **_ parameter")


def _build_spec(
    fn: Callable[..., Any],
    name: str,
    category: str,
    version: int,
    outputs: Mapping[str, Any] | None,
    is_output: bool,
    cache: CachePolicy,
    comfy: tuple[ComfyMapping, ...] | ComfyMapping,
    check: Callable[..., list[tuple[str | None, str]]] | None,
    depends: tuple[str, ...] | None,
) -> NodeSpec:
    from nodegraph.context import RunContext

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:
        raise TypeError(f"{name}: an annotation cannot be resolved at import ({exc}); node signatures must use "
                        "names importable without torch (socket aliases such as nodes.payloads.Image)") from None
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
        description = description_of(annotation)
        if socket is not None and not takes_literal(annotation):
            inputs[param.name] = InputSpec(param.name, socket, True, required, default, annotation,
                                           description=description)
        elif socket is not None:  # a socket that also takes a literal (a SIGMAS list written out)
            inputs[param.name] = InputSpec(param.name, socket, False, required, default, annotation,
                                           TypeAdapter(annotation), description=description)
        else:
            adapter: TypeAdapter[Any] = TypeAdapter(annotation)
            if not required and default is not None:
                adapter.validate_python(default)  # a bad default is the declarer's bug: fail at import
            if not required and default is None and not is_optional(annotation):
                raise TypeError(f"{name}.{param.name}: default None needs an Optional annotation")
            inputs[param.name] = InputSpec(
                param.name, primitive_of(annotation), False, required, default, annotation, adapter, description
            )
    if outputs is None:
        out_types = _declared_outputs(name, hints.get("return"), is_output)
        ret = hints.get("return")
        if isinstance(ret, type) and issubclass(ret, tuple) and _is_named_tuple(ret) and len(out_types) == 1:
            fn = _unwrap_single(fn, name, ret)
    else:
        out_types = {}
        for out_name, ann in outputs.items():
            socket = _socket_name(ann)
            if socket is None:
                raise TypeError(f"{name}: output {out_name!r} has no socket type")
            out_types[out_name] = socket
    if is_output and out_types:
        raise TypeError(f"{name}: an output node returns the files it wrote (-> list[str]), not sockets")
    unknown = set(cache.content_inputs) - set(inputs)
    if unknown:
        raise TypeError(f"{name}: content_inputs {sorted(unknown)} are not inputs")
    if cache.fingerprint is not None:
        _check_hook(name, "fingerprint", cache.fingerprint, inputs)
    if check is not None:
        _check_hook(name, "check", check, inputs)
    if not out_types and not is_output:
        raise TypeError(f"{name}: a node without outputs must be declared output=True")
    if depends is None:
        depends = tuple(getattr(fn, "__globals__", {}).get("NODE_DEPENDS", ()))
    doc = inspect.cleandoc(fn.__doc__ or "").strip()
    mappings = (comfy,) if isinstance(comfy, ComfyMapping) else tuple(comfy)
    return NodeSpec(name, fn, category, version, inputs, out_types, doc, is_output, context_param, cache, mappings,
                    check, tuple(depends))


def _unwrap_single(fn: Callable[..., Any], name: str, declared: type[tuple[Any, ...]]) -> Callable[..., Any]:
    """A one-field NamedTuple renames a single output; the engine stores the field's value, not the tuple."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if not isinstance(result, declared):
            raise TypeError(f"{name} must return a {declared.__name__} (its declared outputs), "
                            f"got {type(result).__name__}")
        return result[0]

    return call
