"""The random state a checkpoint keeps per rank, and what a resume restores of it on CUDA; the optimizer
groups a resume restores."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from pretrain import checkpoint

from .test_trainer import ROOT, free_port


class FakeGPUs:
    """torch.cuda's random-state calls over `count` GPUs, `current` the rank's (this machine has none); GPU
    i's state starts as the one number `first + i`."""

    def __init__(self, monkeypatch, count: int, current: int, first: int = 0):
        self.states = {i: torch.tensor([first + i], dtype=torch.uint8) for i in range(count)}
        self.current = current
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.current].clone())
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i].clone() for i in range(count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [self.set(s, i) for i, s in enumerate(states)])

    def set(self, state, device="cuda"):
        index = self.current if device == "cuda" else device
        if index >= len(self.states):
            raise IndexError(f"GPU {index} of {len(self.states)}")  # torch: default_generators[index]
        self.states[index] = state.clone()

    def numbers(self) -> list[int]:
        return [int(self.states[i]) for i in range(len(self.states))]


def test_a_rank_saves_and_restores_its_own_gpus_random_state(monkeypatch):
    """Each rank sees every GPU of its node; it keeps its own GPU's state, and a resume sets that one only,
    with the CPU's torch, numpy and Python states, on a node with as many GPUs or fewer."""
    gpus = FakeGPUs(monkeypatch, count=8, current=5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = checkpoint.rng_state()
    assert [int(s) for s in state["cuda"]] == [5]
    expected = torch.rand(3), np.random.rand(3), random.random()
    for count, current in (8, 5), (1, 0):  # the same node, or one GPU per process (rank 5 of a larger job)
        gpus = FakeGPUs(monkeypatch, count=count, current=current, first=100)
        checkpoint.set_rng_state(state)
        assert gpus.numbers() == [5 if i == current else 100 + i for i in range(count)]
        got = torch.rand(3), np.random.rand(3), random.random()
        torch.testing.assert_close(got[0], expected[0])
        assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


@pytest.mark.parametrize("count, current", [(8, 5), (4, 3), (8, 0)])
def test_a_checkpoint_with_every_visible_gpus_state_restores_the_ranks_own(monkeypatch, count, current):
    """Checkpoints written before kept every visible GPU's state (`get_rng_state_all`); a resume sets the
    current GPU's from its own index, where `set_rng_state_all` set all eight and failed on fewer GPUs."""
    FakeGPUs(monkeypatch, count=8, current=0)
    state = checkpoint.rng_state()
    state["cuda"] = torch.cuda.get_rng_state_all()
    gpus = FakeGPUs(monkeypatch, count=count, current=current, first=100)
    checkpoint.set_rng_state(state)
    assert gpus.numbers() == [current if i == current else 100 + i for i in range(count)]


def test_an_older_checkpoint_from_more_gpus_than_the_rank_sees_leaves_its_state(monkeypatch):
    """An old checkpoint of eight GPUs' states resumed where this rank's GPU index is beyond them: nothing to
    restore (the trainer seeds dropout from each micro-batch's first sample anyway), not an IndexError."""
    FakeGPUs(monkeypatch, count=2, current=0)
    state = checkpoint.rng_state()
    state["cuda"] = torch.cuda.get_rng_state_all()
    gpus = FakeGPUs(monkeypatch, count=4, current=3, first=100)
    checkpoint.set_rng_state(state)
    assert gpus.numbers() == [100, 101, 102, 103]


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
import deepspeed, torch
import zoo
from pretrain import checkpoint
from pretrain.optim import Lamb, parameter_groups

directory = Path(sys.argv[1])
config = {"train_micro_batch_size_per_gpu": 1, "torch_autocast": {"enabled": True, "dtype": "bfloat16"},
          "zero_optimization": {"stage": 0}}

def engine():
    torch.manual_seed(0)
    model = zoo.create("deepnet-mini")
    return deepspeed.initialize(model=model, optimizer=Lamb(parameter_groups(model, 0.01), lr=1e-3),
                                config=config)[0]

saved = engine()
saved.save_checkpoint(str(directory), tag="step_1")
# as checkpoints written before the pins: FusedLamb's default bounds in the no-decay group
[states] = directory.glob("step_1/*model_states.pt")
state = torch.load(states, weights_only=False)
for group in state["optimizer"]["param_groups"]:
    group.update(min_coeff=0.01, max_coeff=10.0)
torch.save(state, states)
resumed = engine()
checkpoint.load(resumed, directory, "step_1", rank=0, rng_from=None)
print(json.dumps([[g["adapt"], g["min_coeff"], g["max_coeff"]] for g in resumed.optimizer.param_groups]))
"""


def test_a_resume_pins_the_unadapted_groups_of_an_older_checkpoint(tmp_path):
    """DeepSpeed's engine puts back the optimizer's groups as the checkpoint saved them, hyperparameters
    included; one saved before the no-decay group pinned its trust ratio to 1 would give FusedLamb's [0.01,
    10] clipping back to the norm gains and biases on CUDA (tests/pretrain/test_optim.py). Resumed, the
    group is pinned again and the decaying group keeps what it saved. A real ZeRO-0 engine, in a process
    of its own (DeepSpeed initialises torch.distributed)."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    groups = json.loads(result.stdout.strip().splitlines()[-1])
    assert groups == [[True, 0.01, 10.0], [False, 1.0, 1.0]]
