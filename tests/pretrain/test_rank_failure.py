"""A rank that fails mid-run stops the others at once, with its error (pretrain/rank_failure.py).

Two ranks of a real run on this machine, each its own process as under srun or on two machines (no
launcher kills the other). At step 6 one rank runs out of GPU memory, while the other waits in a
collective that does not notice that its peer is gone, as NCCL's may not: here a wait of ten minutes.
Before, it waited there until the end.
"""

import os
import subprocess
import sys

import pytest

from .test_trainer import ROOT, cache_dir, corpus_file, free_port, write_recipe  # noqa: F401  (fixtures)

HARNESS = '''
import os
import sys
import threading

import torch

from pretrain import trainer
from pretrain.__main__ import main

FAILING = int(os.environ["FAILING_RANK"])
train_step = trainer.Trainer._train_step


def failing_step(self, batches, logging_step):
    if self.step == 5:
        if self.rank == FAILING:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU {self.rank} has a "
                                         "total capacity of 79.10 GiB of which 1.19 GiB is free.")
        threading.Event().wait(600)  # a collective that never ends
    return train_step(self, batches, logging_step)


trainer.Trainer._train_step = failing_step
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("failing", [1, 0])
def test_a_rank_out_of_memory_stops_the_other_at_once_with_its_error(tmp_path, corpus_file, cache_dir, failing):
    """Rank 0 failing is the harder case: the store lives in its process and goes with it, so it waits
    until the other rank has the word."""
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "oom", steps=12)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, str(harness), "--config", str(recipe)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                                   "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                   "OMP_NUM_THREADS": "1", "FAILING_RANK": str(failing)})
             for rank in range(2)]
    try:
        outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    codes = [rank.returncode for rank in ranks]
    other = 1 - failing
    assert codes == [1, 1], (codes, outputs[0][-3000:], outputs[1][-3000:])
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in outputs[failing]
    assert (f"pretrain: rank {other} of 2 stops because rank {failing} failed: OutOfMemoryError: CUDA out of memory. "
            f"Tried to allocate 2.00 GiB. GPU {failing} has a total capacity of 79.10 GiB of which 1.19 GiB is free.\n"
            ) in outputs[other]
    assert "stops because" not in outputs[failing]
    # the checkpoints before the failure are complete, and none after it was started
    assert sorted(p.name for p in (tmp_path / "oom" / "checkpoints").iterdir()) == ["step_0000004"]
