"""Model sources: folders, single files, hub ids, built-ins, and the errors for bad ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nodegraph import Graph, NodeExecutionError, WorkflowError, validate
from nodegraph.cli import main
from tests.sdxl_graphs import FAST, inpaint_graph, run


def ckpt_graph(source: str, out: str = "/nonexistent/never-written") -> Graph:
    """checkpoint -> prompt -> Sample(EmptyLatent) -> SaveLatent: touches the text encoders and the UNet."""
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="checkpoint", source=source)
    pos = g.add("EncodePrompt", id="positive", clip=ckpt.clip, prompt="x")
    empty = g.add("EmptyLatent", width=64, height=64)
    smp = g.add("Sample", id="sample", unet=ckpt.unet, positive=pos.conditioning, latent=empty.latent, steps=2)
    g.add("SaveLatent", id="out", latent=smp.latent, path=out)
    return g


def test_missing_checkpoint_is_refused_at_validation_naming_the_path(tmp_path):
    with pytest.raises(WorkflowError) as info:
        validate(ckpt_graph(str(tmp_path / "nowhere" / "model")))
    [issue] = info.value.issues
    assert (issue.node, issue.input) == ("checkpoint", "source")
    assert "nowhere/model: no such file or directory" in issue.message


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth", ".pkl"])
def test_pickle_checkpoints_are_refused_at_validation(tmp_path, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(WorkflowError, match="pickle files"):
        validate(ckpt_graph(str(bad)))


def test_a_special_file_or_unknown_builtin_is_refused_at_validation(tmp_path):
    with pytest.raises(WorkflowError, match="/dev/null: not a regular file or folder"):
        validate(ckpt_graph("/dev/null"))
    with pytest.raises(WorkflowError, match="unknown built-in model 'builtin:nope'"):
        validate(ckpt_graph("builtin:nope"))


def test_a_corrupt_config_folder_is_refused_at_validation(tmp_path):
    g = ckpt_graph("builtin:tiny-sdxl")
    g.set_input("checkpoint", "config", str(tmp_path / "missing-config"))
    with pytest.raises(WorkflowError) as info:
        validate(g)
    assert [(i.node, i.input) for i in info.value.issues] == [("checkpoint", "config")]


@pytest.mark.slow
def test_corrupt_weights_give_a_clear_error(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models[9], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(NodeExecutionError) as info:
        run(ckpt_graph(str(broken)), tmp_path)
    assert info.value.node_id == "sample" and "cannot load unet" in str(info.value)


def test_unet_with_other_channel_counts_is_refused(tiny_models, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_models[9], odd)
    cfg = json.loads((odd / "unet" / "config.json").read_text())
    cfg["in_channels"] = 5
    (odd / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NodeExecutionError, match="UNet has 5 input channels"):
        run(ckpt_graph(str(odd)), tmp_path)


def test_hub_id_offline_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(NodeExecutionError) as info:
        run(ckpt_graph("diffusers/stable-diffusion-xl-1.0-inpainting-0.1"), tmp_path)
    assert "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


@pytest.mark.slow
def test_builtin_model_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(tmp_path / "fresh-cache"))
    result = run(ckpt_graph("builtin:tiny-sdxl", str(tmp_path / "lat")), tmp_path)
    assert result.ok
    folder = next((tmp_path / "fresh-cache" / "models").iterdir())
    assert "RANDOM WEIGHTS" in (folder / "README.md").read_text()
    assert sorted(result.loaded) == sorted(["tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "unet"])


def test_make_tiny_model_command_is_deterministic(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "a"), "--in-channels", "4"]) == 0
    assert "4-channel UNet" in capsys.readouterr().out
    assert main(["make-tiny-model", str(tmp_path / "b"), "--in-channels", "4"]) == 0
    for f in (tmp_path / "a").rglob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    assert json.loads((tmp_path / "a" / "unet" / "config.json").read_text())["in_channels"] == 4
    assert main(["make-tiny-model", str(tmp_path / "a")]) == 2  # never overwrites


# ---- single-file checkpoints -----------------------------------------------------------------------
def _fake_single_file(path, tensors):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("tensors, message", [
    ({"some.other.weight": (2, 2)}, "not an SDXL checkpoint in the original layout"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, "no second text encoder"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 5, 3, 3),
      "conditioner.embedders.1.model.token_embedding.weight": (4, 4)}, "UNet has 5 input channels"),
])
def test_single_file_checkpoints_are_checked_from_the_header(tmp_path, tensors, message):
    path = _fake_single_file(tmp_path / "model.safetensors", tensors)
    with pytest.raises(NodeExecutionError, match=message) as info:
        run(ckpt_graph(str(path)), tmp_path)
    assert info.value.node_id == "checkpoint"


def test_truncated_single_file_is_reported(tmp_path):
    path = _fake_single_file(tmp_path / "model.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NodeExecutionError, match="corrupt or truncated"):
        run(ckpt_graph(str(path)), tmp_path)


def test_header_inspection_reads_channels_and_dtype(tmp_path):
    from nodes.single_file import inspect_checkpoint

    path = _fake_single_file(tmp_path / "m.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3),
        "conditioner.embedders.1.model.token_embedding.weight": (4, 4)})
    assert inspect_checkpoint(path) == (9, "float16", "float16")


def test_real_clip_vocabulary_gives_clips_token_ids(tmp_path):
    from transformers import CLIPTokenizer

    from nodes.vocab import write_clip_tokenizer

    write_clip_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tokenizer) == 49408
    # OpenAI CLIP's ids for this sentence: <start> a photo of a cat <end>
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.slow
def test_single_file_checkpoint_gives_the_same_images_as_its_folder(tiny_models, tmp_path):
    """A tiny model written in the original single-file layout, converted with diffusers' converter (once,
    then from the conversion cache), produces exactly the images of the diffusers folder it came from."""
    from tests.original_layout import write_original_layout

    single = write_original_layout(tiny_models[9], tmp_path / "tiny-inpaint.safetensors")
    folder = run(inpaint_graph(str(tiny_models[9]), **FAST), tmp_path)["decode"]["image"]

    def from_file() -> tuple[torch.Tensor, list[str]]:
        g = inpaint_graph(str(single), **FAST)
        g.set_input("checkpoint", "config", str(tiny_models[9]))  # the tiny architecture, not SDXL 1.0's
        result = run(g, tmp_path)
        return result["decode"]["image"], result.loaded

    image, loaded = from_file()
    assert torch.equal(image, folder)
    assert "unet" in loaded
    again, _ = from_file()  # from the converted folder kept in the cache
    assert torch.equal(again, folder)


def test_config_only_applies_to_single_files(tiny_models, tmp_path):
    g = inpaint_graph(str(tiny_models[9]), **FAST)
    g.set_input("checkpoint", "config", str(tiny_models[9]))
    with pytest.raises(NodeExecutionError, match="only applies to single-file checkpoints"):
        run(g, tmp_path)


@pytest.mark.slow
def test_single_file_keeps_a_float32_vae_beside_a_float16_model(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from nodes.single_file import inspect_checkpoint
    from tests.original_layout import write_original_layout

    single = write_original_layout(tiny_models[9], tmp_path / "mixed.safetensors", dtype=torch.float16)
    assert inspect_checkpoint(single) == (9, "float16", "float32")
    g = inpaint_graph(str(single), **FAST)
    g.set_input("checkpoint", "config", str(tiny_models[9]))
    result = run(g, tmp_path)
    converted = Path(result["checkpoint"]["vae"].ref.source.path)
    original = load_file(str(tiny_models[9] / "vae" / "diffusion_pytorch_model.safetensors"))
    kept = load_file(str(next((converted / "vae").glob("*.safetensors"))))
    assert all(kept[k].dtype == torch.float32 and torch.equal(kept[k], v) for k, v in original.items())
    unet = load_file(str(next((converted / "unet").glob("*.safetensors"))))
    assert unet["conv_in.weight"].dtype == torch.float16


@pytest.mark.parametrize("variant, expected", [
    (None, ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors", "text_encoder/model.safetensors"]),
    ("fp16", ["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
              "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16.safetensors"]),
])
def test_hub_download_fetches_one_set_of_weights(variant, expected):
    """A hub repo holds weights twice (full and fp16) plus extras: only what will be loaded is fetched."""
    from fnmatch import fnmatch

    from nodes.sources import hub_patterns

    weights = ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.json",
               "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.bin",
               "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
               "vae_1_0/diffusion_pytorch_model.fp16.safetensors", "sd_xl_base_1.0.safetensors"]
    configs = ["model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
               "tokenizer/vocab.json", "tokenizer_2/merges.txt"]
    allow, ignore = hub_patterns(variant)
    fetched = [f for f in weights + configs if any(fnmatch(f, a) for a in allow) and not any(fnmatch(f, i) for i in ignore)]
    assert fetched == expected + configs


def hub_cache_copy(model: Path, cache: Path, repo: str) -> Path:
    """The model laid out as huggingface_hub caches a download: blobs named by sha256, a snapshot of links."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    for f in sorted(p for p in model.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / revision / f.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return root / "snapshots" / revision


