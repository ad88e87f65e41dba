"""The server over real loopback sockets: `python3 -m nodegraph serve` in a subprocess, driven by httpx and
websockets (and one real ComfyUI API client from PyPI)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
pytest.importorskip("aiohttp")
from websockets.exceptions import InvalidStatus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMFY_PROMPT = json.loads((ROOT / "tests/comfy/inpaint_api.json").read_text())
COMFY_PROMPT["10"]["inputs"]["image"] = "demo_image_alpha.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """One `nodegraph serve` process with its own folders; ``stop()`` sends SIGTERM like a service manager."""

    def __init__(self, root: Path, models: Path | None, *extra: str, port: int | None = None,
                 preload: tuple[str, ...] = ()):
        self.root = root
        self.port = port or free_port()
        self.input, self.output, self.cache = root / "input", root / "output", root / "cache"
        for d in (self.input, self.output, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        if models is not None and not (self.cache / "models").exists():
            (self.cache / "models").symlink_to(models)
        for name in ("demo_image_alpha.png", "demo_image.png", "demo_mask.png"):
            if not (self.input / name).exists():
                (self.input / name).write_bytes((ROOT / "workflows" / name).read_bytes())
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NODEGRAPH_CACHE_DIR=str(self.cache))
        self.started = time.perf_counter()
        args = ["serve", "--port", str(self.port), "--input-dir", str(self.input), "--output-dir", str(self.output),
                "--cache-dir", str(self.cache), *extra]
        # preload: extra node modules for this server (test nodes), imported before the CLI runs
        command = [sys.executable, "-c", f"import {', '.join(preload)}; from nodegraph.cli import main; "
                   f"raise SystemExit(main({args!r}))"] if preload else [sys.executable, "-m", "nodegraph", *args]
        self.proc = subprocess.Popen(command,
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.ready_seconds = self._wait()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def _wait(self) -> float:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not listen within 20 s")

    def log(self) -> str:
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def post(self, path: str, **kw: Any) -> Any:
        return httpx.post(self.url + path, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return httpx.get(self.url + path, timeout=30, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory, builtin_models_dir) -> Iterator[Served]:
    # with the toy nodes and a node that makes previews, besides the installed node packages
    s = Served(tmp_path_factory.mktemp("served"), builtin_models_dir,
               preload=("tests.toy_nodes", "tests.test_server_nodes"))
    yield s
    assert s.stop() == 0


async def collect(ws: Any, prompt_id: str, timeout: float = 120) -> list[Any]:
    """Frames until this prompt's `executing` with node null (JSON parsed; binary frames as bytes)."""
    frames: list[Any] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(raw, bytes):
            frames.append(raw)
            continue
        msg = json.loads(raw)
        frames.append(msg)
        data = msg.get("data", {})
        if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return frames


def run_prompt(server: Served, body: dict[str, Any], client_id: str = "tester") -> tuple[str, list[Any]]:
    async def go() -> tuple[str, list[Any]]:
        async with websockets.connect(f"{server.ws_url}?clientId={client_id}") as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "status" and first["data"]["sid"] == client_id
            r = server.post("/prompt", json={**body, "client_id": client_id})
            assert r.status_code == 200, r.text
            pid = r.json()["prompt_id"]
            return pid, await collect(ws, pid)

    return asyncio.run(go())


def of(frames: list[Any], prompt_id: str) -> list[Any]:
    return [f for f in frames if isinstance(f, dict) and f["data"].get("prompt_id") == prompt_id]


def native_api_prompt() -> dict[str, Any]:
    """workflows/demo_tiny.json in API format with our own class_types (bare names where ComfyUI does not
    own them, as a client may write them), outputs by index."""
    from nodegraph.comfy import graph_to_comfy
    from nodegraph.node import REGISTRY
    from nodegraph.server.translate import native_name
    from nodegraph.workflow import load_workflow

    graph = load_workflow(ROOT / "workflows/demo_tiny.json")
    out = graph_to_comfy(graph, REGISTRY)
    for node_id, entry in out.items():
        entry["class_type"] = native_name(graph.nodes[node_id].type, REGISTRY)
        entry.pop("_meta", None)
    out["image"]["inputs"]["path"] = "demo_image.png"
    out["mask"]["inputs"]["path"] = "demo_mask.png"
    out["sample"]["inputs"]["steps"] = 2
    return out


def pixels(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").tobytes()


# ---- start-up and the websocket ------------------------------------------------------------------
def test_listens_within_3_seconds_and_greets_with_status(server):
    assert server.ready_seconds < 3.0

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with websockets.connect(f"{server.ws_url}?clientId=greet") as ws:
            # the client offers permessage-deflate; the server declines (zlib per frame cost more than it saved)
            assert ws.protocol.extensions == []
            first = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": False}}))
            second = json.loads(await ws.recv())
            return first, second

    first, second = asyncio.run(go())
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "greet"}}
    assert list(first["data"]) == ["status", "sid"]
    assert second["type"] == "feature_flags" and "max_upload_size" in second["data"]


