"""Graphs wired like diffusers' StableDiffusionXLInpaintPipeline, for the SDXL tests."""

from __future__ import annotations

from pathlib import Path

from nodegraph import Engine, Graph, RunResult

ROOT = Path(__file__).resolve().parent.parent
DEMO_IMAGE = ROOT / "workflows" / "demo_image.png"
DEMO_MASK = ROOT / "workflows" / "demo_mask.png"
FAST = {"steps": 3}


def run(graph: Graph, tmp_path: Path, **kwargs: object) -> RunResult:
    """Run a graph in a fresh engine, writing into tmp_path."""
    return Engine().run(graph, output_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def inpaint_graph(source: str, *, prompt: str = "a red apple", prompt_2: str | None = None,
                  negative: str | None = None, image: Path = DEMO_IMAGE, mask: Path = DEMO_MASK,
                  mask_mode: str = "nearest", dtype: str = "float32", **sample: object) -> Graph:
    """checkpoint -> prompts -> VAEEncode(+mask) -> DownsampleMask -> Sample -> VAEDecode (node 'decode')."""
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="checkpoint", source=source, dtype=dtype)  # float32: the reference precision
    img = g.add("LoadImage", id="image", path=str(image))
    msk = g.add("LoadMask", id="mask", path=str(mask))
    pos = g.add("EncodePrompt", id="positive", clip=ckpt.clip, prompt=prompt,
                **({"prompt_2": prompt_2} if prompt_2 is not None else {}))
    enc = g.add("VAEEncode", id="encode", vae=ckpt.vae, image=img.image, mask=msk.mask)
    lat = g.add("DownsampleMask", id="latent_mask", latent=enc.latent, mask=msk.mask, mode=mask_mode)
    links = {"unet": ckpt.unet, "positive": pos.conditioning, "latent": lat.latent}
    if negative is not None:
        links["negative"] = g.add("EncodePrompt", id="negative", clip=ckpt.clip, prompt=negative).conditioning
    smp = g.add("Sample", id="sample", **links, **sample)
    dec = g.add("VAEDecode", id="decode", vae=ckpt.vae, latent=smp.latent)
    g.add("SaveImage", id="save", image=dec.image, prefix="test")
    return g
