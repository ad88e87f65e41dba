"""Server overhead and warm-model latency, on the built-in tiny model (CPU is fine).

1. Per-prompt server overhead: prompts whose text encodings are cached (only the seed changes), posted back to
   back over one HTTP connection while one websocket waits for each "done" message, in rounds (default 10 x 5)
   that alternate with the same number of Engine.run calls in this process (same Engine settings, path policy
   and embedded workflow; the prompt's translation is timed on both sides). Overhead = the median over rounds
   of (server - in-process) per prompt; then the same for single prompts (post, wait for done), alternating.
   Also in CPU time (the server process's, all threads, against this process's during Engine.run): on a
   shared, loaded machine wall times swing by more than the overhead, CPU time much less. Linux only
   (/proc); the clock tick (10 ms) makes single-prompt CPU figures coarse.
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
import statistics
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
    from nodegraph.comfy import graph_to_comfy
    from nodegraph.node import REGISTRY
    from nodegraph.workflow import load_workflow

    out = graph_to_comfy(load_workflow(ROOT / "workflows/demo_tiny.json"), REGISTRY)
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

    def cpu(self) -> float:
        """CPU seconds the server process has used (all threads): on a loaded machine wall time mostly
        measures the other processes; CPU time measures ours."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Client:
    """One websocket and one HTTP connection for a whole measurement, as a real front end keeps them."""

    def __init__(self, url: str):
        self.url = url

    async def __aenter__(self) -> Client:
        import httpx
        import websockets

        self._ws_cm = websockets.connect(self.url.replace("http", "ws") + "/ws?clientId=bench", max_size=None)
        self.ws = await self._ws_cm.__aenter__()
        await self.ws.recv()  # the first status message
        self.http = httpx.AsyncClient(base_url=self.url, timeout=600)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._ws_cm.__aexit__(None, None, None)

    async def run(self, prompts: list[dict[str, Any]]) -> float:
        """Post all prompts back to back, then wait until the last one's done message; wall seconds."""
        t0 = time.perf_counter()
        ids = []
        for p in prompts:
            r = await self.http.post("/prompt", json={"prompt": p, "client_id": "bench"})
            r.raise_for_status()
            ids.append(r.json()["prompt_id"])
        remaining = set(ids)
        while remaining:
            msg = await self.ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "execution_error":
                    raise SystemExit(f"prompt failed: {m['data']}")
                if m["type"] == "executing" and m["data"]["node"] is None:
                    remaining.discard(m["data"]["prompt_id"])
        return time.perf_counter() - t0


async def run_prompts(url: str, prompts: list[dict[str, Any]]) -> float:
    async with Client(url) as client:
        return await client.run(prompts)


