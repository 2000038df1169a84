"""DeepNet's growth rules: LayerNorm's affine parameters and the DeepNorm α (expansion.md A.1, A.5).

Its block is RoFormerV2's (zoo/growth/roformer_v2.py); what DeepNet adds is a norm with γ, β and
the residual x ← LN(α·x + F(x)):

    width       γ̃, β̃ copied along Q, which keeps mean and variance only for uniform duplication
                (D a multiple of d; sizes.py refuses the rest)
    depth       Norm(α·Norm(y)) ≠ Norm(y) with an affine: "move-affine": the anchor block's last
                norm becomes the identity (γ = 1, β = 0), every norm of the inserted blocks too,
                except the last inserted block's last norm, which takes the anchor's (γ, β)
    α → α′      α′ = (2L′)^¼ with c = α′/α: the grown model carries every state divided by c, so
                α′·(x/c) + G(x) = α·x + G(x): the affines that feed a residual are divided by c and
                the readers multiplied by c (exact with ε > 0; A.5 scales the writers by c instead,
                exact only at ε = 0). The last norm, which feeds the head, keeps its affine.
    pre-norm    the norms sit on the branches: inserted blocks keep copies of theirs (their writers
                are zero), and the final norm is copied along Q.
"""

from __future__ import annotations

from .operators import TensorRule


def deepnorm_factor(small, big) -> tuple[float, str | None]:
    """c = α′/α for a DeepNorm model whose depth changes α (1 otherwise), and the note saying so."""
    if small.residual != "deepnorm" or big.alpha == small.alpha:
        return 1.0, None
    c = big.alpha / small.alpha
    return c, (
        f"DeepNorm α {small.alpha:.6g} → {big.alpha:.6g} (depth {small.num_hidden_layers} → {big.num_hidden_layers}): "
        f"LayerNorm affines feeding a residual divided by c = {c:.6g} and their readers multiplied by c "
        "(exact with ε > 0; expansion.md A.5 scales the writers instead, exact only at ε = 0)"
    )


class DeepNetNorms:
    """The rules of every LayerNorm affine of a growth (any model with norm_type="layernorm")."""

    def __init__(self, rules):  # the GrowthRules being built (zoo/growth/rules.py)
        self.rules = rules

    def embedding_rules(self) -> dict[str, TensorRule]:
        p = self.rules.prefix
        out = {}
        for param in ("weight", "bias"):
            name = f"embeddings.norm.{param}"
            out[p + name] = self.rule(name, -1, "embeddings.norm")
        return out

    def block_rules(self, big_layer: int, small_layer: int) -> dict[str, TensorRule]:
        p = self.rules.prefix
        out = {}
        for norm in self.rules.block.norm_names:
            for param in ("weight", "bias"):
                out[p + f"layers.{big_layer}.{norm}.{param}"] = self.rule(
                    f"layers.{small_layer}.{norm}.{param}", big_layer, f"layers.{big_layer}.{norm}"
                )
        return out

    def final_rules(self) -> dict[str, TensorRule]:
        """Pre-norm's final norm: copied along Q."""
        p, out = self.rules.prefix, (self.rules.residual, "out")
        return {p + f"final_norm.{param}": TensorRule(p + f"final_norm.{param}", (out,)) for param in ("weight", "bias")}

    def rule(self, small_name: str, big_layer: int, big_norm: str) -> TensorRule:
        """A LayerNorm affine of the grown model (move-affine and the α factor, A.5)."""
        rules = self.rules
        p = rules.prefix
        param = small_name.rsplit(".", 1)[1]
        out = ((rules.residual, "out"),)
        if not rules.post_norm:  # pre-norm: inserted blocks keep copies of their own norms (exact: zero writers)
            new = big_layer >= 0 and rules.layers[big_layer][0] == "new"
            return TensorRule(p + small_name, out, kind="copy" if new else "map")
        factor = 1.0 if big_norm == rules.last_norm else 1.0 / rules.c
        # post-norm: a chain's anchor → identity; every inserted norm → identity except the last
        # inserted block's last norm, which takes the anchor's affine
        anchor, role = self.chain_role(big_layer, big_norm)
        if role in ("anchor", "inserted"):
            return TensorRule(p + small_name, out, kind="fill", fill=1.0 if param == "weight" else 0.0, factor=factor)
        if role == "moved":
            anchor_norm = "embeddings.norm" if anchor == -1 else f"layers.{anchor}.{rules.block.norm_names[-1]}"
            return TensorRule(p + f"{anchor_norm}.{param}", out, factor=factor)
        return TensorRule(p + small_name, out, factor=factor)

    def chain_role(self, big_layer: int, big_norm: str) -> tuple[int | None, str]:
        """'anchor' (its affine moves up), 'moved' (receives it), 'inserted' (identity), or 'plain'."""
        rules = self.rules
        last = rules.block.norm_names[-1]
        for anchor, chain in rules.chains.items():
            if big_norm == "embeddings.norm" and anchor == -1:
                return anchor, "anchor"
            if big_layer >= 0 and rules.layers[big_layer] == ("old", anchor) and big_norm.endswith(last):
                return anchor, "anchor"
            if big_layer in chain:
                if big_layer == chain[-1] and big_norm.endswith(last):
                    return anchor, "moved"
                return anchor, "inserted"
        return None, "plain"
