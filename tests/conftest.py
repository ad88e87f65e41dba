from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from tests import toy_nodes  # noqa: E402,F401  (registers the toy nodes)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real cache directory from a test."""
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def calls():
    toy_nodes.CALLS.clear()
    return toy_nodes.CALLS
