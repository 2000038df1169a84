"""The data stream: deterministic, resumable, independent of the number of ranks."""

import numpy as np
import pytest
import torch

import zoo
from pretrain.loader import PretrainingStream, heldout_batches, heldout_passes
from pretrain.masking import MaskingPolicy
from pretrain.recipe import MaskingSection


class FakeDataset:
    def __init__(self, n, seq):
        rng = np.random.default_rng(0)
        self.ids = np.concatenate([np.full((n, 1), 101), rng.integers(104, 12000, (n, seq - 2)), np.full((n, 1), 102)], 1)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        return {"input_ids": self.ids[idx], "word_starts": np.ones_like(self.ids[idx])}


@pytest.fixture(scope="module")
def policy():
    return MaskingPolicy.from_recipe(MaskingSection(), zoo.default_tokenizer(), 12000)


def global_batches(dataset, policy, world, micro, steps, state=None):
    """The global batch of each step, assembled from every rank's micro-batches in sample order."""
    streams = [PretrainingStream(dataset, 8, micro, world, rank, 7, policy) for rank in range(world)]
    if state:
        for s in streams:
            s.load_state_dict(state)
    out = []
    for _ in range(steps):
        per_rank = [s.next_step() for s in streams]
        rows = []
        for micro_index in range(streams[0].accumulation_steps):
            for rank in range(world):
                batch = per_rank[rank][micro_index]
                rows += [(batch["input_ids"][i], batch["labels"][i]) for i in range(len(batch["input_ids"]))]
        out.append(rows)
    return out, streams[0].state_dict()


def same(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b)) and len(a) == len(b)


def test_each_batch_carries_the_flat_positions_of_its_labels(policy):
    stream = PretrainingStream(FakeDataset(30, 16), 8, 4, 1, 0, 7, policy)
    for batch in stream.next_step() + list(heldout_batches(FakeDataset(10, 16), 10, 4, 7, policy)):
        labels = batch["labels"]
        assert batch["masked_positions"].dtype == torch.int64 and len(batch["masked_positions"]) > 0
        assert torch.equal(batch["masked_positions"], torch.nonzero(labels.flatten() != -100).flatten())
        assert torch.equal(labels.flatten()[batch["masked_positions"]], labels[labels != -100])


def test_same_data_on_any_number_of_ranks(policy):
    data = FakeDataset(30, 16)
    one, _ = global_batches(data, policy, world=1, micro=8, steps=9)
    two, _ = global_batches(data, policy, world=2, micro=2, steps=9)
    assert all(same(a, b) for a, b in zip(one, two))


def test_resume_continues_the_stream_across_epochs(policy):
    data = FakeDataset(30, 16)  # 30 sequences, 8 per step: epochs end mid-batch
    full, _ = global_batches(data, policy, world=2, micro=4, steps=10)
    first, state = global_batches(data, policy, world=2, micro=4, steps=4)
    rest, _ = global_batches(data, policy, world=1, micro=4, steps=6, state=state)
    assert all(same(a, b) for a, b in zip(full, first + rest))
    assert state["epoch"] == 1 and state["consumed"] == 32


def test_every_sequence_once_per_epoch(policy):
    data = FakeDataset(24, 16)
    stream = PretrainingStream(data, 8, 8, 1, 0, 3, policy)
    seen = [index for _ in range(3) for _, _, index in stream._global_indices()]
    assert sorted(seen) == list(range(24)) and stream.state.epoch == 1 and stream.state.cursor == 0
    assert sorted(stream._permutation(0).tolist()) == list(range(24))


def test_global_batch_must_match_on_resume(policy):
    data = FakeDataset(30, 16)
    stream = PretrainingStream(data, 8, 4, 1, 0, 7, policy)
    state = stream.state_dict()
    other = PretrainingStream(data, 16, 4, 1, 0, 7, policy)
    with pytest.raises(ValueError, match="global batch of 8 sequences, this run uses 16"):
        other.load_state_dict(state)


def test_heldout_masks_are_fixed(policy):
    data = FakeDataset(10, 16)
    a = list(heldout_batches(data, 10, 4, 7, policy))
    b = list(heldout_batches(data, 10, 4, 7, policy))
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    sharded = list(heldout_batches(data, 10, 4, 7, policy, rank=1, world_size=2))
    assert sum(len(x["labels"]) for x in sharded) == 5


@pytest.mark.parametrize("n,world,micro", [(9, 2, 4), (100, 8, 4), (3, 4, 1), (16, 2, 4), (0, 2, 4)])
def test_every_rank_makes_as_many_heldout_passes_and_counts_only_its_batches(policy, n, world, micro):
    """Ranks hold ceil or floor of n / world held-out sequences: each runs rank 0's number of forward
    passes (under ZeRO-3 each is a collective), and counts exactly its own batches."""
    data = FakeDataset(max(n, 1), 16)
    passes = [list(heldout_passes(data, n, micro, 7, policy, rank, world)) for rank in range(world)]
    assert len({len(p) for p in passes}) == 1
    for rank, rank_passes in enumerate(passes):
        counted = [batch for batch, counts in rank_passes if counts]
        own = list(heldout_batches(data, n, micro, 7, policy, rank, world))
        assert len(counted) == len(own) and all(torch.equal(a["labels"], b["labels"]) for a, b in zip(counted, own))
        assert [counts for _, counts in rank_passes] == [True] * len(own) + [False] * (len(rank_passes) - len(own))


# ------------------------------------------------------------------------------ prefetching


def test_prefetched_steps_equal_the_synchronous_stream(policy):
    """Collation on a thread, steps ahead: the same batches, first-sample indices and states, in order."""
    from pretrain.loader import Prefetcher

    dataset = FakeDataset(40, 12)
    plain = PretrainingStream(dataset, 8, 2, 2, 1, 7, policy)
    expected = [plain.take_step() for _ in range(7)]
    prefetcher = Prefetcher(PretrainingStream(dataset, 8, 2, 2, 1, 7, policy), depth=3)
    try:
        got = [prefetcher.next() for _ in range(7)]
    finally:
        prefetcher.close()
    for a, b in zip(expected, got):
        assert a.first_samples == b.first_samples and a.state == b.state
        for x, y in zip(a.batches, b.batches):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_first_samples_do_not_depend_on_the_rank_count(policy):
    """Micro-batch j of a step starts at the same run sample on 1 rank × 2 accumulation and 2 ranks × 1."""
    dataset = FakeDataset(40, 12)
    one = PretrainingStream(dataset, 8, 4, 1, 0, 7, policy)
    two = [PretrainingStream(dataset, 8, 4, 2, rank, 7, policy) for rank in range(2)]
    for _ in range(3):
        single = one.take_step()
        split = [stream.take_step() for stream in two]
        assert single.first_samples == [split[0].first_samples[0], split[1].first_samples[0]]
        for mine, theirs in zip(single.batches, [s.batches[0] for s in split]):
            assert torch.equal(mine["input_ids"], theirs["input_ids"]) and torch.equal(mine["labels"], theirs["labels"])


def test_an_error_while_prefetching_reaches_the_trainer(policy):
    from pretrain.loader import Prefetcher

    class Broken(FakeDataset):
        def __getitem__(self, idx):
            raise OSError("disk gone")

    prefetcher = Prefetcher(PretrainingStream(Broken(40, 12), 8, 2, 1, 0, 7, policy), depth=2)
    try:
        with pytest.raises(OSError, match="disk gone"):
            prefetcher.next()
    finally:
        prefetcher.close()
