"""Run a function on N gloo ranks of this machine, each a fresh process (spawned), and collect what
each rank returns. For the tests of code that every rank runs together (collectives): a collective
that does not pair up across ranks ends in the process group's timeout, raised in the test."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, timeout_s: float, out: str, fn, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    # the ranks meet through a store that waits long enough for a slow start; their collectives time out
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    result = fn(rank, world, *args)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    # leave together, as the trainer does (pretrain.trainer.close_distributed): a rank that tore its groups
    # down while another still used them sometimes ended in an abort
    if dist.is_initialized():  # unless `fn` left it
        dist.barrier()
        dist.destroy_process_group()


def run_ranks(fn, world: int = 2, timeout_s: float = 20, args: tuple = ()) -> list:
    """[fn(rank, world, *args) for each rank], run at once on `world` gloo ranks whose collectives time
    out after `timeout_s`; `fn` is a module-level function (pickled by name) returning JSON data. An
    exception on any rank is raised here."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank_main, args=(world, free_port(), timeout_s, out, fn, args), nprocs=world, join=True,
                           start_method="spawn")
        return [json.loads(Path(out, f"rank{rank}.json").read_text()) for rank in range(world)]
