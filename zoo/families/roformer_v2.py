"""RoFormerV2 (Su et al. 2022; architectures.md §1): post-norm, parameter-free RMS norm, no biases,
relu FFN, interleaved RoPE on Q/K, tied bias-free MLM head, bert4keras init with order 2."""

from ..configuration import EncoderConfig
from .tasks import family_models


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


MODELS = family_models("RoFormerV2", RoFormerV2Config)  # task → model class (zoo/families/tasks.py)
RoFormerV2Model = MODELS["base"]
RoFormerV2ForMaskedLM = MODELS["masked-lm"]
RoFormerV2ForSequenceClassification = MODELS["sequence-classification"]
RoFormerV2ForTokenClassification = MODELS["token-classification"]
RoFormerV2ForQuestionAnswering = MODELS["question-answering"]
RoFormerV2ForMultipleChoice = MODELS["multiple-choice"]
RoFormerV2ForGlobalPointer = MODELS["global-pointer"]
