"""@node is one declaration: outputs from the return annotation, one cache policy, hooks checked at import,
input descriptions and file roles, dependencies and the environment salt, and self-registering modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NamedTuple

import pytest
from pydantic import Field

from nodegraph import REGISTRY, Graph
from nodegraph.node import ALWAYS_RUN, MEMORY, PERSIST, CachePolicy, Registry, environment_salt, node
from nodegraph.schema import workflow_schema
from nodegraph.types import MODEL_SOURCE, READ_PATH, WRITE_PATH, file_role_of
from tests.toy_nodes import Text

ROOT = Path(__file__).resolve().parent.parent


def declare(fn, **kwargs):
    """Declare into a throwaway registry; returns the spec."""
    node(category="test", registry=Registry(), **kwargs)(fn)
    return fn.__node_spec__


class Pair(NamedTuple):
    text: Text
    count: int


class Doubled(NamedTuple):
    doubled: int


def test_single_output_is_named_after_its_socket():
    def Shout(text: Text) -> Text:
        return Text(text.value.upper())

    assert declare(Shout).outputs == {"text": "TEXT"}


def test_named_tuple_declares_several_outputs_in_order():
    def Both(text: Text) -> Pair:
        return Pair(text, len(text.value))

    assert list(declare(Both).outputs.items()) == [("text", "TEXT"), ("count", "INT")]


def test_one_field_named_tuple_renames_the_output_and_the_engine_gets_the_value():
    def Double(x: int) -> Doubled:
        return Doubled(2 * x)

    spec = declare(Double)
    assert spec.outputs == {"doubled": "INT"}
    assert spec.fn(x=4) == 8  # what the executor stores as the output's value
    assert Double(4) == Doubled(8)  # the declared function itself is unchanged


def test_named_tuple_outputs_run_through_the_engine(tmp_path):
    from nodegraph import Engine

    g = Graph()
    n = g.add("Number", value=3)
    s = g.add("Split", text=g.add("Format", n=n["value"])["text"])
    g.add("WriteText", text=s["text"])
    result = Engine().run(g, output_dir=tmp_path)
    assert result[s.id] == {"text": Text("3"), "length": 1}


def test_a_return_annotation_without_a_socket_is_refused_at_declaration():
    def Vague(x: int) -> object:
        return x

    with pytest.raises(TypeError, match="Vague: the return annotation"):
        declare(Vague)


def test_output_nodes_return_their_files_not_sockets():
    def Writes(text: Text) -> list[str]:
        return []

    spec = declare(Writes, output=True)
    assert spec.outputs == {} and spec.is_output
    with pytest.raises(TypeError, match=r"Writes: the return annotation list\[str\] names no socket type"):
        declare(Writes)


@pytest.mark.parametrize("hook, message", [
    (lambda path, **_: [], "parameter 'path' is not an input"),
    (lambda text, **_: [], "parameter 'text' is a link input"),
    (lambda n: [], r"does not accept the literal inputs \['style'\]"),
])
def test_hook_signatures_are_checked_at_declaration(hook, message):
    def Hooked(text: Text, n: int, style: str = "plain") -> Text:
        return text

    with pytest.raises(TypeError, match=f"Hooked: check {message}"):
        declare(Hooked, check=hook)
    with pytest.raises(TypeError, match=f"Hooked: fingerprint {message}"):
        declare(Hooked, cache=CachePolicy.reads(hook))


def test_a_hook_taking_every_literal_or_the_rest_is_accepted():
    def Hooked(text: Text, n: int, style: str = "plain") -> Text:
        return text

    declare(Hooked, check=lambda n, style: [])
    declare(Hooked, check=lambda n=0, **_: [])


def test_cache_policy_presets_and_the_read_only_views():
    def Plain(x: int) -> Doubled:
        return Doubled(x)

    assert declare(Plain).cache == MEMORY
    persisted = declare(Plain, cache=PERSIST)
    assert (persisted.persist, persisted.always_run, persisted.fingerprint, persisted.content_inputs) == \
        (True, False, None, ())
    assert declare(Plain, cache=ALWAYS_RUN).always_run

    def digest(x: int) -> str:
        return str(x)

    source = declare(Plain, cache=CachePolicy.reads(digest, "x", memory=False))
    assert (source.persist, source.always_run, source.fingerprint, source.content_inputs) == \
        (False, True, digest, ("x",))


def test_cache_policy_refuses_inconsistent_settings():
    def Plain(x: int) -> Doubled:
        return Doubled(x)

    with pytest.raises(TypeError, match="content_inputs need a fingerprint"):
        CachePolicy(content_inputs=("x",))
    with pytest.raises(TypeError, match=r"content_inputs \['y'\] are not inputs"):
        declare(Plain, cache=CachePolicy.reads(lambda **_: "", "y"))
    with pytest.raises(TypeError, match="either cache= or the legacy"):
        declare(Plain, cache=PERSIST, persist=True)


def test_input_descriptions_reach_the_listing_and_the_schema():
    reg = Registry()

    @node(category="test", registry=reg)
    def Described(text: Annotated[Text, Field(description="what to repeat")],
                  times: Annotated[int, Field(ge=1, description="how often")] = 1,
                  sep: Annotated[str, Field(description="between copies")] | None = None) -> Text:
        return text

    spec = Described.__node_spec__
    assert {n: i.description for n, i in spec.inputs.items()} == \
        {"text": "what to repeat", "times": "how often", "sep": "between copies"}
    assert spec.describe()["inputs"]["times"]["description"] == "how often"
    reg._entry_points_loaded = True  # only this node in the schema
    variant = workflow_schema(reg)["properties"]["nodes"]["additionalProperties"]["oneOf"][0]
    props = variant["properties"]["inputs"]["properties"]
    assert props["times"]["description"] == "how often"
    assert "what to repeat" in props["text"]["description"]


def test_the_nodes_command_shows_input_descriptions(capsys):
    import nodes.catalog  # noqa: F401
    from nodegraph.cli import main

    assert main(["nodes"]) == 0
    assert "in  prompt: STRING  -- the text for CLIP ViT-L" in capsys.readouterr().out


def test_path_inputs_carry_their_file_roles():
    import nodes.catalog  # noqa: F401

    def role(node_type: str, input_name: str):
        return file_role_of(REGISTRY.get(node_type).inputs[input_name].annotation)

    assert role("LoadImage", "path") == READ_PATH
    assert role("LoadMask", "path") == READ_PATH
    assert role("LoadLatent", "path") == READ_PATH
    assert role("SaveImage", "prefix") == WRITE_PATH
    assert role("SaveImage", "path") == WRITE_PATH
    assert role("SaveLatent", "path") == WRITE_PATH
    assert role("LoadCheckpoint", "source") == MODEL_SOURCE
    assert role("LoadCheckpoint", "config") == MODEL_SOURCE
    assert REGISTRY.get("LoadImage").describe()["inputs"]["path"]["file"] == "read"


def test_depends_and_the_salt_come_from_installed_metadata_without_importing():
    from importlib import metadata

    def Plain(x: int) -> Doubled:
        return Doubled(x)

    spec = declare(Plain, depends=("pytest", "no-such-distribution-xyz"))
    major_minor = ".".join(metadata.version("pytest").split(".")[:2])
    assert spec.depends == ("pytest", "no-such-distribution-xyz")
    assert spec.salt == f"tests=0;no-such-distribution-xyz=none;pytest={major_minor}"
    assert spec.__dict__["salt"] == spec.salt  # memoised on the spec
    before = environment_salt.cache_info().hits
    assert declare(Plain, depends=("no-such-distribution-xyz", "pytest")).salt == spec.salt  # order-free
    assert environment_salt.cache_info().hits > before  # and per (package, libraries) in the process


def test_sdxl_nodes_declare_their_libraries_once_per_module():
    import nodes.catalog  # noqa: F401

    assert set(REGISTRY.get("EncodePrompt").depends) == {"torch", "transformers"}
    assert "diffusers" in REGISTRY.get("CropToMask").depends  # a per-node override of the module's list
    assert REGISTRY.get("LoadImage").salt.startswith("nodes=")
    assert "torch=" in REGISTRY.get("VAEDecode").salt


def test_every_node_module_registers_without_a_list():
    import nodes.catalog

    on_disk = {f"nodes.{p.stem}" for p in (ROOT / "nodes").glob("*.py") if p.stem not in ("__init__", "catalog")}
    assert set(nodes.catalog.MODULES) == on_disk
    declared_in = {spec.fn.__module__ for spec in REGISTRY.all().values()}
    assert {"nodes.image", "nodes.latent", "nodes.models", "nodes.text"} <= declared_in


def test_node_listing_is_json_ready():
    import nodes.catalog  # noqa: F401

    json.dumps([s.describe() for s in REGISTRY.all().values()], default=str)
