"""Measuring a growth: a fixed padded probe batch, and the largest change of any head's output
between a model and its growth on it (expansion.md A.10)."""

from __future__ import annotations

import torch

from ..modeling import EncoderForMultipleChoice, EncoderModel
from ..runtime import ieee_float32
from .plan import GrowthPlan


def probe_batch(vocab_size: int, pad_token_id: int | None = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed padded batch (lengths 24 and 9, ids ≠ pad) for comparing a model with its growth."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (24, 9)
    pad = 0 if pad_token_id is None else pad_token_id
    ids = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long, device="cpu")
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        draw = torch.randint(0, vocab_size - 1, (n,), generator=generator, device="cpu")
        ids[row, :n] = draw + (draw >= pad).long()  # skip the pad id
        mask[row, :n] = 1
    return ids, mask


@torch.no_grad()
def model_outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The comparable outputs of any zoo model: its logits (each head's), or the bare encoder's states."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    if isinstance(model, EncoderForMultipleChoice):
        ids, mask = ids[:, None].expand(-1, 2, -1), mask[:, None].expand(-1, 2, -1)  # two choices
    out = model(input_ids=ids, attention_mask=mask, return_dict=True)
    if isinstance(model, EncoderModel):
        return {"last_hidden_state": out.last_hidden_state}
    return {key: value for key, value in out.items() if key in ("logits", "start_logits", "end_logits")}


def probe_change(small, big, plan: GrowthPlan) -> tuple[float, float]:
    """(max |Δ| between the small and grown model's outputs on `probe_batch`, max |small output|),
    in eval mode without gradients, in the models' own precision whatever the caller set (no autocast, no
    TF32: `zoo.runtime.ieee_float32`), since the bound it is held to is that precision's."""
    modes = small.training, big.training
    small.eval()
    big.eval()
    try:
        ids, mask = probe_batch(small.config.vocab_size, small.config.pad_token_id)
        with ieee_float32():
            a, b = model_outputs(small, ids, mask), model_outputs(big, ids, mask)
        worst = magnitude = 0.0
        for key, value in a.items():
            last = small.config.num_hidden_layers - 1
            expected = plan.expand_hidden(value, last) if key == "last_hidden_state" else value
            finite = expected.abs() < 1e11  # GlobalPointer's masked spans hold −1e12 in both
            worst = max(worst, float((b[key].double() - expected.double()).abs()[finite].max()))
            magnitude = max(magnitude, float(expected.double().abs()[finite].max()))
        return worst, magnitude
    finally:
        small.train(modes[0])
        big.train(modes[1])
