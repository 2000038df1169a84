"""A rank that fails tells the others, and they stop at once instead of waiting for it.

A rank that raises mid-run (out of GPU memory, a bug, a full disk) leaves the process group; the other
ranks go on until their next collective with it, and on NCCL such a collective does not always notice
that a peer process is gone: they hung until the process group's timeout (ZOO_DIST_TIMEOUT_S, 30
minutes), every GPU of every other machine idle (a launcher stops the failed rank's own machine, not
the others). Here a thread of each rank looks in the rendezvous store every POLL_S seconds, on a
connection of its own, for the word that a rank failed; a rank whose run raises posts that word
(`announce`, from the entry point), and every other rank prints it and ends its process, wherever it
waits.

Every rank that learns the word, or stops for a reason of its own, counts itself in the store. Rank 0
holds the store where the processes meet without an agent (DeepSpeed's launcher, MPI, srun): before its
process ends on a failure, its own or another's, it waits until every rank is counted (up to three
looks), since the store and the word end with it.

A rank that is itself stopping (its own error, or a copy of rank 0's: pretrain/rank_zero.py) no longer
listens, so that its own message is the one it prints; a rank that was killed posts nothing, and the
others hear of it from their collectives (pretrain.__main__.lost_peer_message). The keys carry the
run's word (pretrain/rank_zero.py, `start_run`): torchrun's agent keeps its store across the restarts
of a job, and a restarted run must not read the failure of the attempt before it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

POLL_S = 2.0  # how often each rank looks for the word (one small request to the store)
CONNECT_TIMEOUT_S = 30.0
ANNOUNCE_WAIT_S = 5.0  # how long a failing rank waits for its watcher's connection, where it is still being made
_watch: _Watch | None = None


class _Watch:
    def __init__(self, rank: int, world: int, run: str, before_exit: Callable[[], None]):
        self.rank, self.world, self.before_exit = rank, world, before_exit
        self.key = f"zoo/{run}/a-rank-failed"
        self.counted_key = self.key + "/counted"  # ranks that have the word or stop on their own
        self.stopping = threading.Event()  # this rank is leaving (its own error, or the end of the run)
        self.counted = False
        self.lock = threading.Lock()
        self.store: dist.TCPStore | None = None  # the thread connects
        self.tried = threading.Event()  # the thread's connect returned or failed
        self.thread = threading.Thread(target=self._listen, name="zoo-rank-failure-watch", daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        # The connection is made here, so that a store that takes no more connections (rank 0 out of open
        # files: pretrain/trainer.py, raise_open_file_limit) costs the run its watch, not its start.
        try:
            store = _connect(timedelta(seconds=CONNECT_TIMEOUT_S))
        except Exception as error:
            if not self.stopping.is_set():  # (else the run ended, or this rank failed, meanwhile)
                why = str(error).splitlines()[0] if str(error) else type(error).__name__
                print(f"pretrain: rank {self.rank} of {self.world} does not watch for other ranks' failures (no "
                      f"connection to the rendezvous store: {why}); if another rank fails, this one waits for the "
                      "collectives' timeout (ZOO_DIST_TIMEOUT_S)", file=sys.stderr, flush=True)
            return
        else:
            with self.lock:
                self.store = store
        finally:
            self.tried.set()
        # a look every POLL_S seconds rather than one long wait: a store's wait logs a warning each time it
        # times out, and cannot be called off when the run ends
        while not self.stopping.wait(POLL_S):
            try:
                if not self.store.check([self.key]):
                    continue
                message = self.store.get(self.key).decode()
            except Exception:
                return  # the store is gone: rank 0 left (the run ended, or it died and the collectives say so)
            with self.lock:
                if self.stopping.is_set():
                    return
                self.stopping.set()
            print(f"pretrain: rank {self.rank} of {self.world} stops because {message}", file=sys.stderr, flush=True)
            try:
                self.count_and_hold(self.store)
                self.before_exit()
            finally:
                os._exit(1)  # the main thread may sit in a collective that will not return

    def count_and_hold(self, store) -> None:
        """Count this rank (once); on rank 0, wait until every rank is counted, up to 3 × POLL_S."""
        try:
            with self.lock:
                first, self.counted = not self.counted, True
            if first:
                store.add(self.counted_key, 1)
            deadline = time.monotonic() + 3 * POLL_S
            while self.rank == 0 and store.add(self.counted_key, 0) < self.world and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:
            pass  # the store is gone: the others hear of it from their collectives


def _connect(timeout: timedelta) -> dist.TCPStore:
    """A client of the run's rendezvous store (MASTER_ADDR:MASTER_PORT) of its own: the process group's
    client may be held for hours by a wait of the main thread (pretrain/rank_zero.py)."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout,
                         wait_for_workers=False)


def watch(rank: int, world: int, run: str, before_exit: Callable[[], None] = lambda: None) -> None:
    """Start listening for another rank's failure in run `run` (once per run; nothing in a world of one).
    `before_exit` runs before the process ends on another rank's word (cleanup that must not be skipped)."""
    global _watch
    if _watch is not None and not _watch.stopping.is_set():
        return
    if world > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        _watch = _Watch(rank, world, run, before_exit)


def announce(what: str | None) -> None:
    """This rank stops: stop listening, and tell the other ranks what happened to it ("failed: ...",
    after "rank R "); None for a copy of another rank's error, whose own rank tells them."""
    watch = _watch
    if watch is None:
        return
    with watch.lock:
        watch.stopping.set()
    watch.tried.wait(ANNOUNCE_WAIT_S)  # a failure in the run's first moments: the connection is being made
    with watch.lock:
        if watch.store is None:
            return  # no connection: the others hear of it from their collectives
    try:
        # the watcher's connection: a new one to a store that is gone (rank 0 died) takes many seconds to
        # give up, where this one fails at once
        if what is not None:
            # the first word stays: the rank that failed first, not those that lost contact with it after
            watch.store.compare_set(watch.key, "", f"rank {watch.rank} {what}")
    except Exception:
        return  # the store is gone too: the others hear of it from their collectives
    watch.count_and_hold(watch.store)


def stop() -> None:
    """The run ends normally: stop listening (a later run of this process watches afresh)."""
    global _watch
    if _watch is not None:
        _watch.stopping.set()
        _watch = None
