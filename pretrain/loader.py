"""A deterministic, resumable stream of masked training batches.

Epoch e visits the packed sequences in the order of a permutation seeded by (seed, e). Global
step t takes the next `global_batch` sequences of that order; sample j of the global batch goes to
micro-batch j // (micro · world) and rank (j // micro) mod world. Each sample's mask (and random
positions, if any) comes from a generator seeded by (seed, epoch, index in the permutation).

So the data a run sees depends only on the seed and the global batch size: resuming (on the same
or another number of ranks) continues the exact stream, as long as the global batch is the same.
Each micro-batch is also named by the index of its first sample in the run (`StepBatches.first_samples`),
which does not depend on the rank count either; the trainer seeds dropout from it.

`Prefetcher` collates the next steps on a background thread (pinned, ready for a non-blocking copy)
while the accelerator computes; it takes the steps in order, so the stream is unchanged.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .errors import RunError
from .masking import IGNORE, MaskingPolicy, mask_sequence

EVAL_EPOCH = 1_000_000  # generator stream of the fixed held-out masks, disjoint from training epochs


@dataclass
class StreamState:
    epoch: int = 0
    cursor: int = 0  # sequences of this epoch's permutation already consumed (globally)
    consumed: int = 0  # sequences consumed since the start of the run


class StepBatches(NamedTuple):
    batches: list[dict[str, torch.Tensor]]  # this rank's micro-batches of one optimizer step
    first_samples: list[int]  # run index of each micro-batch's first sample (the same on any rank count)
    state: dict  # the stream's state_dict() after this step


class PositionSampler:
    """Training-time position ids (extrapolation.md B.3): natural (None), or random per sample."""

    def __init__(self, kind: str, seq_len: int, max_position: int | None):
        self.kind = kind
        self.seq_len = seq_len
        self.max_position = max_position or 16 * seq_len

    def __call__(self, rng: np.random.Generator) -> np.ndarray | None:
        if self.kind == "natural":
            return None
        from zoo.positions import sample_equal_mean_positions, sample_ruoss_positions

        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if self.kind == "ruoss":
            return sample_ruoss_positions(1, self.seq_len, self.max_position, generator=generator)[0].numpy()
        return sample_equal_mean_positions(1, self.seq_len, generator=generator)[0].numpy()


class PretrainingStream:
    def __init__(self, dataset, global_batch: int, micro_batch: int, world_size: int, rank: int, seed: int,
                 policy: MaskingPolicy, positions: PositionSampler | None = None):
        if global_batch % (micro_batch * world_size):
            raise RunError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} × {world_size} ranks")
        if len(dataset) < global_batch:
            raise RunError(f"the corpus has {len(dataset)} sequences, fewer than one global batch of {global_batch}")
        self.dataset = dataset
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.policy = policy
        self.positions = positions
        self.state = StreamState()
        self._order_epoch = -1
        self._order = None

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch // (self.micro_batch * self.world_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def _global_indices(self) -> list[tuple[int, int, int]]:
        """(epoch, position in permutation, sequence index) of the next global batch; advances the state."""
        out = []
        while len(out) < self.global_batch:
            order = self._permutation(self.state.epoch)
            take = min(self.global_batch - len(out), len(order) - self.state.cursor)
            for position in range(self.state.cursor, self.state.cursor + take):
                out.append((self.state.epoch, position, int(order[position])))
            self.state.cursor += take
            if self.state.cursor == len(order):
                self.state.epoch, self.state.cursor = self.state.epoch + 1, 0
        self.state.consumed += self.global_batch
        return out

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches for the next optimizer step."""
        return self.take_step().batches

    def take_step(self) -> StepBatches:
        """This rank's micro-batches for the next optimizer step, with their first samples' run indices
        and the stream state after the step (what a checkpoint taken after it must record)."""
        consumed = self.state.consumed
        indices = self._global_indices()
        per_micro = self.micro_batch * self.world_size
        batches, firsts = [], []
        for micro in range(self.accumulation_steps):
            start = micro * per_micro + self.rank * self.micro_batch
            batches.append(self.collate(indices[start : start + self.micro_batch]))
            firsts.append(consumed + start)
        return StepBatches(batches, firsts, self.state_dict())

    def collate(self, indices: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
        rows = self.dataset[[i for _, _, i in indices]]
        return collate(rows["input_ids"], rows["word_starts"],
                       [np.random.default_rng([self.seed, e, p]) for e, p, _ in indices], self.policy, self.positions)

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "cursor": self.state.cursor, "consumed": self.state.consumed,
                "global_batch": self.global_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["global_batch"] != self.global_batch:
            raise RunError(
                f"the checkpoint was trained with a global batch of {state['global_batch']} sequences, this run uses "
                f"{self.global_batch}: keep deepspeed.train_batch_size to continue the same data stream"
            )
        if state["seed"] != self.seed:
            raise RunError(f"the checkpoint's seed is {state['seed']}, the recipe's is {self.seed}")
        self.state = StreamState(state["epoch"], state["cursor"], state["consumed"])


def collate(ids, word_starts, rngs, policy: MaskingPolicy, positions: PositionSampler | None = None) -> dict:
    inputs, labels, position_ids = [], [], []
    for row_ids, row_starts, rng in zip(ids, word_starts, rngs):
        x, y = mask_sequence(np.asarray(row_ids), np.asarray(row_starts), policy, rng)
        inputs.append(x)
        labels.append(y)
        if positions is not None and positions.kind != "natural":
            position_ids.append(positions(rng))
    labels = np.stack(labels)
    batch = {"input_ids": torch.from_numpy(np.stack(inputs)), "labels": torch.from_numpy(labels),
             # where the labels are set, flat over [batch × seq]: the sparse MLM head selects them with no host sync
             "masked_positions": torch.from_numpy(np.flatnonzero(labels != IGNORE))}
    if position_ids:
        batch["position_ids"] = torch.from_numpy(np.stack(position_ids))
    return batch


def heldout_batches(dataset, max_sequences: int, batch_size: int, seed: int, policy: MaskingPolicy,
                    rank: int = 0, world_size: int = 1):
    """Fixed masked batches of the held-out set (same masks every evaluation), sharded over ranks."""
    n = min(len(dataset), max_sequences)
    mine = list(range(rank, n, world_size))
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        rows = dataset[chunk]
        yield collate(rows["input_ids"], rows["word_starts"],
                      [np.random.default_rng([seed, EVAL_EPOCH, i]) for i in chunk], policy)


def heldout_passes(dataset, max_sequences: int, batch_size: int, seed: int, policy: MaskingPolicy,
                   rank: int = 0, world_size: int = 1):
    """(batch, counted) for each forward pass of one evaluation on this rank: its `heldout_batches`
    (counted), then repeats of a batch (not counted) up to the number of batches of rank 0, which holds
    the most. Every rank so runs the same number of forward passes, each a collective under ZeRO-3
    (the partitioned parameters are gathered), whatever the held-out split."""
    n = min(len(dataset), max_sequences)
    passes = -(-len(range(0, n, world_size)) // batch_size)  # rank 0's batches
    first, done = None, 0
    for batch in heldout_batches(dataset, max_sequences, batch_size, seed, policy, rank, world_size):
        first = batch if first is None else first
        done += 1
        yield batch, True
    if done < passes:
        filler = first if first is not None else next(heldout_batches(dataset, max_sequences, batch_size, seed, policy))
        for _ in range(passes - done):
            yield filler, False


class Prefetcher:
    """Takes `depth` optimizer steps ahead of the trainer from a `PretrainingStream` on a background
    thread, pinning each batch with `prepare` (Runtime.pin). depth 0 takes each step when asked.

    The thread is the stream's only reader once started, in order, so the data are exactly those of
    the synchronous stream; an exception in it is raised by the `next()` that would have received the
    failed step.
    """

    def __init__(self, stream: PretrainingStream, depth: int, prepare=None):
        self.stream, self.depth, self.prepare = stream, depth, prepare or (lambda batch: batch)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="pretrain-prefetch", daemon=True)
            self._thread.start()

    def _take(self) -> StepBatches:
        step = self.stream.take_step()
        return step._replace(batches=[self.prepare(batch) for batch in step.batches])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._take()
            except BaseException as error:  # handed to the consumer, which raises it
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> StepBatches:
        if self._queue is None:
            return self._take()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
