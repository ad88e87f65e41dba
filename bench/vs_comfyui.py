"""nodegraph against ComfyUI on the same job: per-step time, first image time and warm rerun time.

The job is one ComfyUI API workflow (CheckpointLoaderSimple -> CLIPTextEncode x2 -> LoadImage (alpha mask) ->
InpaintModelConditioning -> KSampler euler/normal -> VAEDecode -> SaveImage), run as it is by ComfyUI (its
server in a subprocess, driven over HTTP and its websocket on 127.0.0.1) and by nodegraph (the same JSON
through nodegraph's ComfyUI import, in a subprocess). The checkpoint is one original-layout .safetensors
file with the full-size SDXL inpainting architecture and random weights (`--model DIR` from
`nodegraph make-tiny-model DIR --full-size`, written as one file by tests/original_layout.py).

Engines run one after the other, alternating round by round, and medians are reported:
- per step: median time between consecutive sampler progress events (steps 2..N: step 1 also pays set-up),
  in the warm rerun and, separately, in the first run (ComfyUI's first run is slower per step);
- first image: from launching the process (ComfyUI: its server) to the saved image;
- warm rerun: the same workflow with the seed changed, in the same process / server.
By default nodegraph runs twice per round: dtype float32 (ComfyUI's CPU precision for UNet and VAE) and
dtype auto; `--engines server,comfy` instead runs `nodegraph serve` (dtype auto, results cache off) driven
by the same HTTP + websocket client as ComfyUI. With both float32 and auto, the first images of the two
precisions (same seed) are compared.

ComfyUI is never installed or imported by this project: pass a checkout (--comfy-dir) and the python of a
venv that has its requirements (--python).

Run: python bench/vs_comfyui.py --comfy-dir /work/comfy --python /work/comfy-venv/bin/python \\
         --model /work/perf-models/full [--size 256 --steps 4 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CKPT = "sdxl_inpaint_full.safetensors"
IMAGE = "bench_image_alpha.png"


def workflow(size: int, steps: int, seed: int, ckpt: str, image: str) -> dict[str, Any]:
    del size  # the image file has the size
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image, "upload": "image"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple on a wooden table", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "20": {"class_type": "InpaintModelConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0],
                          "mask": ["10", 1], "noise_mask": True}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0, "model": ["4", 0], "positive": ["20", 0], "negative": ["20", 1],
                         "latent_image": ["20", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
    }


def step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]


# --- nodegraph child ----------------------------------------------------------------------------------

def nodegraph_child(args: argparse.Namespace) -> None:
    """Inside the child: run the workflow twice (seed, seed + 1) and print the timings as one JSON line."""
    from nodegraph import Engine
    from nodegraph.events import NodeProgress
    from nodegraph.settings import EngineSettings
    from nodegraph.workflow import graph_from_data

    class Stamps:
        def __init__(self) -> None:
            self.progress: list[float] = []

        def on_event(self, event: object) -> None:
            if isinstance(event, NodeProgress) and event.node_id == "3":
                self.progress.append(time.time())

    settings = EngineSettings(state_dir=Path(args.state_dir), output_dir=Path(args.out))
    engine = Engine(settings)
    report: dict[str, Any] = {}
    for run, seed in (("first", 1), ("rerun", 2)):
        graph = graph_from_data(workflow(args.size, args.steps, seed, args.ckpt, args.image))
        graph.set_input("4", "dtype", args.dtype)
        stamps = Stamps()
        start = time.time()
        result = engine.run(graph, listener=stamps)
        assert result.ok, result.report()
        report[run] = {"end": time.time(), "seconds": time.time() - start, "steps": step_times(stamps.progress)}
        if run == "first":  # the decoded image, to compare the precisions' outputs (same seed) afterwards
            import numpy as np

            np.save(Path(args.out) / f"nodegraph_{args.dtype}.npy", result["8"]["image"].float().numpy())
    print("RESULT " + json.dumps(report), flush=True)


def run_nodegraph(args: argparse.Namespace, dtype: str, work: Path) -> dict[str, Any]:
    launch = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dtype", dtype, "--size", str(args.size),
           "--steps", str(args.steps), "--ckpt", str(work / "models" / "checkpoints" / CKPT),
           "--image", str(work / "input" / IMAGE), "--state-dir", str(work / "ng-state"), "--out", str(work / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"nodegraph child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(line[len("RESULT "):])
    return {"first_image_s": data["first"]["end"] - launch, "rerun_s": data["rerun"]["seconds"],
            "steps_first": data["first"]["steps"], "steps": data["rerun"]["steps"]}


# --- ComfyUI server -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def comfy_prompt(port: int, ws: Any, client_id: str, graph: dict[str, Any]) -> tuple[float, list[float]]:
    """Queue one prompt; (seconds until it finished, progress timestamps of the KSampler)."""
    body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
    start = time.time()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/prompt", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        prompt_id = json.loads(resp.read())["prompt_id"]
    stamps: list[float] = []
    while True:
        msg = ws.recv()
        if isinstance(msg, bytes):  # previews
            continue
        data = json.loads(msg)
        kind, body_ = data.get("type"), data.get("data", {})
        if body_.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "progress" and body_.get("node") == "3":
            stamps.append(time.time())
        elif kind == "execution_error":
            raise RuntimeError(f"ComfyUI failed: {body_.get('exception_message')}")
        elif kind == "executing" and body_.get("node") is None:
            return time.time() - start, stamps
        elif kind == "execution_success":
            return time.time() - start, stamps


def run_server(args: argparse.Namespace, work: Path, engine: str) -> dict[str, Any]:
    """Start a server (ComfyUI's, or ``nodegraph serve``: it speaks the same protocol), queue the job and
    its seed-changed rerun over HTTP, follow the progress on the websocket, stop the server."""
    from websockets.sync.client import connect

    port, client_id = free_port(), uuid.uuid4().hex
    launch = time.time()
    log = open(work / f"{engine}.log", "a")  # noqa: SIM115 - closed below, after the server stops
    if engine == "comfy":
        cmd = [args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--base-directory", str(work), "--output-directory", str(work / "out"), "--dont-print-server"]
        cwd, env = args.comfy_dir, None
    else:  # nodegraph's server with what a user gets by default (dtype auto), its state beside the bench's runs
        # The checkpoint may be a link out of the models folder: its real folder is readable too.
        real = (work / "models" / "checkpoints" / CKPT).resolve().parent
        cmd = [sys.executable, "-m", "nodegraph", "serve", "--port", str(port), "--models-dir", str(work / "models"),
               "--models-dir", str(real), "--input-dir", str(work / "input"), "--output-dir", str(work / "out"),
               "--cache-dir", str(work / "ng-state"), "--no-cache"]  # results of earlier rounds would be reused
        cwd, env = str(ROOT), {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ws = None
        while ws is None:
            if server.poll() is not None:
                raise RuntimeError(f"{engine} exited ({server.returncode}); see {work / f'{engine}.log'}")
            try:
                ws = connect(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", max_size=None)
            except OSError:
                time.sleep(0.2)
        with ws:
            _, first_steps = comfy_prompt(port, ws, client_id, workflow(args.size, args.steps, 1, CKPT, IMAGE))
            first_image = time.time() - launch
            rerun, rerun_steps = comfy_prompt(port, ws, client_id, workflow(args.size, args.steps, 2, CKPT, IMAGE))
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    return {"first_image_s": first_image, "rerun_s": rerun, "steps_first": step_times(first_steps),
            "steps": step_times(rerun_steps)}


# --- the comparison -----------------------------------------------------------------------------------

def prepare(args: argparse.Namespace, work: Path) -> None:
    """ComfyUI's folder layout (models/checkpoints, input) holding the checkpoint file and the image."""
    from PIL import Image

    (work / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (work / "input").mkdir(exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    (work / "custom_nodes").mkdir(exist_ok=True)  # ComfyUI lists it at start
    ckpt = work / "models" / "checkpoints" / CKPT
    if not ckpt.exists():
        if args.single_file:
            ckpt.symlink_to(Path(args.single_file).resolve())
        else:
            sys.path.insert(0, str(ROOT))
            from tests.original_layout import write_original_layout

            write_original_layout(Path(args.model), ckpt)
    rgba = Image.open(ROOT / "workflows" / "demo_image_alpha.png").convert("RGBA")
    rgba.resize((args.size, args.size)).save(work / "input" / IMAGE)


def compare_images(out: Path, dtypes: list[str]) -> dict[str, dict[str, float]]:
    """Each nodegraph precision's first image (seed 1) against dtype=float32's: max and mean abs difference
    in 0..1 pixels."""
    import numpy as np

    if "float32" not in dtypes:
        return {}
    reference = np.load(out / "nodegraph_float32.npy")
    found = {}
    for dtype in dtypes:
        if dtype != "float32":
            diff = np.abs(np.load(out / f"nodegraph_{dtype}.npy") - reference)
            found[dtype] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
            print(f"image of dtype={dtype} vs float32 (seed 1): max abs {diff.max():.4f}, mean abs {diff.mean():.5f}")
    return found


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfy-dir", help="a ComfyUI checkout (main.py)")
    p.add_argument("--python", help="python of a venv with ComfyUI's requirements (default: this python)")
    p.add_argument("--model", help="full-size diffusers folder from `nodegraph make-tiny-model DIR --full-size`")
    p.add_argument("--single-file", help="an original-layout .safetensors already written from --model")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engines", default="comfy,float32,auto",
                   help="which to run, in round order: comfy, float32, auto (nodegraph in a process), "
                        "server (nodegraph serve, dtype auto)")
    p.add_argument("--work", help="folder for the job (default: a new temp folder)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip nodegraph's uncounted first run (the --work folder already holds its conversion)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--dtype", "--ckpt", "--image", "--state-dir", "--out"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        nodegraph_child(args)
        return
    if not args.comfy_dir or not (args.model or args.single_file):
        p.error("--comfy-dir and --model (or --single-file) are required")
    args.python = args.python or sys.executable
    work = Path(args.work or tempfile.mkdtemp(prefix="vs_comfyui."))
    prepare(args, work)
    engines = args.engines.split(",")
    if any(e not in ("comfy", "server") for e in engines) and not args.no_warmup:  # one-time single-file conversion and fingerprint, not counted
        t = time.time()
        run_nodegraph(args, "float32", work)
        print(f"nodegraph preparation run (single-file conversion kept in its state dir): {time.time() - t:.1f} s",
              flush=True)
    results: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for r in range(args.rounds):
        order = engines if r % 2 == 0 else engines[::-1]
        for e in order:
            res = run_server(args, work, e) if e in ("comfy", "server") else run_nodegraph(args, e, work)
            results[e].append(res)
            print(f"round {r + 1} {e}: warm step {median(res['steps']):.3f} s, first-run step "
                  f"{median(res['steps_first']):.3f} s, first image {res['first_image_s']:.1f} s, warm rerun "
                  f"{res['rerun_s']:.1f} s", flush=True)
    summary = {e: {"step_s": median([s for res in rs for s in res["steps"]]),
                   "first_run_step_s": median([s for res in rs for s in res["steps_first"]]),
                   "first_image_s": median([res["first_image_s"] for res in rs]),
                   "rerun_s": median([res["rerun_s"] for res in rs])} for e, rs in results.items()}
    print(f"\n{args.size}x{args.size}, {args.steps} steps, euler, CFG 7; medians over {args.rounds} rounds")
    print(f"{'engine':<24}{'warm step':>10}{'first-run step':>16}{'first image':>13}{'warm rerun':>12}")
    for e, s in summary.items():
        name = {"comfy": "ComfyUI (--cpu)", "server": "nodegraph serve (auto)"}.get(e, f"nodegraph dtype={e}")
        print(f"{name:<24}{s['step_s']:>9.3f}s{s['first_run_step_s']:>15.3f}s{s['first_image_s']:>12.1f}s"
              f"{s['rerun_s']:>11.1f}s")
    if "comfy" in summary:
        base = summary["comfy"]
        for e, s in summary.items():
            if e != "comfy":
                print(f"ratio nodegraph {e} / ComfyUI: warm step {s['step_s'] / base['step_s']:.2f}, first-run step "
                      f"{s['first_run_step_s'] / base['first_run_step_s']:.2f}, first image "
                      f"{s['first_image_s'] / base['first_image_s']:.2f}, warm rerun "
                      f"{s['rerun_s'] / base['rerun_s']:.2f}")
    quality = compare_images(work / "out", [e for e in engines if e not in ("comfy", "server")])
    (work / "summary.json").write_text(json.dumps({"summary": summary, "rounds": results, "quality": quality},
                                                  indent=1))
    print(f"details: {work / 'summary.json'}")


if __name__ == "__main__":
    main()