def test_every_route_answers_under_api_prefix_too(server):
    for path in ("/prompt", "/queue", "/history", "/jobs", "/object_info", "/system_stats", "/embeddings",
                 "/extensions", "/features"):
        a, b = server.get(path), server.get("/api" + path)
        assert a.status_code == b.status_code == 200, path
    assert server.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert server.get("/embeddings").json() == []
    stats = server.get("/system_stats").json()
    assert set(stats) == {"system", "devices"} and "python_version" in stats["system"]


def test_object_info_has_comfyuis_shape_with_the_servers_files(server):
    info = server.get("/object_info").json()
    fields = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
              "description", "python_module", "category", "output_node"}
    sample = info["nodegraph.Sample"]  # native nodes under the nodegraph. prefix
    assert fields <= set(sample)
    assert sample["input_order"]["required"] == ["unet", "positive", "latent"]
    assert sample["input"]["optional"]["steps"][0] == "INT" and sample["input"]["optional"]["steps"][1]["min"] == 1
    assert sample["output"] == ["LATENT"] and sample["output_node"] is False
    assert info["nodegraph.SaveImage"]["output_node"] is True
    # mapped ComfyUI class_types with ComfyUI's inputs; combos list what this server has
    ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "builtin:tiny-sdxl-inpaint" in ckpts
    image, options = info["LoadImage"]["input"]["required"]["image"]
    assert "demo_image_alpha.png" in image and options.get("image_upload") is True
    one = server.get("/api/object_info/KSampler").json()
    assert set(one) == {"KSampler"} and fields <= set(one["KSampler"])
    assert server.get("/object_info/NoSuchNode").json() == {}


# ---- running prompts -----------------------------------------------------------------------------
@pytest.mark.slow
def test_comfyui_prompt_message_sequence_and_view_matches_cli(server, tmp_path):
    editor_graph = {"nodes": [], "links": [], "version": 0.4}
    pid, frames = run_prompt(server, {"prompt": COMFY_PROMPT, "extra_data": {"extra_pnginfo": {"workflow": editor_graph}}})
    msgs = of(frames, pid)
    kinds = [m["type"] for m in msgs]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    assert kinds[-2:] == ["execution_success", "executing"]
    executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
    assert executing[-1] is None and set(executing[:-1]) <= set(COMFY_PROMPT)  # ComfyUI's ids, never ours
    assert "3" in executing and "9" in executing
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    assert progress and all(p["node"] == "3" and p["max"] == 4 for p in progress)
    assert progress[-1]["value"] == 4
    assert kinds.index("progress") > kinds.index("execution_start")
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "9" and executed[0]["display_node"] == "9"
    (image,) = executed[0]["output"]["images"]
    assert set(image) == {"filename", "subfolder", "type"} and image["type"] == "output"
    assert not any(isinstance(f, bytes) for f in frames)  # no previews unless asked for
    # the history entry exists by the time the done message arrives
    history = server.get(f"/history/{pid}").json()[pid]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert history["outputs"] == {"9": {"images": [image]}}
    assert history["prompt"][1] == pid and history["prompt"][2] == COMFY_PROMPT
    served = server.get("/view", params=image)
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    # ComfyUI's chunks (its editor restores the graph from "workflow") beside our own native graph
    import io

    from PIL import Image

    text = Image.open(io.BytesIO(served.content)).text  # type: ignore[attr-defined]
    assert json.loads(text["prompt"]) == COMFY_PROMPT and json.loads(text["workflow"]) == editor_graph
    assert json.loads(text["nodegraph_workflow"])["nodes"]
    # the CLI on the same workflow writes the same pixels
    prompt = json.loads(json.dumps(COMFY_PROMPT))
    prompt["10"]["inputs"]["image"] = str(server.input / "demo_image_alpha.png")
    (tmp_path / "p.json").write_text(json.dumps(prompt))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NODEGRAPH_CACHE_DIR=str(server.cache))
    subprocess.run([sys.executable, "-m", "nodegraph", "run", str(tmp_path / "p.json"), "--quiet", "--output-dir",
                    str(tmp_path / "out"), "--no-cache"], cwd=ROOT, env=env, check=True, timeout=300)
    (cli_file,) = (tmp_path / "out").glob("*.png")
    assert pixels(cli_file.read_bytes()) == pixels(served.content)


