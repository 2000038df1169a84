"""What rank 0 does alone ends the same way on every rank (pretrain/rank_zero.py): its result reaches the
others where asked, its error stops them with its message. On two gloo ranks of this machine; before,
the others waited in a barrier for a rank 0 that had left, on other machines until ZOO_DIST_TIMEOUT_S."""

import json
from pathlib import Path

from .ranks import run_ranks


def _outcome(call) -> object:
    from pretrain.errors import PretrainError

    try:
        return call()
    except PretrainError as error:
        return f"{type(error).__name__}{' (mirrored)' if error.mirrored else ''}: {error}"
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def _sections(rank, world):
    """on_rank0 with a value shared or not, and with an error; what each rank got, and how often `work` ran."""
    from pretrain.rank_zero import on_rank0

    runs = []

    def work():
        runs.append(rank)
        return {"rank": rank}

    def fail():
        raise OSError("[Errno 28] No space left on device: 'run/export.tmp'")

    return {"shared": _outcome(lambda: on_rank0("a", work, share=True)),
            "kept": _outcome(lambda: on_rank0("b", work)),
            "error": _outcome(lambda: on_rank0("c", fail)),
            "after the error": _outcome(lambda: on_rank0("d", work, share=True)),
            "runs": runs}


def test_rank0_work_gives_every_rank_its_value_or_its_error():
    rank0, rank1 = run_ranks(_sections, world=2)
    message = "[Errno 28] No space left on device: 'run/export.tmp'"
    assert rank0 == {"shared": {"rank": 0}, "kept": {"rank": 0}, "error": f"OSError: {message}",
                     "after the error": {"rank": 0}, "runs": [0, 0, 0]}
    assert rank1 == {"shared": {"rank": 0}, "kept": None, "error": f"RunError (mirrored): {message}",
                     "after the error": {"rank": 0}, "runs": []}


def _restarted(rank, world):
    """Two attempts of a job on one store, as torchrun's agent keeps it across restarts: each starts its
    run (a fresh process counts its calls from 0 again), and in the second rank 0's work takes a while.
    What rank 1 got from each."""
    import time

    from pretrain.rank_zero import on_rank0, start_run

    got = []
    for attempt in range(2):
        start_run()

        def work(attempt=attempt):
            if attempt == 1:
                time.sleep(1)
            return f"attempt {attempt}"

        got.append(on_rank0("corpus", work, share=True))
    return got


def test_a_restarted_run_does_not_read_the_words_of_the_attempt_before():
    """Without the run's word in the keys, the second attempt's rank 1 read the first's outcome at once."""
    assert run_ranks(_restarted, world=2) == [["attempt 0", "attempt 1"]] * 2


def _write_checkpoints(folder: Path, steps) -> None:
    from pretrain.checkpoint import MARKER, tag_for

    for step in steps:
        path = folder / "checkpoints" / tag_for(step)
        path.mkdir(parents=True)
        (path / MARKER).write_text(json.dumps({"step": step, "world_size": 2, "zero_stage": 0}))


def _choose_resume(rank, world, base):
    """Trainer._plan_resume where rank 1's listing of the checkpoints is a minute old (NFS caches listings):
    it lacks the newest checkpoint (step 200), whose COMPLETE marker rank 0 wrote just before the crash, and
    in a second run folder every checkpoint. What each rank resumes from."""
    from types import SimpleNamespace

    import pretrain.checkpoint as ckpt
    from pretrain.trainer import Trainer

    listed = ckpt.complete_checkpoints
    if rank == 1:
        ckpt.complete_checkpoints = lambda directory: [c for c in listed(directory) if c.step < 200]
    chosen = {}
    for name, resume in (("latest", "latest"), ("no --resume", None)):
        folder = Path(base) / name
        fake = SimpleNamespace(rank=rank, world=world, output_dir=folder, checkpoint_dir=folder / "checkpoints")
        got = _outcome(lambda: Trainer._plan_resume(fake, resume, False))
        chosen[name] = got.tag if isinstance(got, ckpt.CheckpointInfo) else got
    return chosen


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path):
    """Each rank chose the newest complete checkpoint it saw: with a cached listing, rank 1 resumed from
    step 100 while rank 0 resumed from step 200, and started afresh where rank 0 refused to overwrite."""
    for name in ("latest", "no --resume"):
        _write_checkpoints(tmp_path / name, (100, 200))
    rank0, rank1 = run_ranks(_choose_resume, world=2, args=(str(tmp_path),))
    refusal = (f"{tmp_path / 'no --resume'} already has checkpoints (step_0000200 is the newest): pass --resume to "
               "continue the run, or --restart to delete it and start over")
    assert rank0 == {"latest": "step_0000200", "no --resume": f"RunError: {refusal}"}
    assert rank1 == {"latest": "step_0000200", "no --resume": f"RunError (mirrored): {refusal}"}


