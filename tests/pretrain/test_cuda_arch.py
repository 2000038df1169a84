"""TORCH_CUDA_ARCH_LIST normalised before DeepSpeed's op builder reads it (gpu.md §1)."""

import pytest

from pretrain.cuda_arch import CudaArchListError, normalize_cuda_arch_list


@pytest.mark.parametrize("value,expected", [
    ("9.0a", "9.0"),
    ("8.0;9.0a+PTX", "8.0;9.0+PTX"),
    ("8.6 9.0a 10.0f", "8.6;9.0;10.0"),
    ("9.0;9.0a", "9.0"),
    ("8.0;8.6", "8.0;8.6"),
])
def test_arch_specific_entries_become_plain(value, expected):
    environ = {"TORCH_CUDA_ARCH_LIST": value}
    assert normalize_cuda_arch_list(environ) == expected
    assert environ["TORCH_CUDA_ARCH_LIST"] == expected


def test_unset_stays_unset():
    environ = {}
    assert normalize_cuda_arch_list(environ) is None and environ == {}


def test_what_deepspeed_would_choke_on_is_refused_with_the_fix():
    with pytest.raises(CudaArchListError, match=r"TORCH_CUDA_ARCH_LIST='sm_90': cannot read the entry 'sm_90'.*Fix: export TORCH_CUDA_ARCH_LIST=\"9.0\""):
        normalize_cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "sm_90"})


def test_deepspeed_parses_the_normalised_value(monkeypatch):
    """DeepSpeed 0.19.8's own parser, which raised `invalid literal for int() ... '0a'` before."""
    from deepspeed.ops.op_builder.fused_lamb import FusedLambBuilder

    environ = {"TORCH_CUDA_ARCH_LIST": "8.0;9.0a"}
    normalize_cuda_arch_list(environ)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", environ["TORCH_CUDA_ARCH_LIST"])
    builder = FusedLambBuilder()
    builder.jit_mode = False
    args = builder.compute_capability_args()
    assert "-gencode=arch=compute_90,code=sm_90" in args and "-gencode=arch=compute_80,code=sm_80" in args
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    with pytest.raises(ValueError, match="invalid literal for int"):
        builder.compute_capability_args()
