"""The CLI's exit codes, reports, --set, and interrupt behaviour (run as a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodegraph.cli import main

TOY = {"version": 1, "nodes": {
    "n": {"type": "Number", "inputs": {"value": 2}},
    "c": {"type": "Count", "inputs": {"n": ["n", "value"], "steps": 3}},
    "f": {"type": "Format", "inputs": {"n": ["c", "value"]}},
    "w": {"type": "WriteText", "inputs": {"text": ["f", "text"], "name": "cli"}},
}}

# A runner that registers the toy nodes, then hands over to the real CLI.
RUNNER = "import sys; sys.path.insert(0, {root!r}); import tests.toy_nodes; from nodegraph.cli import main; sys.exit(main())"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run([sys.executable, "-c", RUNNER.format(root=root), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_run_writes_output_and_report(tmp_path, capsys):
    wf = write(tmp_path / "wf.json", TOY)
    code = main(["run", str(wf), "--output-dir", str(tmp_path / "out"), "--report", str(tmp_path / "r.json"),
                 "--quiet", "--set", "n.value=5"])
    assert code == 0
    assert (tmp_path / "out" / "cli.txt").read_text() == "5"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True and report["error"] is None and report["loaded"] == []
    assert report["nodes"]["c"] == {**report["nodes"]["c"], "type": "Count", "status": "executed", "cache": None}
    assert report["outputs"] == {"w": [str(tmp_path / "out" / "cli.txt")]}


def test_second_process_reads_the_disk_cache(tmp_path):
    wf = write(tmp_path / "wf.json", TOY)
    args = ["run", str(wf), "--output-dir", "out", "--quiet", "--cache-dir", str(tmp_path / "c")]
    assert run_cli(*args, "--report", "r1.json", cwd=tmp_path).returncode == 0
    p = run_cli(*args, "--report", "r2.json", "--set", 'w.name="again"', cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["nodes"]["f"]["cache"] == "disk" and report["nodes"]["c"]["status"] == "skipped"
    p = run_cli(*args, "--no-cache", "--report", "r3.json", cwd=tmp_path)
    assert json.loads((tmp_path / "r3.json").read_text())["nodes"]["f"]["status"] == "executed"


@pytest.mark.parametrize("content, expect", [
    ("{oops", "invalid JSON at line 1, column 2"),
    ({"version": 7, "nodes": {}}, "version 7 is not supported"),
    ({"version": 1, "nodes": {"a": {"type": "Zap"}}}, "unknown node type 'Zap'"),
])
def test_invalid_workflow_exits_2_without_traceback(tmp_path, capsys, content, expect):
    wf = write(tmp_path / "wf.json", content)
    assert main(["run", str(wf)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert main(["validate", str(wf), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_validate_ok_and_set_errors(tmp_path, capsys):
    wf = write(tmp_path / "wf.json", TOY)
    assert main(["validate", str(wf)]) == 0
    assert main(["run", str(wf), "--set", "ghost.value=1"]) == 2
    assert "ghost" in capsys.readouterr().err
    assert main(["run", str(wf), "--set", "novalue"]) == 2


def test_failing_node_exits_1_and_reports_it(tmp_path, capsys):
    data = {"version": 1, "nodes": {
        "n": {"type": "Number", "inputs": {"value": 1}},
        "x": {"type": "Fail", "inputs": {"x": ["n", "value"]}},
        "f": {"type": "Format", "inputs": {"n": ["x", "value"]}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}}
    wf = write(tmp_path / "wf.json", data)
    code = main(["run", str(wf), "--quiet", "--no-cache", "--output-dir", str(tmp_path / "o"),
                 "--report", str(tmp_path / "r.json")])
    assert code == 1
    assert json.loads((tmp_path / "r.json").read_text())["error"]["node"] == "x"
    assert not (tmp_path / "o").exists()


def test_nodes_and_schema_listings(capsys):
    assert main(["nodes", "--json"]) == 0
    listing = {n["type"]: n for n in json.loads(capsys.readouterr().out)}
    assert listing["Number"]["inputs"]["value"] == {"type": "INT", "required": False, "default": 0,
                                                    "minimum": -1000, "maximum": 1000}
    assert listing["Format"]["inputs"]["style"]["choices"] == ["plain", "brackets"]
    assert main(["nodes"]) == 0 and "A constant integer." in capsys.readouterr().out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["version"] == {"const": 1}


def test_ctrl_c_exits_130_and_leaves_no_output(tmp_path):
    data = json.loads(json.dumps(TOY))
    data["nodes"]["c"]["inputs"]["steps"] = 10**9
    wf = write(tmp_path / "wf.json", data)
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER.format(root=root), "run", str(wf), "--no-cache",
                             "--output-dir", "out", "--report", "r.json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline and "Count" not in "".join(seen):  # inside the step loop now
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "r.json").read_text())["error"]["interrupted"] is True


def test_engine_imports_without_torch():
    """The engine knows nothing about diffusion: importing it (and its CLI) must not import torch."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); import nodegraph, nodegraph.cli, nodegraph.schema; "
            "assert 'torch' not in sys.modules and 'nodes' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
