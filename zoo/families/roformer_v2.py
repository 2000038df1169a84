"""RoFormerV2 (Su et al. 2022; architectures.md §1): post-norm, parameter-free RMS norm, no biases,
relu FFN, interleaved RoPE on Q/K, tied bias-free MLM head, bert4keras init with order 2."""

from ..configuration import EncoderConfig
from ..modeling import (
    EncoderForGlobalPointer,
    EncoderForMaskedLM,
    EncoderForMultipleChoice,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)


class RoFormerV2Config(EncoderConfig):
    """Defaults are the released base model (`chinese_roformer-v2-char_L-12_H-768_A-12`, §1.5)."""

    model_type = "roformer_v2"
    family = "roformer-v2"

    block_type: str = "transformer"
    norm_type: str = "rms"
    residual: str = "post"
    use_bias: bool = False
    hidden_act: str = "relu"
    attention_normalization: str = "softmax"
    mlm_head: str = "tied"
    initializer: str = "bert4keras"
    initializer_order: int = 2
    layer_norm_eps: float = 1e-7


class RoFormerV2Model(EncoderModel):
    config_class = RoFormerV2Config


class RoFormerV2ForMaskedLM(EncoderForMaskedLM):
    config_class = RoFormerV2Config


class RoFormerV2ForSequenceClassification(EncoderForSequenceClassification):
    config_class = RoFormerV2Config


class RoFormerV2ForTokenClassification(EncoderForTokenClassification):
    config_class = RoFormerV2Config


class RoFormerV2ForQuestionAnswering(EncoderForQuestionAnswering):
    config_class = RoFormerV2Config


class RoFormerV2ForMultipleChoice(EncoderForMultipleChoice):
    config_class = RoFormerV2Config


class RoFormerV2ForGlobalPointer(EncoderForGlobalPointer):
    config_class = RoFormerV2Config
