"""Latent previews: a linear latent -> RGB projection, JPEG-encoded, attached to Sample's progress events."""

from __future__ import annotations

import io

import torch
from PIL import Image

from nodegraph import Engine
from nodegraph.events import NodeProgress, PreviewSettings
from nodes.preview import latent_preview, latent_rgb
from tests.sdxl_graphs import inpaint_graph


def test_preview_is_a_jpeg_within_max_size():
    latents = torch.randn(2, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    full = latent_preview(latents, max_size=512)
    small = latent_preview(latents, max_size=64)
    assert full.format == "JPEG" and Image.open(io.BytesIO(full.data)).size == (128, 96)  # pixel size
    assert Image.open(io.BytesIO(small.data)).size == (64, 48)


def test_projection_is_linear_in_the_latents():
    """Zero latents are mid-grey; the first channel brightens every colour (all its factors are positive)."""
    zero = latent_rgb(torch.zeros(1, 4, 2, 2))
    assert torch.equal(zero, torch.full((2, 2, 3), 128, dtype=torch.uint8))
    first = torch.zeros(1, 4, 2, 2)
    first[:, 0] = 1.0
    assert bool((latent_rgb(first) > zero).all())


class Collect:
    def __init__(self) -> None:
        self.events: list[NodeProgress] = []

    def on_event(self, event: object) -> None:
        if isinstance(event, NodeProgress):
            self.events.append(event)


def test_sample_attaches_previews_only_when_asked(tiny_models, tmp_path):
    listener = Collect()
    Engine().run(inpaint_graph(str(tiny_models[9]), steps=4), listener=listener, output_dir=tmp_path,
                 previews=PreviewSettings(every_steps=1, min_interval_s=0.0, max_size=32))
    shown = [e for e in listener.events if e.node_id == "sample" and e.preview is not None]
    assert len(shown) == 3  # strength 0.9999 of 4 steps: 3 steps, one preview each
    assert max(Image.open(io.BytesIO(shown[0].preview.data)).size) == 32
    quiet = Collect()
    Engine().run(inpaint_graph(str(tiny_models[9]), steps=4, seed=1), listener=quiet, output_dir=tmp_path)
    assert [e for e in quiet.events if e.node_id == "sample"] and not any(e.preview for e in quiet.events)
