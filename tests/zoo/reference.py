"""Independent reference forward passes, written from ../shared/specs/architectures.md.

Nothing here imports zoo's modules: each function reads a state dict and recomputes the family's
equations literally (bert4keras formulations where they differ in form from ours: RoPE with
repeated cos/sin tables and the stacked (−x_odd, x_even) rotation, softmax_plus counting the
unmasked logits of each row, −1e12 masking), so agreement checks the model against the spec.
"""

from __future__ import annotations

import math

import torch

NEG = -1e12


def rms_norm(x, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rope(x, positions, base=10000.0):
    """bert4keras apply_rotary_position_embeddings: x·cos + stack(−x_odd, x_even)·sin, tables repeated ×2."""
    d = x.shape[-1]
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[..., None] * theta  # [B, S, d/2]
    cos = torch.repeat_interleave(torch.cos(angles), 2, dim=-1).to(x.dtype)
    sin = torch.repeat_interleave(torch.sin(angles), 2, dim=-1).to(x.dtype)
    while cos.dim() < x.dim():
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


def masked_attention_probs(a, key_valid, normalization, base=512, min_len=1):
    """a [B, H, S, S] logits (already scaled by 1/√d); padded keys get −1e12 before normalising."""
    a = a.masked_fill(~key_valid[:, None, None, :], NEG)
    if normalization == "softmax":
        return torch.softmax(a, dim=-1)
    if normalization == "softmax_plus":
        # training-era bert4keras: n = max(count(a > −1e11), 1) per row, scale only unmasked entries
        n = (a > NEG / 10).sum(-1, keepdim=True).to(a.dtype).clamp_min(1).clamp_min(min_len)
        scaled = torch.where(a > NEG / 10, a * torch.log(n) / math.log(base), a)
        return torch.softmax(scaled, dim=-1)
    if normalization == "relu2":
        n = key_valid.sum(-1).to(a.dtype)[:, None, None, None]
        return torch.relu(a) ** 2 / n * key_valid[:, None, None, :]
    raise ValueError(normalization)


def embeddings(sd, prefix, ids, token_type_ids, cfg):
    e = sd[f"{prefix}embeddings.word_embeddings.weight"][ids]
    e = e + sd[f"{prefix}embeddings.token_type_embeddings.weight"][token_type_ids]
    if cfg.position_embedding_type == "learned":
        positions = torch.arange(ids.shape[1])
        e = e + sd[f"{prefix}embeddings.position_embeddings.weight"][positions][None]
    if not cfg.embedding_norm:
        return e
    if cfg.norm_type == "rms":
        return rms_norm(e, cfg.layer_norm_eps)
    return layer_norm(e, sd[f"{prefix}embeddings.norm.weight"], sd[f"{prefix}embeddings.norm.bias"], cfg.layer_norm_eps)


def linear(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    bias = sd.get(f"{name}.bias")
    return y if bias is None else y + bias


def norm(x, sd, name, cfg):
    if cfg.norm_type == "rms":
        return rms_norm(x, cfg.layer_norm_eps)
    return layer_norm(x, sd[f"{name}.weight"], sd[f"{name}.bias"], cfg.layer_norm_eps)


def mha(x, sd, name, cfg, key_valid, positions):
    b, s, _ = x.shape
    h, d = cfg.num_attention_heads, cfg.head_size

    def heads(t):
        return t.reshape(b, s, h, d).permute(0, 2, 1, 3)

    q, k, v = (heads(linear(x, sd, f"{name}.{p}_proj")) for p in "qkv")
    if cfg.position_embedding_type == "rope":
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    a = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    p = masked_attention_probs(a, key_valid, cfg.attention_normalization, cfg.softmax_plus_base, cfg.softmax_plus_min_len)
    o = torch.einsum("bhij,bhjd->bhid", p, v).permute(0, 2, 1, 3).reshape(b, s, h * d)
    return linear(o, sd, f"{name}.out_proj")


ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
    "swish": lambda t: t * torch.sigmoid(t),
}


def ffn(x, sd, name, cfg):
    act = ACTIVATIONS[cfg.hidden_act]
    return linear(act(linear(x, sd, f"{name}.fc1")), sd, f"{name}.fc2")


def gau(x, sd, name, cfg, key_valid, positions):
    e, s = cfg.intermediate_size, cfg.attention_key_size
    uvz = linear(x, sd, f"{name}.i_dense")
    uvz = uvz * torch.sigmoid(uvz)  # swish on all three parts
    u, v, z = uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]
    q = z * sd[f"{name}.q_scaleoffset.weight"]
    k = z * sd[f"{name}.k_scaleoffset.weight"]
    if f"{name}.q_scaleoffset.bias" in sd:
        q, k = q + sd[f"{name}.q_scaleoffset.bias"], k + sd[f"{name}.k_scaleoffset.bias"]
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)  # after the scale
    a = torch.einsum("bid,bjd->bij", q, k)[:, None] / math.sqrt(s)
    p = masked_attention_probs(a, key_valid, cfg.attention_normalization, cfg.softmax_plus_base, cfg.softmax_plus_min_len)
    return linear(u * torch.einsum("bij,bjd->bid", p[:, 0], v), sd, f"{name}.o_dense")


def encoder(sd, cfg, ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix="encoder."):
    """Hidden states of every layer (embedding output first), from the spec's equations."""
    b, s = ids.shape
    key_valid = torch.ones(b, s, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    token_type_ids = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
    positions = torch.arange(s)[None].expand(b, s) if position_ids is None else position_ids
    x = embeddings(sd, prefix, ids, token_type_ids, cfg)
    alpha = cfg.alpha
    states = [x]
    for i in range(cfg.num_hidden_layers):
        layer = f"{prefix}layers.{i}"
        if cfg.block_type == "gau":
            branches = [(lambda t, n=f"{layer}.gau": gau(t, sd, n, cfg, key_valid, positions), f"{layer}.gau_norm")]
        else:
            branches = [
                (lambda t, n=f"{layer}.self_attn": mha(t, sd, n, cfg, key_valid, positions), f"{layer}.self_attn_norm"),
                (lambda t, n=f"{layer}.ffn": ffn(t, sd, n, cfg), f"{layer}.ffn_norm"),
            ]
        for branch, norm_name in branches:
            if cfg.residual == "pre":
                x = x + branch(norm(x, sd, norm_name, cfg))
            else:
                x = norm(alpha * x + branch(x), sd, norm_name, cfg)
        states.append(x)
    if cfg.residual == "pre":
        states[-1] = norm(x, sd, f"{prefix}final_norm", cfg)
    return states


def mlm_logits(sd, cfg, hidden):
    """Tied head: h · E_tokᵀ (no bias), or dense → gelu → LN → tied projection + bias."""
    if cfg.mlm_head == "transform":
        t = ACTIVATIONS[cfg.hidden_act](linear(hidden, sd, "lm_head.transform.0"))
        hidden = layer_norm(t, sd["lm_head.transform.2.weight"], sd["lm_head.transform.2.bias"], cfg.layer_norm_eps)
        return hidden @ sd["encoder.embeddings.word_embeddings.weight"].T + sd["lm_head.decoder.bias"]
    return hidden @ sd["encoder.embeddings.word_embeddings.weight"].T
