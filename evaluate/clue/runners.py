"""One runner per task kind: the model head it needs, its training features and loss, and how it turns
a model into submission-style predictions. The fine-tuning loop (finetune.py) only talks to these."""

from __future__ import annotations

import dataclasses
import sys
from abc import ABC, abstractmethod
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from zoo.casting import at_least_fp32
from zoo.runtime import Runtime, bf16_is_native

from ..errors import UsageError
from . import decoding, features
from .metrics import score_task
from .tasks import CHID, CLASSIFICATION, MULTIPLE_CHOICE, NER, SPAN_MRC, FinetuneHyperparameters, TaskSpec

NEG = -1e12


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Runner(ABC):
    """One task kind's encoding, loss and decoding; subclasses give train_items, collate and predict.

    `runtime` says where the model computes: `batch` puts a collated batch there, and predictions
    come back to the host (`_forward_all`) for decoding.
    """

    kind = ""
    supports_rdrop = False

    def __init__(self, task: TaskSpec, tokenizer, recipe: FinetuneHyperparameters, bf16: bool = False,
                 runtime: Runtime | None = None):
        self.task, self.tokenizer, self.recipe, self.bf16 = task, tokenizer, recipe, bf16
        self.runtime = runtime or fine_tuning_runtime("auto", bf16)
        self.pad_id = tokenizer.pad_token_id or 0
        self.eval_batch_size = max(recipe.batch_size * 2, 8)

    def batch(self, items) -> dict:
        """`collate(items)` on the runtime's device."""
        return self.runtime.to_device(self.runtime.pin(self.collate(items)))

    # --- what the loop needs
    def model_kwargs(self) -> dict:
        return {}

    @abstractmethod
    def train_items(self, examples) -> list:
        ...

    @abstractmethod
    def collate(self, items) -> dict:
        ...

    def logits(self, model, batch) -> torch.Tensor:
        with self.runtime.autocast():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, logits, batch) -> torch.Tensor:
        return F.cross_entropy(at_least_fp32(logits), batch["labels"], ignore_index=-100)

    def rdrop_kl(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Symmetric KL between the two dropout passes' distributions (R-Drop)."""
        la, lb = F.log_softmax(at_least_fp32(a), -1), F.log_softmax(at_least_fp32(b), -1)
        return 0.5 * (F.kl_div(la, lb, log_target=True, reduction="batchmean")
                      + F.kl_div(lb, la, log_target=True, reduction="batchmean"))

    @abstractmethod
    def predict(self, model, examples):
        ...

    def evaluate(self, model, examples) -> dict:
        return score_task(self.task, examples, self.predict(model, examples))

    def _forward_all(self, model, items):
        """Logits of every item, in chunks, as float32 tensors on the host."""
        model.eval()
        outs = []
        with torch.no_grad():
            for chunk in _batches(items, self.eval_batch_size):
                outs.append(self.logits(model, self.batch(chunk)).float().cpu())
        return outs


class ClassificationRunner(Runner):
    kind = CLASSIFICATION
    supports_rdrop = True

    def model_kwargs(self):
        return {"num_labels": len(self.task.labels)}

    def train_items(self, examples):
        return [features.encode_classification(self.tokenizer, e, self.task.labels, self.recipe.max_length) for e in examples]

    def collate(self, items):
        batch = features.collate_sequences(items, self.pad_id)
        batch["labels"] = torch.tensor([it["label"] for it in items])
        return batch

    def predict(self, model, examples):
        logits = self._forward_all(model, self.train_items(examples))
        ids = torch.cat(logits).argmax(-1).tolist() if logits else []
        return [self.task.labels[i] for i in ids]


class CoSENTRunner(ClassificationRunner):
    """CoSENT (Su, kexue.fm 8847) for binary sentence-pair similarity: the two sentences are encoded
    separately, scored by the cosine of their first-token vectors, trained with
    log(1 + Σ_{y_i < y_j} e^{λ(cos_i − cos_j)}), λ = 20; "1" when cos > a threshold chosen on dev."""

    supports_rdrop = False
    scale = 20.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.task.fields != "pair" or len(self.task.labels) != 2:
            raise UsageError(f"CoSENT needs a binary sentence-pair task; {self.task.name} is not one")
        self.threshold = 0.5

    def train_items(self, examples):
        return [features.encode_pair_separately(self.tokenizer, e, self.task.labels, self.recipe.max_length) for e in examples]

    def collate(self, items):
        a = features.collate_sequences(items, self.pad_id, "input_ids")
        b = features.collate_sequences(items, self.pad_id, "input_ids_b")
        return {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"],
                "input_ids_b": b["input_ids"], "attention_mask_b": b["attention_mask"],
                "labels": torch.tensor([it["label"] for it in items])}

    def logits(self, model, batch):
        with self.runtime.autocast():
            va = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, 0]
            vb = model.encoder(input_ids=batch["input_ids_b"], attention_mask=batch["attention_mask_b"]).last_hidden_state[:, 0]
        return F.cosine_similarity(va.float(), vb.float(), dim=-1)

    def loss(self, cos, batch):
        y = batch["labels"].float()
        diff = self.scale * (cos[:, None] - cos[None, :])  # cos_i − cos_j
        diff = diff - (1 - (y[:, None] < y[None, :]).float()) * 1e12  # only pairs with y_i < y_j
        return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)

    def predict(self, model, examples):
        cos = torch.cat(self._forward_all(model, self.train_items(examples))) if examples else torch.zeros(0)
        return [self.task.labels[int(c > self.threshold)] for c in cos.tolist()]

    def evaluate(self, model, examples):
        cos = torch.cat(self._forward_all(model, self.train_items(examples))).tolist()
        golds = [self.task.labels.index(e.label) for e in examples]
        best = (-1.0, 0.5)
        for t in sorted(set(cos)) + [1.0]:
            acc = sum((c > t) == bool(g) for c, g in zip(cos, golds))
            best = max(best, (acc, -t))
        self.threshold = -best[1] if best[0] >= 0 else 0.5
        return score_task(self.task, examples, self.predict(model, examples))


