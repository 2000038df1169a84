"""bert4torch checkpoints (Tongjilibo's converted `pytorch_model.bin` and state dicts bert4torch saves).

Names follow the bert4torch column of architectures.md §4.1 / §4.2: `embeddings.segment_embeddings`,
`encoderLayer.i.multiHeadAttention.{q,k,v,o}`, `encoderLayer.i.feedForward.{intermediateDense,outputDense}`
and, for GAU-α, `encoderLayer.i.gau.{i_dense,o_dense}` with the two q/k scales stacked as
`encoderLayer.i.gau.offsetscale.gamma` [2, S] (row 0 = q, row 1 = k). Converted checkpoints keep an
untied copy `mlmDecoder.weight` of the token embedding: it must equal it (our head is tied). In its
rmsnorm mode bert4torch builds norm weights fixed at 1 (`*layerNorm*.weight`) that no release has:
when present they must be exactly 1 (and any norm bias exactly 0), since the families have no norm
scale. bert4torch's own RoFormerV2 checkpoint is JunnYu's file: convert that with `--from junnyu`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .mapping import ConversionError, NameMap, Rule
from .sources import SourceCheckpoint, first_existing, read_json_config, take_fields
from .weight_files import open_state_dict

FORMAT = "bert4torch"
CONFIG_FILES = ("bert4torch_config.json", "config.json", "bert_config.json")

ALIASES = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("hidden_size",),
    "num_hidden_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "attention_key_size": ("attention_key_size",),
    "hidden_act": ("hidden_act",),
    "hidden_dropout_prob": ("hidden_dropout_prob", "dropout_rate"),
    "attention_probs_dropout_prob": ("attention_probs_dropout_prob",),
    "type_vocab_size": ("type_vocab_size", "segment_vocab_size"),
    "max_position_embeddings": ("max_position_embeddings", "max_position"),
    "embedding_size": ("embedding_size",),
}

# bert4torch's `model` key in bert4torch_config.json
MODEL_NAMES = {"roformer_v2": "roformer-v2", "roformerv2": "roformer-v2", "gau_alpha": "gau-alpha", "gau-alpha": "gau-alpha"}

NORM_WEIGHT = re.compile(r"(embeddings\.|encoderLayer\.\d+\.)\w*[lL]ayer[nN]orm\d*\.weight")
NORM_BIAS = re.compile(r"(embeddings\.|encoderLayer\.\d+\.)\w*[lL]ayer[nN]orm\d*\.bias")


def name_map_for(family: str):
    def build(config) -> NameMap:
        rules = [
            Rule("encoder.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
            Rule("encoder.embeddings.token_type_embeddings.weight", "embeddings.segment_embeddings.weight"),
        ]
        for i in range(config.num_hidden_layers):
            theirs, ours = f"encoderLayer.{i}.", f"encoder.layers.{i}."
            if family == "roformer-v2":
                rules += [
                    Rule(ours + "self_attn.q_proj.weight", theirs + "multiHeadAttention.q.weight"),
                    Rule(ours + "self_attn.k_proj.weight", theirs + "multiHeadAttention.k.weight"),
                    Rule(ours + "self_attn.v_proj.weight", theirs + "multiHeadAttention.v.weight"),
                    Rule(ours + "self_attn.out_proj.weight", theirs + "multiHeadAttention.o.weight"),
                    Rule(ours + "ffn.fc1.weight", theirs + "feedForward.intermediateDense.weight"),
                    Rule(ours + "ffn.fc2.weight", theirs + "feedForward.outputDense.weight"),
                ]
            else:
                rules += [
                    Rule(ours + "gau.i_dense.weight", theirs + "gau.i_dense.weight"),
                    Rule(ours + "gau.o_dense.weight", theirs + "gau.o_dense.weight"),
                    Rule(ours + "gau.q_scaleoffset.weight", theirs + "gau.offsetscale.gamma", row=0),
                    Rule(ours + "gau.k_scaleoffset.weight", theirs + "gau.offsetscale.gamma", row=1),
                ]
        return NameMap(
            rules,
            copies={"mlmDecoder.weight": "embeddings.word_embeddings.weight"},
            constants=[(NORM_WEIGHT, 1.0, "bert4torch's fixed RMS-norm weight"),
                       (NORM_BIAS, 0.0, "bert4torch's fixed norm bias")],
        )

    return build


def family_from_names(names: list[str], label: str) -> str:
    if any(re.fullmatch(r"encoderLayer\.\d+\.gau\.i_dense\.weight", n) for n in names):
        return "gau-alpha"
    if any(re.fullmatch(r"encoderLayer\.\d+\.multiHeadAttention\.q\.weight", n) for n in names):
        if any(re.fullmatch(r"encoderLayer\.\d+\.multiHeadAttention\.q\.bias", n) for n in names) \
                or "embeddings.position_embeddings.weight" in names:
            raise ConversionError(f"{label} has attention biases or position embeddings: a BERT / RoFormer (v1) "
                                  "checkpoint, not RoFormerV2 (§1.7)")
        return "roformer-v2"
    if any(n.startswith("roformer.") or n.startswith("gau_alpha.") for n in names):
        raise ConversionError(f"{label} uses JunnYu's names (roformer.* / gau_alpha.*): convert it with --from junnyu")
    shown = ", ".join(names[:5]) or "(no tensors)"
    raise ConversionError(f"{label} holds neither bert4torch RoFormerV2 (encoderLayer.0.multiHeadAttention.q.weight) "
                          f"nor GAU-α (encoderLayer.0.gau.i_dense.weight) tensors; it has {shown}")


def open_checkpoint(path: Path, *, family: str | None = None, reader: str = "auto") -> SourceCheckpoint:
    """Open a bert4torch checkpoint: a folder (or a weight file) with its config beside it."""
    folder = path if path.is_dir() else path.parent
    config_file = first_existing(folder, CONFIG_FILES, "bert4torch config")
    raw = read_json_config(config_file)
    tensors = open_state_dict(path)
    detected = family_from_names(tensors.keys(), tensors.label)
    declared = raw.get("model")
    if isinstance(declared, str) and MODEL_NAMES.get(declared.lower()) not in (None, detected):
        raise ConversionError(f"{config_file} says model={declared!r}, but {tensors.label} holds {detected} tensors")
    if isinstance(declared, str) and declared.lower() not in MODEL_NAMES:
        raise ConversionError(f"{config_file}: model={declared!r} is not RoFormerV2 or GAU-α "
                              f"({', '.join(sorted(MODEL_NAMES))})")
    if family is not None and family != detected:
        raise ConversionError(f"{tensors.label} is a {detected} checkpoint, but family={family!r} was asked for")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
    required += ("attention_key_size",) if detected == "gau-alpha" else ("num_attention_heads",)
    fields = take_fields(raw, config_file, ALIASES, required)
    if detected == "gau-alpha":
        heads = fields.pop("num_attention_heads", 1)
        act = fields.get("hidden_act", "swish")
        if heads != 1 or act not in ("swish", "silu"):
            raise ConversionError(f"{config_file}: GAU-α is single-head with swish (got num_attention_heads={heads}, "
                                  f"hidden_act={act!r})")
    eps = raw.get("layer_norm_eps")
    vocab = folder / "vocab.txt"
    return SourceCheckpoint(
        format=FORMAT,
        family=detected,
        config_file=config_file,
        fields=fields,
        source_eps=float(eps) if isinstance(eps, (int, float)) else None,
        tensors=tensors,
        name_map=name_map_for(detected),
        vocab_file=vocab if vocab.is_file() else None,
        files=list(tensors.files),
    )
