"""Run checkpoints on top of DeepSpeed's: completion markers, retention, resume, topology changes.

    checkpoints/runs/<run>/checkpoints/step_0000100/    DeepSpeed's files for that tag, plus
        rng_rank<r>.pt                                  each rank's RNG states (dropout reproducibility)
        COMPLETE                                        written last, after every rank finished
    checkpoints/runs/<run>/checkpoints/step_0000100_stage1/   the same step right after a growth
                                                        (pretrain/stages.py): COMPLETE records the
                                                        stage and the grown model's config

A tag without COMPLETE (a crash mid-save) is never resumed from and is removed by the next save, so
it cannot shadow the last complete checkpoint. DeepSpeed's own `latest` file is not used.
Resuming on another number of ranks goes through DeepSpeed's universal checkpoint format
(`ds_to_universal`), converted automatically; ZeRO stage 0 checkpoints hold whole tensors and load
on any number of ranks directly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import RunError
from .optim import pin_unadapted_ratios
from .rank_zero import long_wait_s, on_rank0

MARKER = "COMPLETE"
UNIVERSAL_SUFFIX = "_universal"


def tag_for(step: int, grown_stage: int | None = None) -> str:
    """step_0000100, or step_0000100_stage1 for the checkpoint written right after growing into stage 1."""
    return f"step_{step:07d}" + (f"_stage{grown_stage}" if grown_stage else "")


class CheckpointNotFoundError(RunError, FileNotFoundError):
    """--resume names a checkpoint that does not exist (or is incomplete)."""


@dataclass(frozen=True)
class CheckpointInfo:
    tag: str
    path: Path
    step: int
    world_size: int
    zero_stage: int
    meta: dict

    def to_dict(self) -> dict:
        """JSON data (what rank 0 sends the other ranks: pretrain/rank_zero.py); `from_dict` reads it back."""
        return {"tag": self.tag, "path": str(self.path), "step": self.step, "world_size": self.world_size,
                "zero_stage": self.zero_stage, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointInfo:
        return cls(data["tag"], Path(data["path"]), data["step"], data["world_size"], data["zero_stage"], data["meta"])

    @property
    def stage(self) -> int:
        """The growth stage (pretrain/stages.py) whose model this checkpoint holds; 0 without stages."""
        return int(self.meta.get("stage", 0))


def complete_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        marker = path / MARKER
        if path.is_dir() and marker.is_file() and not path.name.endswith(UNIVERSAL_SUFFIX):
            try:
                meta = json.loads(marker.read_text())
            except json.JSONDecodeError:
                continue  # a marker cut short is not a completed checkpoint
            found.append(CheckpointInfo(path.name, path, meta["step"], meta["world_size"], meta["zero_stage"], meta))
    return sorted(found, key=lambda c: (c.step, c.stage))


def find_checkpoint(directory: Path, which: str | None) -> CheckpointInfo:
    """`which` None/"latest": the newest complete checkpoint; else a tag name or a step number (at a
    growth step, the number names the checkpoint before the growth, which grows again on resume)."""
    checkpoints = complete_checkpoints(directory)
    if not checkpoints:
        raise CheckpointNotFoundError(f"no complete checkpoint under {directory}")
    if which in (None, "latest"):
        return checkpoints[-1]
    for info in checkpoints:
        if which in (info.tag, str(info.step)):
            return info
    raise CheckpointNotFoundError(f"no complete checkpoint {which!r} under {directory}; have: {', '.join(c.tag for c in checkpoints)}")


def resume_hint(directory: Path) -> str:
    """The sentence a stopped run ends with: the checkpoint to continue from, if any."""
    last = complete_checkpoints(directory)
    return (f"Last complete checkpoint: {last[-1].path} (continue with --resume, on these nodes or on another number "
            "of nodes/ranks)." if last else "No complete checkpoint was written yet.")


def rng_state() -> dict:
    _, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [keys.tolist(), int(position), int(has_gauss), float(cached)],
        "python": list(random.getstate()[1]),
        # this rank's GPU only: every GPU of the node is visible to each rank, and a resume on nodes with
        # fewer of them (the same ranks, laid out otherwise) could not set the others
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate((3, tuple(state["python"]), None))
    if state["cuda"] and torch.cuda.is_available():
        # one state, this rank's; checkpoints before that kept every visible GPU's: this rank's is its own index
        saved = state["cuda"]
        index = 0 if len(saved) == 1 else torch.cuda.current_device()
        if index < len(saved):
            torch.cuda.set_rng_state(saved[index])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, directory: Path, step: int, client_state: dict, keep: int, meta: dict, tag: str | None = None) -> Path:
    """Save on every rank; returns the tag folder once it is complete everywhere. What rank 0 does alone
    (clearing a crashed save of this tag, then the marker and the pruning) ends on every rank with its
    outcome (pretrain/rank_zero.py): its error stops every rank, not only rank 0."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag or tag_for(step)
    path = directory / tag

    def clear() -> None:
        if path.exists():
            shutil.rmtree(path)  # an incomplete save of this step from a crashed run

    def complete() -> None:
        marker = {"step": step, **meta}
        tmp = path / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2))
        os.replace(tmp, path / MARKER)
        prune(directory, keep)

    on_rank0("checkpoint-clear", clear)
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")
    _barrier()  # every rank's part is written
    on_rank0("checkpoint-complete", complete)
    return path


def prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and stale incomplete folders."""
    complete = complete_checkpoints(directory)
    newest = complete[-1].step if complete else -1
    for info in complete[:-keep]:
        shutil.rmtree(info.path, ignore_errors=True)
        shutil.rmtree(info.path.with_name(info.tag + UNIVERSAL_SUFFIX), ignore_errors=True)
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith("step_") and not path.name.endswith(UNIVERSAL_SUFFIX):
            if not (path / MARKER).exists() and int(path.name.split("_")[1]) < newest:
                shutil.rmtree(path, ignore_errors=True)


def to_universal(info: CheckpointInfo) -> str:
    """Convert a ZeRO ≥ 1 checkpoint to DeepSpeed's universal format (rank 0, while the others wait up to
    ZOO_RANK0_WAIT_S: a large model's conversion can outlast the collectives' timeout); returns its tag."""
    target = info.path.with_name(info.tag + UNIVERSAL_SUFFIX)

    def convert() -> None:
        if (target / MARKER).is_file():
            return
        if target.exists():
            shutil.rmtree(target)
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                   "--input_folder", str(info.path), "--output_folder", str(target)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed for {info.path}:\n{result.stderr[-3000:]}")
        (target / MARKER).write_text(json.dumps(info.meta))

    on_rank0("universal", convert, wait_s=long_wait_s())
    return target.name


def load(engine, directory: Path, tag: str, rank: int, rng_from: Path | None) -> dict:
    """Load a checkpoint into the engine; restore this rank's RNG state when the topology is the same."""
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {directory / tag}")
    if engine.optimizer is not None:  # the groups are the checkpoint's now: older ones lack the pins
        pin_unadapted_ratios(engine.optimizer.param_groups)
    if rng_from is not None and (rng_from / f"rng_rank{rank}.pt").is_file():
        set_rng_state(torch.load(rng_from / f"rng_rank{rank}.pt", weights_only=True))
    return client_state or {}


def consolidated_state_dict(engine, directory: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """fp32 weights of the whole model on rank 0 (None elsewhere).

    ZeRO ≥ 1 keeps fp32 master weights partitioned in the optimizer: they are gathered from the
    saved checkpoint with DeepSpeed's zero_to_fp32. ZeRO 0 holds whole tensors in the module.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    if zero_stage == 0:
        if rank != 0:
            return None
        return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}
    if rank != 0:
        return None
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return {k: v.float() for k, v in get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag).items()}
