"""Executor overhead on a synthetic 10,000-node graph of trivial nodes (chains with diamonds).

Prints, in one process: validation time of the 10,000-node file; executor overhead per node for a cold
run and for a fully cached rerun, each against a bare loop that calls the same functions in the same
topological order. Run: python bench/engine_overhead.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodegraph import Engine, Graph, node  # noqa: E402
from nodegraph.validation import validate  # noqa: E402
from nodegraph.workflow import load_workflow  # noqa: E402

CHAINS, LENGTH = 100, 100  # 100 chains x (100 nodes + 1 sink) = 10,100 nodes


@node(category="bench", outputs={"value": int})
def BenchConst(value: int) -> int:
    return value


@node(category="bench", outputs={"value": int})
def BenchInc(a: int) -> int:
    return a + 1


@node(category="bench", outputs={"value": int})
def BenchAdd(a: int, b: int) -> int:
    return a + b


@node(category="bench", output=True)
def BenchSink(x: int) -> list[str]:
    return []


def build() -> Graph:
    g = Graph()
    for c in range(CHAINS):
        prev2 = prev = g.add("BenchConst", id=f"c{c}_0", value=c)
        for i in range(1, LENGTH):
            if i % 3 == 0:  # a diamond: two paths from prev2 meet here
                cur = g.add("BenchAdd", id=f"c{c}_{i}", a=prev.value, b=prev2.value)
            else:
                cur = g.add("BenchInc", id=f"c{c}_{i}", a=prev.value)
            prev2, prev = prev, cur
        g.add("BenchSink", id=f"c{c}_sink", x=prev.value)
    return g


def bare_loop(g: Graph, order: list[str]) -> float:
    """The same functions, called in the same order, with nothing but a dict of results."""
    fns = {"BenchConst": BenchConst, "BenchInc": BenchInc, "BenchAdd": BenchAdd, "BenchSink": BenchSink}
    start = time.perf_counter()
    values: dict[str, int] = {}
    for n in order:
        inst = g.nodes[n]
        kwargs = {k: (values[v.node] if hasattr(v, "node") else v) for k, v in inst.inputs.items()}
        values[n] = fns[inst.type](**kwargs)
    return time.perf_counter() - start


def best(f, repeats: int = 5) -> float:
    return min(f() for _ in range(repeats))


def main() -> None:
    g = build()
    n = len(g.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        g.save(str(path))

        def load_and_validate() -> float:
            t = time.perf_counter()
            validate(load_workflow(path))
            return time.perf_counter() - t

        t_validate = best(load_and_validate)
    order = validate(g).order
    t_bare = best(lambda: bare_loop(g, order))

    def cold() -> float:
        engine = Engine()
        t = time.perf_counter()
        engine.run(g)
        return time.perf_counter() - t

    engine = Engine()
    engine.run(g)

    def cached() -> float:
        t = time.perf_counter()
        result = engine.run(g)
        elapsed = time.perf_counter() - t
        assert all(v["status"] == "cached" for k, v in result.nodes.items() if not k.endswith("sink"))
        return elapsed

    t_cold, t_cached = best(cold), best(cached)
    per = lambda t: (t - t_bare) / n * 1e6  # noqa: E731
    figures = {
        "nodes": n,
        "validate_10k_file_s": round(t_validate, 3),
        "bare_loop_us_per_node": round(t_bare / n * 1e6, 2),
        "cold_overhead_us_per_node": round(per(t_cold), 2),
        "cached_overhead_us_per_node": round(per(t_cached), 2),
        "cold_ratio_vs_bare": round(t_cold / t_bare, 1),
        "cached_ratio_vs_bare": round(t_cached / t_bare, 1),
    }
    print(json.dumps(figures, indent=2))
    print(f"targets: validate < 0.5 s -> {t_validate < 0.5}; cold <= 50 us/node -> {per(t_cold) <= 50}; "
          f"cached <= 20 us/node -> {per(t_cached) <= 20}")


if __name__ == "__main__":
    main()
