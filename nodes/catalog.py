"""Importing this module registers every SDXL node (the ``nodegraph.nodes`` entry point names it).

Kept apart from the package's __init__ so that commands which need no nodes (``cache``, ``--help``,
``make-tiny-model``) do not pay for importing torch and diffusers.
"""

from nodes import conditioning, image, latent, models, sampling, text  # noqa: F401
