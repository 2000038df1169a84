"""Small checkpoints with random weights in each released format, built from the spec's name tables.

Nothing here imports zoo.convert: the variable names, shapes and layouts are written from
../shared/specs/architectures.md §4.1 / §4.2 (and the ports' config files) independently of the
converter's own maps, so a wrong entry in either shows up as a failed comparison.
Weights come from numpy's RandomState, whose streams numpy keeps stable across versions (the
TensorFlow-written fixtures in fixtures/ are regenerated from the same seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

V2_DIMS = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
GAU_DIMS = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, intermediate_size=24, attention_key_size=8)
DIMS = {"roformer-v2": V2_DIMS, "gau-alpha": GAU_DIMS}
FIXTURE_SEED = {"roformer-v2": 11, "gau-alpha": 12}


def vocab_tokens(size: int) -> list[str]:
    """A BERT-Chinese-style vocabulary: [PAD]=0, [UNK], [CLS], [SEP], [MASK], then characters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + [chr(0x4E00 + i) for i in range(size - len(specials))]


def bert4keras_variables(family: str, dims: dict, seed: int) -> dict[str, np.ndarray]:
    """TF variable name → float32 array with the TF shape (Dense kernels [in, out]), §4.1 / §4.2.

    O(1)-scale weights (std 2/√fan) so attention is sharp and every term shows in the outputs; GAU's
    q and k scales differ per dimension so a swap or a shared vector would be visible.
    """
    rng = np.random.RandomState(seed)

    def dense(rows, cols):
        return (rng.standard_normal((rows, cols)) * 2 / np.sqrt(rows)).astype(np.float32)

    h, v = dims["hidden_size"], dims["vocab_size"]
    out = {
        "bert/embeddings/word_embeddings": (rng.standard_normal((v, h)) * 0.5).astype(np.float32),
        "bert/embeddings/token_type_embeddings": (rng.standard_normal((2, h)) * 0.5).astype(np.float32),
    }
    for i in range(dims["num_hidden_layers"]):
        if family == "roformer-v2":
            p, inner = f"bert/encoder/layer_{i}/", dims["intermediate_size"]
            out[p + "attention/self/query/kernel"] = dense(h, h)
            out[p + "attention/self/key/kernel"] = dense(h, h)
            out[p + "attention/self/value/kernel"] = dense(h, h)
            out[p + "attention/output/dense/kernel"] = dense(h, h)
            out[p + "intermediate/dense/kernel"] = dense(h, inner)
            out[p + "output/dense/kernel"] = dense(inner, h)
        else:
            p, e, s = f"GAU_alpha/encoder/layer_{i}/gau/", dims["intermediate_size"], dims["attention_key_size"]
            out[p + "i_dense/kernel"] = dense(h, 2 * e + s)
            out[p + "o_dense/kernel"] = dense(e, h)
            out[p + "q_scaleoffset/gamma"] = (1 + 0.5 * rng.standard_normal(s)).astype(np.float32)
            out[p + "k_scaleoffset/gamma"] = (1 + 0.5 * rng.standard_normal(s)).astype(np.float32)
    return out


def bert_config(family: str, dims: dict) -> dict:
    """bert_config.json as released (RoFormerV2 per the PaddleNLP/JunnYu configs, GAU-α per §2.6)."""
    common = {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "type_vocab_size": 2, **dims}
    if family == "roformer-v2":
        return {**common, "hidden_act": "relu", "initializer_range": 0.02, "max_position_embeddings": 512}
    return {**common, "hidden_act": "swish", "num_attention_heads": 1}


def write_bert4keras_folder(folder: Path, family: str, dims: dict, seed: int, variables: dict | None = None,
                            writer: str = "pure") -> dict[str, np.ndarray]:
    """A release-like folder: bert_config.json, vocab.txt, checkpoint, bert_model.ckpt.{index,data-…}."""
    folder.mkdir(parents=True, exist_ok=True)
    variables = bert4keras_variables(family, dims, seed) if variables is None else variables
    (folder / "bert_config.json").write_text(json.dumps(bert_config(family, dims), indent=2))
    (folder / "vocab.txt").write_text("\n".join(vocab_tokens(dims["vocab_size"])) + "\n", encoding="utf-8")
    prefix = folder / "bert_model.ckpt"
    if writer == "tensorflow":
        write_with_tensorflow(prefix, variables)
    else:
        from zoo.convert.tensor_bundle import write_bundle

        write_bundle(prefix, variables)
        (folder / "checkpoint").write_text('model_checkpoint_path: "bert_model.ckpt"\n'
                                           'all_model_checkpoint_paths: "bert_model.ckpt"\n')
    return variables


