"""A rank that fails mid-run stops the others at once, with its error (pretrain/rank_failure.py).

Ranks of a real run on this machine, each its own process as under srun or on two machines (no
launcher kills the other). At step 6 one rank runs out of GPU memory, while the other waits in a
collective that does not notice that its peer is gone, as NCCL's may not: here a wait of ten minutes.
Before, it waited there until the end. Last, the store that carries the word lives in rank 0's process:
rank 0 keeps it until every rank has seen the word.
"""

import os
import subprocess
import sys

import pytest
import yaml

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


def start_ranks(recipe, harness, world, failing, port) -> list[subprocess.Popen]:
    """`world` ranks of the run, each its own process (as under srun, or one per machine)."""
    return [subprocess.Popen([sys.executable, str(harness), "--config", str(recipe)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
                                  "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                  "OMP_NUM_THREADS": "1", "FAILING_RANK": str(failing)})
            for rank in range(world)]


def outputs_of(ranks) -> tuple[list[int], list[str]]:
    try:
        outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    return [rank.returncode for rank in ranks], outputs


def out_of_memory(rank: int) -> str:
    return (f"OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU {rank} has a total capacity of "
            "79.10 GiB of which 1.19 GiB is free.")


@pytest.mark.parametrize("world, failing", [(2, 1), (2, 0), (3, 1)])
def test_a_rank_out_of_memory_stops_the_others_at_once_with_its_error(tmp_path, corpus_file, cache_dir, world, failing):
    """Rank 0 failing, or a rank beside two others, are the harder cases: the store lives in rank 0's
    process and ends with it, so it waits until every rank has the word."""
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "oom", steps=12)
    settings = yaml.safe_load(recipe.read_text())
    settings["deepspeed"]["train_batch_size"] = 4 * world  # a micro-batch of 4 per rank
    recipe.write_text(yaml.safe_dump(settings, allow_unicode=True))
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    codes, outputs = outputs_of(start_ranks(recipe, harness, world, failing, free_port()))
    assert codes == [1] * world, (codes, *[output[-3000:] for output in outputs])
    assert f"torch.{out_of_memory(failing)}" in outputs[failing]
    for rank in range(world):
        if rank != failing:
            assert f"pretrain: rank {rank} of {world} stops because rank {failing} failed: {out_of_memory(failing)}\n" \
                in outputs[rank], outputs[rank][-3000:]
    assert "stops because" not in outputs[failing]
    hint = (f"pretrain: Last complete checkpoint: {tmp_path / 'oom' / 'checkpoints' / 'step_0000004'} (continue with "
            "--resume, on these nodes or on another number of nodes/ranks).\n")
    assert hint in outputs[0] and all(hint not in output for output in outputs[1:])  # rank 0 says it, once
    # the checkpoints before the failure are complete, and none after it was started
    assert sorted(p.name for p in (tmp_path / "oom" / "checkpoints").iterdir()) == ["step_0000004"]


LISTENER = '''
import sys
import time

import torch.distributed as dist

from pretrain import rank_failure

rank, port = int(sys.argv[1]), int(sys.argv[2])
store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, wait_for_workers=False)  # rank 0 holds the store
store.add("ready", 1)  # every process is up; then all start at rank 0's time
while store.add("ready", 0) < 3:
    time.sleep(0.05)
if rank == 0:
    store.set("start", str(time.time() + 1.0))
time.sleep(max(0.0, float(store.get("start")) + (1.0 if rank == 2 else 0.0) - time.time()))
rank_failure.watch(rank, 3, "a-run")  # rank 2 looks one second after rank 0, every two seconds
if rank == 1:
    time.sleep(1.5)
    rank_failure.announce("failed: OutOfMemoryError: CUDA out of memory")
    sys.exit(1)
time.sleep(60)  # a collective that never ends
'''


def test_rank_0_keeps_the_store_until_every_rank_has_the_word(tmp_path):
    """Rank 1 fails; rank 0, which holds the store, sees the word at its next look and must not end its
    process (and the store) before rank 2, whose looks fall a second later, has seen it too."""
    listener = tmp_path / "listener.py"
    listener.write_text(LISTENER)
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, str(listener), str(rank), str(port)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for rank in range(3)]
    codes, outputs = outputs_of(ranks)
    assert codes == [1, 1, 1], (codes, outputs)
    for rank in (0, 2):
        assert outputs[rank] == (f"pretrain: rank {rank} of 3 stops because rank 1 failed: OutOfMemoryError: CUDA out "
                                 "of memory\n"), outputs[rank]
