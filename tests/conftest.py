import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # the Triton kernels (zoo/kernels/triton_*.py) then run in Triton's interpreter, on CPU tensors;
    # set before anything imports Triton, which reads it when its library and each kernel are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run where a GPU is; elsewhere they are skipped, saying why (never passed)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty registry root for the test (ZOO_REGISTRY points at it)."""
    root = tmp_path / "registry"
    monkeypatch.setenv("ZOO_REGISTRY", str(root))
    return root
