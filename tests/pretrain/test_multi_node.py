"""Pretraining over several nodes with DeepSpeed's own launcher, the nodes being launchers on one
machine that meet on the loopback (`deepspeed --no_ssh --node_rank R --hostfile H --master_addr
127.0.0.1 ...`, as scripts/launch_multi_node.sh --loopback starts them):

- two nodes × one rank follow the curve of one node × two ranks (same seed and global batch);
- a checkpoint written by two nodes resumes on one node with one rank and with two, ZeRO 0, 1, 2;
- a node killed mid-run (or one that stops answering) stops the survivor, with a message, in bounded
  time, and leaves the last complete checkpoint resumable.

Every process group is on 127.0.0.1; every run uses OMP_NUM_THREADS=1.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.checkpoint import complete_checkpoints, find_checkpoint
from pretrain.metrics import read_metrics

from .test_trainer import ROOT, cache_dir, corpus_file, free_port, launch, losses, write_recipe  # noqa: F401  (fixtures)

SCRIPT = ROOT / "scripts" / "launch_multi_node.sh"


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def start_nodes(recipe, tmp_path, nodes=2, ranks=1, args=(), env_extra=None) -> list[subprocess.Popen]:
    """One DeepSpeed launcher per node, each in its own process group (a node is killed as a whole);
    node i's output goes to tmp_path/node<i>.log (process.log)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"node{i} slots={ranks}\n" for i in range(nodes)))
    port = free_port()
    processes = []
    for node in range(nodes):
        log = tmp_path / f"node{node}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["deepspeed", "--no_ssh", "--node_rank", str(node), "--hostfile", str(hostfile), "--master_addr",
                 "127.0.0.1", "--master_port", str(port), "--module", "pretrain", "--config", str(recipe), *args],
                cwd=ROOT, env=env(**(env_extra or {})), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        process.log = log
        processes.append(process)
    return processes


def output_of(process) -> str:
    return process.log.read_text(errors="replace")


def finish(processes, timeout=600) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), output_of(p)) for p in processes]


def one_node(recipe, ranks, args=()) -> tuple[int, str]:
    """One node with `ranks` ranks, through DeepSpeed's launcher."""
    command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", "pretrain",
               "--config", str(recipe), *args]
    result = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def wait_for_step(run_dir: Path, step: int, processes, timeout=300) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and any(r["step"] >= step for r in read_metrics(metrics, "train")):
            return
        if any(p.poll() is not None for p in processes):
            raise AssertionError("a node exited early:\n" + "\n".join(output_of(p)[-3000:] for p in processes))
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {metrics} after {timeout} s")


def records_since_resume(run_dir: Path) -> list[dict]:
    records = read_metrics(run_dir / "metrics.jsonl")
    start = max(i for i, r in enumerate(records) if r["kind"] == "resume")
    return records[start:]


# --------------------------------------------------------------------------- the launcher script