@pytest.mark.slow
def test_native_class_types_and_native_workflow_are_accepted(server):
    pid, frames = run_prompt(server, {"prompt": native_api_prompt()})
    msgs = of(frames, pid)
    assert msgs[-2]["type"] == "execution_success"
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    assert [e["node"] for e in executed] == ["save"]
    assert executed[0]["output"]["images"][0]["filename"].startswith("demo")
    # the same graph as a native v1 workflow
    workflow = json.loads((ROOT / "workflows/demo_tiny.json").read_text())
    workflow["nodes"]["image"]["inputs"]["path"] = "demo_image.png"
    workflow["nodes"]["mask"]["inputs"]["path"] = "demo_mask.png"
    workflow["nodes"]["sample"]["inputs"]["steps"] = 2
    pid2, frames2 = run_prompt(server, {"workflow": workflow})
    assert of(frames2, pid2)[-2]["type"] == "execution_success"


@pytest.mark.slow
def test_twenty_prompts_queued_at_once_complete_in_submission_order(server):
    prompt = native_api_prompt()
    prompt["sample"]["inputs"]["steps"] = 2

    async def go() -> tuple[list[str], list[Any]]:
        async with websockets.connect(f"{server.ws_url}?clientId=many") as ws:
            await ws.recv()
            ids = []
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                for seed in range(20):
                    p = json.loads(json.dumps(prompt))
                    p["sample"]["inputs"]["seed"] = 1000 + seed
                    r = await client.post("/prompt", json={"prompt": p, "client_id": "many"})
                    assert r.status_code == 200
                    ids.append(r.json()["prompt_id"])
            frames = []
            for pid in ids:
                frames += await collect(ws, pid, timeout=300)
            return ids, frames

    ids, frames = asyncio.run(go())
    starts = [f["data"]["prompt_id"] for f in frames if isinstance(f, dict) and f["type"] == "execution_start"]
    successes = [f["data"]["prompt_id"] for f in frames if isinstance(f, dict) and f["type"] == "execution_success"]
    assert starts == ids and successes == ids
    history = server.get("/history").json()
    assert all(history[i]["status"]["status_str"] == "success" for i in ids)
    jobs = server.get("/jobs", params={"status": "completed", "limit": 5}).json()
    assert len(jobs["jobs"]) == 5 and jobs["pagination"]["has_more"] is True
    assert all(j["status"] == "completed" and j["outputs_count"] == 1 for j in jobs["jobs"])
    job = server.get(f"/jobs/{ids[0]}").json()
    assert job["id"] == ids[0] and job["execution_end_time"] >= job["execution_start_time"] >= job["create_time"] - 1


