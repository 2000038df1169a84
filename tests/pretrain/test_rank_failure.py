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


def test_a_watch_that_cannot_connect_costs_the_run_nothing_but_the_watch(monkeypatch, capsys):
    """Rank 0's store takes no more connections (its process out of open files) or cannot be reached: the
    watcher's connect happens on its thread, so the run starts while it tries; when it gives up the rank says
    it does not watch, and a later failure of its own ends it as before (nothing to post it to). Before, the
    connect was made in `watch`, and its timeout raised from the trainer's start."""
    from pretrain import rank_failure

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # nothing listens there
    monkeypatch.setattr(rank_failure, "CONNECT_TIMEOUT_S", 2.0)
    rank_failure.watch(1, 2, "a-run")
    watch = rank_failure._watch
    try:
        assert watch is not None and not watch.tried.is_set()  # still connecting: watch() did not wait for it
        assert watch.tried.wait(60)
        assert watch.store is None
        assert capsys.readouterr().err.startswith("pretrain: rank 1 of 2 does not watch for other ranks' failures (no "
                                                  "connection to the rendezvous store: ")
        rank_failure.announce("failed: OutOfMemoryError: CUDA out of memory")  # returns: no store to post it to
        assert watch.stopping.is_set()
    finally:
        rank_failure.stop()


def test_every_rank_raises_its_open_file_limit_and_rank_0_says_where_the_hard_one_is_short(monkeypatch, capsys):
    """Rank 0's store keeps connections from every rank and its watcher (3 open files per rank with NCCL's
    bootstrap); a soft limit of 1024 under a hard one of 20000 ran out at a few hundred ranks. The soft limit
    is raised to the hard one; where the hard one is short of 3 per rank, rank 0 names what it needs."""
    import resource

    from pretrain.trainer import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        assert raise_open_file_limit(2, 0) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    assert raise_open_file_limit(1000, 1) == 1024 and capsys.readouterr().err == ""  # only rank 0 holds the store
    assert raise_open_file_limit(1000, 0) == 1024
    assert capsys.readouterr().err.startswith("pretrain: rank 0 may hold about 3512 open files (3 per rank of 1000: "
                                              "the rendezvous store's connections and NCCL's) but may open 1024")
