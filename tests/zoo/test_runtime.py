"""zoo.runtime: device names, batch transfer and the collectives' device, on this machine's CPU."""

import pytest
import torch

from zoo.runtime import DeviceError, Runtime, ieee_float32, parse_device


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_device("auto").type == expected
    assert parse_device(None).type == expected
    assert parse_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(DeviceError, match="device 'cuda' was asked for, but this machine has no usable CUDA GPU"):
        parse_device("cuda")


def test_a_bad_device_name_is_named():
    with pytest.raises(DeviceError, match="device 'gpu0' is not a device name"):
        parse_device("gpu0")


def test_to_device_keeps_structure_and_values():
    runtime = Runtime.resolve("cpu")
    batch = {"input_ids": torch.arange(6).view(2, 3), "nested": [torch.ones(2)], "name": "x"}
    moved = runtime.to_device(runtime.pin(batch))
    assert moved["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5]] and moved["name"] == "x"
    assert moved["nested"][0].device.type == "cpu"


def test_autocast_follows_the_compute_dtype():
    with Runtime.resolve("cpu", torch.bfloat16).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Runtime.resolve("cpu", torch.float32).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_an_fp32_runtime_computes_in_fp32_inside_the_callers_autocast():
    """An fp32 runtime (CLUE's --no-bf16, an fp32 evaluation) turns autocast off: a caller's autocast
    around it made its products bf16 (or fp16, without a loss scale, in fine-tuning)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with Runtime.resolve("cpu", torch.float32).autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


MATMUL = torch.backends.cuda.matmul


def _precision_state() -> dict:
    """torch's views of the fp32 matmul precision; "refused" where torch refuses to read one (it does so
    for the legacy views after a caller set only the backends' `fp32_precision`)."""
    state = {"cuda": MATMUL.fp32_precision, "mkldnn": torch.backends.mkldnn.matmul.fp32_precision}
    for name, read in (("allow_tf32", lambda: MATMUL.allow_tf32), ("legacy", torch.get_float32_matmul_precision)):
        try:
            state[name] = read()
        except RuntimeError:
            state[name] = "refused"
    return state


@pytest.fixture
def default_precision():
    yield
    torch.backends.fp32_precision = "none"
    torch.set_float32_matmul_precision("highest")
    MATMUL.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = "none"
    assert _precision_state() == {"cuda": "none", "mkldnn": "none", "allow_tf32": False, "legacy": "highest"}


@pytest.mark.parametrize("caller", [
    "torch.backends.cuda.matmul.allow_tf32 = True",
    "torch.set_float32_matmul_precision('high')",
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "torch.backends.fp32_precision = 'tf32'",
    "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
    "pass",
])
def test_ieee_float32_inside_and_the_callers_settings_after(caller, default_precision):
    """Inside: IEEE fp32 products on CUDA and oneDNN, both views of the setting agreeing (a CUDA product
    refuses to run while the legacy view says TF32 and the backend's says IEEE, or the reverse), no
    autocast. After: every view as the caller left it, whichever API the caller used."""
    exec(caller)
    before = _precision_state()
    with torch.autocast("cpu", dtype=torch.bfloat16), ieee_float32():
        inside = _precision_state()
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert inside == {"cuda": "ieee", "mkldnn": "ieee", "allow_tf32": False, "legacy": "highest"}
    assert product.dtype == torch.float32
    assert _precision_state() == before


def test_one_process_sums_on_the_cpu_without_a_process_group():
    runtime = Runtime.resolve("cpu")
    total = runtime.sum_across_ranks([torch.tensor(2.0), 3, 0.5])
    assert total.dtype == torch.float64 and total.tolist() == [2.0, 3.0, 0.5]
    assert runtime.mean_across_ranks(torch.tensor([4.0, 6.0])).tolist() == [4.0, 6.0]
    assert runtime.peak_memory_mb() > 0


def test_the_cpu_peak_memory_starts_again_at_a_reset():
    """On the CPU the peak is the resident set's high-water mark, which a reset brings down to what is
    resident now (Linux's VmHWM); getrusage's ru_maxrss never comes down."""
    runtime = Runtime.resolve("cpu")
    assert runtime.reset_peak_memory()  # it could (Linux)
    before = runtime.peak_memory_mb()
    torch.ones(50_000_000)  # 191 MiB written and freed
    with_the_tensor = runtime.peak_memory_mb()
    runtime.reset_peak_memory()
    assert with_the_tensor > before + 150
    assert runtime.peak_memory_mb() < with_the_tensor - 150


def test_bf16_is_native_on_cpus_with_onednns_bf16_and_on_gpus_from_ampere_on(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4 (emulated bf16, slower than fp32), and asks about the
    current device: the capability of the device asked about decides (8.0, Ampere, and later). On the CPU,
    oneDNN's bf16 kernels decide (AVX-512 or AMX; an AVX2 CPU has none)."""
    from zoo.runtime import bf16_is_native

    for onednn_bf16 in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
        assert bf16_is_native(torch.device("cpu")) is onednn_bf16
    capabilities = {0: (7, 0), 1: (9, 0)}  # a V100 beside an H100
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capabilities[torch.device(device).index])
    assert not bf16_is_native(torch.device("cuda", 0)) and bf16_is_native(torch.device("cuda", 1))
