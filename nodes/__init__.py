"""SDXL inpainting stage nodes. ``nodes.catalog`` registers them (entry point group ``nodegraph.nodes``)."""
