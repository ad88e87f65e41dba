"""Server overhead and warm-model latency, on the built-in tiny model (CPU is fine).

1. Per-prompt server overhead: 50 prompts whose text encodings are cached (only the seed changes), posted
   back to back over HTTP while a websocket client waits for each "done" message; against Engine.run
   in-process on the same 50 graphs, in the same run. Overhead = (server wall - in-process wall) / 50.
2. Time from starting `nodegraph serve` to the first image, the second image (nothing reloaded: read from
   the server's per-prompt log line), and `nodegraph run` on the same workflow in a fresh process.

Run: python bench/server.py [--prompts 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_prompt(seed: int, steps: int) -> dict[str, Any]:
    """workflows/demo_tiny.json as an API-format prompt of native class_types (outputs by index)."""
    from nodegraph.node import REGISTRY
    from nodegraph.server.translate import native_name

    native = json.loads((ROOT / "workflows/demo_tiny.json").read_text())["nodes"]
    out: dict[str, Any] = {}
    for node_id, entry in native.items():
        inputs = {}
        for k, v in entry["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and v[0] in native:
                v = [v[0], list(REGISTRY.get(native[v[0]]["type"]).outputs).index(v[1])]  # type: ignore[union-attr]
            inputs[k] = v
        out[node_id] = {"class_type": native_name(entry["type"], REGISTRY), "inputs": inputs}
    out["image"]["inputs"]["path"] = "demo_image.png"
    out["mask"]["inputs"]["path"] = "demo_mask.png"
    out["sample"]["inputs"].update(seed=seed, steps=steps)
    return out


class Server:
    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for d in ("input", "output", "cache"):
            (root / d).mkdir(exist_ok=True)
        for name in ("demo_image.png", "demo_mask.png"):
            (root / "input" / name).write_bytes((ROOT / "workflows" / name).read_bytes())
        self.log = root / "server.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NODEGRAPH_CACHE_DIR": str(root / "cache")}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodegraph", "serve", "--port", str(self.port), "--input-dir", str(root / "input"),
             "--output-dir", str(root / "output"), "--cache-dir", str(root / "cache")],
            cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        self.listening = time.perf_counter() - self.started

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def run_prompts(url: str, prompts: list[dict[str, Any]]) -> float:
    """Post all prompts back to back, then wait until the last one's done message; wall seconds."""
    import httpx
    import websockets

    t0 = time.perf_counter()
    async with websockets.connect(url.replace("http", "ws") + "/ws?clientId=bench", max_size=None) as ws:
        await ws.recv()
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            ids = []
            for p in prompts:
                r = await client.post("/prompt", json={"prompt": p, "client_id": "bench"})
                r.raise_for_status()
                ids.append(r.json()["prompt_id"])
        remaining = set(ids)
        while remaining:
            msg = await ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "execution_error":
                    raise SystemExit(f"prompt failed: {m['data']}")
                if m["type"] == "executing" and m["data"]["node"] is None:
                    remaining.discard(m["data"]["prompt_id"])
    return time.perf_counter() - t0


def in_process(root: Path, prompts: list[dict[str, Any]], singles: list[dict[str, Any]]) -> tuple[float, float]:
    from nodegraph.executor import Engine
    from nodegraph.node import REGISTRY
    from nodegraph.server.queue import make_engine
    from nodegraph.server.translate import graph_from_prompt
    from nodegraph.settings import EngineSettings

    os.chdir(root / "input")
    settings = EngineSettings.from_env(cache_dir=root / "cache2", state_dir=root / "cache",
                                       output_dir=root / "output2", input_dir=root / "input")
    engine: Engine = make_engine(settings, REGISTRY)
    out = root / "output2"
    engine.run(graph_from_prompt(api_prompt(0, 2), REGISTRY), output_dir=out)  # warm: models and encodings
    timings = []
    for batch in (prompts, singles):
        graphs = [graph_from_prompt(p, REGISTRY) for p in batch]
        t0 = time.perf_counter()
        for g in graphs:
            engine.run(g, output_dir=out)
        timings.append(time.perf_counter() - t0)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from nodes.tiny import BUILD_VERSION, make_tiny_model

        # the built-in model exists before anything is timed (server and CLI then both load it from disk)
        make_tiny_model(root / "cache" / "models" / f"tiny-sdxl-inpaint-v{BUILD_VERSION}", in_channels=9)
        firsts = [api_prompt(1, args.steps)], [api_prompt(2, args.steps)]
        prompts = [api_prompt(100 + i, args.steps) for i in range(args.prompts)]
        singles = [api_prompt(500 + i, args.steps) for i in range(10)]
        # part 2 first: a cold server
        s = Server(root)
        first = asyncio.run(run_prompts(s.url, firsts[0]))
        to_first_image = time.perf_counter() - s.started
        second = asyncio.run(run_prompts(s.url, firsts[1]))
        # part 1 on the same warm server: encodings cached, only the seed changes
        served = asyncio.run(run_prompts(s.url, prompts))
        one_by_one = sum(asyncio.run(run_prompts(s.url, [p])) for p in singles)
        s.stop()
        log = s.log.read_text()
        loads = [line.rsplit("loaded: ", 1)[-1].rstrip(")") for line in log.splitlines() if "loaded: " in line]

        local, local_singles = in_process(root, prompts, singles)

        wf = root / "cli.json"  # the same graph as a native workflow file (the CLI reads ComfyUI's class_types only)
        native = json.loads((ROOT / "workflows/demo_tiny.json").read_text())
        native["nodes"]["image"]["inputs"]["path"] = str(root / "input" / "demo_image.png")
        native["nodes"]["mask"]["inputs"]["path"] = str(root / "input" / "demo_mask.png")
        native["nodes"]["sample"]["inputs"].update(seed=1, steps=args.steps)
        wf.write_text(json.dumps(native))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NODEGRAPH_CACHE_DIR": str(root / "cache")}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nodegraph", "run", str(wf), "--quiet", "--no-cache",
                        "--output-dir", str(root / "cli-out")], cwd=ROOT, env=env, check=True)
        cli = time.perf_counter() - t0

    n = args.prompts
    print(f"server listening after        {s.listening:.2f} s")
    print(f"serve -> first image          {to_first_image:.2f} s (first prompt's own wall {first:.2f} s)")
    print(f"second prompt (warm)          {second:.2f} s; loaded: first={loads[0] if loads else '?'!r}, "
          f"second={loads[1] if len(loads) > 1 else '?'!r}")
    print(f"nodegraph run (fresh process) {cli:.2f} s")
    print(f"{n} prompts via server        {served:.2f} s ({served / n * 1000:.1f} ms each)")
    print(f"{n} graphs via Engine.run     {local:.2f} s ({local / n * 1000:.1f} ms each)")
    print(f"server overhead per prompt    {(served - local) / n * 1000:.1f} ms (target <= 10 ms)")
    print(f"10 prompts one at a time      server {one_by_one / 10 * 1000:.1f} ms each, Engine.run "
          f"{local_singles / 10 * 1000:.1f} ms each: {(one_by_one - local_singles) / 10 * 1000:.1f} ms overhead")


if __name__ == "__main__":
    main()