class InProcess:
    """Engine.run in this process with the server's Engine settings and run arguments (path policy, embedded
    workflow); the timed work includes translating the prompt, which the server also does per prompt."""

    def __init__(self, root: Path):
        from nodegraph.node import REGISTRY
        from nodegraph.server.queue import make_engine
        from nodegraph.settings import EngineSettings

        # the server's settings (nodegraph/server/cli.py) but its own caches: nothing it computes is reused here
        self.settings = EngineSettings.from_env(cache_dir=root / "cache2", state_dir=root / "cache",
                                                output_dir=root / "output2", input_dir=root / "input")
        self.registry = REGISTRY
        self.engine = make_engine(self.settings, REGISTRY)

    def run(self, prompts: list[dict[str, Any]]) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process)."""
        from nodegraph.server.queue import http_policy
        from nodegraph.server.translate import graph_from_prompt

        t0, c0 = time.perf_counter(), time.process_time()
        for p in prompts:
            graph = graph_from_prompt(p, self.registry)
            self.engine.run(graph, policy=http_policy(self.settings), workflow_json=json.dumps(graph.to_dict()))
        return time.perf_counter() - t0, time.process_time() - c0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


async def overhead(server: Server, local: InProcess, rounds: int, batch: int, singles: int,
                   steps: int) -> dict[str, list[float]]:
    """Alternate: a batch of prompts back to back via the server, then the same number in-process; then single
    prompts (post, wait for done) alternating with single Engine.run calls. Per-prompt milliseconds, wall and
    CPU (the server process's CPU against this process's while it runs the engine)."""
    seed = iter(range(1000, 1_000_000))
    out: dict[str, list[float]] = {k: [] for k in ("served", "local", "served1", "local1",
                                                   "served_cpu", "local_cpu", "served1_cpu", "local1_cpu")}

    async def served(n: int, key: str) -> None:
        c0 = server.cpu()
        out[key].append(await client.run([api_prompt(next(seed), steps) for _ in range(n)]) / n)
        out[key + "_cpu"].append((server.cpu() - c0) / n)

    def in_process(n: int, key: str) -> None:
        wall, cpu = local.run([api_prompt(next(seed), steps) for _ in range(n)])
        out[key].append(wall / n)
        out[key + "_cpu"].append(cpu / n)

    async with Client(server.url) as client:
        local.run([api_prompt(next(seed), steps)])  # warm the in-process engine: models and encodings
        for _ in range(rounds):
            await served(batch, "served")
            in_process(batch, "local")
        for _ in range(singles):
            await served(1, "served1")
            in_process(1, "local1")
    return {k: [x * 1000 for x in v] for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=50, help="prompts each way, back to back, in rounds")
    parser.add_argument("--batch", type=int, default=5, help="prompts per round")
    parser.add_argument("--singles", type=int, default=10, help="one-at-a-time prompts each way")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--skip-cold", action="store_true", help="skip the serve/run to first image part")
    args = parser.parse_args()
    rounds = max(1, args.prompts // args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from nodes.tiny import BUILD_VERSION, make_tiny_model

        # the built-in model exists before anything is timed (server and CLI then both load it from disk)
        make_tiny_model(root / "cache" / "models" / f"tiny-sdxl-inpaint-v{BUILD_VERSION}", in_channels=9)
        # part 2 first: a cold server
        s = Server(root)
        first = asyncio.run(run_prompts(s.url, [api_prompt(1, args.steps)]))
        to_first_image = time.perf_counter() - s.started
        second = asyncio.run(run_prompts(s.url, [api_prompt(2, args.steps)]))
        # part 1 on the same warm server: encodings cached, only the seed changes
        local = InProcess(root)
        ms = asyncio.run(overhead(s, local, rounds, args.batch, args.singles, args.steps))
        s.stop()
        log = s.log.read_text()
        loads = [line.rsplit("loaded: ", 1)[-1].rstrip(")") for line in log.splitlines() if "loaded: " in line]

        cli = None
        if not args.skip_cold:
            wf = root / "cli.json"  # the same graph as a native workflow file (the CLI reads our class_types only)
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

    n = rounds * args.batch
    diffs = [a - b for a, b in zip(ms["served"], ms["local"], strict=True)]
    diffs1 = [a - b for a, b in zip(ms["served1"], ms["local1"], strict=True)]
    print(f"load average                  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"server listening after        {s.listening:.2f} s")
    print(f"serve -> first image          {to_first_image:.2f} s (first prompt's own wall {first:.2f} s)")
    print(f"second prompt (warm)          {second:.2f} s; loaded: first={loads[0] if loads else '?'!r}, "
          f"second={loads[1] if len(loads) > 1 else '?'!r}")
    if cli is not None:
        print(f"nodegraph run (fresh process) {cli:.2f} s")
    print(f"{n} prompts via server        median {median(ms['served']):.1f} ms each "
          f"(rounds of {args.batch}, back to back, one websocket)")
    print(f"{n} graphs via Engine.run     median {median(ms['local']):.1f} ms each (alternating rounds)")
    print(f"server overhead per prompt    {median(diffs):.1f} ms median of {len(diffs)} paired rounds, "
          f"{median(ms['served']) - median(ms['local']):.1f} ms between the medians (target <= 10 ms)")
    print(f"  per round (ms)              {', '.join(f'{d:.1f}' for d in diffs)}")
    cpu = [a - b for a, b in zip(ms["served_cpu"], ms["local_cpu"], strict=True)]
    cpu1 = [a - b for a, b in zip(ms["served1_cpu"], ms["local1_cpu"], strict=True)]
    print(f"CPU per prompt, back to back  server process {median(ms['served_cpu']):.1f} ms, Engine.run "
          f"{median(ms['local_cpu']):.1f} ms: {median(cpu):.1f} ms overhead (median of paired rounds)")
    print(f"CPU per prompt, one at a time server process {median(ms['served1_cpu']):.1f} ms, Engine.run "
          f"{median(ms['local1_cpu']):.1f} ms: {median(cpu1):.1f} ms overhead (median of pairs)")
    print(f"{args.singles} prompts one at a time      server median {median(ms['served1']):.1f} ms, Engine.run "
          f"median {median(ms['local1']):.1f} ms: {median(diffs1):.1f} ms overhead (median of pairs)")


if __name__ == "__main__":
    main()
