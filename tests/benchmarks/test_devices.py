"""The benchmark scripts' `--device`: resolved once through zoo.runtime, refused in one line where the
machine lacks it (or, for the CPU-only kernel benchmark, wherever it is not the CPU), and the timed
models get their inputs on the runtime's device."""

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks"
sys.path.insert(0, str(SCRIPTS))

import attention_kernels  # noqa: E402
import deepnet_stability  # noqa: E402
import deepnet_vs_torchscale  # noqa: E402
import peers  # noqa: E402
import pretrain_throughput  # noqa: E402
import speed  # noqa: E402

from zoo.runtime import Runtime  # noqa: E402

SCRIPTS_WITH_DEVICE = {module.__name__: module for module in
                       (speed, pretrain_throughput, deepnet_stability, deepnet_vs_torchscale, peers)}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def _exit_message(main, argv) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    message = caught.value.code
    assert isinstance(message, str), f"expected a message, got exit code {message!r}"
    assert "\n" not in message
    return message


@no_cuda
@pytest.mark.parametrize("script, argv", [
    ("speed", ["--peers", "none"]),
    ("pretrain_throughput", []),
    ("deepnet_stability", []),
    ("deepnet_vs_torchscale", []),
    ("peers", ["--check"]),
])
def test_cuda_is_refused_in_one_line_without_a_gpu(script, argv, tmp_path):
    module = SCRIPTS_WITH_DEVICE[script]
    out = ["--out", str(tmp_path / "out")] if script in ("speed", "pretrain_throughput", "deepnet_stability") else []
    message = _exit_message(module.main, argv + out + ["--device", "cuda"])
    assert message.startswith(f"{script}.py: device 'cuda' was asked for, but this machine has no usable CUDA GPU")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    assert torch.get_default_dtype() == torch.float32  # deepnet_vs_torchscale switches to fp64 only after


def test_a_device_name_that_is_not_one_is_refused(tmp_path):
    message = _exit_message(speed.main, ["--peers", "none", "--device", "gpu", "--out", str(tmp_path)])
    assert message.startswith("speed.py: device 'gpu' is not a device name (use cpu, cuda, cuda:N or auto)")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_attention_kernels_refuses_cuda_on_any_machine(device):
    message = _exit_message(attention_kernels.check_device, device)
    assert "runs on the CPU only" in message and "--device cpu" in message


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_attention_kernels_runs_on_the_cpu(device):
    attention_kernels.check_device(device)  # no exit


@no_cuda
def test_pretrain_throughput_uses_the_trainers_device():
    assert pretrain_throughput.resolve_runtime("auto").device == torch.device("cpu")
    assert pretrain_throughput.resolve_runtime("cpu").device == torch.device("cpu")
    assert pretrain_throughput.rank_counts(pretrain_throughput.resolve_runtime("auto")) == (1, 2)


class _DeviceStrictModel:
    """speed.py's model adapter around a module that refuses inputs not on its parameters' device."""

    def __init__(self):
        self.model = torch.nn.Linear(4, 4)
        self.calls = []

    def _check(self, *tensors):
        device = next(self.model.parameters()).device
        for tensor in tensors:
            if tensor.device != device:
                raise RuntimeError(f"input on {tensor.device}, parameters on {device}")
        self.calls.append(device)

    def train_step(self, ids, labels):
        self._check(ids, labels)

    def infer(self, ids):
        self._check(ids)


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_speed_run_cell_gives_the_models_their_inputs_on_the_runtime_device(mode):
    # "meta" stands for a device other than the CPU the batches are drawn on
    runtime = Runtime(torch.device("meta"))
    model = speed.place(_DeviceStrictModel(), runtime)
    timings = speed.run_cell({"strict": model}, seq_len=16, dtype=torch.float32, tokens=64, rounds=2, mode=mode,
                             runtime=runtime)
    assert len(timings["strict"]) == 2
    assert model.calls == [torch.device("meta")] * 3  # warm-up and two rounds


def test_speed_run_cell_on_the_cpu_by_default():
    model = _DeviceStrictModel()
    speed.run_cell({"strict": model}, seq_len=16, dtype=torch.bfloat16, tokens=64, rounds=1, mode="train")
    assert model.calls == [torch.device("cpu")] * 2

