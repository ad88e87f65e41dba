"""Demand-driven runs, cache reuse, failures and interrupts, asserted through the run report."""

from __future__ import annotations

import pytest

from nodegraph import CancelToken, Engine, Graph, Interrupted, NodeExecutionError
from nodegraph.settings import EngineSettings
from nodegraph.context import SilentListener


def chain(value: int = 3, style: str = "plain") -> Graph:
    g = Graph()
    a = g.add("Number", id="a", value=value)
    b = g.add("Number", id="b", value=4)
    s = g.add("Add", id="s", a=a.value, b=b.value)
    f = g.add("Format", id="f", n=s.sum, style=style)
    g.add("WriteText", id="w", text=f.text)
    g.add("Number", id="orphan", value=9)  # not an ancestor of any output: never runs
    return g


def statuses(result) -> dict[str, str]:
    return {n: info["status"] for n, info in result.nodes.items()}


def test_only_ancestors_of_outputs_run(tmp_path, calls):
    result = Engine().run(chain(), output_dir=tmp_path)
    assert result.ok and (tmp_path / "out.txt").read_text() == "7"
    assert statuses(result) == {"a": "executed", "b": "executed", "s": "executed", "f": "executed",
                                "w": "executed", "orphan": "skipped"}
    assert result["s"] == {"sum": 7}


def test_editing_a_literal_reruns_exactly_its_descendants(tmp_path, calls):
    engine = Engine()
    engine.run(chain(), output_dir=tmp_path)
    calls.clear()
    result = engine.run(chain(style="brackets"), output_dir=tmp_path)
    assert statuses(result) == {"a": "cached", "b": "cached", "s": "cached", "f": "executed",
                                "w": "executed", "orphan": "skipped"}
    assert result.nodes["s"]["cache"] == "memory"
    assert result.nodes["a"]["read"] is False  # cached, but nothing needed to read it
    assert calls == ["Format", "WriteText"]
    assert (tmp_path / "out.txt").read_text() == "[7]"

    result = engine.run(chain(value=5, style="brackets"), output_dir=tmp_path)
    assert statuses(result)["a"] == "executed" and statuses(result)["s"] == "executed"
    assert (tmp_path / "out.txt").read_text() == "[9]"


def test_identical_subgraphs_under_different_ids_share_one_execution(tmp_path, calls):
    g = Graph()
    for prefix in ("x", "y"):
        n = g.add("Number", id=f"{prefix}n", value=2)
        s = g.add("Add", id=f"{prefix}s", a=n.value, b=n.value)
        f = g.add("Format", id=f"{prefix}f", n=s.sum)
        g.add("WriteText", id=f"{prefix}w", text=f.text, name=prefix)
    result = Engine().run(g, output_dir=tmp_path)
    assert calls.count("Add") == 1 and calls.count("Format") == 1
    assert {result.nodes["xs"]["status"], result.nodes["ys"]["status"]} == {"executed", "cached"}
    assert (tmp_path / "x.txt").read_text() == (tmp_path / "y.txt").read_text() == "4"


def test_failing_node_is_named_and_nothing_downstream_writes(tmp_path):
    g = Graph()
    n = g.add("Number", id="n", value=1)
    bad = g.add("Fail", id="bad", x=n.value, message="kaput")
    f = g.add("Format", id="f", n=bad.value)
    g.add("WriteText", id="w", text=f.text)
    result = Engine().run(g, output_dir=tmp_path, raise_on_error=False)
    assert not result.ok
    assert result.error == {"node": "bad", "type": "Fail", "exception": "RuntimeError", "message": "kaput"}
    assert result.nodes["bad"]["status"] == "failed" and result.nodes["w"]["status"] == "skipped"
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(NodeExecutionError, match="node 'bad' \\(Fail\\) failed"):
        Engine().run(g, output_dir=tmp_path)


