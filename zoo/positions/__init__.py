"""Position and attention variants for length extrapolation, chosen per call (extrapolation.md B.5, B.6).

A `PositionVariant` changes how one forward pass attends — RoPE frequencies, logit scales,
windows, clipped relative positions — without touching the weights, for every family:

    v = zoo.positions.variant("ntk_mixed+logn_dagger", train_length=64)
    logits = model(input_ids, position_variant=v).logits

Names (B.6 item 6; parts join with "+", at most one of each kind):

    baseline                  plain RoPE extrapolation
    logn_dagger               test-time log n†: logits × max(1, log_N n), n = keys the query sees (B.2)
    logn_train                the checkpoint's own log n (softmax_plus); asserts the model has it
    window_half, window_full  band |i − j| ≤ w with w = N/2 or N − 1 (B.1, B.5)
    window_lambda             w = N/2 and the first 4 tokens visible to every query (Λ-mask)
    window_w{W}               band of explicit width W
    pi                        position interpolation θ/κ (B.5)
    ntk, ntk_fixed, ntk_mixed NTK-aware base scaling and Su's two refinements (B.5)
    ntk_dynamic               NTK with κ from each row's own length, HF/vLLM form, factor s = 2 (B.5)
    yarn                      YaRN ramp between interpolation and extrapolation, mscale on cos/sin (B.5)
    rerope_w{W}               relative positions clipped to [−W, W] (three score matrices, B.5)
    leaky_rerope_w{W}_k{K}    slope 1/K outside the window; K = "auto" takes k = (L−1−W)/(N−1−W) (B.5)

N is the training length; κ = max(1, L/N) with L the batch's sequence length. A checkpoint trained
with log n (softmax_plus) keeps its own scale in every variant, counted over the keys each query
sees (so it shrinks under a window); a window or ReRoPE width ≥ L is an error. Variants whose
attention cannot go through the fused kernels (ReRoPE, recorded entropy, very long sequences)
run a query-chunked kernel whose memory is O(chunk · L), so 16N fits on a CPU.

Training-time random positions (B.3) for the pretraining collator: `sample_ruoss_positions`,
`sample_equal_mean_positions`.

The package, by module: scaling.py (the RoPE frequency rules), context.py (visible keys, row scales,
the attention context and the query-chunked kernel), variants.py (`PositionVariant`), names.py
(`variant`, `default_variants`: the names above), training.py (random training positions).
"""

from .context import (
    DEFAULT_SCORE_BUDGET,
    LIBRARY_SCORE_LIMIT,
    ClippedRelative,
    EntropyRecorder,
    PositionAttentionContext,
    chunked_attention,
    logn_dagger_scale,
    visible_key_counts,
)
from .names import KNOWN_NAMES, LAMBDA_SINK, default_variants, variant
from .scaling import (
    ROPE_SCALINGS,
    ntk_dynamic_inv_freq,
    ntk_fixed_inv_freq,
    ntk_inv_freq,
    ntk_mixed_inv_freq,
    pi_inv_freq,
    yarn_inv_freq,
    yarn_mscale,
)
from .training import sample_equal_mean_positions, sample_ruoss_positions
from .variants import PositionVariant

__all__ = [
    "DEFAULT_SCORE_BUDGET",
    "KNOWN_NAMES",
    "LAMBDA_SINK",
    "LIBRARY_SCORE_LIMIT",
    "ROPE_SCALINGS",
    "ClippedRelative",
    "EntropyRecorder",
    "PositionAttentionContext",
    "PositionVariant",
    "chunked_attention",
    "default_variants",
    "logn_dagger_scale",
    "ntk_dynamic_inv_freq",
    "ntk_fixed_inv_freq",
    "ntk_inv_freq",
    "ntk_mixed_inv_freq",
    "pi_inv_freq",
    "sample_equal_mean_positions",
    "sample_ruoss_positions",
    "variant",
    "visible_key_counts",
    "yarn_inv_freq",
    "yarn_mscale",
]
