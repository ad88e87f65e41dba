"""The path policy (DESIGN.md §7, issue 16 #1): file-valued literals are resolved and confined."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodegraph import Graph, WorkflowError, validate
from nodegraph.cli import main
from nodegraph.settings import PathPolicy


def save_graph(prefix: str) -> Graph:
    g = Graph()
    s = g.add("SourceName", id="s", source="org/model")
    g.add("SaveTextAs", id="w", text=s.text, prefix=prefix)
    return g


def read_graph(path: str) -> Graph:
    g = Graph()
    r = g.add("ReadText", id="r", path=path)
    g.add("WriteText", id="w", text=r.text)
    return g


def kinds(graph: Graph, policy: PathPolicy) -> list[tuple[str, str | None, str | None]]:
    with pytest.raises(WorkflowError) as info:
        validate(graph, policy=policy)
    return [(i.kind, i.node, i.input) for i in info.value.issues]


@pytest.mark.parametrize("prefix", ["../x", "../../x", "/tmp/abs-prefix", "sub/../../x"])
def test_writes_outside_the_output_dir_are_refused_naming_node_and_input(tmp_path, prefix):
    out = tmp_path / "out"
    out.mkdir()
    assert kinds(save_graph(prefix), PathPolicy(write_roots=(out,))) == [("path_not_allowed", "w", "prefix")]
    vg = validate(save_graph(prefix), policy=PathPolicy(write_roots=(out,), allow_outside_writes=True))
    assert Path(vg.literals["w"]["prefix"]).is_absolute()


def test_a_symlink_inside_the_output_dir_is_followed_before_the_check(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    assert kinds(save_graph("link/x"), PathPolicy(write_roots=(out,))) == [("path_not_allowed", "w", "prefix")]


def test_relative_writes_resolve_in_the_output_dir_and_reads_against_the_base(tmp_path):
    out, base = tmp_path / "out", tmp_path / "wf"
    out.mkdir()
    base.mkdir()
    vg = validate(save_graph("sub/name"), policy=PathPolicy(write_roots=(out,)))
    assert vg.literals["w"]["prefix"] == str(out.resolve() / "sub" / "name")
    vg = validate(read_graph("in.txt"), policy=PathPolicy(write_roots=(out,), base_dir=base))
    assert vg.literals["r"]["path"] == str(base.resolve() / "in.txt")


def test_confined_reads(tmp_path):
    inside, outside = tmp_path / "png-folder", tmp_path / "secret"
    inside.mkdir()
    outside.mkdir()
    policy = PathPolicy(write_roots=(tmp_path / "out",), read_roots=(inside,), base_dir=inside)
    assert kinds(read_graph(str(outside / "x.txt")), policy) == [("path_not_allowed", "r", "path")]
    assert kinds(read_graph("../secret/x.txt"), policy) == [("path_not_allowed", "r", "path")]
    validate(read_graph("ok.txt"), policy=policy)


def test_model_sources_that_are_no_local_paths_are_exempt(tmp_path):
    policy = PathPolicy(write_roots=(tmp_path,), read_roots=(tmp_path / "nothing",), base_dir=tmp_path)
    for source in ("org/model", "builtin:tiny-sdxl-inpaint", "hf:org/name"):
        g = Graph()
        g.add("WriteText", id="w", text=g.add("SourceName", id="s", source=source).text)
        assert validate(g, policy=policy).literals["s"]["source"] == source
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()  # now it names a local folder: a path, and outside the read roots
    g = Graph()
    g.add("WriteText", id="w", text=g.add("SourceName", id="s", source="org/model").text)
    assert kinds(g, policy) == [("path_not_allowed", "s", "source")]


def _png_with_workflow(path: Path, workflow: dict) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("nodegraph_workflow", json.dumps(workflow))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_cli_confines_a_png_workflow_and_relative_paths_follow_the_workflow_file(tmp_path, monkeypatch, capsys):
    wf_dir, other = tmp_path / "wf", tmp_path / "cwd"
    wf_dir.mkdir()
    other.mkdir()
    (wf_dir / "in.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("secret")
    doc = {"version": 1, "nodes": {"r": {"type": "ReadText", "inputs": {"path": "in.txt"}},
                                   "w": {"type": "SaveTextAs", "inputs": {"text": ["r", "text"], "prefix": "res"}}}}
    (wf_dir / "wf.json").write_text(json.dumps(doc))
    monkeypatch.chdir(other)  # relative paths follow the workflow file, not the current directory
    assert main(["run", str(wf_dir / "wf.json"), "--output-dir", "out", "--quiet", "--no-cache"]) == 0
    assert (other / "out" / "res.txt").read_text() == "hello"

    escape = json.loads(json.dumps(doc))
    escape["nodes"]["w"]["inputs"]["prefix"] = "../escaped"
    (wf_dir / "escape.json").write_text(json.dumps(escape))
    assert main(["run", str(wf_dir / "escape.json"), "--output-dir", "out", "--quiet", "--no-cache",
                 "--report", "r.json"]) == 2
    assert "outside the output directory" in capsys.readouterr().err and not (other / "escaped.txt").exists()
    assert json.loads((other / "r.json").read_text())["issues"][0]["kind"] == "path_not_allowed"
    assert main(["run", str(wf_dir / "escape.json"), "--output-dir", "out", "--quiet", "--no-cache",
                 "--allow-outside-writes"]) == 0
    assert (other / "escaped.txt").read_text() == "hello"

    shared = tmp_path / "shared"
    shared.mkdir()
    steal = json.loads(json.dumps(doc))
    steal["nodes"]["r"]["inputs"]["path"] = str(tmp_path / "secret.txt")
    _png_with_workflow(shared / "shared.png", steal)
    assert main(["run", str(shared / "shared.png"), "--output-dir", "out", "--quiet", "--no-cache"]) == 2
    assert "--trust-workflow" in capsys.readouterr().err
    assert main(["run", str(shared / "shared.png"), "--output-dir", "out", "--quiet", "--no-cache",
                 "--trust-workflow"]) == 0


def test_a_png_we_wrote_reruns_from_any_directory(tmp_path, monkeypatch):
    """The workflow embedded in a PNG records the folder its relative paths resolved against."""
    from nodegraph.workflow import BASE_DIR_KEY, load_workflow

    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    doc = {"version": 1, "metadata": {BASE_DIR_KEY: str(wf_dir)},
           "nodes": {"r": {"type": "ReadText", "inputs": {"path": "in.txt"}},
                     "w": {"type": "SaveTextAs", "inputs": {"text": ["r", "text"], "prefix": "res"}}}}
    (wf_dir / "in.txt").write_text("again")
    _png_with_workflow(wf_dir / "made.png", doc)  # written beside its inputs, as a local run would
    monkeypatch.chdir(tmp_path)
    assert load_workflow(wf_dir / "made.png").metadata[BASE_DIR_KEY] == str(wf_dir)
    assert main(["run", str(wf_dir / "made.png"), "--output-dir", "o", "--quiet", "--no-cache"]) == 0
    assert (tmp_path / "o" / "res.txt").read_text() == "again"
    (wf_dir / "in.txt").unlink()
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "in.txt").write_text("beside")
    (wf_dir / "made.png").rename(moved / "made.png")
    import shutil

    shutil.rmtree(wf_dir)  # the recorded folder is gone: paths resolve beside the PNG
    assert main(["run", str(moved / "made.png"), "--output-dir", "o", "--quiet", "--no-cache"]) == 0
    assert (tmp_path / "o" / "res.txt").read_text() == "beside"


@pytest.mark.parametrize("value, kind", [(float("nan"), "invalid_value"), (float("inf"), "invalid_value"),
                                         (float("-inf"), "invalid_value")])
def test_non_finite_numbers_are_refused_for_int_and_float_inputs(value, kind):
    g = Graph()
    with pytest.raises(WorkflowError) as info:
        g.add("Number", id="n", value=value)
    assert info.value.issues[0].kind == kind and info.value.issues[0].input == "value"
    g.add("Number", id="n", value=1)
    with pytest.raises(WorkflowError) as info:
        g.add("Scale", id="s", x=g["n"].value, factor=value)
    assert "finite" in info.value.issues[0].message


def test_json_infinity_in_a_file_is_a_structured_error(tmp_path, capsys):
    (tmp_path / "wf.json").write_text('{"version": 1, "nodes": {"n": {"type": "Number", "inputs": {"value": '
                                      'Infinity}}, "f": {"type": "Format", "inputs": {"n": ["n", "value"]}}, '
                                      '"w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}}')
    assert main(["validate", str(tmp_path / "wf.json")]) == 2
    err = capsys.readouterr().err
    assert "not a finite number" in err and "Traceback" not in err


def test_lone_surrogates_are_refused_before_any_key_is_built():
    g = Graph()
    n = g.add("Number", id="n", value=1)
    with pytest.raises(WorkflowError) as info:
        g.add("Format", id="f", n=n.value, style="plain", pair=None).set(style="\ud800")
    assert "UTF-8" in info.value.issues[0].message
    with pytest.raises(WorkflowError) as info:
        g.add("SourceName", id="s", source="x\udfffy")
    assert info.value.issues[0].input == "source"


def test_misspelled_input_gets_did_you_mean():
    g = Graph()
    with pytest.raises(WorkflowError) as info:
        g.add("Number", id="n", valeu=3)
    assert "did you mean 'value'?" in str(info.value)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    root = Path(__file__).resolve().parent.parent
    modules = sorted(f"nodegraph.{p.stem}" for p in (root / "nodegraph").glob("*.py") if p.stem != "__main__")
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)"
    for module in modules:  # one interpreter each: an import cycle shows up only when a module comes first
        proc = subprocess.run([sys.executable, "-c", code, module], cwd=root, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{module}: {proc.stderr[-1500:]}"


BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'diffusers', 'transformers', 'accelerate'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_validating_native_workflows_never_imports_torch(tmp_path):
    root = Path(__file__).resolve().parent.parent
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"version": 1, "nodes": {
        "n": {"type": "Number", "inputs": {"value": 2}}, "f": {"type": "Format", "inputs": {"n": ["n", "value"]}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}}))
    code = BLOCK_TORCH + (
        "import nodegraph, tests.toy_nodes\n"
        "from nodegraph.workflow import load_workflow\n"
        "from nodegraph.cli import main\n"
        f"nodegraph.validate(load_workflow({str(wf)!r}))\n"
        f"assert main(['validate', {str(wf)!r}]) == 0\n"
        "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_validate_command_checks_paths_as_run_would(tmp_path, capsys):
    doc = {"version": 1, "nodes": {"r": {"type": "ReadText", "inputs": {"path": "in.txt"}},
                                   "w": {"type": "SaveTextAs", "inputs": {"text": ["r", "text"], "prefix": "../up"}}}}
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert main(["validate", str(tmp_path / "wf.json"), "--output-dir", str(tmp_path / "o"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["issues"][0]["kind"] == "path_not_allowed"
    assert main(["validate", str(tmp_path / "wf.json"), "--output-dir", str(tmp_path / "o"),
                 "--allow-outside-writes"]) == 0
