"""GAU-α (Su 2022; architectures.md §2): one gated attention unit per layer, post-norm with the
parameter-free RMS norm, softmax_plus, RoPE after the per-dim q/k scales, no FFN, bert4keras init
with order 3."""

from ..configuration import EncoderConfig
from .tasks import family_models


class GAUAlphaConfig(EncoderConfig):
    """Defaults are the released model (`chinese_GAU-alpha-char_L-24_H-768`, §2.6): e = 1536, s = 128."""

    model_type = "gau_alpha"
    family = "gau-alpha"

    num_hidden_layers: int = 24
    num_attention_heads: int = 1
    intermediate_size: int = 1536
    attention_key_size: int = 128
    hidden_act: str = "swish"
    block_type: str = "gau"
    norm_type: str = "rms"
    residual: str = "post"
    use_bias: bool = False
    attention_normalization: str = "softmax_plus"
    softmax_plus_base: int = 512
    softmax_plus_min_len: int = 1
    mlm_head: str = "tied"
    initializer: str = "bert4keras"
    initializer_order: int = 3
    layer_norm_eps: float = 1e-7


MODELS = family_models("GAUAlpha", GAUAlphaConfig)  # task → model class (zoo/families/tasks.py)
GAUAlphaModel = MODELS["base"]
GAUAlphaForMaskedLM = MODELS["masked-lm"]
GAUAlphaForSequenceClassification = MODELS["sequence-classification"]
GAUAlphaForTokenClassification = MODELS["token-classification"]
GAUAlphaForQuestionAnswering = MODELS["question-answering"]
GAUAlphaForMultipleChoice = MODELS["multiple-choice"]
GAUAlphaForGlobalPointer = MODELS["global-pointer"]
