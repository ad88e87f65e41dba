from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import toy_nodes  # noqa: E402,F401  (registers the toy nodes)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[int, Path]:
    """Tiny random-weight SDXL models (9- and 4-channel UNets), built once per test session."""
    from nodes.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {9: make_tiny_model(root / "inpaint", in_channels=9), 4: make_tiny_model(root / "base", in_channels=4)}


@pytest.fixture(scope="session")
def builtin_models_dir(tmp_path_factory, tiny_models) -> Path:
    """The cache directory's models/ with the built-ins already in place (built from the same seed)."""
    from nodes.tiny import BUILD_VERSION

    models = tmp_path_factory.mktemp("builtin") / "models"
    models.mkdir()
    (models / f"tiny-sdxl-inpaint-v{BUILD_VERSION}").symlink_to(tiny_models[9])
    (models / f"tiny-sdxl-v{BUILD_VERSION}").symlink_to(tiny_models[4])
    return models


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Never touch the user's real cache directory from a test; share the built-in models."""
    cache = tmp_path_factory.mktemp("cache")
    if "builtin_models_dir" in request.fixturenames:
        (cache / "models").symlink_to(request.getfixturevalue("builtin_models_dir"))
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def calls():
    toy_nodes.CALLS.clear()
    return toy_nodes.CALLS


@pytest.fixture
def posterior_mode(monkeypatch):
    """diffusers' inpainting pipelines encode with the VAE posterior's mode, as our VAEEncode does (the one
    deliberate difference: a sampled posterior would make every cached encoding seed-dependent)."""
    from diffusers.pipelines.controlnet import pipeline_controlnet_inpaint_sd_xl
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_inpaint

    def mode_latents(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    for module in (pipeline_stable_diffusion_xl_inpaint, pipeline_controlnet_inpaint_sd_xl):
        monkeypatch.setattr(module, "retrieve_latents", mode_latents)