def write_with_tensorflow(prefix: Path, variables: dict[str, np.ndarray], global_step: int | None = 1000) -> None:
    """Save `variables` the way bert4keras's save_weights_as_checkpoint does: TF1 graph variables named
    by their checkpoint names, saved by tf.compat.v1.train.Saver (plus the usual global_step)."""
    import tensorflow as tf

    with tf.Graph().as_default():
        created = [tf.compat.v1.Variable(value, name=name) for name, value in variables.items()]
        if global_step is not None:
            created.append(tf.compat.v1.Variable(np.int64(global_step), name="global_step"))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(created).save(session, str(prefix), write_meta_graph=False)
    # the Saver records absolute paths in the `checkpoint` state file; keep the fixtures relocatable
    (prefix.parent / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n'
                                              f'all_model_checkpoint_paths: "{prefix.name}"\n')


# ------------------------------------------------------------------ the community PyTorch ports


def junnyu_state_dict(family: str, variables: dict[str, np.ndarray], dims: dict) -> dict[str, torch.Tensor]:
    """JunnYu's names (§4.1 / §4.2 JunnYu column): torch Linear weights, i.e. each Keras kernel transposed."""
    t = {k: torch.from_numpy(v.copy()) for k, v in variables.items()}
    p = "roformer." if family == "roformer-v2" else "gau_alpha."
    out = {
        p + "embeddings.word_embeddings.weight": t["bert/embeddings/word_embeddings"],
        p + "embeddings.token_type_embeddings.weight": t["bert/embeddings/token_type_embeddings"],
    }
    for i in range(dims["num_hidden_layers"]):
        if family == "roformer-v2":
            tf, ours = f"bert/encoder/layer_{i}/", f"{p}encoder.layer.{i}."
            out[ours + "attention.self.query.weight"] = t[tf + "attention/self/query/kernel"].T.contiguous()
            out[ours + "attention.self.key.weight"] = t[tf + "attention/self/key/kernel"].T.contiguous()
            out[ours + "attention.self.value.weight"] = t[tf + "attention/self/value/kernel"].T.contiguous()
            out[ours + "attention.output.dense.weight"] = t[tf + "attention/output/dense/kernel"].T.contiguous()
            out[ours + "intermediate.dense.weight"] = t[tf + "intermediate/dense/kernel"].T.contiguous()
            out[ours + "output.dense.weight"] = t[tf + "output/dense/kernel"].T.contiguous()
        else:
            tf, ours = f"GAU_alpha/encoder/layer_{i}/gau/", f"{p}encoder.layer.{i}.gau."
            out[ours + "i_dense.weight"] = t[tf + "i_dense/kernel"].T.contiguous()
            out[ours + "o_dense.weight"] = t[tf + "o_dense/kernel"].T.contiguous()
            out[ours + "q_scaleoffset.weight"] = t[tf + "q_scaleoffset/gamma"]
            out[ours + "k_scaleoffset.weight"] = t[tf + "k_scaleoffset/gamma"]
    out["cls.predictions.decoder.weight"] = t["bert/embeddings/word_embeddings"].clone()
    if family == "roformer-v2":  # JunnYu's sinusoid table [max_pos, head_dim] (a buffer-like parameter)
        head = dims["hidden_size"] // dims["num_attention_heads"]
        out[p + "encoder.embed_positions.weight"] = torch.zeros(512, head)
    return out


def junnyu_config(family: str, dims: dict) -> dict:
    """config.json of JunnYu's ports (roformer 0.4.x V2 configs; gau_alpha's config.json)."""
    common = {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "embedding_size": dims["hidden_size"],
              "initializer_range": 0.02, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "pad_token_id": 0,
              "type_vocab_size": 2, "use_bias": False, **dims}
    if family == "roformer-v2":
        return {**common, "architectures": ["RoFormerForMaskedLM"], "model_type": "roformer", "hidden_act": "relu",
                "norm_type": "rms_norm", "rotary_value": False, "use_cache": True}
    return {**common, "architectures": ["GAUAlphaForMaskedLM"], "model_type": "gau_alpha", "hidden_act": "swish",
            "normalization": "softmax_plus", "attention_scale": True, "classifier_dropout": 0.1}


