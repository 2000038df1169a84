"""The blocks an encoder stacks: multi-head attention, FFN, GAU, and the residual schemes around them.

Residual schemes (chosen by `config.residual`):
    post:      x ← Norm(x + Dropout(F(x)))                       RoFormerV2, GAU-α (§1.1, §2.1)
    deepnorm:  x ← Norm(α·x + Dropout(F(x)))                     DeepNet (§3.1)
    pre:       x ← x + Dropout(F(Norm(x))), final norm after the last block
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import AttentionContext
from .casting import cast_for_products
from .dropout import Dropout
from .initialization import dense
from .norms import ScaleOffset, make_norm
from .projections import project
from .recompute import recompute_elementwise, recomputed_product
from .residual import residual_norm


def residual_keeps_its_output(config) -> bool:
    """Whether the residual step before a block keeps its output, the block's input, for its own backward
    pass: the post-norm (or DeepNorm) step with the parameter-free RMS norm does, computing
    dx = r·(dy − y·mean(dy·y)) from y (the Triton residual kernel and the CPU RMS norm keep y); with
    LayerNorm it keeps x̂ instead, and a pre-norm block's input is a norm's output nothing else keeps."""
    return config.residual != "pre" and config.norm_type == "rms"


def recompute_block(fn, x: torch.Tensor, *args, input_kept: bool):
    """`fn(x, *args)` under `recompute_elementwise` (zoo/recompute.py). The autocast copy of x that fn's
    first product reads is made again in the backward pass when x stays in memory anyway (`input_kept`),
    so nothing but x is kept for it; otherwise the copy is made here and kept instead of x (half its size
    from fp32 to bf16)."""
    if not input_kept:
        (x,) = cast_for_products(x, 1)
    return recompute_elementwise(fn, x, *args)


class MultiHeadSelfAttention(nn.Module):
    """q, k, v = xW_q, xW_k, xW_v; RoPE on q, k; softmax(q·kᵀ/√d) v per head; then W_o (§1.1)."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        inner = self.num_heads * self.head_size
        bias = config.use_bias
        self.q_proj = dense(config.hidden_size, inner, bias=bias, role="qk")
        self.k_proj = dense(config.hidden_size, inner, bias=bias, role="qk")
        self.v_proj = dense(config.hidden_size, inner, bias=bias, role="value")
        self.out_proj = dense(inner, config.hidden_size, bias=bias, role="value")
        self.normalization = config.attention_normalization
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, ctx: AttentionContext, need_weights: bool = False):
        batch, seq, _ = x.shape
        shape = (batch, seq, self.num_heads, self.head_size)
        # one product x·[W_q; W_k; W_v]ᵀ where the modules allow (zoo/projections.py)
        q, k, v = (t.view(shape).transpose(1, 2) for t in project(x, (self.q_proj, self.k_proj, self.v_proj)))
        out, probs = ctx.attend(
            q, k, v, normalization=self.normalization, dropout_p=self.dropout_p,
            training=self.training, need_weights=need_weights,
        )
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_size)
        return self.out_proj(out), probs


class FeedForward(nn.Module):
    """W_2 · act(W_1 · x): two matrices, no GLU, no inner dropout (§1.1)."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = dense(config.hidden_size, config.intermediate_size, bias=config.use_bias, role="value")
        self.fc2 = dense(config.intermediate_size, config.hidden_size, bias=config.use_bias, role="value")
        self.act = ACT2FN[config.hidden_act]
        self.recompute = config.recompute_elementwise
        self.input_kept = residual_keeps_its_output(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext | None = None, need_weights: bool = False):
        if self.recompute and torch.is_grad_enabled():
            return recompute_block(self.feed_forward, x, input_kept=self.input_kept), None
        return self.feed_forward(x), None

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act(self.fc1(x))
        with recomputed_product():
            return self.fc2(activated)


class GatedAttentionUnit(nn.Module):
    """GAU-α (§2.1), single head:

        [u | v | z] = swish(x · W_i)            widths e, e, s (split order u, v, z)
        q = z ⊙ γ_q,  k = z ⊙ γ_k               then RoPE on q and k
        A = softmax_plus(q·kᵀ/√s)
        out = (u ⊙ A·v) · W_o
    """

    def __init__(self, config):
        super().__init__()
        self.expansion_size = config.intermediate_size
        self.key_size = config.attention_key_size
        self.i_dense = dense(config.hidden_size, 2 * self.expansion_size + self.key_size, bias=config.use_bias,
                             role="value")
        self.o_dense = dense(self.expansion_size, config.hidden_size, bias=config.use_bias, role="value")
        self.q_scaleoffset = ScaleOffset(self.key_size, offset=config.use_bias)
        self.k_scaleoffset = ScaleOffset(self.key_size, offset=config.use_bias)
        self.normalization = config.attention_normalization
        self.dropout_p = config.attention_probs_dropout_prob
        self.recompute = config.recompute_elementwise
        self.input_kept = residual_keeps_its_output(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, need_weights: bool = False):
        if self.recompute and torch.is_grad_enabled() and not need_weights:
            return recompute_block(self.gated_attention, x, ctx, input_kept=self.input_kept)
        return self.gated_attention(x, ctx, need_weights)

    def gated_attention(self, x: torch.Tensor, ctx: AttentionContext, need_weights: bool = False):
        """(u ⊙ A·v)·W_o, and A (with `need_weights`)."""
        gate = self.i_dense(x)
        u, v, z = F.silu(gate).split([self.expansion_size, self.expansion_size, self.key_size], dim=-1)
        out, probs = ctx.attend_scale_offsets(
            z, self.q_scaleoffset, self.k_scaleoffset, v[:, None], normalization=self.normalization,
            dropout_p=self.dropout_p, training=self.training, need_weights=need_weights,
        )
        gated = u * out.squeeze(1)  # squeeze, not [:, 0]: its backward is a view, select's a zero fill and a copy
        with recomputed_product():
            return self.o_dense(gated), probs


class EncoderLayer(GradientCheckpointingLayer):
    """One block: attention then FFN ("transformer"), or one GAU ("gau"), each in its residual scheme."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual = config.residual
        self.alpha = config.alpha
        self.dropout = Dropout(config.hidden_dropout_prob)
        if config.block_type == "gau":
            self.gau = GatedAttentionUnit(config)
            self.gau_norm = make_norm(config)
            self.sublayers = (("gau", "gau_norm"),)
        else:
            self.self_attn = MultiHeadSelfAttention(config)
            self.self_attn_norm = make_norm(config)
            self.ffn = FeedForward(config)
            self.ffn_norm = make_norm(config)
            self.sublayers = (("self_attn", "self_attn_norm"), ("ffn", "ffn_norm"))

    def forward(self, hidden_states: torch.Tensor, ctx: AttentionContext, output_attentions: bool = False):
        attentions = None
        for branch_name, norm_name in self.sublayers:
            branch, norm = getattr(self, branch_name), getattr(self, norm_name)
            if self.residual == "pre":
                out, probs = branch(norm(hidden_states), ctx, need_weights=output_attentions)
                hidden_states = hidden_states + self.dropout(out)
            else:
                out, probs = branch(hidden_states, ctx, need_weights=output_attentions)
                hidden_states = residual_norm(out, hidden_states, self.alpha, self.dropout, norm)
            if probs is not None:
                attentions = probs
        return hidden_states, attentions