def test_cancel_between_steps_leaves_no_output(tmp_path):
    g = Graph()
    n = g.add("Number", id="n", value=1)
    c = g.add("Count", id="c", n=n.value, steps=10)
    f = g.add("Format", id="f", n=c.value)
    g.add("WriteText", id="w", text=f.text)
    token = CancelToken()

    class CancelAtStep3(SilentListener):
        def node_progress(self, node_id: str, done: int, total: int) -> None:
            if done == 3:
                token.cancel()

    result = Engine().run(g, output_dir=tmp_path, cancel=token, listener=CancelAtStep3(), raise_on_error=False)
    assert result.interrupted and not result.ok
    assert result.nodes["c"]["status"] == "interrupted" and result.nodes["w"]["status"] == "skipped"
    assert list(tmp_path.iterdir()) == []
    token2 = CancelToken()
    token2.cancel()
    with pytest.raises(Interrupted):
        Engine().run(g, output_dir=tmp_path, cancel=token2)
    assert list(tmp_path.iterdir()) == []


def test_disk_tier_serves_a_fresh_engine(tmp_path, calls):
    settings = EngineSettings(cache_dir=tmp_path / "cache")
    Engine(settings).run(chain(), output_dir=tmp_path)
    calls.clear()
    result = Engine(settings).run(chain(style="brackets"), output_dir=tmp_path)
    assert result.nodes["s"] == {**result.nodes["s"], "status": "cached", "cache": "disk"}
    assert calls == ["Format", "WriteText"]  # Numbers were not needed: Add came from disk
    assert (tmp_path / "out.txt").read_text() == "[7]"


def test_python_api_returns_values():
    g = Graph()
    n = g.add("Number", value=6)
    sq = g.add("Square", x=n.value)
    f = g.add("Format", n=sq.value)
    g.add("WriteText", text=f.text, name="sq")
    result = g.run(output_dir="/tmp/nodegraph-test-out")
    assert result[sq.id]["value"] == 36
    assert result[f.id]["text"].value == "36"


def test_memory_entry_gone_between_plan_and_read_triggers_a_replan(tmp_path, calls):
    """A planned memory hit can be evicted before it is read (a large entry put earlier in the same run):
    the run plans again instead of handing None downstream."""
    from nodegraph.cache import MemoryCache

    class ForgetfulOnce(MemoryCache):
        forgot = False

        def get(self, key):
            if not self.forgot:
                self.forgot = True
                return None
            return super().get(key)

    engine = Engine()
    engine.run(chain(), output_dir=tmp_path)
    engine.memory, old = ForgetfulOnce(), engine.memory
    for key, (value, _) in old._entries.items():
        engine.memory.put(key, value)
    result = engine.run(chain(style="brackets"), output_dir=tmp_path)
    assert engine.memory.forgot and result.ok and (tmp_path / "out.txt").read_text() == "[7]"
    assert result.nodes["s"]["status"] == "cached"


def test_two_engines_with_different_cache_dirs_do_not_see_each_others_files(tmp_path, calls):
    one = Engine(EngineSettings(cache_dir=tmp_path / "one"))
    two = Engine(EngineSettings(cache_dir=tmp_path / "two"))
    one.run(chain(), output_dir=tmp_path / "out1")
    calls.clear()
    result = two.run(chain(), output_dir=tmp_path / "out2")
    assert calls.count("Add") == 1 and result.nodes["s"]["status"] == "executed"
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["entries"]
    one_entries = {p.name for p in (tmp_path / "one").rglob("*.ngc")}
    assert one_entries and one_entries == {p.name for p in (tmp_path / "two").rglob("*.ngc")}
    # Each engine's nodes see that engine's settings (state dir included), even between runs of the other.
    seen = []
    for engine in (one, two, one):
        g = Graph()
        g.add("WriteSettings", id="w")
        engine.run(g, output_dir=tmp_path / "o")
        seen.append(json_of(tmp_path / "o" / "settings.json"))
    assert [s["state_root"] for s in seen] == [str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "one")]
    assert [s["active"] for s in seen] == [s["state_root"] for s in seen]


def json_of(path):
    import json

    return json.loads(path.read_text())
