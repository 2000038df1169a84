"""Task heads that are more than one dense layer: the MLM head, GlobalPointer and its loss."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .casting import at_least_fp32
from .dropout import Dropout
from .initialization import dense
from .norms import LayerNorm
from .rope import apply_rope, rope_cos_sin, rope_inv_freq

NEG_INF = -1e12  # bert4keras K.infinity(): a finite "−∞" that keeps the losses free of inf − inf


class MaskedLMHead(nn.Module):
    """logits = Dropout(h) · E_tokᵀ, tied to the token embedding, no bias (§1.1, "tied"); or
    torchscale/BERT style dense → act → LayerNorm → tied projection + bias ("transform")."""

    def __init__(self, config):
        super().__init__()
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.transform = None
        if config.mlm_head == "transform":
            self.transform = nn.Sequential(
                dense(config.hidden_size, config.hidden_size, role="head"),
                ACT2FN[config.hidden_act],
                LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            )
        self.decoder = dense(config.hidden_size, config.vocab_size, bias=config.mlm_head == "transform", role="head")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(hidden_states)
        if self.transform is not None:
            hidden_states = self.transform(hidden_states)
        return self.decoder(hidden_states)


def _span_mask(attention_mask: torch.Tensor | None, seq_len: int, device) -> torch.Tensor:
    """[B or 1, 1, S, S] True where (start i, end j) is a valid span: both tokens real and i ≤ j."""
    upper = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu()[None, None]
    if attention_mask is None:
        return upper
    valid = attention_mask.bool()
    return upper & valid[:, None, :, None] & valid[:, None, None, :]


class GlobalPointer(nn.Module):
    """GlobalPointer (Su, kexue.fm 8373): per entity type α, s_α(i, j) = RoPE(q_α,i) · RoPE(k_α,j) / √d.

    As bert4keras `GlobalPointer`: one dense layer gives [q | k] per head, RoPE with positions
    0 … S−1, scores scaled by 1/√head_size, invalid spans (padding, start > end) at −1e12.
    """

    def __init__(self, hidden_size: int, heads: int, head_size: int = 64, use_bias: bool = True):
        super().__init__()
        self.heads, self.head_size = heads, head_size
        self.dense = dense(hidden_size, heads * head_size * 2, bias=use_bias, role="head")

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        qk = at_least_fp32(self.dense(hidden_states)).view(batch, seq, self.heads, 2 * self.head_size).transpose(1, 2)
        q, k = qk[..., : self.head_size], qk[..., self.head_size :]
        cos, sin = rope_cos_sin(torch.arange(seq, device=q.device), rope_inv_freq(self.head_size, device=q.device),
                                q.dtype)  # made on the device: no copy from the host per forward
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        logits = torch.matmul(q, k.transpose(-1, -2)) / self.head_size**0.5
        return logits.masked_fill(~_span_mask(attention_mask, seq, q.device), NEG_INF)


class EfficientGlobalPointer(nn.Module):
    """Efficient GlobalPointer (Su, kexue.fm 8877), as bert4keras `EfficientGlobalPointer`:

        p = W_p h;  q, k = p[..., ::2], p[..., 1::2] (RoPE)     shared by all entity types
        s_α(i, j) = q_i · k_j / √d + (b_α,end)_j + (b_α,start)_i,   [b] = W_b p / 2
    """

    def __init__(self, hidden_size: int, heads: int, head_size: int = 64, use_bias: bool = True):
        super().__init__()
        self.heads, self.head_size = heads, head_size
        self.p_dense = dense(hidden_size, head_size * 2, bias=use_bias, role="head")
        self.q_dense = dense(head_size * 2, heads * 2, bias=use_bias, role="head")

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        seq = hidden_states.shape[1]
        p = at_least_fp32(self.p_dense(hidden_states))
        q, k = p[..., 0::2], p[..., 1::2]
        cos, sin = rope_cos_sin(torch.arange(seq, device=p.device), rope_inv_freq(self.head_size, device=p.device),
                                p.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        logits = torch.matmul(q, k.transpose(-1, -2)) / self.head_size**0.5  # [B, S, S]
        bias = (at_least_fp32(self.q_dense(p.to(self.q_dense.weight.dtype))) / 2).transpose(1, 2)  # [B, 2·heads, S]
        logits = logits[:, None] + bias[:, 0::2, None, :] + bias[:, 1::2, :, None]
        return logits.masked_fill(~_span_mask(attention_mask, seq, p.device), NEG_INF)


def multilabel_categorical_crossentropy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Su's multi-label categorical cross-entropy (kexue.fm 7359), per row of the last dimension:

        log(1 + Σ_{neg} e^{s_i}) + log(1 + Σ_{pos} e^{−s_j})
    """
    y_true = y_true.to(y_pred.dtype)
    y_pred = (1 - 2 * y_true) * y_pred
    y_neg = y_pred - y_true * 1e12
    y_pos = y_pred - (1 - y_true) * 1e12
    zeros = torch.zeros_like(y_pred[..., :1])
    neg_loss = torch.logsumexp(torch.cat([y_neg, zeros], dim=-1), dim=-1)
    pos_loss = torch.logsumexp(torch.cat([y_pos, zeros], dim=-1), dim=-1)
    return neg_loss + pos_loss


def global_pointer_loss(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over (batch, type) of the multi-label CE over all S×S spans (bert4keras)."""
    batch, heads = logits.shape[:2]
    return multilabel_categorical_crossentropy(
        labels.reshape(batch * heads, -1), at_least_fp32(logits).reshape(batch * heads, -1)
    ).mean()