@pytest.mark.slow
def test_interrupt_stops_a_long_prompt_between_steps(server):
    prompt = native_api_prompt()
    prompt["sample"]["inputs"]["steps"] = 400
    prompt["sample"]["inputs"]["seed"] = 7

    async def go() -> tuple[str, list[Any]]:
        async with websockets.connect(f"{server.ws_url}?clientId=stopper") as ws:
            await ws.recv()
            pid = server.post("/prompt", json={"prompt": prompt, "client_id": "stopper"}).json()["prompt_id"]
            frames = []
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
                frames.append(msg)
                if msg["type"] == "progress" and msg["data"]["value"] >= 2:
                    break
            assert server.post("/interrupt", json={"prompt_id": pid}).status_code == 200
            return pid, frames + await collect(ws, pid)

    pid, frames = asyncio.run(go())
    msgs = of(frames, pid)
    kinds = [m["type"] for m in msgs]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds
    interrupted = next(m["data"] for m in msgs if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "sample" and "checkpoint" in interrupted["executed"]
    assert max(m["data"]["value"] for m in msgs if m["type"] == "progress") < 400
    assert server.get(f"/jobs/{pid}").json()["status"] == "cancelled"


# ---- the queue -------------------------------------------------------------------------------------
def test_validation_error_has_comfyui_shape_lists_every_problem_and_queues_nothing(server):
    before = server.get("/history").json()
    prompt = json.loads(json.dumps(COMFY_PROMPT))
    del prompt["3"]["inputs"]["seed"]  # missing input
    prompt["3"]["inputs"]["steps"] = "many"  # wrong type
    prompt["8"]["inputs"]["samples"] = ["99", 0]  # link to nothing
    prompt["11"] = {"class_type": "NoSuchNode", "inputs": {}}
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert set(body["node_errors"]) >= {"8", "11"}
    for entry in body["node_errors"].values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        for e in entry["errors"]:
            assert set(e) == {"type", "message", "details", "extra_info"} and e["message"]
    link = body["node_errors"]["8"]["errors"][0]
    assert link["extra_info"]["input_name"] == "samples" and body["node_errors"]["8"]["class_type"] == "VAEDecode"
    # the importer stops at the first stage; a prompt that imports reports every validation problem at once
    prompt = json.loads(json.dumps(COMFY_PROMPT))
    prompt["3"]["inputs"]["steps"] = "many"
    prompt["3"]["inputs"]["cfg"] = "high"
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400
    inputs = sorted(e["extra_info"].get("input_name") for e in r.json()["node_errors"]["3"]["errors"])
    assert len(inputs) == 2, r.json()
    assert server.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert server.get("/history").json() == before
    r = server.post("/prompt", json={})
    assert r.status_code == 400 and r.json()["node_errors"] == {}


def test_queue_delete_clear_and_history_delete(server):
    prompt = native_api_prompt()
    prompt["sample"]["inputs"].update(steps=500, seed=4242)
    ids = [server.post("/prompt", json={"prompt": prompt, "number": 1000 + n}).json()["prompt_id"] for n in range(3)]
    queue = server.get("/queue").json()
    listed = [item[1] for item in queue["queue_running"] + queue["queue_pending"]]
    assert listed == ids and all(len(item) == 5 for item in queue["queue_running"] + queue["queue_pending"])
    assert server.post("/queue", json={"delete": [ids[2]]}).status_code == 200
    assert ids[2] not in [i[1] for i in server.get("/queue").json()["queue_pending"]]
    assert server.post("/queue", json={"clear": True}).status_code == 200
    assert server.get("/queue").json()["queue_pending"] == []
    assert server.get(f"/jobs/{ids[2]}").json()["status"] == "cancelled"
    deadline = time.monotonic() + 120
    while not server.get("/queue").json()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.1)  # ids[0] may still wait for the node packages to load
    server.post("/interrupt", json={})
    while server.get("/prompt").json()["exec_info"]["queue_remaining"] and time.monotonic() < deadline:
        time.sleep(0.1)
    history = server.get("/history").json()
    assert ids[0] in history and ids[1] not in history and ids[2] not in history  # cancelled ones have no entry
    assert history[ids[0]]["status"]["status_str"] == "error"  # ComfyUI reports an interrupt as an error
    assert server.post("/history", json={"delete": [ids[0]]}).status_code == 200
    assert ids[0] not in server.get("/history").json() and server.get(f"/history/{ids[0]}").json() == {}


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_restart_runs_pending_prompts_and_keeps_history(tmp_path, builtin_models_dir, stop_signal):
    s = Served(tmp_path, builtin_models_dir)
    prompt = native_api_prompt()
    prompt["sample"]["inputs"]["steps"] = 2
    first = run_prompt(s, {"prompt": prompt})[0]
    long = json.loads(json.dumps(prompt))
    long["sample"]["inputs"]["steps"] = 16
    running = s.post("/prompt", json={"prompt": long}).json()["prompt_id"]
    later = [s.post("/prompt", json={"prompt": {**prompt, "sample": {**prompt["sample"], "inputs": {
        **prompt["sample"]["inputs"], "seed": 5 + i}}}}).json()["prompt_id"] for i in range(2)]
    deadline = time.monotonic() + 60
    while not s.get("/queue").json()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s.stop(stop_signal) == 0  # the running prompt is interrupted and goes back to pending
    s2 = Served(tmp_path, None, port=free_port())
    try:
        queued = s2.get("/queue").json()
        # the interrupted prompt went back to pending and runs first again, then the ones behind it
        assert [i[1] for i in queued["queue_running"] + queued["queue_pending"]] == [running, *later]
        deadline = time.monotonic() + 120
        while s2.get("/prompt").json()["exec_info"]["queue_remaining"] and time.monotonic() < deadline:
            time.sleep(0.2)
        history = s2.get("/history").json()
        assert history[first]["status"]["status_str"] == "success"  # survived the restart
        assert all(history[i]["status"]["status_str"] == "success" for i in [running, *later])
        assert [m[0] for m in history[running]["status"]["messages"]][-1] == "execution_success"
    finally:
        assert s2.stop() == 0


