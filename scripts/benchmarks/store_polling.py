"""What the failure watchers' looks cost rank 0's rendezvous store at scale (pretrain/rank_failure.py).

Every rank's watcher looks in the store rank 0 holds every POLL_S (2 s) on a connection of its own: at
1024 ranks, 512 small requests a second. This starts a store as rank 0's process does (torch's TCPStore,
its default libuv server, in this process, which does nothing else) and N watchers as threads spread over
a few processes, each with its own connection, looking as the watcher does (`check([key])` every POLL_S,
phases spread over the interval), and measures, for each N:

- the looks per second the store answered;
- the CPU time of the store's process per second of wall time (rank 0's share of a core);
- the round trip of what a run asks of the store meanwhile (a set, a get and an add, as
  pretrain/rank_zero.py and torch's store barriers do), median and 99th percentile, from another process,
  against the same figure with no watcher.

    python scripts/benchmarks/store_polling.py [--ranks 0 256 1024] [--seconds 20]

Writes store_polling.json, .md and .png to scripts/benchmarks/results/store_polling/. Rank 0 also needs an
open file per connection (pretrain/trainer.py, raise_open_file_limit); the script raises this process's
limit as the trainer does. Connecting is not what is measured, and it is slow on the machines of this
project: a TCPStore client took about 0.2 s to connect after the first twenty or so (either server
backend; plain sockets connect in microseconds), so 1024 watchers take about a minute to set up (the
trainer's watcher connects on its own thread, so a slow connect does not hold up a run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pretrain.rank_failure import POLL_S  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "store_polling"
THREADS_PER_PROCESS = 512
KEY = "zoo/benchmark/a-rank-failed"


def client(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=600))


def window(port: int) -> tuple[float, float]:
    """This process is ready; the measured window (start, stop), once every process is."""
    store = client(port)
    store.add("ready", 1)
    start, stop = json.loads(store.get("window"))
    return start, stop


def watchers(port: int, count: int, looks) -> None:
    """`count` watchers in this process, each on its own connection, first look at a random phase."""
    done = []
    connected = [client(port) for _ in range(count)]
    start, stop = window(port)

    def watch(store: dist.TCPStore) -> None:
        n = 0
        next_look = start + random.uniform(0, POLL_S)
        while True:
            time.sleep(max(0.0, next_look - time.time()))
            if time.time() >= stop:
                break
            store.check([KEY])
            n += 1
            next_look += POLL_S
        done.append(n)

    threads = [threading.Thread(target=watch, args=(store,), daemon=True) for store in connected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    looks.put(sum(done))


def prober(port: int, result) -> None:
    """A set, a get and an add in a row, every 10 ms, timed as one round trip."""
    store = client(port)
    start, stop = window(port)
    times = []
    time.sleep(max(0.0, start - time.time()))
    i = 0
    while time.time() < stop:
        t0 = time.perf_counter()
        store.set(f"probe/{i % 64}", "x" * 64)
        store.get(f"probe/{i % 64}")
        store.add("probe/count", 1)
        times.append(time.perf_counter() - t0)
        i += 1
        time.sleep(0.01)
    result.put(times)


def measure(ranks: int, seconds: float) -> dict:
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    ctx = mp.get_context("spawn")
    looks, probe = ctx.Queue(), ctx.Queue()
    groups = [min(THREADS_PER_PROCESS, ranks - i) for i in range(0, ranks, THREADS_PER_PROCESS)]
    procs = [ctx.Process(target=watchers, args=(port, n, looks)) for n in groups]
    procs.append(ctx.Process(target=prober, args=(port, probe)))
    for proc in procs:
        proc.start()
    while store.add("ready", 0) < len(procs):  # every watcher connected
        time.sleep(0.1)
    start = time.time() + 1.0
    stop = start + seconds
    store.set("window", json.dumps([start, stop]))
    time.sleep(max(0.0, start - time.time()))
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    time.sleep(max(0.0, stop - time.time()))
    cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    total_looks = sum(looks.get(timeout=120) for _ in groups)
    times = probe.get(timeout=120)
    for proc in procs:
        proc.join(timeout=60)
    del store
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    quantiles = statistics.quantiles(times, n=100)
    return {"ranks": ranks, "looks_per_s": total_looks / seconds, "store_cpu_share": cpu / (wall1 - wall0),
            "round_trip_ms_median": 1e3 * statistics.median(times), "round_trip_ms_p99": 1e3 * quantiles[98],
            "probes": len(times)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| watchers (ranks) | looks/s answered | store process CPU | run's round trip, median | p99 "
             "| median × no watchers |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['ranks']} | {row['looks_per_s']:.0f} | {100 * row['store_cpu_share']:.1f}% of a core "
                     f"| {row['round_trip_ms_median']:.3f} ms | {row['round_trip_ms_p99']:.3f} ms "
                     f"| {row['round_trip_ms_median'] / base['round_trip_ms_median']:.2f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    ranks = [row["ranks"] for row in rows]
    left.plot(ranks, [100 * row["store_cpu_share"] for row in rows], "o-")
    left.set(xlabel="ranks watching", ylabel="store process CPU, % of a core", title="rank 0's store")
    right.plot(ranks, [row["round_trip_ms_median"] for row in rows], "o-", label="median")
    right.plot(ranks, [row["round_trip_ms_p99"] for row in rows], "s--", label="99th percentile")
    right.set(xlabel="ranks watching", ylabel="ms", title="a set + get + add meanwhile")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 256, 1024])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(args.ranks) + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    rows = []
    for ranks in sorted(set(args.ranks) | {0}):
        rows.append(measure(ranks, args.seconds))
        print(f"{ranks} watchers: {rows[-1]}", flush=True)
    table = report(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store_polling.json").write_text(json.dumps({"poll_s": POLL_S, "seconds": args.seconds, "rows": rows},
                                                            indent=1))
    (args.out / "store_polling.md").write_text(table + "\n")
    plot(rows, args.out / "store_polling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