def _convert(rank, world, folder):
    """pretrain.checkpoint.to_universal of a folder that is no DeepSpeed checkpoint: what each rank got."""
    from pretrain.checkpoint import CheckpointInfo, to_universal

    info = CheckpointInfo("step_0000100", Path(folder) / "step_0000100", 100, 2, 2, {"step": 100})
    return _outcome(lambda: to_universal(info))


def test_a_failed_conversion_for_another_number_of_ranks_stops_every_rank_with_its_message(tmp_path):
    (tmp_path / "step_0000100").mkdir()
    rank0, rank1 = run_ranks(_convert, world=2, timeout_s=60, args=(str(tmp_path),))
    assert rank0.startswith(f"RuntimeError: ds_to_universal failed for {tmp_path / 'step_0000100'}:\n")
    assert rank1 == "RunError (mirrored): " + rank0.removeprefix("RuntimeError: ")
    assert not (tmp_path / "step_0000100_universal" / "COMPLETE").exists()


class _Engine:
    """DeepSpeed's save_checkpoint, as far as the files go: each rank writes its part of the tag folder."""

    def save_checkpoint(self, directory, tag, client_state, save_latest):
        import torch.distributed as dist

        path = Path(directory, tag)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"part_rank{dist.get_rank()}.pt").write_text(json.dumps(client_state))


def _save(rank, world, folder, failing):
    """pretrain.checkpoint.save of step 300 over a crashed save of it, with rank 0's pruning failing or not;
    what each rank got and the files of the tag folder once every rank is back."""
    import torch.distributed as dist

    import pretrain.checkpoint as ckpt

    if failing and rank == 0:
        def prune(directory, keep):
            raise PermissionError(f"[Errno 13] Permission denied: '{directory / 'step_0000100'}'")

        ckpt.prune = prune
    got = _outcome(lambda: ckpt.save(_Engine(), Path(folder), 300, {"step": 300}, 2, {"world_size": 2, "zero_stage": 0}).name)
    dist.barrier()
    return got, sorted(p.name for p in (Path(folder) / "step_0000300").iterdir())


def test_a_checkpoint_completes_on_every_rank_or_stops_every_rank(tmp_path):
    """Rank 0 clears a crashed save of the tag, then marks the checkpoint COMPLETE and prunes, alone; an
    error there stopped rank 0 and left the others in a barrier."""
    for name, failing in (("saved", False), ("failing", True)):
        stale = tmp_path / name / "step_0000300"
        stale.mkdir(parents=True)
        (stale / "part_rank2.pt").write_text("from a crashed run on three ranks")
    parts = ["COMPLETE", "part_rank0.pt", "part_rank1.pt", "rng_rank0.pt", "rng_rank1.pt"]
    saved = run_ranks(_save, world=2, args=(str(tmp_path / "saved"), False))
    assert saved == [["step_0000300", parts]] * 2
    message = f"[Errno 13] Permission denied: '{tmp_path / 'failing' / 'step_0000100'}'"
    failed = run_ranks(_save, world=2, args=(str(tmp_path / "failing"), True))
    assert failed == [[f"PermissionError: {message}", parts], [f"RunError (mirrored): {message}", parts]]