@pytest.mark.slow
def test_model_names_picked_from_object_info_run_from_the_models_directory(tmp_path, tiny_models):
    """ComfyUI's layout: <models>/checkpoints/..., loras/, vae/ ...; the editor offers names relative to
    those folders and a prompt that picks one runs that file (or diffusers folder)."""
    from tests.original_layout import write_original_layout

    models = tmp_path / "comfy-models"
    (models / "checkpoints" / "sdxl").mkdir(parents=True)
    # listed; the tiny architecture's single file would need `config`, which CheckpointLoaderSimple lacks
    write_original_layout(tiny_models[9], models / "checkpoints" / "sdxl" / "tiny-inpaint.safetensors")
    shutil.copytree(tiny_models[9], models / "checkpoints" / "sdxl" / "tiny-folder")
    (models / "loras").mkdir()
    (models / "loras" / "style.safetensors").write_bytes(b"listed, never loaded here")
    s = Served(tmp_path / "server", None, "--models-dir", str(models))
    try:
        required = s.get("/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]["input"]["required"]
        assert "sdxl/tiny-inpaint.safetensors" in required["ckpt_name"][0]
        lora = s.get("/object_info/LoraLoader").json()["LoraLoader"]["input"]["required"]["lora_name"][0]
        assert lora == ["style.safetensors"]

        climbing = json.loads(json.dumps(COMFY_PROMPT))
        climbing["4"]["inputs"]["ckpt_name"] = "../checkpoints/sdxl/tiny-folder"
        refused = s.post("/prompt", json={"prompt": climbing})
        assert refused.status_code == 400 and "4" in refused.json()["node_errors"]

        prompt = json.loads(json.dumps(COMFY_PROMPT))
        prompt["4"]["inputs"]["ckpt_name"] = "sdxl/tiny-folder"
        pid, _ = run_prompt(s, {"prompt": prompt})
        entry = s.get(f"/history/{pid}").json()[pid]
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["prompt"][2] == prompt  # shown as sent: the name, not our path
        (image,) = [i for out in entry["outputs"].values() for i in out.get("images", [])]
        assert (s.output / image["subfolder"] / image["filename"]).is_file()
    finally:
        assert s.stop() == 0


# ---- security ------------------------------------------------------------------------------------
def test_refuses_to_start_on_other_hosts_without_a_token(tmp_path):
    env = dict(os.environ, NODEGRAPH_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "nodegraph", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
                        "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--token" in r.stderr


def test_token_is_required_everywhere_when_set(tmp_path):
    s = Served(tmp_path, None, "--token", "s3cret")
    try:
        assert s.get("/queue").status_code == 401
        assert s.get("/view", params={"filename": "demo_image.png", "type": "input"}).status_code == 401
        assert s.get("/queue", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert s.get("/queue", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert s.get("/queue", params={"token": "s3cret"}).status_code == 200

        async def ws(url: str) -> str:
            async with websockets.connect(url) as conn:
                return json.loads(await conn.recv())["type"]

        with pytest.raises(InvalidStatus):
            asyncio.run(ws(s.ws_url))
        assert asyncio.run(ws(s.ws_url + "?token=s3cret")) == "status"
    finally:
        s.stop()


def test_a_page_opened_with_the_token_keeps_it_in_a_strict_cookie(tmp_path):
    """The editor is opened once as /?token=...; its own API calls and websocket then carry no token. The
    cookie is named for the port (browsers share cookies across ports) and does not hold the token."""
    s = Served(tmp_path, None, "--token", "s3cret")
    try:
        opened = s.get("/", params={"token": "s3cret"})
        assert opened.status_code == 200
        cookie = opened.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        value = rest.split(";")[0]
        assert name == f"nodegraph_token_{s.port}" and len(value) == 64 and "s3cret" not in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        jar = {"Cookie": f"{name}={value}"}
        assert s.get("/queue", headers=jar).status_code == 200
        assert "set-cookie" not in s.get("/queue", params={"token": "s3cret"}, headers=jar).headers  # already kept
        assert s.get("/queue", headers={"Cookie": f"{name}=s3cret"}).status_code == 401  # the raw token is no cookie
        assert s.get("/queue", headers={"Cookie": f"nodegraph_token_{s.port + 1}={value}"}).status_code == 401
        assert "set-cookie" not in s.get("/", params={"token": "wrong"}).headers
        assert s.get("/queue", headers={"Authorization": "Bearer s3cret"}).headers.get("set-cookie") is None

        async def ws() -> str:
            async with websockets.connect(s.ws_url, additional_headers=jar) as conn:
                return json.loads(await conn.recv())["type"]

        assert asyncio.run(ws()) == "status"
        # The cookie is no way around the Origin rule: another site's page cannot use it (SameSite aside).
        evil = s.post("/queue", json={"clear": True}, headers={**jar, "Origin": "http://evil.example"})
        assert evil.status_code == 403
    finally:
        s.stop()


def test_cross_origin_requests_are_refused_unless_allowed(tmp_path):
    s = Served(tmp_path, None, "--allow-origin", "http://trusted.example:3000")
    try:
        own = f"http://127.0.0.1:{s.port}"
        body = {"clear": True}
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{s.port + 1}", f"https://127.0.0.1:{s.port}"):
            assert s.post("/queue", json=body, headers={"Origin": origin}).status_code == 403, origin
            assert s.post("/prompt", json={}, headers={"Origin": origin}).status_code == 403, origin
        assert s.post("/queue", json=body, headers={"Origin": own}).status_code == 200
        assert s.post("/queue", json=body).status_code == 200  # scripts send no Origin
        assert s.post("/queue", json=body, headers={"Origin": "http://trusted.example:3000"}).status_code == 200
        files = {"image": ("x.png", (ROOT / "workflows/demo_mask.png").read_bytes(), "image/png")}
        assert s.post("/upload/image", files=files, headers={"Origin": "http://evil.example"}).status_code == 403

        async def ws(origin: str) -> str:
            async with websockets.connect(s.ws_url, origin=origin) as conn:  # type: ignore[arg-type]
                return json.loads(await conn.recv())["type"]

        with pytest.raises(InvalidStatus):
            asyncio.run(ws("http://evil.example"))
        assert asyncio.run(ws(own)) == "status"
    finally:
        s.stop()


def test_foreign_host_header_is_refused_without_a_token(server):
    # a DNS-rebinding page reaches 127.0.0.1 under its own name
    assert server.get("/queue", headers={"Host": f"evil.example:{server.port}"}).status_code == 403
    assert server.get("/queue", headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_view_is_confined_to_its_folders(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (server.output / "escape.png").unlink(missing_ok=True)
    (server.output / "escape.png").symlink_to(secret)
    (server.input / "linkdir").unlink(missing_ok=True)
    (server.input / "linkdir").symlink_to(tmp_path)
    assert server.get("/view", params={"filename": "demo_image.png", "type": "input"}).status_code == 200
    cases = [
        ({"filename": "../secret.txt", "type": "input"}, 400),
        ({"filename": "x.png", "subfolder": "../..", "type": "output"}, 400),
        ({"filename": str(secret), "type": "output"}, 400),
        ({"filename": "demo_image.png\x00.txt", "type": "input"}, 400),
        ({"filename": "..\\..\\secret.txt", "type": "input"}, 400),
        ({"filename": "demo_image.png", "type": "models"}, 400),
        ({"filename": "escape.png", "type": "output"}, 403),
        ({"filename": "secret.txt", "subfolder": "linkdir", "type": "input"}, 403),
        ({"filename": "missing.png", "type": "output"}, 404),
    ]
    for params, status in cases:
        r = server.get("/view", params=params)
        assert r.status_code == status, (params, r.status_code)
        assert b"private" not in r.content


def test_upload_names_sizes_and_overwrite(server):
    png = (ROOT / "workflows/demo_mask.png").read_bytes()
    other = (ROOT / "workflows/demo_image.png").read_bytes()

    def up(name: str, data: bytes, **fields: str) -> Any:
        return server.post("/upload/image", files={"image": (name, data, "image/png")}, data=fields)

    r = up("up.png", png, subfolder="sub")
    assert r.status_code == 200 and r.json() == {"name": "up.png", "subfolder": "sub", "type": "input"}
    assert up("up.png", png, subfolder="sub").json()["name"] == "up.png"  # same content: reused
    assert up("up.png", other, subfolder="sub").json()["name"] == "up (1).png"  # clash: renamed
    assert up("up.png", other, subfolder="sub").json()["name"] == "up (1).png"
    assert up("up.png", other, subfolder="sub", overwrite="true").json()["name"] == "up.png"
    assert (server.input / "sub" / "up.png").read_bytes() == other
    for bad in ("../evil.png", "a\\b.png", ".hidden.png"):
        assert up(bad, png).status_code == 400, bad
    r = up("/abs.png", png)  # multipart parsers may cut a leading slash: then it is a plain name
    assert r.status_code == 400 or r.json()["name"] == "abs.png"
    assert not Path("/abs.png").exists()
    assert up("x.png", png, subfolder="../out").status_code == 400
    assert up("x.png", b"not an image at all").status_code == 400
    assert up("x.png", png, type="models").status_code == 400


def test_view_reencodes_on_request_and_never_serves_a_page(server):
    from PIL import Image

    png = (ROOT / "workflows/demo_image_alpha.png").read_bytes()
    r = server.post("/upload/image", files={"image": ("page.html", png, "image/png")}, data={"overwrite": "true"})
    assert r.status_code == 200
    page = server.get("/view", params={"filename": "page.html", "type": "input"})
    assert page.headers["content-type"] == "application/octet-stream"  # a download, never HTML on our origin
    assert page.headers["x-content-type-options"] == "nosniff" and page.content == png
    thumb = server.get("/view", params={"filename": "demo_image_alpha.png", "type": "input", "preview": "jpeg;50"})
    assert thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as img, Image.open(io.BytesIO(png)) as original:
        assert img.format == "JPEG" and img.size == original.size
        alpha = server.get("/view", params={"filename": "demo_image_alpha.png", "type": "input", "channel": "a"})
        with Image.open(io.BytesIO(alpha.content)) as a:
            assert a.mode == "RGBA" and a.getchannel("A").tobytes() == original.getchannel("A").tobytes()


def test_upload_size_cap_and_decompression_bombs(tmp_path):
    from PIL import Image

    s = Served(tmp_path, None, "--max-upload", "256KiB")
    try:
        big = io.BytesIO()
        Image.frombytes("RGB", (320, 320), os.urandom(320 * 320 * 3)).save(big, format="PNG")
        assert len(big.getvalue()) > 256 * 1024
        r = s.post("/upload/image", files={"image": ("big.png", big.getvalue(), "image/png")})
        assert r.status_code == 413
        bomb = io.BytesIO()  # 12000 x 12000 of one colour: 140 KB that decode to 144 megapixels
        Image.new("L", (12000, 12000)).save(bomb, format="PNG", optimize=True)
        assert len(bomb.getvalue()) < 256 * 1024
        r = s.post("/upload/image", files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
        assert r.status_code == 400 and "pixel" in r.json()["error"]
        assert not (s.input / "bomb.png").exists()
    finally:
        s.stop()


def test_prompt_body_size_and_json_depth_limits(server):
    from nodegraph.server.protocol import MAX_PROMPT_BYTES

    r = server.post("/prompt", content=b'{"prompt": "' + b"x" * (MAX_PROMPT_BYTES + 10) + b'"}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    deep = "[" * 200 + "]" * 200
    r = server.post("/prompt", content=('{"prompt": {"1": {"class_type": "Sample", "inputs": {"seed": ' + deep + "}}}}").encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "deeper" in r.json()["error"]


def test_upload_mask_puts_the_painted_alpha_into_a_copy_of_the_original(server):
    from PIL import Image

    painted = io.BytesIO()
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (0, 0, 32, 64))
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.putalpha(alpha)
    rgba.save(painted, format="PNG")
    ref = json.dumps({"filename": "demo_image.png", "subfolder": "", "type": "input"})
    r = server.post("/upload/mask", files={"image": ("clipspace-mask.png", painted.getvalue(), "image/png")},
                    data={"original_ref": ref, "type": "input", "subfolder": "clipspace"})
    assert r.status_code == 200 and r.json() == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(server.input / "clipspace" / "clipspace-mask.png") as out, \
            Image.open(server.input / "demo_image.png") as original:
        assert out.mode == "RGBA" and out.size == original.size
        assert out.convert("RGB").tobytes() == original.convert("RGB").tobytes()
        a = out.getchannel("A").resize((64, 64))
        assert a.getpixel((5, 5)) == 0 and a.getpixel((60, 5)) == 255
    bad = json.dumps({"filename": "../../etc/passwd", "type": "input"})
    r = server.post("/upload/mask", files={"image": ("m.png", painted.getvalue(), "image/png")},
                    data={"original_ref": bad})
    assert r.status_code == 400


def test_previews_arrive_as_binary_frames_only_when_asked(server):
    prompt = {"1": {"class_type": "PreviewSteps", "inputs": {"steps": 3}},
              "2": {"class_type": "Format", "inputs": {"n": ["1", 0]}},
              "3": {"class_type": "WriteText", "inputs": {"text": ["2", 0], "name": "p"}}}
    pid, frames = run_prompt(server, {"prompt": prompt, "extra_data": {"preview_method": "auto"}}, "viewer")
    previews = [f for f in frames if isinstance(f, bytes)]
    assert previews, frames
    for frame in previews:
        assert frame[:8] == (1).to_bytes(4, "big") + (1).to_bytes(4, "big")  # PREVIEW_IMAGE, JPEG
        assert frame[8:].startswith(b"\xff\xd8\xff\xe0preview")
    # each preview follows a progress message of the same node
    first = frames.index(previews[0])
    assert frames[first - 1]["type"] == "progress" and frames[first - 1]["data"]["node"] == "1"
    prompt["1"]["inputs"]["steps"] = 2  # not cached: a different run
    pid, frames = run_prompt(server, {"prompt": prompt, "extra_data": {"preview_method": "none"}}, "viewer")
    assert not any(isinstance(f, bytes) for f in frames)
    prompt["1"]["inputs"]["steps"] = 4
    pid, frames = run_prompt(server, {"prompt": prompt}, "viewer")  # no --previews flag: off by default
    assert not any(isinstance(f, bytes) for f in frames)


def test_clients_that_announce_preview_metadata_get_type_4_frames(server):
    """ComfyUI's feature negotiation: a socket whose first message says supports_preview_metadata gets each
    preview with the node and prompt it belongs to; another socket of the same client id keeps type 1."""
    prompt = {"1": {"class_type": "PreviewSteps", "inputs": {"steps": 5}},
              "2": {"class_type": "Format", "inputs": {"n": ["1", 0]}},
              "3": {"class_type": "WriteText", "inputs": {"text": ["2", 0], "name": "meta"}}}

    async def go() -> tuple[str, list[Any], list[Any], dict[str, Any]]:
        url = f"{server.ws_url}?clientId=meta-viewer"
        async with websockets.connect(url) as modern, websockets.connect(url) as legacy:
            assert json.loads(await modern.recv())["type"] == "status"
            assert json.loads(await legacy.recv())["type"] == "status"
            await modern.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            reply = json.loads(await modern.recv())
            r = server.post("/prompt", json={"prompt": prompt, "client_id": "meta-viewer",
                                             "extra_data": {"preview_method": "auto"}})
            pid = r.json()["prompt_id"]
            return pid, await collect(modern, pid), await collect(legacy, pid), reply

    pid, modern, legacy, reply = asyncio.run(go())
    assert reply == {"type": "feature_flags", "data": {"supports_preview_metadata": True,
                                                       "max_upload_size": reply["data"]["max_upload_size"]}}
    typed = [f for f in modern if isinstance(f, bytes)]
    assert typed and all(int.from_bytes(f[:4], "big") == 4 for f in typed)
    for frame in typed:
        length = int.from_bytes(frame[4:8], "big")
        meta = json.loads(frame[8:8 + length])
        assert meta == {"node_id": "1", "display_node_id": "1", "parent_node_id": None, "real_node_id": "1",
                        "prompt_id": pid, "image_type": "image/jpeg"}
        assert frame[8 + length:].startswith(b"\xff\xd8\xff\xe0preview")
    plain = [f for f in legacy if isinstance(f, bytes)]
    assert len(plain) == len(typed) and all(f[:8] == (1).to_bytes(4, "big") * 2 for f in plain)


def test_prompt_paths_outside_the_input_and_output_dirs_are_refused(server, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes((ROOT / "workflows/demo_image.png").read_bytes())
    prompt = native_api_prompt()
    prompt["image"]["inputs"]["path"] = str(outside)
    prompt["mask"]["inputs"]["path"] = "../../outside.png"
    prompt["save"]["inputs"]["prefix"] = str(tmp_path / "stolen")
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400, r.text
    errors = r.json()["node_errors"]
    assert errors["image"]["errors"][0]["extra_info"]["input_name"] == "path"
    assert errors["image"]["errors"][0]["type"] == "path_not_allowed"
    assert errors["save"]["errors"][0]["extra_info"]["input_name"] == "prefix"
    assert "mask" in errors
    assert server.get("/queue").json()["queue_pending"] == []


def test_preview_frame_is_comfyuis_binary_layout():
    from nodegraph.server.protocol import preview_frame

    frame = preview_frame("JPEG", b"\xff\xd8jpeg")
    assert frame[:4] == (1).to_bytes(4, "big") and frame[4:8] == (1).to_bytes(4, "big") and frame[8:] == b"\xff\xd8jpeg"
    assert preview_frame("PNG", b"x")[4:8] == (2).to_bytes(4, "big")


@pytest.mark.slow
def test_real_comfyui_client_from_pypi_drives_the_server(server):
    api = pytest.importorskip("comfy_api_simplified")
    client = api.ComfyApiWrapper(server.url)
    prompt = native_api_prompt()
    prompt["sample"]["inputs"]["seed"] = 99
    for node_id, entry in prompt.items():  # this client finds nodes by their editor title
        entry["_meta"] = {"title": "Save Image" if node_id == "save" else node_id}
    images = client.queue_and_wait_images(prompt, "Save Image")
    assert len(images) == 1
    (data,) = images.values()
    assert data.startswith(b"\x89PNG")
    assert client.get_queue() == {"queue_running": [], "queue_pending": []}
    assert "nodegraph.Sample" in client.get_object_info()


# ---- the server's in-process parts ----------------------------------------------------------------
def test_hub_delivers_worker_frames_in_order_to_each_client():
    import threading

    from nodegraph.server.app import Hub

    async def go() -> tuple[list[Any], list[Any]]:
        hub = Hub()
        hub.loop = asyncio.get_running_loop()
        a, b = hub.add("a"), hub.add("b")

        def worker() -> None:  # bursts from another thread, as the worker thread sends them
            for i in range(300):
                hub.send("a" if i % 3 else None, f"{i}")
            hub.send(None, b"end")

        thread = threading.Thread(target=worker)
        thread.start()
        got_a: list[Any] = []
        got_b: list[Any] = []
        for q, got in ((a, got_a), (b, got_b)):
            while not got or got[-1] != b"end":
                got.append(await asyncio.wait_for(q.get(), 10))
        thread.join()
        hub.send("a", "from the loop")  # a handler's frame: delivered without a loop wake-up, still queued in order
        got_a.append(a.get_nowait())
        return got_a, got_b

    got_a, got_b = asyncio.run(go())
    assert got_a == [f"{i}" for i in range(300)] + [b"end", "from the loop"]
    assert got_b == [f"{i}" for i in range(0, 300, 3)] + [b"end"]


def test_journal_numbers_front_prompts_and_duplicate_ids(tmp_path):
    from nodegraph.server.journal import Journal

    journal = Journal(tmp_path / "queue.sqlite")
    assert journal.next_number() == 1.0
    journal.add("p1", 1.0, None, {}, {}, [], {})
    journal.add("p2", -2.0, "c", {}, {}, [], {})  # a `front` prompt
    assert journal.next_number() == 3.0
    assert journal.exists("p2") and not journal.exists("p3")
    assert [r.prompt_id for r in journal.pending()] == ["p2", "p1"]
    journal.close()