@pytest.fixture
def fake_deepspeed(tmp_path):
    """A `deepspeed` on PATH that records its arguments (and the hostfile it was given) per node."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.mkdir()
    fake = bin_dir / "deepspeed"
    fake.write_text('#!/usr/bin/env bash\n'
                    'rank=0; hostfile=""; prev=""\n'
                    'for a in "$@"; do [ "$prev" = --node_rank ] && rank=$a; [ "$prev" = --hostfile ] && hostfile=$a; prev=$a; done\n'
                    f'printf "%s\\n" "$@" > {log}/node$rank.args\n'
                    f'cat "$hostfile" > {log}/node$rank.hostfile\n'
                    'echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"\n')
    fake.chmod(0o755)
    return bin_dir, log


def run_script(args, fake_deepspeed, **extra):
    bin_dir, _ = fake_deepspeed
    environment = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "DEEPSPEED_ARGS",
                                                                    "OMP_NUM_THREADS")}
    environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", **extra)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=60)


def test_launch_script_forms(fake_deepspeed):
    """The three forms of scripts/launch_multi_node.sh build exactly the documented deepspeed commands."""
    _, log = fake_deepspeed
    hostfile = ROOT / "scripts" / "hostfile.example"
    # ssh/pdsh: run on the first machine; the master is the hostfile's first host
    result = run_script([str(hostfile), "R.yaml", "training.steps=5", "--resume"], fake_deepspeed,
                        DEEPSPEED_ARGS="--ssh_port 2222")
    assert result.returncode == 0, result.stderr
    assert (log / "node0.args").read_text().split() == [
        "--hostfile", str(hostfile), "--master_addr", "worker-0", "--master_port", "29500", "--ssh_port", "2222",
        "--module", "pretrain", "--config", "R.yaml", "training.steps=5", "--resume"]
    # no ssh: one launcher per machine, told its node rank
    result = run_script(["--node-rank", "1", str(hostfile), "R.yaml"], fake_deepspeed, MASTER_PORT="29999")
    assert result.returncode == 0, result.stderr
    assert (log / "node1.args").read_text().split() == [
        "--hostfile", str(hostfile), "--master_addr", "worker-0", "--master_port", "29999", "--no_ssh",
        "--node_rank", "1", "--module", "pretrain", "--config", "R.yaml"]
    # loopback: both nodes on this machine, one hostfile, one port, 127.0.0.1
    result = run_script(["--loopback", "2x2", "R.yaml", "a=1"], fake_deepspeed)
    assert result.returncode == 0, result.stderr
    calls = [(log / f"node{i}.args").read_text().split() for i in (0, 1)]
    for node, call in enumerate(calls):
        assert call[:4] == ["--no_ssh", "--node_rank", str(node), "--hostfile"]
        assert call[5:9] == ["--master_addr", "127.0.0.1", "--master_port", calls[0][8]]
        assert call[9:] == ["--module", "pretrain", "--config", "R.yaml", "a=1"]
        assert (log / f"node{node}.hostfile").read_text() == "node0 slots=2\nnode1 slots=2\n"
    threads = max(1, len(os.sched_getaffinity(0)) // 4)  # the cores shared by all 4 ranks
    assert sorted(result.stdout.splitlines()) == [f"[node{i}] OMP_NUM_THREADS={threads}" for i in (0, 1)]
    bad = run_script(["--loopback", "two", "R.yaml"], fake_deepspeed)
    assert bad.returncode == 2 and "NODESxRANKS" in bad.stderr


@pytest.mark.parametrize("args,expected", [
    (["R.yaml", "4", "training.steps=10", "--resume"], ["4", "training.steps=10", "--resume"]),
    (["R.yaml", "--resume"], ["2", "--resume"]),  # not a number: the default N, and the argument reaches pretrain
    (["R.yaml", "training.steps=10"], ["2", "training.steps=10"]),
    (["R.yaml"], ["2"]),
])
def test_single_node_script_takes_n_only_when_it_is_a_number(fake_deepspeed, args, expected):
    bin_dir, log = fake_deepspeed
    result = subprocess.run(["bash", str(ROOT / "scripts" / "launch_single_node.sh"), *args], cwd=ROOT,
                            env=env(PATH=f"{bin_dir}:{os.environ['PATH']}"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ranks, *rest = expected
    assert (log / "node0.args").read_text().split() == ["--num_gpus", ranks, "--module", "pretrain", "--config", "R.yaml",
                                                        *rest]


# --------------------------------------------------------------------------- two nodes, one machine


def test_two_nodes_on_the_loopback_follow_the_one_node_curve(tmp_path, corpus_file, cache_dir):
    """The quickstart recipe for a few steps: 1 node × 2 ranks, then 2 nodes × 1 rank through
    scripts/launch_multi_node.sh --loopback 2x1. Same ranks, same data and dropout masks, same
    all-reduce: the curves are the same (bitwise, in practice)."""
    overrides = [f"data.sources=[{{type: text, path: '{corpus_file}'}}]", f"data.cache_dir={cache_dir}",
                 "training.steps=3", "training.log_every=1", "publish=null", "training.export=false",
                 # micro-batches of 4, not the quickstart's 32: its bf16 steps took minutes on a CPU without AMX
                 "deepspeed.train_batch_size=8", "deepspeed.train_micro_batch_size_per_gpu=4"]
    one_dir, two_dir = tmp_path / "one-node", tmp_path / "two-nodes"
    code, output = launch("quickstart", args=[*overrides, f"training.output_dir={one_dir}"])
    assert code == 0, output[-3000:]
    result = subprocess.run(["bash", str(SCRIPT), "--loopback", "2x1", "quickstart", *overrides,
                             f"training.output_dir={two_dir}"], cwd=ROOT, env=env(), capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for node in (0, 1):
        assert f"--no_ssh --node_rank {node} --hostfile" in output and "--master_addr 127.0.0.1" in output
    assert "[node0] pretrain: finished quickstart at step 3" in output

    run = read_metrics(two_dir / "metrics.jsonl", "run")[-1]
    assert run["world_size"] == 2
    reference, curve = losses(one_dir), losses(two_dir)
    assert sorted(curve) == sorted(reference) == [1, 2, 3]
    for step, loss in reference.items():
        assert curve[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    evals = [r["mlm_loss"] for r in read_metrics(two_dir / "metrics.jsonl", "eval")]
    assert evals == pytest.approx([r["mlm_loss"] for r in read_metrics(one_dir / "metrics.jsonl", "eval")], rel=1e-6)
    last = find_checkpoint(two_dir / "checkpoints", None)
    assert (last.step, last.world_size) == (3, 2)


# --------------------------------------------------------------------------- resume on another topology


@pytest.mark.slow
@pytest.mark.parametrize("zero,optimizer", [(0, "lamb"), (1, "adamw"), (2, "adamw")])
def test_two_node_checkpoint_resumes_on_one_node(tmp_path, corpus_file, cache_dir, zero, optimizer):
    """2 nodes × 1 rank train 8 steps (checkpoints at 4 and 8); the step-4 checkpoint then resumes on
    1 node × 1 rank (ZeRO ≥ 1: through DeepSpeed's universal checkpoint) and on 1 node × 2 ranks.

    Dropout stays on (0.1), bf16 autocast. The data stream is the same (consumed sequences match) and
    so are the dropout masks (seeded by each micro-batch's first sample; micro-batches keep 4
    sequences). 1 × 2 is the checkpoint's own world size: the continuation is exact. On 1 × 1 the
    first step after the resume runs the restored weights on the same batch and masks: its loss
    matches to fp32 rounding (measured 5e-8 relative). Later steps differ by the gradient
    reduction: on one rank the two micro-batches accumulate locally, on two they are all-reduced,
    and under ZeRO 1/2 DeepSpeed all-reduces autocast (Linear) gradients in bf16, a rounding of 2^-9
    per element that one rank never applies. Measured over steps 5-8: at most 7.5e-5 relative (ZeRO 0
    with LAMB and fp32 all-reduce: 5e-8). The tolerance, 1e-3, has 13× headroom over that and is
    still 3.5× below what a real mistake costs: the same resume with other dropout masks (micro-batch
    8) was 3.5e-3 to 1.3e-2 off, and a different batch moves the loss by percents."""
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "ref", zero=zero, optimizer=optimizer, steps=8)
    reference_dir = tmp_path / "ref"
    results = finish(start_nodes(recipe, tmp_path))
    assert all(code == 0 for code, _ in results), "\n".join(output[-3000:] for _, output in results)
    reference = {r["step"]: r for r in read_metrics(reference_dir / "metrics.jsonl", "train")}
    assert (find_checkpoint(reference_dir / "checkpoints", "4").world_size, len(reference)) == (2, 8)

    for ranks in (1, 2):
        run_dir = tmp_path / f"1x{ranks}"
        shutil.copytree(reference_dir, run_dir, ignore=shutil.ignore_patterns("step_0000008*", "export"))
        code, output = one_node(recipe, ranks, [f"training.output_dir={run_dir}", "--resume", "4"])
        assert code == 0, output[-3000:]
        records = records_since_resume(run_dir)
        resume = records[0]
        assert (resume["from_world_size"], resume["world_size"], resume["step"]) == (2, ranks, 4)
        if ranks == 1 and zero > 0:
            assert (run_dir / "checkpoints" / "step_0000004_universal").is_dir()
        continued = {r["step"]: r for r in records if r["kind"] == "train"}
        assert sorted(continued) == [5, 6, 7, 8]
        for step, record in continued.items():
            assert record["consumed_sequences"] == reference[step]["consumed_sequences"], step  # the same stream
            tolerance = 1e-6 if ranks == 2 or step == 5 else 1e-3
            assert record["loss"] == pytest.approx(reference[step]["loss"], rel=tolerance), (ranks, step)


# --------------------------------------------------------------------------- a node lost mid-run


def kill_node_mid_run(tmp_path, corpus_file, cache_dir, name, signum, env_extra=None):
    """Two nodes train 40 steps (checkpoint every 4); after step 9 the second node gets `signum`.
    Returns (the survivor's exit code, its output, seconds it took to exit, the losses logged before)."""
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, name, steps=40)
    nodes = start_nodes(recipe, tmp_path, env_extra=env_extra)
    survivor, victim = nodes
    try:
        wait_for_step(tmp_path / name, 9, nodes)
        os.killpg(victim.pid, signum)
        killed_at = time.time()
        code = survivor.wait(timeout=300)
        elapsed = time.time() - killed_at
    finally:
        for process in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return code, output_of(survivor), elapsed, losses(tmp_path / name)


def assert_resumable(tmp_path, name, logged, output):
    """The last complete checkpoint (named in the survivor's message) resumes on 1 node × 2 ranks and
    continues the interrupted run exactly (same world size)."""
    checkpoints = tmp_path / name / "checkpoints"
    last = find_checkpoint(checkpoints, None)
    assert last.step >= 8 and last.world_size == 2
    assert f"Last complete checkpoint: {last.path}" in output
    assert all(c.step <= max(logged) for c in complete_checkpoints(checkpoints))
    code, resumed_output = one_node(tmp_path / f"{name}.yaml", 2, ["--resume"])
    assert code == 0, resumed_output[-3000:]
    continued = {r["step"]: r["loss"] for r in records_since_resume(tmp_path / name) if r["kind"] == "train"}
    assert sorted(continued) == list(range(last.step + 1, 41))
    replayed = [step for step in continued if step in logged]
    assert replayed  # the steps trained before the kill, after the checkpoint, came out the same
    for step in replayed:
        assert continued[step] == pytest.approx(logged[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_killed_node_stops_the_survivor_at_once_and_the_run_resumes(tmp_path, corpus_file, cache_dir):
    """SIGKILL of a whole node (launcher and rank): its sockets close, the survivor's next collective
    fails at once ('Connection reset by peer'), and it exits non-zero saying so."""
    code, output, elapsed, logged = kill_node_mid_run(tmp_path, corpus_file, cache_dir, "killed", signal.SIGKILL)
    assert code != 0 and elapsed < 60, (code, elapsed, output[-3000:])
    assert "pretrain: rank 0 of 2 lost contact with another rank" in output, output[-3000:]
    assert_resumable(tmp_path, "killed", logged, output)


@pytest.mark.slow
def test_silent_node_stops_the_survivor_after_the_timeout(tmp_path, corpus_file, cache_dir):
    """SIGSTOP of a whole node: nothing closes (a hung machine, a network partition), so the survivor
    waits in its all-reduce until the process-group timeout, here ZOO_DIST_TIMEOUT_S=30 (DeepSpeed's
    own data-parallel group included), then exits non-zero saying so."""
    code, output, elapsed, logged = kill_node_mid_run(tmp_path, corpus_file, cache_dir, "silent", signal.SIGSTOP,
                                                      env_extra={"ZOO_DIST_TIMEOUT_S": "30"})
    assert code != 0 and 25 < elapsed < 120, (code, elapsed, output[-3000:])
    assert "lost contact with another rank" in output and "ZOO_DIST_TIMEOUT_S=30 s" in output, output[-3000:]
    assert "Timed out" in output
    assert_resumable(tmp_path, "silent", logged, output)
