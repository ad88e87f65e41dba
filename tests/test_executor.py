"""Demand-driven runs, cache reuse, failures and interrupts, asserted through the run report."""

from __future__ import annotations

import pytest

from nodegraph import CancelToken, Engine, Graph, Interrupted, NodeExecutionError
from nodegraph.events import NodeProgress, RunError
from nodegraph.settings import EngineSettings


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
    assert result.report()["error"] == {"node": "bad", "type": "Fail", "exception": "RuntimeError", "message": "kaput"}
    assert result.error == RunError("bad", "Fail", "RuntimeError", "kaput")
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

    class CancelAtStep3:
        def on_event(self, event) -> None:
            if isinstance(event, NodeProgress) and event.value == 3:
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
                return False, None
            return super().get(key)

    engine = Engine()
    engine.run(chain(), output_dir=tmp_path)
    engine.memory, old = ForgetfulOnce(), engine.memory
    for key, (value, _) in old._entries.items():
        engine.memory.put(key, value)
    result = engine.run(chain(style="brackets"), output_dir=tmp_path)
    assert engine.memory.forgot and result.ok and (tmp_path / "out.txt").read_text() == "[7]"
    # The entry found unreadable is not planned again in this run: s is recomputed from its inputs.
    assert result.nodes["s"]["status"] == "executed" and result.nodes["a"]["cache"] == "memory"


def test_a_memory_tier_that_always_misses_still_runs_everything(tmp_path, calls):
    """A tier that claims every key but never returns one must not make the run give up and report
    success with nothing run: each unreadable entry is ruled out and the nodes execute."""
    from nodegraph.cache import MemoryCache

    class Liar(MemoryCache):
        def contains(self, key):
            return True

        def get(self, key):
            return False, None

    engine = Engine()
    engine.memory = Liar()
    g = Graph()
    prev = g.add("Number", id="n0", value=1)
    for i in range(1, 12):  # longer than any fixed number of attempts
        prev = g.add("Add", id=f"n{i}", a=prev.sum if i > 1 else prev.value, b=1)
    f = g.add("Format", id="f", n=prev.sum)
    g.add("WriteText", id="w", text=f.text)
    result = engine.run(g, output_dir=tmp_path)
    assert result.ok and (tmp_path / "out.txt").read_text() == "12"
    assert {info["status"] for info in result.nodes.values()} == {"executed"}
    assert calls.count("Add") == 11


def test_plan_is_data_and_matches_the_run(tmp_path, calls):
    engine = Engine()
    plan = engine.plan(chain())
    assert plan.will_execute == ("a", "b", "s", "f", "w") or set(plan.will_execute) == {"a", "b", "s", "f", "w"}
    assert plan.nodes["orphan"].action.value == "not_needed" and calls == []  # planning runs nothing
    engine.run(chain(), output_dir=tmp_path)
    plan = engine.plan(chain(style="brackets"))
    assert plan.action("s").value == "memory" and plan.will_execute == ("f", "w")
    assert plan.nodes["a"].action.value == "not_needed" and plan.nodes["a"].cached_in == "memory"
    assert plan.to_dict()["nodes"]["s"]["key"] == plan.nodes["s"].key


def test_events_tell_the_whole_run_in_order(tmp_path):
    from nodegraph.events import NodeCached, NodeFinished, NodeStarted, RunFinished, RunStarted

    seen = []
    engine = Engine()
    engine.run(chain(), output_dir=tmp_path, listener=type("L", (), {"on_event": lambda self, e: seen.append(e)})(),
               run_id="abc")
    assert isinstance(seen[0], RunStarted) and seen[0].run_id == "abc" and isinstance(seen[-1], RunFinished)
    started = [e.node_id for e in seen if isinstance(e, NodeStarted)]
    finished = [e for e in seen if isinstance(e, NodeFinished)]
    assert started == [e.node_id for e in finished] and set(started) == {"a", "b", "s", "f", "w"}
    assert finished[-1].files == (str(tmp_path / "out.txt"),)
    seen.clear()
    result = engine.run(chain(style="brackets"), output_dir=tmp_path, listener=type("L", (), {"on_event": lambda self, e: seen.append(e)})())
    assert [e.node_id for e in seen if isinstance(e, NodeCached)] == ["s"]
    assert len(result.run_id) == 32 and seen[0].run_id == result.run_id


@pytest.mark.parametrize("node_type, message", [("TupleForOne", "one output"), ("DictMissing", "missing keys"),
                                                ("DictExtra", "extra keys"), ("WritesNothing", "wrote no files"),
                                                ("ClaimsMissingFile", "do not exist")])
def test_wrong_return_shapes_and_unwritten_outputs_fail_naming_the_node(tmp_path, node_type, message):
    g = Graph()
    g.add(node_type, id="x")
    if node_type not in ("WritesNothing", "ClaimsMissingFile"):
        g.add("WriteText", id="w", text=g.add("Format", id="f", n=g["x"].value).text)
    result = Engine().run(g, output_dir=tmp_path, raise_on_error=False)
    assert not result.ok and result.error is not None and result.error.node_id == "x"
    assert message in result.error.message


def test_previews_are_built_only_when_asked_for_and_due(tmp_path):
    from nodegraph.events import NodeProgress, PreviewSettings

    def run(previews):
        seen = []
        g = Graph()
        n = g.add("Number", id="n", value=1)
        c = g.add("Previewing", id="c", n=n.value, steps=6)
        g.add("WriteText", id="w", text=g.add("Format", id="f", n=c.value).text)
        result = Engine().run(g, output_dir=tmp_path, previews=previews,
                              listener=type("L", (), {"on_event": lambda self, e: seen.append(e)})())
        assert result.ok
        return [e for e in seen if isinstance(e, NodeProgress)], result["c"]["value"]

    events, built = run(None)
    assert built == 0 and all(e.preview is None for e in events) and [e.value for e in events] == list(range(7))
    events, built = run(PreviewSettings(every_steps=2, min_interval_s=0))
    assert built == 3 and [e.value for e in events if e.preview is not None] == [2, 4, 6]
    assert events[2].preview.format == "PNG"


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
