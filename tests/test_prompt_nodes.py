"""EncodePrompt on the tiny model: truncation, chunking, weights, the second prompt."""

from __future__ import annotations

import logging

import pytest
import torch

from nodegraph import Engine, Graph

pytestmark = pytest.mark.slow  # every test here runs the tiny model end to end


def encode(tiny_models, tmp_path, prompt: str, **kwargs):
    """Run just an EncodePrompt (any node can be demanded as an output)."""
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source=str(tiny_models[9]))
    g.add("EncodePrompt", id="enc", clip=ckpt.clip, prompt=prompt, **kwargs)
    return Engine().run(g, output_dir=tmp_path, outputs=["enc"])["enc"]["conditioning"]


LONG = ", ".join(["a very detailed painting of a red apple on a wooden table"] * 8)


def test_long_prompt_without_weighting_is_truncated_with_a_warning(tiny_models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cond = encode(tiny_models, tmp_path, LONG, weighting=False)
    assert cond.embeds.shape[1] == 77 and "prompt truncated" in caplog.text


def test_long_prompt_with_weighting_is_chunked(tiny_models, tmp_path):
    cond = encode(tiny_models, tmp_path, LONG)
    assert cond.embeds.shape[1] % 77 == 0 and cond.embeds.shape[1] > 77
    short = encode(tiny_models, tmp_path, "an apple")
    assert cond.pooled.shape == short.pooled.shape == (1, 32)


def test_weights_change_the_encoding_and_plain_prompts_do_not(tiny_models, tmp_path):
    plain = encode(tiny_models, tmp_path, "a red apple")
    off = encode(tiny_models, tmp_path, "a red apple", weighting=False)
    weighted = encode(tiny_models, tmp_path, "a (red:1.5) apple")
    assert torch.equal(plain.embeds, off.embeds)
    assert weighted.embeds.shape == plain.embeds.shape
    assert not torch.allclose(weighted.embeds, plain.embeds)


def test_prompt_2_feeds_only_the_second_encoder(tiny_models, tmp_path):
    same = encode(tiny_models, tmp_path, "an apple")
    other = encode(tiny_models, tmp_path, "an apple", prompt_2="a pear")
    width_1 = 32  # hidden size of the tiny text encoder 1: its half of the 64-wide embedding
    assert torch.equal(same.embeds[..., :width_1], other.embeds[..., :width_1])
    assert not torch.equal(same.embeds[..., width_1:], other.embeds[..., width_1:])
