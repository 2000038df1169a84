"""DeepNet (Wang et al. 2022; architectures.md §3): post-LN with the DeepNorm residual
x ← LN(α·x + f(x)), α = (2N)^¼, and β = (8N)^−¼ initialisation of v/out/fc1/fc2 (not q/k).

Positions are RoPE by default (so the extrapolation variants apply to every family); set
`position_embedding_type="learned"` for torchscale's BERT example. The MLM head is the
torchscale/BERT transform head. LayerNorm ε is torchscale's 1e-5; there is no final LN.
"""

from ..configuration import EncoderConfig
from .tasks import family_models


class DeepNetConfig(EncoderConfig):
    """Defaults: a 12-layer base-width encoder with the paper's xavier_normal(gain=β) init."""

    model_type = "deepnet"
    family = "deepnet"

    block_type: str = "transformer"
    norm_type: str = "layernorm"
    residual: str = "deepnorm"
    use_bias: bool = True
    hidden_act: str = "gelu"
    attention_normalization: str = "softmax"
    embedding_norm: bool = True
    dropout_before_embedding_norm: bool = False
    mlm_head: str = "transform"
    initializer: str = "deepnorm_paper"
    layer_norm_eps: float = 1e-5


MODELS = family_models("DeepNet", DeepNetConfig)  # task → model class (zoo/families/tasks.py)
DeepNetModel = MODELS["base"]
DeepNetForMaskedLM = MODELS["masked-lm"]
DeepNetForSequenceClassification = MODELS["sequence-classification"]
DeepNetForTokenClassification = MODELS["token-classification"]
DeepNetForQuestionAnswering = MODELS["question-answering"]
DeepNetForMultipleChoice = MODELS["multiple-choice"]
DeepNetForGlobalPointer = MODELS["global-pointer"]
