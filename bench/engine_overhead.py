"""Executor overhead on a synthetic 10,000-node graph of trivial nodes (chains with diamonds).

Prints, in one process: validation time of the 10,000-node file; executor overhead per node for a cold
run and for a fully cached rerun, each against a bare loop that calls the same functions in the same
topological order; converting + validating a 500-node ComfyUI UI-format file, against parsing its JSON.
Run: python bench/engine_overhead.py
"""

from __future__ import annotations

import json
import shutil
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


SINK_DIR = Path(tempfile.mkdtemp(prefix="nodegraph-bench-sink-"))


@node(category="bench", output=True)
def BenchSink(x: int) -> list[str]:
    # An output node must report files that exist (the engine checks). One small file, written once, so
    # that file-system time does not swamp the executor's overhead being measured.
    path = SINK_DIR / "sink.txt"
    if not path.exists():
        path.write_text("sink")
    return [str(path)]


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


def comfy_ui_document(groups: int = 100) -> dict:
    """A ComfyUI editor file of 1 + 5 * groups nodes: per group an empty latent, a prompt, a KSampler, a decode
    and a save, all sharing one checkpoint."""
    nodes: list[dict] = [{"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
                          "outputs": [{"name": n, "type": n} for n in ("MODEL", "CLIP", "VAE")],
                          "widgets_values": ["builtin:tiny-sdxl"]}]
    links: list[list] = []

    def link(src: int, slot: int, dst: dict, name: str, kind: str) -> dict:
        links.append([len(links) + 1, src, slot, dst["id"], len(dst["inputs"]), kind])
        dst["inputs"].append({"name": name, "type": kind, "link": len(links)})
        return dst

    for g in range(groups):
        base = 10 + 5 * g
        latent = {"id": base, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "widgets_values": [512, 512, 1]}
        prompt = link(1, 1, {"id": base + 1, "type": "CLIPTextEncode", "mode": 0, "inputs": [],
                             "widgets_values": [f"prompt {g}"]}, "clip", "CLIP")
        sampler = {"id": base + 2, "type": "KSampler", "mode": 0, "inputs": [],
                   "widgets_values": [g, "randomize", 20, 7.0, "euler", "karras", 1.0]}
        for src, slot, name, kind in ((1, 0, "model", "MODEL"), (base + 1, 0, "positive", "CONDITIONING"),
                                      (base + 1, 0, "negative", "CONDITIONING"), (base, 0, "latent_image", "LATENT")):
            link(src, slot, sampler, name, kind)
        decode = link(1, 2, link(base + 2, 0, {"id": base + 3, "type": "VAEDecode", "mode": 0, "inputs": []},
                                 "samples", "LATENT"), "vae", "VAE")
        save = link(base + 3, 0, {"id": base + 4, "type": "SaveImage", "mode": 0, "inputs": [],
                                  "widgets_values": [f"g{g}"]}, "images", "IMAGE")
        nodes += [latent, prompt, sampler, decode, save]
    return {"last_node_id": 10 + 5 * groups, "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


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
        ui_path = Path(tmp) / "comfy_ui_500.json"
        ui_path.write_text(json.dumps(comfy_ui_document()))
        validate(load_workflow(ui_path))  # imports the node packages once, outside the timing

        def ui_convert_and_validate() -> float:
            t = time.perf_counter()
            validate(load_workflow(ui_path))
            return time.perf_counter() - t

        def ui_parse_only() -> float:
            t = time.perf_counter()
            json.loads(ui_path.read_text())
            return time.perf_counter() - t

        t_ui, t_ui_parse = best(ui_convert_and_validate), best(ui_parse_only)
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
        "comfy_ui_501_nodes_convert_validate_s": round(t_ui, 4),
        "comfy_ui_ratio_vs_json_parse": round(t_ui / t_ui_parse, 1),
    }
    print(json.dumps(figures, indent=2))
    print(f"targets: validate < 0.5 s -> {t_validate < 0.5}; cold <= 50 us/node -> {per(t_cold) <= 50}; "
          f"cached <= 20 us/node -> {per(t_cached) <= 20}; ComfyUI UI file < 0.2 s -> {t_ui < 0.2}")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(SINK_DIR, ignore_errors=True)
