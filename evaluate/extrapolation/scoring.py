"""Scoring masked windows under a position variant: accuracy, loss, accuracy by position bucket,
attention entropy per layer (extrapolation.md B.6 item 5). Shared by `robustness`.

Attention always runs through the chunked kernel of zoo.positions (the entropy recorder needs the
probabilities), so every variant and length is computed the same way and 16N fits in memory.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from pretrain.masking import IGNORE
from zoo.casting import at_least_fp32
from zoo.positions import EntropyRecorder, PositionVariant
from zoo.runtime import parse_device

from ..errors import UsageError
from .data import TestSet


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    ref: str
    folder: Path

    @property
    def config(self):
        return self.model.config

    def describe(self) -> dict:
        """What B.6 item 9 asks to record about the checkpoint."""
        config = self.config
        rope = config.position_embedding_type == "rope"
        return {
            "ref": self.ref,
            "path": str(self.folder),
            "family": zoo.families.family_of(config),
            "num_parameters": int(self.model.num_parameters()),
            "num_hidden_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "block_type": config.block_type,
            "num_attention_heads": 1 if config.block_type == "gau" else config.num_attention_heads,
            "rope_dim": config.rope_dim if rope else None,
            "rope_base": config.rope_theta if rope else None,
            "position_embedding_type": config.position_embedding_type,
            "attention_normalization": config.attention_normalization,
            "softmax_plus_base": config.softmax_plus_base if config.attention_normalization == "softmax_plus" else None,
        }


def load_model(ref: str, registry: str | None = None, device: str = "auto") -> LoadedModel:
    """A masked-LM model and its tokenizer from a registry name, name@version, folder or Hub id."""
    model = zoo.from_pretrained(ref, task="masked-lm", registry=registry)
    folder = Path(model.name_or_path)
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = zoo.default_tokenizer()
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(f"{ref}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}")
    model.to(parse_device(device)).eval()
    return LoadedModel(model, tokenizer, getattr(model, "zoo_ref", str(ref)), folder)


def recorded_train_length(folder: Path) -> int | None:
    """The training sequence length written by `python -m pretrain` into the model card, if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    match = re.search(r"sequence length (\d+)", card.read_text(encoding="utf-8"))
    return int(match[1]) if match else None


@dataclass
class CellMetrics:
    """Running totals for one (test set, variant, length) cell."""

    bucket_size: int
    masked: int = 0
    correct: int = 0
    ce_sum: float = 0.0
    windows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    attention_block_bytes: int = 0  # largest score block of the chunked kernel (per matrix × matrices)
    device_peak_bytes: int | None = None  # CUDA only: torch.cuda.max_memory_allocated over the cell
    bucket_masked: list = field(default_factory=list)
    bucket_correct: list = field(default_factory=list)
    entropy: EntropyRecorder = field(default_factory=EntropyRecorder)

    def add(self, positions: np.ndarray, correct: np.ndarray, ce: float) -> None:
        self.masked += len(positions)
        self.correct += int(correct.sum())
        self.ce_sum += ce
        buckets = positions // self.bucket_size
        need = int(buckets.max()) + 1 if len(buckets) else 0
        for store in (self.bucket_masked, self.bucket_correct):
            store.extend([0] * (need - len(store)))
        for b, ok in zip(buckets.tolist(), correct.tolist()):
            self.bucket_masked[b] += 1
            self.bucket_correct[b] += int(ok)

    def to_json(self) -> dict:
        accuracy = self.correct / self.masked if self.masked else float("nan")
        loss = self.ce_sum / self.masked if self.masked else float("nan")
        return {
            "accuracy": accuracy,
            "loss": loss,
            "perplexity": math.exp(loss) if self.masked and loss < 700 else float("nan"),
            "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / self.masked) if self.masked else float("nan"),
            "masked_tokens": self.masked,
            "windows": self.windows,
            "tokens": self.tokens,
            "accuracy_by_bucket": [c / n if n else None for c, n in zip(self.bucket_correct, self.bucket_masked)],
            "masked_by_bucket": list(self.bucket_masked),
            "bucket_size": self.bucket_size,
            "entropy_by_layer": self.entropy.per_layer(),
            "attention_block_mib": self.attention_block_bytes / 2**20,
            "device_peak_mib": None if self.device_peak_bytes is None else self.device_peak_bytes / 2**20,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens / self.seconds if self.seconds else None,
        }


def batches(count: int, length: int, batch_tokens: int):
    size = max(1, batch_tokens // length)
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


@torch.no_grad()
def score(loaded: LoadedModel, test_set: TestSet, variant: PositionVariant, bucket_size: int, batch_tokens: int = 8192,
          position_ids: np.ndarray | None = None, progress=None) -> CellMetrics:
    """Masked-token metrics of `test_set` under `variant`; `position_ids` [M, L] replace natural positions."""
    model = loaded.model
    encoder = model.base_model
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    metrics = CellMetrics(bucket_size)
    count, length = test_set.input_ids.shape
    heads = 1 if model.config.block_type == "gau" else model.config.num_attention_heads
    element_bytes = torch.finfo(torch.promote_types(dtype, torch.float32)).bits // 8
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for rows in batches(count, length, batch_tokens):
        started = time.perf_counter()
        labels = test_set.labels[rows]
        # the masked tokens, flat over [batch × length], found on the host: the model selects them with no wait
        # for the device (a boolean selection there would read the mask back, twice per batch)
        flat = np.flatnonzero(labels != IGNORE)
        ids, labels, masked = (torch.from_numpy(a).to(device) for a in (test_set.input_ids[rows], labels, flat))
        positions = None if position_ids is None else torch.from_numpy(position_ids[rows]).to(device)
        ctx = variant.context(encoder, None, length, positions, dtype, device)
        ctx.entropy = metrics.entropy.start_pass()
        out = model(input_ids=ids, labels=labels, position_ids=positions, masked_positions_only=True,
                    masked_positions=masked, attention_context=ctx)
        if len(flat):
            targets = labels.flatten().index_select(0, masked)
            logits = at_least_fp32(out.logits)
            ce = float(F.cross_entropy(logits, targets, reduction="sum"))  # the batch's one wait for the device
            correct = (logits.argmax(-1) == targets).cpu().numpy()
            metrics.add(flat % length, correct, ce)  # positions in the window
        rows_per_block = variant.chunk_size or max(1, variant.max_score_elements // (ids.shape[0] * heads * length))
        matrices = 3 if variant.rerope_window is not None else 1  # ReRoPE's three score matrices (B.5)
        block = ids.shape[0] * heads * min(rows_per_block, length) * length * element_bytes * matrices
        metrics.attention_block_bytes = max(metrics.attention_block_bytes, block)
        metrics.windows += ids.shape[0]
        metrics.tokens += ids.numel()
        metrics.seconds += time.perf_counter() - started
        if progress is not None:
            progress.update(ids.shape[0])
    if device.type == "cuda":
        metrics.device_peak_bytes = int(torch.cuda.max_memory_allocated(device))
    return metrics
