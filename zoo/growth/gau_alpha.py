"""GAU-α's growth rules: the gated attention unit (expansion.md A.4).

[u | v | z] = swish(x·W_i), q = γ_q ⊙ z, k = γ_k ⊙ z, out = W_o(u ⊙ A·v). With h̃ = Q·h (A.1):

    W̃_i = W_i·Q⁺ (a reader), W̃_o = Q·W_o (a writer; zero in an inserted block, A.5)
    expansion e → E        unit i of u *and* v copies unit i mod e (one map for both, so u_i·(Av)_i
                           is duplicated); W_o's columns of the copies split 1
    key size s → k·s       old z pair j at new pair j·k (same RoPE frequency); γ_q = 0 on the new
                           pairs, old γ_q × √k for the temperature 1/√(k·s); γ_k copied
    softmax_plus           depends on the sequence length only: unchanged
"""

from __future__ import annotations

import math

from .operators import FILL_INIT, FILL_ZERO, AxisMap, pair_placement


class GAUAlphaBlock:
    """The maps of one growth of `gau` (i_dense, o_dense, q/k scale-offsets), and their rules."""

    norm_names = ("gau_norm",)

    def __init__(self, rules):  # the GrowthRules being built (zoo/growth/rules.py)
        s, b = rules.small, rules.big
        self.rules = rules
        rope = s.position_embedding_type == "rope"
        self.expansion = AxisMap.duplicate(s.intermediate_size, b.intermediate_size)
        self.z_source = pair_placement(1, 1, s.attention_key_size, b.attention_key_size, rope)
        k = b.attention_key_size / s.attention_key_size
        self.z = AxisMap.placed(self.z_source, 1.0, FILL_INIT)
        self.zq = AxisMap.placed(self.z_source, math.sqrt(k), FILL_ZERO)  # γ_q = 0 on new pairs, √k fix
        self.zk = AxisMap.placed(self.z_source, 1.0, FILL_INIT)
        if b.attention_key_size != s.attention_key_size:
            rules.notes.append(
                f"key size {s.attention_key_size} → {b.attention_key_size}: "
                + ("old RoPE pair j at new pair j·k (same frequency), " if rope else "")
                + f"γ_q = 0 on new dims, old γ_q × √{k:g} (expansion.md A.4)"
            )

    def add_rules(self, add) -> None:
        """One block's rules through `add(suffix, axes, factor, writer)` (GrowthRules.block_rules)."""
        rules, R = self.rules, self.rules.residual
        s = rules.small
        out = (R, "out")
        read = rules.c  # every block reads a ÷ c state under DeepNet's α change
        sizes = [s.intermediate_size] * 2 + [s.attention_key_size]
        rows = AxisMap.concat([self.expansion, self.expansion, self.z], sizes)  # [u | v | z]; u, v share one map
        add("gau.i_dense.weight", ((rows, "out"), (rules.share(R), "in")), read)
        add("gau.i_dense.bias", ((rows, "out"),))
        add("gau.o_dense.weight", (out, (rules.share(self.expansion), "in")), writer=True)
        add("gau.o_dense.bias", (out,), writer=True)
        add("gau.q_scaleoffset.weight", ((self.zq, "out"),))
        add("gau.q_scaleoffset.bias", ((self.zq, "out"),))
        add("gau.k_scaleoffset.weight", ((self.zk, "out"),))
        add("gau.k_scaleoffset.bias", ((self.zk, "out"),))
