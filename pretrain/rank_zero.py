"""Work that rank 0 does alone, ended the same way on every rank.

Some of a run's work is rank 0's alone: tokenising the corpus into the cache, choosing the checkpoint a
resume starts from, converting a checkpoint for another number of ranks, completing a checkpoint (its
COMPLETE marker and the pruning of older ones), and the export with publishing. The other ranks wait for
it in the rendezvous store rather than in a collective:

- rank 0 posts how its work ended, its result or its error, and each other rank stops with a copy of
  the error; in a barrier they waited for a rank that had left, on other machines until the process
  group's timeout (ZOO_DIST_TIMEOUT_S);
- the wait may outlast that timeout where the work is long (tokenising a large corpus takes hours),
  where a collective would end the run (on NCCL its watchdog ends the process);
- a rank 0 that dies takes the store's server with it, which ends their wait at once.

Every rank calls these functions in the same order: the store's keys count the calls, after the run's
word (`start_run`), which rank 0 draws for each run: torchrun's agent keeps its store across the
restarts of a job, where a restarted run would read the words of the attempt before it. The words are
JSON: the store takes anything from anyone who reaches its port.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from datetime import timedelta
from typing import Callable, TypeVar

import torch.distributed as dist
from torch.distributed import distributed_c10d

from . import rank_failure
from .errors import RunError

T = TypeVar("T")

# How long the other ranks wait for rank 0's long work: tokenising the corpus on a first run (hours on a
# large corpus) and converting a checkpoint for another number of ranks; override with ZOO_RANK0_WAIT_S.
LONG_WAIT_S = 7 * 24 * 3600
_ROUNDS = itertools.count()
_run = "-"  # the run's word (start_run)


def long_wait_s() -> float:
    return float(os.environ.get("ZOO_RANK0_WAIT_S", LONG_WAIT_S))


def start_run() -> str:
    """Every rank together, once the process group is up: rank 0 draws the run's word and every rank
    takes it (one collective), and the count of calls starts again. Returns the word."""
    global _ROUNDS, _run
    word = [uuid.uuid4().hex if not dist.is_initialized() or dist.get_rank() == 0 else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(word, src=0)
    _ROUNDS, _run = itertools.count(), word[0]
    return _run


def store_key(section: str) -> tuple[dist.Store, str]:
    """The rendezvous store, and a key for this call of `section` in this run, the same on every rank."""
    return distributed_c10d._get_default_store(), f"zoo/{_run}/{section}/{next(_ROUNDS)}"


def on_rank0(section: str, work: Callable[[], T], wait_s: float | None = None, share: bool = False) -> T | None:
    """Run `work` on rank 0 alone and return when it has ended, on every rank.

    Rank 0 returns its value or raises its error. Every other rank waits up to `wait_s` seconds (None: the
    process group's timeout, which the store shares), then returns the value where `share` (JSON through
    the store: keep it small), None otherwise, or raises a RunError with rank 0's message, marked
    `mirrored` (the entry point prints it once, on rank 0, and the rank stops listening for failures
    first: pretrain/rank_failure.py). Outside a process group of several ranks this is `work()`."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return work()
    store, key = store_key(section)
    if dist.get_rank() == 0:
        try:
            value = work()
            word = json.dumps({"value": value if share else None})
        except Exception as error:
            store.set(key, json.dumps({"error": str(error)}))
            raise
        store.set(key, word)
        return value
    if wait_s is None:
        store.wait([key])
    else:
        store.wait([key], timedelta(seconds=wait_s))
    outcome = json.loads(store.get(key))
    if "error" in outcome:
        rank_failure.announce(None)  # rank 0 tells the others itself
        mirrored = RunError(outcome["error"])
        mirrored.mirrored = True
        raise mirrored
    return outcome["value"]
