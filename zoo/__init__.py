"""zoo: RoFormerV2, GAU-α and DeepNet encoders for Chinese, with a local model registry.

    import zoo
    model = zoo.create("roformer-v2-tiny")                 # freshly initialised
    model = zoo.from_pretrained("roformer-v2-tiny-zh")     # registry name, name@version, folder, Hub id
    zoo.publish(model, tokenizer, name="my-model", version="1.0")
    bigger = zoo.expand(model, hidden_size=512, num_layers=8)   # same function, larger model
"""

from . import (
    families,  # noqa: F401  (registers the configs and models with the transformers Auto classes)
    positions,  # inference-time position variants (extrapolation.md B.5, B.6); random training positions (B.3)
)
from .configuration import EncoderConfig
from .convert import convert_checkpoint, export_junnyu
from .families.deepnet import DeepNetConfig
from .families.gau_alpha import GAUAlphaConfig
from .families.roformer_v2 import RoFormerV2Config
from .growth import expand
from .presets import create, preset_config, presets
from .pretrained import from_pretrained, list_models, load_tokenizer, publish_evaluation
from .publishing import publish
from .registry import IntegrityError, ModelNotFoundError, RegistryError
from .site import build_site
from .tokenizer import decode_text, default_tokenizer, tokenizer_from_vocab, train_tokenizer
from .version import __version__

__all__ = [
    "__version__",
    "build_site",
    "DeepNetConfig",
    "EncoderConfig",
    "GAUAlphaConfig",
    "IntegrityError",
    "ModelNotFoundError",
    "RegistryError",
    "RoFormerV2Config",
    "convert_checkpoint",
    "create",
    "decode_text",
    "default_tokenizer",
    "expand",
    "export_junnyu",
    "from_pretrained",
    "list_models",
    "load_tokenizer",
    "positions",
    "preset_config",
    "presets",
    "publish",
    "publish_evaluation",
    "tokenizer_from_vocab",
    "train_tokenizer",
]
