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


def _round_bf16_as_gpus_do_in_triton_interpreter() -> None:
    """Triton's interpreter (3.4 to 3.9) converts fp32 to bf16 by truncation (`InterpreterBuilder.cast_impl`
    passes no rounding mode), where every GPU rounds to nearest even: interpreted kernels with a bf16
    output were then biased towards zero, a fault of the interpreter and not of the kernel (2⁻⁸ relative,
    the same sign in every element: over a softmax row it adds up). The suite converts as a GPU does, with
    torch's conversion, so that an interpreted kernel gives the values its compiled code gives."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except Exception:  # no Triton: nothing interprets
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    original = getattr(builder, "cast_impl", None)
    if original is None or getattr(original, "rounds_bf16", False):
        return

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return original(self, src, dst_type)

    cast_impl.rounds_bf16 = True
    builder.cast_impl = cast_impl


if os.environ.get("TRITON_INTERPRET") == "1":
    _round_bf16_as_gpus_do_in_triton_interpreter()


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


@pytest.fixture
def triton_launches(monkeypatch):
    """The names of the Triton kernels launched during the test, in order (each wrapper launches through
    `zoo.kernels.triton_launch`, which is wrapped for the test to record the name)."""
    import zoo.kernels

    names = []
    launch = zoo.kernels.triton_launch
    monkeypatch.setattr(zoo.kernels, "triton_launch", lambda kernel, device: names.append(kernel) or launch(kernel, device))
    return names
