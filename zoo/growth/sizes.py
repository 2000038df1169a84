"""The sizes a growth goes to: `grown_config` validates a request as `expand` does (errors name the
argument and the exact alternatives) and returns the grown config; `placement` says where the layers
of a depth growth go."""

from __future__ import annotations

from typing import Any

from ..errors import GrowthError

PLACEMENTS = ("interleave", "top", "bottom")
ALPHA_POLICIES = ("depth", "keep")

_ARGUMENTS = ("hidden_size", "num_layers", "num_heads", "head_size", "intermediate_size", "expansion_size", "key_size")


def _multiples(base: int, above: int, count: int = 3) -> str:
    first = (above // base + 1) * base
    return ", ".join(str(first + i * base) for i in range(count))


def _grown_size(argument: str, requested: int | None, current: int) -> int:
    if requested is None:
        return current
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise GrowthError(f"{argument} must be an int, got {requested!r}")
    if requested < current:
        raise GrowthError(
            f"{argument}={requested} would shrink the model (it has {current}); zoo.expand only grows: "
            f"pass a value ≥ {current}"
        )
    return requested


def _target_config(config, sizes: dict, alpha: str):
    """The grown config: same family and options, new sizes (validated with errors naming the argument)."""
    gau = config.block_type == "gau"
    if gau:
        for argument in ("num_heads", "head_size"):
            if sizes[argument] is not None:
                raise GrowthError(
                    f"{argument} does not apply to GAU-α (one single-head GAU per layer); grow its expansion "
                    "width with expansion_size and its q/k width with key_size"
                )
        both = sizes["expansion_size"], sizes["intermediate_size"]
        if None not in both and both[0] != both[1]:
            raise GrowthError(
                f"expansion_size={sizes['expansion_size']} and intermediate_size={sizes['intermediate_size']} name "
                "the same GAU width (config.intermediate_size); pass one of them"
            )
    else:
        for argument, instead in (("expansion_size", "intermediate_size (the FFN width)"), ("key_size", "head_size")):
            if sizes[argument] is not None:
                raise GrowthError(f"{argument} applies to GAU-α only; for multi-head attention grow {instead}")
    hidden = _grown_size("hidden_size", sizes["hidden_size"], config.hidden_size)
    layers = _grown_size("num_layers", sizes["num_layers"], config.num_hidden_layers)
    inner = sizes["expansion_size"] if sizes["expansion_size"] is not None else sizes["intermediate_size"]
    argument = "expansion_size" if sizes["expansion_size"] is not None else "intermediate_size"
    intermediate = _grown_size(argument, inner, config.intermediate_size)
    changes: dict[str, Any] = {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": intermediate}
    rope = config.position_embedding_type == "rope"

    if hidden != config.hidden_size and _needs_uniform_residual(config) and hidden % config.hidden_size:
        reason = (
            "LayerNorm's mean and variance are preserved only by uniform duplication"
            if config.norm_type == "layernorm"
            else "the MLM transform head's LayerNorm is preserved only by uniform duplication"
        )
        raise GrowthError(
            f"hidden_size={hidden} cannot be grown exactly from {config.hidden_size} for this model: {reason} "
            f"(expansion.md A.1), so hidden_size must be a multiple of {config.hidden_size}: use "
            f"{_multiples(config.hidden_size, config.hidden_size)}"
        )
    if gau:
        key = _grown_size("key_size", sizes["key_size"], config.attention_key_size)
        if rope and key % config.attention_key_size:
            raise GrowthError(
                f"key_size={key} cannot keep RoPE exact: old q/k pairs must land on new pairs of the same "
                f"frequency, which needs key_size to be a multiple of {config.attention_key_size} (expansion.md "
                f"A.4): use {_multiples(config.attention_key_size, config.attention_key_size)}, or keep key_size="
                f"{config.attention_key_size}"
            )
        changes["attention_key_size"] = key
        changes["head_size"] = None  # recomputed as hidden_size // 1; GAU does not use it
    else:
        heads = _grown_size("num_heads", sizes["num_heads"], config.num_attention_heads)
        head = _grown_size("head_size", sizes["head_size"], config.head_size)
        if rope and head % config.head_size:
            raise GrowthError(
                f"head_size={head} cannot keep RoPE exact: old q/k pairs must land on new pairs of the same "
                f"frequency, which needs head_size to be a multiple of {config.head_size} (expansion.md A.2 ii): "
                f"use {_multiples(config.head_size, config.head_size)}, or keep head_size={config.head_size} and "
                "grow num_heads"
            )
        changes["num_attention_heads"] = heads
        changes["head_size"] = head
    if config.residual == "deepnorm" and layers != config.num_hidden_layers and config.deepnorm_alpha is None:
        if alpha == "keep":
            changes["deepnorm_alpha"] = config.alpha
        elif config.norm_type != "layernorm":
            raise GrowthError(
                "this DeepNorm model has a parameter-free norm, which cannot carry the α change exactly; pass "
                f"alpha='keep' to keep α = {config.alpha:.6g} (exact), or grow without changing num_layers"
            )
    data = {**config.to_dict(), **changes}
    return type(config).from_dict(data)


def grown_config(config, hidden_size: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
                 head_size: int | None = None, intermediate_size: int | None = None, expansion_size: int | None = None,
                 key_size: int | None = None, alpha: str = "depth", **_options):
    """The sizes `expand` would grow `config` to, validated as `expand` validates them (ValueError naming
    the argument), without building a model: for checking a growth plan (e.g. a recipe's stages) up front.
    The other keyword arguments of `expand` are accepted and ignored."""
    if alpha not in ALPHA_POLICIES:
        raise GrowthError(f"alpha={alpha!r} is not one of {list(ALPHA_POLICIES)}")
    sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, head_size=head_size,
                 intermediate_size=intermediate_size, expansion_size=expansion_size, key_size=key_size)
    if all(value is None for value in sizes.values()):
        raise GrowthError(f"nothing to grow: pass at least one of {', '.join(_ARGUMENTS)}")
    return _target_config(config, sizes, alpha)


def _needs_uniform_residual(config) -> bool:
    """LayerNorm on the residual stream, or a transform MLM head (its own LayerNorm reads a D-wide copy)."""
    return config.norm_type == "layernorm" or config.mlm_head == "transform"


def placement(where, old: int, new: int) -> list[int]:
    """After which old layer each new layer goes (−1 = below layer 0), in order."""
    count = new - old
    if isinstance(where, str):
        if where not in PLACEMENTS:
            raise GrowthError(f"where={where!r} is not one of {list(PLACEMENTS)} or a list of layer indices")
        if where == "interleave":
            return [i * old // count for i in range(count)] if count else []
        if where == "top":
            return [old - 1] * count
        return [-1] * count
    after = list(where)
    if len(after) != count or not all(isinstance(i, int) and -1 <= i < old for i in after):
        raise GrowthError(
            f"where={after!r}: a list needs one entry per new layer ({count}), each an old layer index in "
            f"-1 … {old - 1} after which the new layer goes (-1 = below layer 0)"
        )
    return sorted(after)