def write_junnyu_folder(folder: Path, family: str, state: dict, dims: dict, weights: str = "bin") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(junnyu_config(family, dims), indent=2))
    (folder / "vocab.txt").write_text("\n".join(vocab_tokens(dims["vocab_size"])) + "\n", encoding="utf-8")
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")


def bert4torch_state_dict(family: str, variables: dict[str, np.ndarray], dims: dict,
                          with_norm_weights: bool = False) -> dict[str, torch.Tensor]:
    """bert4torch names (§4.1 / §4.2 bert4torch column): q/k scales stacked as offsetscale.gamma [2, S]
    (q row 0, k row 1), and the untied `mlmDecoder.weight` copy its converted checkpoints keep."""
    t = {k: torch.from_numpy(v.copy()) for k, v in variables.items()}
    out = {
        "embeddings.word_embeddings.weight": t["bert/embeddings/word_embeddings"],
        "embeddings.segment_embeddings.weight": t["bert/embeddings/token_type_embeddings"],
        "mlmDecoder.weight": t["bert/embeddings/word_embeddings"].clone(),
    }
    h = dims["hidden_size"]
    if with_norm_weights:
        out["embeddings.layerNorm.weight"] = torch.ones(h)
    for i in range(dims["num_hidden_layers"]):
        b = f"encoderLayer.{i}."
        if family == "roformer-v2":
            tf = f"bert/encoder/layer_{i}/"
            out[b + "multiHeadAttention.q.weight"] = t[tf + "attention/self/query/kernel"].T.contiguous()
            out[b + "multiHeadAttention.k.weight"] = t[tf + "attention/self/key/kernel"].T.contiguous()
            out[b + "multiHeadAttention.v.weight"] = t[tf + "attention/self/value/kernel"].T.contiguous()
            out[b + "multiHeadAttention.o.weight"] = t[tf + "attention/output/dense/kernel"].T.contiguous()
            out[b + "feedForward.intermediateDense.weight"] = t[tf + "intermediate/dense/kernel"].T.contiguous()
            out[b + "feedForward.outputDense.weight"] = t[tf + "output/dense/kernel"].T.contiguous()
            if with_norm_weights:
                out[b + "attnLayerNorm.weight"] = torch.ones(h)
                out[b + "ffnLayerNorm.weight"] = torch.ones(h)
        else:
            tf = f"GAU_alpha/encoder/layer_{i}/gau/"
            out[b + "gau.i_dense.weight"] = t[tf + "i_dense/kernel"].T.contiguous()
            out[b + "gau.o_dense.weight"] = t[tf + "o_dense/kernel"].T.contiguous()
            out[b + "gau.offsetscale.gamma"] = torch.stack([t[tf + "q_scaleoffset/gamma"], t[tf + "k_scaleoffset/gamma"]])
            if with_norm_weights:
                out[b + "layerNorm1.weight"] = torch.ones(h)
    return out


def bert4torch_config(family: str, dims: dict) -> dict:
    """bert4torch_config.json: bert4torch's own key spellings (dropout_rate, segment_vocab_size, model)."""
    config = {"model": "roformer_v2" if family == "roformer-v2" else "gau_alpha",
              "hidden_act": "relu" if family == "roformer-v2" else "swish", "dropout_rate": 0.1,
              "attention_probs_dropout_prob": 0.1, "segment_vocab_size": 2, "max_position": 512, **dims}
    if family == "gau-alpha":
        config["num_attention_heads"] = 1
    return config


def write_bert4torch_folder(folder: Path, family: str, state: dict, dims: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bert4torch_config.json").write_text(json.dumps(bert4torch_config(family, dims), indent=2))
    (folder / "vocab.txt").write_text("\n".join(vocab_tokens(dims["vocab_size"])) + "\n", encoding="utf-8")
    torch.save(state, folder / "pytorch_model.bin")


def token_batch(vocab_size: int, lengths=(13, 7, 3), seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """ids [B, S] padded with 0 ([PAD]) after each row's length, and the matching 0/1 mask."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.randint(1, vocab_size, size=n)
    return ids, (ids != 0).astype(np.int64)