class MultipleChoiceRunner(Runner):
    kind = MULTIPLE_CHOICE
    supports_rdrop = True

    def train_items(self, examples):
        return [features.encode_c3(self.tokenizer, e, self.recipe.max_length) for e in examples]

    def collate(self, items):
        return features.collate_choices(items, self.pad_id)

    def predict(self, model, examples):
        out = []
        for logits in self._forward_all(model, self.train_items(examples)):
            out += logits.argmax(-1).tolist()
        return out


class ChidRunner(MultipleChoiceRunner):
    kind = CHID

    def train_items(self, examples):
        return [item for e in examples for item in features.encode_chid(self.tokenizer, e, self.recipe.max_length)]

    def blank_scores(self, model, examples) -> dict[int, tuple[list[str], np.ndarray]]:
        items = self.train_items(examples)
        rows = torch.cat(self._forward_all(model, items)).log_softmax(-1) if items else torch.zeros(0, 10)
        per_line: dict[int, list] = defaultdict(list)
        for item, row in zip(items, rows):
            per_line[item["line"]].append((item["tag"], row.numpy()))
        return {line: ([t for t, _ in blanks], np.stack([r for _, r in blanks])) for line, blanks in per_line.items()}

    def predict(self, model, examples, assignment: bool = True):
        out = {}
        for tags, scores in self.blank_scores(model, examples).values():
            chosen = decoding.chid_assign(scores) if assignment else decoding.independent_argmax(scores)
            out.update(zip(tags, chosen))
        return out


