"""SDXL inpainting stage nodes (registered through the ``nodegraph.nodes`` entry point)."""

from nodes import image, latent, models, sampling, text  # noqa: F401  (importing registers the nodes)
