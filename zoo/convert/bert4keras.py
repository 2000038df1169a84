"""bert4keras checkpoints: the official RoFormerV2 and GAU-α releases (Zhuiyi's zips).

A release unzips to `bert_config.json`, `vocab.txt` and a TensorFlow checkpoint `bert_model.ckpt.*`
written by bert4keras's `save_weights_as_checkpoint`. Variables are read by name with the maps of
architectures.md §4.1 (RoFormerV2) and §4.2 (GAU-α); every Keras Dense kernel [in, out] is
transposed to a torch Linear weight [out, in]; GAU's i_dense keeps its [u | v | z] output order
and its q/k scales stay two separate vectors. There are no bias, γ or β variables in either family,
and the MLM output is tied to the token embedding, so it has no variable of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from .mapping import ConversionError, NameMap, Rule
from .sources import SourceCheckpoint, first_existing, read_json_config, take_fields
from .tf_checkpoint import find_checkpoint_prefix, open_tf_checkpoint
from .tensor_bundle import data_path, index_path

FORMAT = "bert4keras"
CONFIG_FILES = ("bert_config.json", "config.json")

# bert_config.json key(s) for each of our config fields (bert4keras reads the BERT names)
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

# non-weight state a TensorFlow checkpoint may carry next to the weights
IGNORED = [
    (re.compile(r"global_step|save_counter(/.*)?"), "training step counter"),
    (re.compile(r"_CHECKPOINTABLE_OBJECT_GRAPH"), "TensorFlow 2 object graph"),
    (re.compile(r".*/adam_[mv]"), "optimizer slot"),
    (re.compile(r"(training|optimizer)/.*"), "optimizer state"),
]

EMBEDDING_RULES = [
    ("encoder.embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings"),
    ("encoder.embeddings.token_type_embeddings.weight", "bert/embeddings/token_type_embeddings"),
]


def roformer_v2_name_map(config) -> NameMap:
    """§4.1: per layer i, bert/encoder/layer_i/{attention/self/{query,key,value},attention/output/dense,
    intermediate/dense,output/dense}/kernel, all transposed."""
    rules = [Rule(ours, theirs) for ours, theirs in EMBEDDING_RULES]
    for i in range(config.num_hidden_layers):
        tf, ours = f"bert/encoder/layer_{i}/", f"encoder.layers.{i}."
        rules += [
            Rule(ours + "self_attn.q_proj.weight", tf + "attention/self/query/kernel", transpose=True),
            Rule(ours + "self_attn.k_proj.weight", tf + "attention/self/key/kernel", transpose=True),
            Rule(ours + "self_attn.v_proj.weight", tf + "attention/self/value/kernel", transpose=True),
            Rule(ours + "self_attn.out_proj.weight", tf + "attention/output/dense/kernel", transpose=True),
            Rule(ours + "ffn.fc1.weight", tf + "intermediate/dense/kernel", transpose=True),
            Rule(ours + "ffn.fc2.weight", tf + "output/dense/kernel", transpose=True),
        ]
    return NameMap(rules, ignored=IGNORED)


def gau_alpha_name_map(config) -> NameMap:
    """§4.2: per layer i, GAU_alpha/encoder/layer_i/gau/{i_dense,o_dense}/kernel (transposed; i_dense
    columns stay [u | v | z]) and {q,k}_scaleoffset/gamma (two vectors); embeddings under bert/."""
    rules = [Rule(ours, theirs) for ours, theirs in EMBEDDING_RULES]
    for i in range(config.num_hidden_layers):
        tf, ours = f"GAU_alpha/encoder/layer_{i}/gau/", f"encoder.layers.{i}.gau."
        rules += [
            Rule(ours + "i_dense.weight", tf + "i_dense/kernel", transpose=True),
            Rule(ours + "o_dense.weight", tf + "o_dense/kernel", transpose=True),
            Rule(ours + "q_scaleoffset.weight", tf + "q_scaleoffset/gamma"),
            Rule(ours + "k_scaleoffset.weight", tf + "k_scaleoffset/gamma"),
        ]
    return NameMap(rules, ignored=IGNORED)


NAME_MAPS = {"roformer-v2": roformer_v2_name_map, "gau-alpha": gau_alpha_name_map}


def detect_family(names: list[str], label: str) -> str:
    """Which family a bert4keras checkpoint holds, from its variable names alone."""
    if any(n.startswith("GAU_alpha/encoder/layer_") for n in names):
        return "gau-alpha"
    if any(re.fullmatch(r"bert/encoder/layer_\d+/attention/self/query/kernel", n) for n in names):
        bert_like = sorted(n for n in names if n.startswith("bert/") and (
            re.search(r"/(LayerNorm/(gamma|beta)|bias)$", n) or n == "bert/embeddings/position_embeddings"))
        if bert_like:
            raise ConversionError(
                f"{label} is a BERT / RoFormer (v1) checkpoint, not RoFormerV2: it has LayerNorm γ/β, biases or "
                f"position embeddings ({', '.join(bert_like[:3])}, …), which RoFormerV2 removed (§1.7)"
            )
        return "roformer-v2"
    shown = ", ".join(names[:5]) or "(no variables)"
    raise ConversionError(f"{label} holds neither RoFormerV2 (bert/encoder/layer_0/attention/self/query/kernel) "
                          f"nor GAU-α (GAU_alpha/encoder/layer_0/gau/i_dense/kernel) variables; it has {shown}")


def open_checkpoint(path: Path, *, family: str | None = None, reader: str = "auto") -> SourceCheckpoint:
    """Open an unzipped bert4keras release (a folder) or a checkpoint prefix with its config beside it."""
    prefix = find_checkpoint_prefix(path)
    folder = prefix.parent
    config_file = first_existing(folder, CONFIG_FILES, "bert4keras config (bert_config.json)")
    raw = read_json_config(config_file)
    tensors = open_tf_checkpoint(prefix, reader=reader)
    detected = detect_family(tensors.keys(), tensors.label)
    if family is not None and family != detected:
        raise ConversionError(f"{tensors.label} is a {detected} checkpoint, but family={family!r} was asked for")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
    required += ("attention_key_size",) if detected == "gau-alpha" else ("num_attention_heads",)
    fields = take_fields(raw, config_file, ALIASES, required)
    if detected == "gau-alpha":
        _check_gau_fields(fields, config_file)
    vocab = folder / "vocab.txt"
    shards = sorted(folder.glob(f"{prefix.name}.data-*"))
    return SourceCheckpoint(
        format=FORMAT,
        family=detected,
        config_file=config_file,
        fields=fields,
        source_eps=None,  # bert4keras configs state no ε: K.epsilon() applies
        tensors=tensors,
        name_map=NAME_MAPS[detected],
        vocab_file=vocab if vocab.is_file() else None,
        files=[index_path(prefix)] + (shards or [data_path(prefix, 0, 1)]),
    )


def _check_gau_fields(fields: dict, config_file: Path) -> None:
    """GAU-α is single-head with swish on [u | v | z] (§2.1); a config saying otherwise is not GAU-α."""
    heads = fields.pop("num_attention_heads", 1)
    if heads != 1:
        raise ConversionError(f"{config_file}: num_attention_heads={heads}, but GAU-α is single-head")
    act = fields.get("hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise ConversionError(f"{config_file}: hidden_act={act!r}, but GAU-α's i_dense activation is swish")
