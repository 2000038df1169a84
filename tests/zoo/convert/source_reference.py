"""Forward passes of the source implementations, in numpy float64, reading each format's own names.

Written from ../shared/specs/architectures.md and the ports' code as the spec quotes it, not from
zoo: no zoo module is imported. Two flavours of the same equations:

- "bert4keras" (the code the checkpoints were trained with, §1.1, §2.1–§2.3): padded keys get −1e12;
  softmax_plus counts n = max(#{a > −1e11}, 1) per row and rescales only those logits; RoPE builds
  repeated cos/sin tables and the stacked (−x_odd, x_even) rotation.
- "junnyu" (JunnYu's ports, §5–§6): an additive −10000 key mask; GAU masks with −1e4 and rescales
  every logit by log(l)/log 512 with l the row's valid-key count; the GAU port writes RoPE's two
  halves with a concatenation instead of interleaving (§2.3).

Weights are read through small accessors that know one format's names; the math is shared.
"""

from __future__ import annotations

import math

import numpy as np


def rms_norm(x, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def swish(x):
    return x / (1 + np.exp(-x))


def rope_tables(seq_len: int, dim: int):
    theta = 10000.0 ** (-2 * np.arange(dim // 2, dtype=np.float64) / dim)
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * theta  # [S, d/2]
    return np.cos(angles), np.sin(angles)


def rope_interleaved(x, cos, sin):
    """bert4keras: x·repeat(cos) + stack(−x_odd, x_even)·repeat(sin) (pairs 2i, 2i+1)."""
    rotated = np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)
    return x * np.repeat(cos, 2, -1) + rotated * np.repeat(sin, 2, -1)


def rope_concatenated(x, cos, sin):
    """JunnYu's GAU port: [x1·cos − x2·sin | x1·sin + x2·cos] (same scores, permuted dims)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def attention_probs(a, key_valid, flavour, normalization, min_len=1):
    """a [B, (H,) S, S] scaled logits → probabilities over keys."""
    valid = key_valid.reshape(key_valid.shape[0], *([1] * (a.ndim - 2)), key_valid.shape[-1])
    if flavour == "bert4keras":
        a = np.where(valid, a, -1e12)
        if normalization == "softmax":
            return softmax(a)
        n = np.maximum((a > -1e11).sum(-1, keepdims=True), 1).astype(np.float64)
        n = np.maximum(n, min_len)
        return softmax(np.where(a > -1e11, a * np.log(n) / math.log(512), a))
    if normalization == "softmax":
        return softmax(a + np.where(valid, 0.0, -10000.0))
    length = key_valid.sum(-1).astype(np.float64).reshape(-1, *([1] * (a.ndim - 1)))
    a = np.where(valid, a, -1e4)
    return softmax(a * np.log(length) / math.log(512))


def encoder_forward(weights, cfg, ids, flavour="bert4keras", eps=1e-7, min_len=1):
    """Last hidden states and MLM logits. `weights` is a format accessor (see below); `cfg` holds
    hidden_size, num_hidden_layers and num_attention_heads or intermediate_size/attention_key_size."""
    ids = np.asarray(ids)
    key_valid = ids != 0  # bert4keras derives the padding mask from token id 0 (§1.1)
    b, s = ids.shape
    word, segment = weights.embeddings()
    x = rms_norm(word[ids] + segment[0], eps)  # all-zero segment ids (§1.3)
    for i in range(cfg["num_hidden_layers"]):
        if weights.family == "roformer-v2":
            wq, wk, wv, wo, w1, w2 = weights.attention_ffn(i)  # oriented for x @ W
            heads = cfg["num_attention_heads"]
            d = cfg["hidden_size"] // heads
            cos, sin = rope_tables(s, d)

            def split(t):
                return t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

            q, k, v = split(x @ wq), split(x @ wk), split(x @ wv)
            q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
            p = attention_probs(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d), key_valid, flavour, "softmax")
            o = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, heads * d)
            h = rms_norm(x + o @ wo, eps)
            x = rms_norm(h + np.maximum(h @ w1, 0) @ w2, eps)
        else:
            wi, wo, gamma_q, gamma_k = weights.gau(i)
            e, key = cfg["intermediate_size"], cfg["attention_key_size"]
            uvz = swish(x @ wi)
            u, v, z = uvz[..., :e], uvz[..., e:2 * e], uvz[..., 2 * e:]
            cos, sin = rope_tables(s, key)
            rope = rope_interleaved if flavour == "bert4keras" else rope_concatenated
            q, k = rope(z * gamma_q, cos, sin), rope(z * gamma_k, cos, sin)  # scale first, then RoPE (§2.1)
            p = attention_probs(q @ k.transpose(0, 2, 1) / math.sqrt(key), key_valid, flavour, "softmax_plus", min_len)
            x = rms_norm(x + (u * (p @ v)) @ wo, eps)
    return x, x @ weights.decoder().T


class Bert4KerasWeights:
    """TensorFlow variable names; Keras kernels are already [in, out]."""

    def __init__(self, variables: dict, family: str):
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in variables.items()}
        self.family = family

    def embeddings(self):
        return self.w["bert/embeddings/word_embeddings"], self.w["bert/embeddings/token_type_embeddings"]

    def decoder(self):
        return self.w["bert/embeddings/word_embeddings"]

    def attention_ffn(self, i):
        p = f"bert/encoder/layer_{i}/"
        return tuple(self.w[p + n] for n in ("attention/self/query/kernel", "attention/self/key/kernel",
                                             "attention/self/value/kernel", "attention/output/dense/kernel",
                                             "intermediate/dense/kernel", "output/dense/kernel"))

    def gau(self, i):
        p = f"GAU_alpha/encoder/layer_{i}/gau/"
        return (self.w[p + "i_dense/kernel"], self.w[p + "o_dense/kernel"],
                self.w[p + "q_scaleoffset/gamma"], self.w[p + "k_scaleoffset/gamma"])


class JunnYuWeights:
    """JunnYu's names; torch Linear weights [out, in], used as x @ Wᵀ."""

    def __init__(self, state: dict, family: str):
        self.w = {k: v.double().numpy() for k, v in state.items()}
        self.family = family
        self.p = "roformer." if family == "roformer-v2" else "gau_alpha."

    def embeddings(self):
        return (self.w[self.p + "embeddings.word_embeddings.weight"],
                self.w[self.p + "embeddings.token_type_embeddings.weight"])

    def decoder(self):
        return self.w["cls.predictions.decoder.weight"]

    def attention_ffn(self, i):
        p = f"{self.p}encoder.layer.{i}."
        return tuple(self.w[p + n].T for n in ("attention.self.query.weight", "attention.self.key.weight",
                                               "attention.self.value.weight", "attention.output.dense.weight",
                                               "intermediate.dense.weight", "output.dense.weight"))

    def gau(self, i):
        p = f"{self.p}encoder.layer.{i}.gau."
        return (self.w[p + "i_dense.weight"].T, self.w[p + "o_dense.weight"].T,
                self.w[p + "q_scaleoffset.weight"], self.w[p + "k_scaleoffset.weight"])


class Bert4TorchWeights:
    """bert4torch's names; GAU's q/k scales are rows 0 and 1 of offsetscale.gamma."""

    def __init__(self, state: dict, family: str):
        self.w = {k: v.double().numpy() for k, v in state.items()}
        self.family = family

    def embeddings(self):
        return self.w["embeddings.word_embeddings.weight"], self.w["embeddings.segment_embeddings.weight"]

    def decoder(self):
        return self.w["mlmDecoder.weight"]

    def attention_ffn(self, i):
        p = f"encoderLayer.{i}."
        return tuple(self.w[p + n].T for n in ("multiHeadAttention.q.weight", "multiHeadAttention.k.weight",
                                               "multiHeadAttention.v.weight", "multiHeadAttention.o.weight",
                                               "feedForward.intermediateDense.weight", "feedForward.outputDense.weight"))

    def gau(self, i):
        p = f"encoderLayer.{i}.gau."
        gamma = self.w[p + "offsetscale.gamma"]
        return self.w[p + "i_dense.weight"].T, self.w[p + "o_dense.weight"].T, gamma[0], gamma[1]


def assert_model_matches(model, weights, cfg, ids, *, flavour, eps, min_len=1, atol=1e-10):
    """The model's last hidden states and MLM logits, run in float64, equal the reference's to `atol`
    (fp64 rounding is ~1e-14 here; an ε of 1e-7 instead of 1e-12 alone moves outputs by ~1e-7)."""
    import torch

    model = model.double().eval()
    mask = torch.from_numpy((ids != 0).astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=mask, output_hidden_states=True)
    hidden, logits = encoder_forward(weights, cfg, ids, flavour=flavour, eps=eps, min_len=min_len)
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), hidden, rtol=0, atol=atol)
    np.testing.assert_allclose(out.logits.numpy(), logits, rtol=0, atol=atol)
    return out