class SpanMrcRunner(Runner):
    kind = SPAN_MRC

    def model_kwargs(self):
        return {"num_labels": 1, "global_pointer_efficient": False}

    def windows(self, examples):
        return [w for e in examples for w in features.cmrc_windows(self.tokenizer, e, self.recipe.max_length, self.recipe.stride)]

    def train_items(self, examples):
        return self.windows(examples)

    def collate(self, windows):
        batch = features.collate_sequences([{"input_ids": w.input_ids} for w in windows], self.pad_id)
        width = batch["input_ids"].shape[1]
        pointer = torch.zeros(len(windows), width, dtype=torch.bool)
        for i, w in enumerate(windows):
            pointer[i, 0] = True  # [CLS] = "no answer in this window"
            for t, o in enumerate(w.offsets):
                pointer[i, t] = pointer[i, t] or o is not None
        batch["pointer_mask"] = pointer
        batch["labels"] = torch.tensor([w.label[0] * width + w.label[1] for w in windows])
        return batch

    def logits(self, model, batch):
        with self.runtime.autocast():
            grid = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        return grid.float()

    def loss(self, grid, batch):
        p = batch["pointer_mask"]
        valid = p[:, :, None] & p[:, None, :]
        grid = grid.masked_fill(~valid, NEG)
        return F.cross_entropy(grid.flatten(1), batch["labels"])

    def predict(self, model, examples):
        windows = self.windows(examples)
        grids = [g for chunk in self._forward_all(model, windows) for g in chunk]
        return decoding.cmrc_answers(windows, grids, {e.qid: e.context for e in examples}) | {
            e.qid: "" for e in examples if e.qid not in {w.qid for w in windows}}


class NerRunner(Runner):
    kind = NER

    def model_kwargs(self):
        return {"num_labels": len(self.task.labels), "global_pointer_efficient": True}

    def train_items(self, examples):
        return [features.encode_ner(self.tokenizer, e, self.task.labels, self.recipe.max_length) for e in examples]

    def collate(self, items):
        batch = features.collate_sequences(items, self.pad_id)
        width = batch["input_ids"].shape[1]
        labels = torch.zeros(len(items), len(self.task.labels), width, width)
        for b, it in enumerate(items):
            for kind, i, j in it["spans"]:
                labels[b, kind, i, j] = 1
        batch["labels"] = labels
        return batch

    def loss(self, logits, batch):
        from zoo.heads import global_pointer_loss

        return global_pointer_loss(batch["labels"], logits)  # widened there

    def predict(self, model, examples):
        items = self.train_items(examples)
        out = []
        for chunk, logits in zip(_batches(items, self.eval_batch_size), self._forward_all(model, items)):
            for it, grid in zip(chunk, logits):
                out.append(decoding.global_pointer_spans(grid, it["offsets"], self.task.labels))
        return out


RUNNERS = {CLASSIFICATION: ClassificationRunner, MULTIPLE_CHOICE: MultipleChoiceRunner, CHID: ChidRunner,
           SPAN_MRC: SpanMrcRunner, NER: NerRunner}


def fine_tuning_runtime(device: str | torch.device | None, bf16: bool) -> Runtime:
    """bf16 autocast where the device computes in bf16 natively, else fp32 (and a note): a GPU before Ampere
    emulates bf16, slower than fp32 (zoo.runtime.bf16_is_native)."""
    runtime = Runtime.resolve(device, torch.bfloat16 if bf16 else torch.float32)
    if bf16 and not bf16_is_native(runtime.device):
        where = f"{runtime.device} ({torch.cuda.get_device_name(runtime.device)})" if runtime.is_cuda else str(runtime.device)
        if where not in _SAID_FP32:  # once, not for every task
            _SAID_FP32.add(where)
            print(f"clue: {where} has no bf16 arithmetic (bf16 would be emulated, slower than fp32): fine-tuning in "
                  "fp32", file=sys.stderr, flush=True)
        runtime = dataclasses.replace(runtime, compute_dtype=torch.float32)
    return runtime


_SAID_FP32: set[str] = set()


def make_runner(task: TaskSpec, tokenizer, recipe: FinetuneHyperparameters, bf16: bool = False, cosent: bool = False,
                device: str | torch.device | None = "auto") -> Runner:
    """The runner of `task`'s kind; its model computes on `device` ("auto": CUDA when present)."""
    runtime = fine_tuning_runtime(device, bf16)
    if cosent:
        return CoSENTRunner(task, tokenizer, recipe, bf16, runtime)
    return RUNNERS[task.kind](task, tokenizer, recipe, bf16, runtime)
