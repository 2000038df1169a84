"""The encoder configuration shared by the three families.

One config class describes one encoder: which block it stacks (attention + FFN, or GAU),
which norm, which residual scheme, which attention normalisation, which initialiser. A family
(RoFormerV2, GAU-α, DeepNet) is a subclass that only changes defaults and its `model_type`.
Spec: ../shared/specs/architectures.md (section numbers below refer to it).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import PreTrainedConfig

from .errors import ConfigError

CHOICES: dict[str, tuple[Any, ...]] = {
    "block_type": ("transformer", "gau"),
    "norm_type": ("rms", "layernorm"),
    "residual": ("post", "pre", "deepnorm"),
    "position_embedding_type": ("rope", "learned", "none"),
    "attention_normalization": ("softmax", "softmax_plus", "relu2"),
    "hidden_act": ("relu", "gelu", "swish", "silu", "gelu_new", "tanh"),
    "mlm_head": ("tied", "transform"),
    "initializer": ("bert4keras", "deepnorm_paper", "deepnorm_torchscale", "normal"),
    "attention_backend": ("auto", "matmul", "sdpa"),
}

POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "type_vocab_size")
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")

# transformers' `attn_implementation` names that map onto an `attention_backend` (ecosystem.md §2.2).
ATTN_IMPLEMENTATIONS = {"eager": "matmul", "sdpa": "sdpa"}


class EncoderConfig(PreTrainedConfig):
    """Configuration of a zoo encoder.

    Args:
        vocab_size: number of token ids (12000 in the released char vocabularies).
        hidden_size: width of the residual stream H.
        num_hidden_layers: number of blocks L (GAU layers count one each).
        num_attention_heads: heads A of multi-head attention (GAU is single-head).
        head_size: query/key/value size per head; defaults to hidden_size // num_attention_heads.
        intermediate_size: FFN width, or the GAU expansion width e (u and v each have e units).
        attention_key_size: GAU's shared q/k width s (128 in GAU-α).
        hidden_act: FFN activation (GAU always uses swish, §2.1).
        hidden_dropout_prob: dropout on embeddings, residual branches and before the MLM projection.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        type_vocab_size: number of segment ids (all zero in every Zhuiyi script, §1.3).
        max_position_embeddings: table size for learned positions; nominal for RoPE (no length cap).
        layer_norm_eps: ε of every norm (bert4keras K.epsilon() = 1e-7; torchscale LayerNorm 1e-5).
        embedding_norm_eps: ε of the embedding norm only (None = layer_norm_eps). `zoo.expand` sets it:
            growing the width d → D scales the tied embeddings by d/D, and Norm(s·e) with ε·s² equals
            Norm(e) with ε exactly (expansion.md A.1).
        block_type: "transformer" (attention then FFN sublayers) or "gau" (one GAU sublayer).
        norm_type: "rms" (parameter-free x/√(mean x² + ε), §1.1) or "layernorm" (γ, β).
        residual: "post" Norm(x + F(x)), "pre" x + F(Norm(x)) with a final norm, or "deepnorm"
            Norm(α·x + F(x)) with α, β from the depth (§3.2).
        use_bias: biases on every dense layer (DeepNet) or none (RoFormerV2, GAU-α).
        position_embedding_type: "rope" (interleaved pairs, Q/K only, §1.2), "learned" or "none".
        rope_theta: RoPE base b.
        attention_normalization: "softmax", "softmax_plus" (softmax(a·log n / log base), n the valid
            keys of each row, §2.2) or "relu2" (relu(a)²/n).
        softmax_plus_base: the training length whose log normalises softmax_plus (512).
        softmax_plus_min_len: floor on n (1 = training-era bert4keras and the ports; 16 = 0.11.5).
        embedding_norm: normalise the embedding sum (post-norm families).
        dropout_before_embedding_norm: bert4keras order (dropout → norm) vs torchscale (norm → dropout).
        mlm_head: "tied" (dropout, then hidden · E_tokᵀ, no bias, §1.1) or "transform"
            (dense, activation, LayerNorm, tied projection plus bias, as torchscale's BERT example).
        initializer: "bert4keras" (truncated normal 1.137/√fan · L^(−1/order), §1.4), "deepnorm_paper"
            (xavier_normal, gain β on v/out/fc1/fc2), "deepnorm_torchscale" (PyTorch default init, then
            v/out/fc1/fc2 times β) or "normal" (N(0, initializer_range)).
        initializer_order: the `order` of the bert4keras initialiser (2 RoFormerV2, 3 GAU-α).
        initializer_range: std of the "normal" initialiser and of heads that use it.
        deepnorm_alpha, deepnorm_beta: override the (2N)^¼ and (8N)^−¼ of §3.2 (None = from depth).
        attention_backend: "matmul" (the explicit kernel: scores in memory, the fast CPU kernel; on
            CUDA cuBLAS products with a Triton softmax), "sdpa" (torch scaled_dot_product_attention,
            the fused kernels on CUDA) or "auto" (chosen by device). Saved
            with the model. transformers' `attn_implementation` ("eager" = "matmul", "sdpa"), given to
            `from_pretrained` or `set_attn_implementation`, overrides it for that model instance.
        recompute_elementwise: GAU blocks keep for the backward pass only the gate's pre-activation
            and the attention output, and make swish, q/k (scale, offset, RoPE) and u ⊙ A·v again there
            (zoo/recompute.py; the output projection's output, which nothing reads, is not kept, nor
            the bf16 copy of the layer input behind a post-norm RMS step, which keeps the input): about
            47% less of a GAU layer's activation memory, for one more pass over those elementwise
            chains. FFNs with an activation that keeps its input (GELU, swish: DeepNet) make the
            activation again instead of keeping its output, and keep no W_2 output; a ReLU FFN has
            nothing to drop (refused). Same function and gradients.
        classifier_dropout: dropout before task heads (None = hidden_dropout_prob).
        global_pointer_head_size, global_pointer_efficient: GlobalPointer head options.
        global_pointer_use_bias: biases in the GlobalPointer dense layers (the published CLUE recipes of
            RoFormerV2 / GAU-α use none, clue.md §5.3; bert4keras's layer default is True).
    """

    model_type = "zoo_encoder"
    family: ClassVar[str] = "encoder"

    vocab_size: int = 12000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_size: int | None = None
    intermediate_size: int = 3072
    attention_key_size: int = 128
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    type_vocab_size: int = 2
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-7
    embedding_norm_eps: float | None = None
    pad_token_id: int | None = 0
    block_type: str = "transformer"
    norm_type: str = "rms"
    residual: str = "post"
    use_bias: bool = False
    position_embedding_type: str = "rope"
    rope_theta: float = 10000.0
    attention_normalization: str = "softmax"
    softmax_plus_base: int = 512
    softmax_plus_min_len: int = 1
    embedding_norm: bool = True
    dropout_before_embedding_norm: bool = True
    mlm_head: str = "tied"
    initializer: str = "bert4keras"
    initializer_order: int = 2
    initializer_range: float = 0.02
    deepnorm_alpha: float | None = None
    deepnorm_beta: float | None = None
    attention_backend: str = "auto"
    recompute_elementwise: bool = False
    classifier_dropout: float | None = None
    global_pointer_head_size: int = 64
    global_pointer_efficient: bool = True
    global_pointer_use_bias: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.head_size is None and isinstance(self.hidden_size, int) and isinstance(self.num_attention_heads, int):
            self.head_size = self.hidden_size // max(self.num_attention_heads, 1)
        super().__post_init__(**kwargs)
        self.validate()

    # -- validation: transformers does not type-check config fields, so we do (errors name the key)
    def validate(self) -> None:
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{type(self).__name__}.{key}={value!r} is not one of {list(allowed)}")
        for key in POSITIVE_INTS:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{key} must be a positive int, got {value!r}")
        for key in PROBABILITIES:
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{type(self).__name__}.{key} must be a probability in [0, 1), got {value!r}")
        if self.block_type == "transformer":
            heads, head = self.num_attention_heads, self.head_size
            if not isinstance(heads, int) or heads <= 0:
                raise ConfigError(f"{type(self).__name__}.num_attention_heads must be a positive int, got {heads!r}")
            if not isinstance(head, int) or head <= 0:
                raise ConfigError(f"{type(self).__name__}.head_size must be a positive int, got {head!r}")
            if self.position_embedding_type == "rope" and head % 2:
                raise ConfigError(f"{type(self).__name__}.head_size={head} must be even for RoPE (pairs 2i, 2i+1)")
            if self.recompute_elementwise and self.hidden_act == "relu":
                raise ConfigError(
                    f"{type(self).__name__}.recompute_elementwise has nothing to drop in a ReLU FFN (ReLU keeps its "
                    "output, which W_2 needs anyway); use activation checkpointing to save memory"
                )
        else:
            key = self.attention_key_size
            if not isinstance(key, int) or key <= 0 or (self.position_embedding_type == "rope" and key % 2):
                raise ConfigError(
                    f"{type(self).__name__}.attention_key_size must be a positive even int, got {key!r}"
                )
        if self.position_embedding_type == "learned" and self.max_position_embeddings <= 0:
            raise ConfigError(f"{type(self).__name__}.max_position_embeddings must be positive for learned positions")
        if self.softmax_plus_min_len < 1:
            raise ConfigError(f"{type(self).__name__}.softmax_plus_min_len must be ≥ 1, got {self.softmax_plus_min_len}")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"{type(self).__name__}.layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.embedding_norm_eps is not None and not self.embedding_norm_eps > 0:
            raise ConfigError(
                f"{type(self).__name__}.embedding_norm_eps must be positive or None, got {self.embedding_norm_eps}"
            )

    # -- derived quantities
    @property
    def rope_dim(self) -> int:
        """The width RoPE rotates: the q/k width of one head, GAU's key size s or the head size (§1.2, §2.1)."""
        return self.attention_key_size if self.block_type == "gau" else self.head_size

    @property
    def active_attention_backend(self) -> str:
        """The backend forward passes use: the requested `attn_implementation` where one was given
        ("eager" → "matmul", "sdpa" → "sdpa"), else `attention_backend`."""
        return ATTN_IMPLEMENTATIONS.get(self._attn_implementation, self.attention_backend)

    @property
    def alpha(self) -> float:
        """DeepNorm residual multiplier α = (2N)^¼ for an N-layer encoder (§3.2); 1 otherwise."""
        if self.residual != "deepnorm":
            return 1.0
        if self.deepnorm_alpha is not None:
            return float(self.deepnorm_alpha)
        return deepnorm_alpha(self.num_hidden_layers)

    @property
    def beta(self) -> float:
        """DeepNorm initialisation gain β = (8N)^−¼ on v/out/fc1/fc2 (§3.2); 1 otherwise."""
        if self.residual != "deepnorm" and not self.initializer.startswith("deepnorm"):
            return 1.0
        if self.deepnorm_beta is not None:
            return float(self.deepnorm_beta)
        return deepnorm_beta(self.num_hidden_layers)

    def num_parameters(self, with_embeddings: bool = True) -> int:
        """Parameter count computed from the config alone (matches `model.num_parameters()` for MLM)."""
        h, L = self.hidden_size, self.num_hidden_layers
        bias = 1 if self.use_bias else 0
        ln = 2 * h if self.norm_type == "layernorm" else 0
        if self.block_type == "gau":
            e, s = self.intermediate_size, self.attention_key_size
            per_layer = h * (2 * e + s) + bias * (2 * e + s) + e * h + bias * h + 2 * s + ln
        else:
            inner = self.num_attention_heads * self.head_size
            f = self.intermediate_size
            per_layer = 4 * h * inner + bias * (3 * inner + h) + 2 * h * f + bias * (f + h) + 2 * ln
        total = L * per_layer
        if with_embeddings:
            total += (self.vocab_size + self.type_vocab_size) * h
            if self.position_embedding_type == "learned":
                total += self.max_position_embeddings * h
            if self.embedding_norm and self.norm_type == "layernorm":
                total += 2 * h
        if self.residual == "pre" and self.norm_type == "layernorm":
            total += 2 * h
        return total

    def train_flops_per_token(self, seq_len: int, masked_fraction: float | None = None) -> float:
        """Analytic training FLOPs per token (forward + backward = 3× forward), ecosystem.md §6.2.

        `masked_fraction` = None counts a dense MLM head; a number counts the head only on that
        fraction of tokens (our training path computes logits on masked positions only).
        """
        h, L = self.hidden_size, self.num_hidden_layers
        if self.block_type == "gau":
            e, s = self.intermediate_size, self.attention_key_size
            matmul_params = L * (h * (2 * e + s) + e * h)
            attention = 6 * L * seq_len * (s + e)
        else:
            inner = self.num_attention_heads * self.head_size
            matmul_params = L * (4 * h * inner + 2 * h * self.intermediate_size)
            attention = 12 * L * seq_len * inner
        head = 6 * h * self.vocab_size * (1.0 if masked_fraction is None else masked_fraction)
        if self.mlm_head == "transform":
            head += 6 * h * h * (1.0 if masked_fraction is None else masked_fraction)
        return 6 * matmul_params + attention + head


def deepnorm_alpha(num_layers: int) -> float:
    """α = (2N)^¼ for an encoder-only DeepNet of N layers (architectures.md §3.2)."""
    return (2 * num_layers) ** 0.25


def deepnorm_beta(num_layers: int) -> float:
    """β = (8N)^−¼ for an encoder-only DeepNet of N layers (architectures.md §3.2)."""
    return (8 * num_layers) ** -0.25


def bert4keras_std(fan: int, num_layers: int, order: int) -> float:
    """Effective std of bert4keras's initialiser: L^(−1/order)/√fan (§1.4), before truncation."""
    return num_layers ** (-1.0 / order) / math.sqrt(fan)
