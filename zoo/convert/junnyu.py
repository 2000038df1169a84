"""JunnYu's PyTorch ports (`roformer` 0.4.x for RoFormerV2, `gau_alpha` for GAU-α), both ways.

Import: a Hub-style folder with `config.json` (model_type "roformer" with norm_type ≠ "layer_norm"
and use_bias false, or model_type "gau_alpha"), `model.safetensors` or `pytorch_model.bin` (read
with `torch.load(weights_only=True)`, never a plain unpickle) and `vocab.txt`. Names follow the
JunnYu column of architectures.md §4.1 / §4.2; torch Linear weights need no transpose. The ports'
`cls.predictions.decoder.weight` is a copy of the token embedding (checked equal, then dropped: our
head is tied), and RoFormer's `roformer.encoder.embed_positions.weight` is a non-trainable sinusoid
table (skipped: our RoPE is computed, with no length cap).

Export (`export_junnyu`) writes the same layout from one of our models, so weights trained here load
with `roformer.RoFormerForMaskedLM` / `gau_alpha.GAUAlphaForMaskedLM` on older transformers stacks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..families import family_of
from .atomic_folder import atomic_folder
from .mapping import ConversionError, NameMap, Rule
from .sources import SourceCheckpoint, read_json_config, take_fields
from .weight_files import open_state_dict

FORMAT = "junnyu"
PREFIXES = {"roformer-v2": "roformer", "gau-alpha": "gau_alpha"}
V2_NORM_TYPE = "rms_norm"  # JunnYu's code only tests norm_type == "layer_norm" (v1); anything else is V2

ALIASES = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("hidden_size",),
    "num_hidden_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "attention_key_size": ("attention_key_size",),
    "hidden_act": ("hidden_act",),
    "hidden_dropout_prob": ("hidden_dropout_prob",),
    "attention_probs_dropout_prob": ("attention_probs_dropout_prob",),
    "type_vocab_size": ("type_vocab_size",),
    "max_position_embeddings": ("max_position_embeddings",),
    "embedding_size": ("embedding_size",),
}

# JunnYu's `normalization` → our attention_normalization (gau_alpha/layer.py attention_normalize)
NORMALIZATIONS = {"softmax_plus": "softmax_plus", "softmax": "softmax", "squared_relu": "relu2"}


def _layer_rules(family: str, prefix: str, num_layers: int) -> list[Rule]:
    rules = [
        Rule("encoder.embeddings.word_embeddings.weight", f"{prefix}embeddings.word_embeddings.weight"),
        Rule("encoder.embeddings.token_type_embeddings.weight", f"{prefix}embeddings.token_type_embeddings.weight"),
    ]
    for i in range(num_layers):
        theirs, ours = f"{prefix}encoder.layer.{i}.", f"encoder.layers.{i}."
        if family == "roformer-v2":
            pairs = [("self_attn.q_proj", "attention.self.query"), ("self_attn.k_proj", "attention.self.key"),
                     ("self_attn.v_proj", "attention.self.value"), ("self_attn.out_proj", "attention.output.dense"),
                     ("ffn.fc1", "intermediate.dense"), ("ffn.fc2", "output.dense")]
        else:
            pairs = [("gau.i_dense", "gau.i_dense"), ("gau.o_dense", "gau.o_dense"),
                     ("gau.q_scaleoffset", "gau.q_scaleoffset"), ("gau.k_scaleoffset", "gau.k_scaleoffset")]
        rules += [Rule(f"{ours}{a}.weight", f"{theirs}{b}.weight") for a, b in pairs]
    return rules


def name_map_for(family: str, prefix: str):
    """The name map of a JunnYu checkpoint whose encoder keys start with `prefix` ("roformer." etc.)."""

    def build(config) -> NameMap:
        ignored = [(re.compile(re.escape(f"{prefix}encoder.embed_positions.weight")),
                    "JunnYu's non-trainable sinusoid table; our RoPE computes it")]
        return NameMap(
            _layer_rules(family, prefix, config.num_hidden_layers),
            copies={"cls.predictions.decoder.weight": f"{prefix}embeddings.word_embeddings.weight"},
            ignored=ignored,
        )

    return build


def family_from_config(raw: dict, config_file: Path) -> str:
    """RoFormerV2 or GAU-α from config.json; RoFormer v1, BERT and the rest are refused by name."""
    model_type = raw.get("model_type")
    if model_type == "gau_alpha":
        return "gau-alpha"
    if model_type == "roformer":
        norm_type = raw.get("norm_type", "layer_norm")
        if norm_type == "layer_norm" or raw.get("use_bias", True):
            raise ConversionError(
                f"{config_file} describes RoFormer v1 (norm_type={norm_type!r}, use_bias={raw.get('use_bias', True)}): "
                "LayerNorm γ/β, biases and a BERT MLM head, which is not a zoo family; RoFormerV2 configs have "
                "norm_type other than 'layer_norm' and use_bias false"
            )
        return "roformer-v2"
    raise ConversionError(f"{config_file}: model_type={model_type!r} is neither JunnYu's 'roformer' (V2) nor "
                          "'gau_alpha'")


def family_from_names(names: list[str]) -> str | None:
    if any(re.search(r"(^|\.)encoder\.layer\.\d+\.gau\.i_dense\.weight$", n) for n in names):
        return "gau-alpha"
    if any(re.search(r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\.weight$", n) for n in names):
        return "roformer-v2"
    return None


def open_checkpoint(path: Path, *, family: str | None = None, reader: str = "auto") -> SourceCheckpoint:
    """Open a JunnYu port: a folder (or one of its weight files) with config.json beside it."""
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder} (a JunnYu port has config.json next to its weights)")
    raw = read_json_config(config_file)
    declared = family_from_config(raw, config_file)
    tensors = open_state_dict(path)
    named = family_from_names(tensors.keys())
    if named is not None and named != declared:
        raise ConversionError(f"{config_file} says {declared}, but the weights in {tensors.label} are {named}")
    if family is not None and family != declared:
        raise ConversionError(f"{tensors.label} is a {declared} checkpoint, but family={family!r} was asked for")
    prefix = PREFIXES[declared]
    keys = tensors.keys()
    if not any(k.startswith(prefix + ".") for k in keys):
        prefix = ""  # saved from the bare model (RoFormerModel / GAUAlphaModel): no prefix
    else:
        prefix += "."
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
    required += ("attention_key_size",) if declared == "gau-alpha" else ("num_attention_heads",)
    fields = take_fields(raw, config_file, ALIASES, required)
    if declared == "gau-alpha":
        fields.pop("num_attention_heads", None)  # GAU is single-head; JunnYu's GAU config has no heads
    _check_semantics(raw, declared, config_file, fields)
    vocab = folder / "vocab.txt"
    eps = raw.get("layer_norm_eps")
    return SourceCheckpoint(
        format=FORMAT,
        family=declared,
        config_file=config_file,
        fields=fields,
        source_eps=float(eps) if isinstance(eps, (int, float)) else None,
        tensors=tensors,
        name_map=name_map_for(declared, prefix),
        vocab_file=vocab if vocab.is_file() else None,
        files=list(tensors.files),
    )


def _check_semantics(raw: dict, family: str, config_file: Path, fields: dict) -> None:
    """Refuse config switches whose semantics our families cannot reproduce exactly."""
    if raw.get("use_bias", False):
        raise ConversionError(f"{config_file}: use_bias=true, but RoFormerV2 / GAU-α have no biases (§8.2)")
    if family == "roformer-v2":
        if raw.get("rotary_value", False):
            raise ConversionError(f"{config_file}: rotary_value=true (RoPE on V), but RoFormerV2 rotates Q and K only (§1.2)")
        return
    if raw.get("attention_scale", True) is not True:
        raise ConversionError(f"{config_file}: attention_scale=false, but GAU-α scales q·kᵀ by 1/√s (§2.1)")
    normalization = raw.get("normalization", "softmax_plus")
    if normalization not in NORMALIZATIONS:
        raise ConversionError(f"{config_file}: normalization={normalization!r} is not one of {list(NORMALIZATIONS)}")
    fields["attention_normalization"] = NORMALIZATIONS[normalization]
    act = fields.get("hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise ConversionError(f"{config_file}: hidden_act={act!r}, but GAU-α's i_dense activation is swish")


# ------------------------------------------------------------------------------------------ export


def junnyu_config(config) -> dict:
    """JunnYu's config.json for one of our configs; refuses settings the ports cannot express."""
    family = family_of(config)
    if family not in PREFIXES:
        raise ConversionError(f"JunnYu's ports cover RoFormerV2 and GAU-α, not {family}")
    expected = {"norm_type": "rms", "residual": "post", "use_bias": False, "position_embedding_type": "rope",
                "mlm_head": "tied", "embedding_norm": True, "rope_theta": 10000.0}
    if family == "gau-alpha":
        expected.update(softmax_plus_base=512, softmax_plus_min_len=1)  # the ports hard-code log 512, no clamp
    else:
        expected.update(attention_normalization="softmax")
    for key, value in expected.items():
        if getattr(config, key) != value:
            raise ConversionError(f"cannot export to JunnYu's layout: config.{key}={getattr(config, key)!r}, "
                             f"the port implements only {value!r}")
    if family == "roformer-v2" and config.head_size * config.num_attention_heads != config.hidden_size:
        raise ConversionError("cannot export to JunnYu's layout: its RoFormer derives head size = hidden / heads")
    common = {
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "embedding_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers, "intermediate_size": config.intermediate_size,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id if config.pad_token_id is not None else 0, "use_bias": False,
    }
    if family == "roformer-v2":
        return {"architectures": ["RoFormerForMaskedLM"], "model_type": "roformer", **common,
                "num_attention_heads": config.num_attention_heads, "hidden_act": config.hidden_act,
                "norm_type": V2_NORM_TYPE, "rotary_value": False, "use_cache": True}
    normalization = {v: k for k, v in NORMALIZATIONS.items()}[config.attention_normalization]
    return {"architectures": ["GAUAlphaForMaskedLM"], "model_type": "gau_alpha", **common,
            "attention_key_size": config.attention_key_size, "hidden_act": "swish", "normalization": normalization,
            "attention_scale": True,
            "classifier_dropout": config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob}


