"""nodegraph's HTTP + websocket server: ComfyUI's protocol in front of one long-lived ``Engine``.

Nothing here knows about diffusion; the engine's typed events are the only source of progress.
"""