def test_a_hub_cached_model_is_fingerprinted_by_its_blob_names(tiny_models, tmp_path, monkeypatch):
    import nodes.sources as sources

    repo = "tiny-org/tiny-sdxl-inpaint"
    snapshot = hub_cache_copy(tiny_models[9], tmp_path / "hub", repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(tmp_path / "state"))

    def no_reading(path):
        raise AssertionError(f"{path} was hashed although the hub cache names its content")

    monkeypatch.setattr(sources, "file_fingerprint", no_reading)
    found = sources.resolve(repo)  # the real offline hub path: snapshot_download finds the cached snapshot
    assert Path(found.path) == snapshot and found.kind == "diffusers"
    assert sources.resolve(str(snapshot)).fingerprint == found.fingerprint
    # Another blob for the UNet's weights (another version of the file) is another model.
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    other = weights.resolve().parent / ("f" * 64)
    other.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(other)
    assert sources.resolve(repo).fingerprint != found.fingerprint


def test_a_missing_weights_file_named_like_org_slash_name_is_not_taken_for_a_hub_id():
    """ComfyUI writes checkpoint names such as "sdxl/base.safetensors": when no such file exists that is
    an error at validation, not a hub download attempted at run time."""
    with pytest.raises(WorkflowError) as info:
        validate(ckpt_graph("sdxl/base.safetensors"))
    (issue,) = info.value.issues
    assert issue.node == "checkpoint" and "no such file" in issue.message
    validate(ckpt_graph("stabilityai/stable-diffusion-xl-base-1.0"))  # a hub id still passes validation