def junnyu_state_dict(model) -> dict[str, torch.Tensor]:
    """Our encoder's weights under JunnYu's names (the decoder as an explicit copy of the embedding)."""
    config = model.config
    family = family_of(config)
    prefix = PREFIXES[family] + "."
    ours = model.state_dict()
    if not any(k.startswith("encoder.") for k in ours):  # a bare EncoderModel
        ours = {"encoder." + k: v for k, v in ours.items()}
    head = sorted(k for k in ours if not k.startswith(("encoder.", "lm_head.")))
    if head:
        raise ConversionError(f"{type(model).__name__} has task-head parameters ({', '.join(head[:4])}) that JunnYu's "
                         "masked-LM layout cannot hold; export `model.encoder` to write the encoder alone")
    out = {}
    for rule in _layer_rules(family, prefix, config.num_hidden_layers):
        out[rule.source] = ours[rule.target].detach().clone().contiguous()
    out["cls.predictions.decoder.weight"] = out[f"{prefix}embeddings.word_embeddings.weight"].clone()
    return out


def export_junnyu(model, out: str | os.PathLike, tokenizer=None, overwrite: bool = False) -> Path:
    """Write `model` in the layout of JunnYu's ports: config.json, model.safetensors, pytorch_model.bin
    (a plain state dict, for stacks without safetensors) and, with a tokenizer, vocab.txt and a
    BertTokenizer tokenizer_config.json. Written into a temporary folder and renamed into place."""
    from safetensors.torch import save_file

    from ..tokenizer import save_vocab

    config = junnyu_config(model.config)
    state = junnyu_state_dict(model)
    if tokenizer is not None and len(tokenizer) != model.config.vocab_size:
        raise ConversionError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}")
    with atomic_folder(out, overwrite) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        torch.save(state, staging / "pytorch_model.bin")
        if tokenizer is not None:
            save_vocab(tokenizer, staging / "vocab.txt")
            tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                "model_max_length": int(getattr(tokenizer, "model_max_length", 512))}
            (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    return Path(out)
