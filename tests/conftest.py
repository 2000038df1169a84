import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty registry root for the test (ZOO_REGISTRY points at it)."""
    root = tmp_path / "registry"
    monkeypatch.setenv("ZOO_REGISTRY", str(root))
    return root
