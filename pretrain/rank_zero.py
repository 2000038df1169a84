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

Every rank calls these functions in the same order: the store's keys count the calls.
"""

from __future__ import annotations

import itertools
import os
import pickle
from datetime import timedelta
from typing import Callable, TypeVar

import torch.distributed as dist
from torch.distributed import distributed_c10d

from .errors import RunError

T = TypeVar("T")

# How long the other ranks wait for rank 0's long work: tokenising the corpus on a first run (hours on a
# large corpus) and converting a checkpoint for another number of ranks; override with ZOO_RANK0_WAIT_S.
LONG_WAIT_S = 7 * 24 * 3600
_ROUNDS = itertools.count()


def long_wait_s() -> float:
    return float(os.environ.get("ZOO_RANK0_WAIT_S", LONG_WAIT_S))


def store_key(section: str) -> tuple[dist.Store, str]:
    """The rendezvous store, and a key for this call of `section` that is the same on every rank."""
    return distributed_c10d._get_default_store(), f"zoo/{section}/{next(_ROUNDS)}"


def on_rank0(section: str, work: Callable[[], T], wait_s: float | None = None, share: bool = False) -> T | None:
    """Run `work` on rank 0 alone and return when it has ended, on every rank.

    Rank 0 returns its value or raises its error. Every other rank waits up to `wait_s` seconds (None: the
    process group's timeout, which the store shares), then returns the value where `share` (pickled through
    the store: keep it small), None otherwise, or raises a RunError with rank 0's message, marked
    `mirrored` (the entry point prints it once, on rank 0). Outside a process group of several ranks this
    is `work()`."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return work()
    store, key = store_key(section)
    if dist.get_rank() == 0:
        try:
            value = work()
        except Exception as error:
            store.set(key, pickle.dumps((str(error), None)))
            raise
        store.set(key, pickle.dumps((None, value if share else None)))
        return value
    if wait_s is None:
        store.wait([key])
    else:
        store.wait([key], timedelta(seconds=wait_s))
    message, value = pickle.loads(store.get(key))
    if message is not None:
        mirrored = RunError(message)
        mirrored.mirrored = True
        raise mirrored
    return value
