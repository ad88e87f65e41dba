"""SDXL inpainting stage nodes (registered through the ``nodegraph.nodes`` entry point)."""
