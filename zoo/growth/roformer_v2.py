"""RoFormerV2's growth rules: the multi-head attention + FFN block (DeepNet's block too).

With h̃ = Q·h the grown residual stream (expansion.md A.1; `GrowthRules.residual`):

    readers   W̃_q, W̃_k, W̃_v, W̃_1 = W·Q⁺          (rows gathered by the head/unit maps below)
    writers   W̃_o, W̃_2 = Q·W                      (zero in an inserted block: F ≡ 0, A.5)
    heads h → H            head a copies head a mod h; W_o's columns of the copies split 1 (A.2 i)
    head size d_h → k·d_h  old RoPE pair j at new pair j·k (θ′_{jk} = θ_j); zero W_q rows on the
                           new pairs; old W_q rows × √k for the temperature 1/√(k·d_h) (A.2 ii)
    FFN f → F              unit i copies unit i mod f; W_2's columns of the copies split 1 (A.3)

The parameter-free RMS norm needs nothing more (Norm(Q h) = Q·Norm(h) for Qᵀ Q = (D/d)·I); a
LayerNorm or DeepNorm configuration adds zoo/growth/deepnet.py's rules.
"""

from __future__ import annotations

import math

from .operators import FILL_INIT, FILL_ZERO, AxisMap, pair_placement


class RoFormerV2Block:
    """The maps of one growth of `self_attn` (q/k/v/out_proj) and `ffn` (fc1/fc2), and their rules."""

    norm_names = ("self_attn_norm", "ffn_norm")

    def __init__(self, rules):  # the GrowthRules being built (zoo/growth/rules.py)
        s, b = rules.small, rules.big
        self.rules = rules
        rope = s.position_embedding_type == "rope"
        self.ffn = AxisMap.duplicate(s.intermediate_size, b.intermediate_size)  # A.3
        source = pair_placement(s.num_attention_heads, b.num_attention_heads, s.head_size, b.head_size, rope)
        k = b.head_size / s.head_size
        self.q = AxisMap.placed(source, math.sqrt(k), FILL_ZERO)  # zero query on new pairs, √k fix
        self.k = AxisMap.placed(source, 1.0, FILL_INIT)
        self.v = AxisMap.placed(source, 1.0, FILL_INIT)
        if b.head_size != s.head_size:
            rules.notes.append(
                f"head size {s.head_size} → {b.head_size}: "
                + ("old RoPE pair j at new pair j·k (same frequency), " if rope else "")
                + f"zero query rows on new dims, old query rows × √{k:g} (expansion.md A.2 ii)"
            )

    def add_rules(self, add) -> None:
        """One block's rules through `add(suffix, axes, factor, writer)` (GrowthRules.block_rules)."""
        rules, R = self.rules, self.rules.residual
        out = (R, "out")
        read = rules.c  # every block reads a ÷ c state under DeepNet's α change
        for proj, amap in (("q_proj", self.q), ("k_proj", self.k), ("v_proj", self.v)):
            add(f"self_attn.{proj}.weight", ((amap, "out"), (rules.share(R), "in")), read)
            add(f"self_attn.{proj}.bias", ((amap, "out"),))
        add("self_attn.out_proj.weight", (out, (rules.share(self.v), "in")), writer=True)
        add("self_attn.out_proj.bias", (out,), writer=True)
        add("ffn.fc1.weight", ((self.ffn, "out"), (rules.share(R), "in")), read)
        add("ffn.fc1.bias", ((self.ffn, "out"),))
        add("ffn.fc2.weight", (out, (rules.share(self.ffn), "in")), writer=True)
        add("ffn.fc2.bias", (out,), writer=True)
