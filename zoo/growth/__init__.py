"""Lossless small-to-large growth: `expand` a model to a larger one that computes the same function.

Recipes (section numbers refer to ../shared/specs/expansion.md):

    hidden d → D        residual stream h̃ = Q·h with Qᵀ Q = (D/d)·I (A.1): readers W·S (S Q = I), writers Q·W
    heads h → H         duplicate heads, split their out_proj columns (A.2 i)
    head size d_h → k·d_h   RoPE pair j → pair j·k (same frequency), zero query on new pairs, q × √k (A.2 ii)
    FFN f → F           duplicate units, split their fc2 columns (A.3)
    GAU e → E, s → k·s  duplicate u and v with one map; z pairs as head size, γ_q = 0 on new pairs (A.4)
    depth L → L′        insert copies of a block whose writers are zero; LayerNorm models move the
                        norm affine ("move-affine") and DeepNet rescales for α′ = (2L′)^¼ (A.5)

Q is a duplication: big coordinate i copies small coordinate i mod d, scaled by √(D/d)/√n (n copies),
which is exact for any D with the parameter-free RMS norm and is uniform duplication (scale 1) when
d divides D, the only exact choice under LayerNorm. Every grown tensor is a weighted gather of one
small tensor (a `TensorRule`), so the same rules map gradients and Adam moments (A.8, A.10.7).

Exactness is about the eval-mode function. Two consequences of the norms' ε that the recipes handle:
- tied embeddings scale by d/D (A.1); Norm(s·x) with ε·s² equals Norm(x) with ε, so the grown config
  gets `embedding_norm_eps` = ε·(d/D)²;
- DeepNet's α change is carried by dividing the LayerNorm affines by c = α′/α and multiplying the
  readers by c, which is exact with ε > 0 (scaling the writers by c, A.5, is exact only at ε = 0).
One is not removable: a post-norm block inserted for depth re-normalises an already normalised state,
and Norm(Norm(y)) ≠ Norm(y) by a relative ε(1 − m)/(2m) (RMS; m = mean(y²)) or about ε/(2·var)
(LayerNorm). Between blocks that is ≲ 5e-8 at ε = 1e-7 (below fp32 rounding) and ≈ 1e-6 at
LayerNorm's 1e-5; below layer 0 the variance is the embedding sum's, so it can be much larger. The
plan states it in `notes`, reports the change measured on a probe batch, and `expand` refuses a
result beyond `max_change`.

The package, by module:

    grow.py         `expand`: the front door (validate, build the rules, build and probe the model)
    sizes.py        `grown_config`: the grown sizes, validated; where new layers go
    operators.py    `AxisMap`, `TensorRule`: the shared function-preserving operators
    rules.py        `GrowthRules`: Q, the depth layout, embeddings and heads, shared by every family
    roformer_v2.py  the multi-head attention + FFN block (A.2, A.3); DeepNet's block too
    gau_alpha.py    the GAU block (A.4)
    deepnet.py      LayerNorm affines (move-affine) and the DeepNorm α (A.1, A.5)
    plan.py         `GrowthPlan` (hidden states, gradients, optimizer state) and `expand_optimizer`
    probe.py        the probe batch and the measured change
    cli.py          `python -m zoo expand`
"""

from .cli import cmd_expand, register_cli
from .grow import SYMMETRIES, expand
from .operators import AxisMap, TensorRule
from .plan import FIRST_MOMENT_KEYS, SECOND_MOMENT_KEYS, STATE_MODES, GrowthPlan, expand_optimizer
from .probe import model_outputs, probe_batch, probe_change
from .rules import HEAD_READERS, HEAD_UNCHANGED, GrowthRules
from .sizes import ALPHA_POLICIES, PLACEMENTS, grown_config

__all__ = [
    "ALPHA_POLICIES",
    "FIRST_MOMENT_KEYS",
    "HEAD_READERS",
    "HEAD_UNCHANGED",
    "PLACEMENTS",
    "SECOND_MOMENT_KEYS",
    "STATE_MODES",
    "SYMMETRIES",
    "AxisMap",
    "GrowthPlan",
    "GrowthRules",
    "TensorRule",
    "cmd_expand",
    "expand",
    "expand_optimizer",
    "grown_config",
    "model_outputs",
    "probe_batch",
    "probe_change",
    "register_cli",
]
