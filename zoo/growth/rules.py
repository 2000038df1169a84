"""The rules of one growth: one `TensorRule` per grown parameter (expansion.md A.1, A.5).

What every family shares is here: the residual stream's Q (A.1), the depth layout (copies of a
block with zeroed writers, A.5), the embeddings and the tied MLM head (ẽ = (d/D)·Q e), and the task
heads (readers W·Q⁺). The block is the family's: zoo/growth/roformer_v2.py (multi-head attention +
FFN; DeepNet's block too) or zoo/growth/gau_alpha.py (GAU); a LayerNorm or DeepNorm model adds
zoo/growth/deepnet.py's norm rules and α factor. The parts follow the config (`block_type`,
`norm_type`, `residual`), so every combination a config can name is grown.
"""

from __future__ import annotations

import torch

from ..errors import GrowthError
from ..modeling import EncoderModel
from .deepnet import DeepNetNorms, deepnorm_factor
from .gau_alpha import GAUAlphaBlock
from .operators import AxisMap, TensorRule
from .roformer_v2 import RoFormerV2Block
from .sizes import placement

# task-head parameters that read the final hidden state (W·Q⁺), and those the growth leaves as they are
HEAD_READERS = ("classifier.weight", "qa_outputs.weight", "global_pointer.dense.weight",
                "global_pointer.p_dense.weight")
HEAD_UNCHANGED = ("lm_head.decoder.bias", "classifier.bias", "qa_outputs.bias", "global_pointer.dense.bias",
                  "global_pointer.p_dense.bias")

BLOCKS = {"transformer": RoFormerV2Block, "gau": GAUAlphaBlock}


class GrowthRules:
    """Builds the rules for one growth (transformer and GAU blocks, every residual scheme and head)."""

    def __init__(self, model, big_config, where, symmetry: str, generator: torch.Generator):
        self.small = model.config
        self.big = big_config
        self.symmetry = symmetry
        self.generator = generator
        self.prefix = "" if isinstance(model, EncoderModel) else model.base_model_prefix + "."
        self.small_names = [name for name, _ in model.named_parameters()]
        self.small_set = set(self.small_names)
        self.model = model
        s, b = self.small, self.big
        self.notes: list[str] = []
        self.exact = True

        # the residual stream h̃ = Q·h (A.1): duplication, weighted by √(D/d)/√n where d ∤ D
        uniform = b.hidden_size % s.hidden_size == 0
        self.residual = AxisMap.duplicate(s.hidden_size, b.hidden_size, rms_scaled=not uniform)
        if not uniform:
            self.notes.append(
                f"hidden {s.hidden_size} → {b.hidden_size}: weighted non-uniform duplication, each copy scaled by "
                "√(D/d)/√n so that Qᵀ Q = (D/d)·I (expansion.md A.1)"
            )

        # depth: the grown layer list and, per anchor (−1 = embeddings), the layers inserted after it
        after = placement(where, s.num_hidden_layers, b.num_hidden_layers)
        self.layers: list[tuple[str, int]] = []  # ("old" | "new", small layer it comes from)
        self.chains: dict[int, list[int]] = {}
        for anchor in [-1] + list(range(s.num_hidden_layers)):
            if anchor >= 0:
                self.layers.append(("old", anchor))
            for _ in range(after.count(anchor)):
                self.chains.setdefault(anchor, []).append(len(self.layers))
                self.layers.append(("new", max(anchor, 0)))
        self.post_norm = s.residual in ("post", "deepnorm")
        self.affine_norm = s.norm_type == "layernorm"
        if -1 in self.chains and self.post_norm and not s.embedding_norm:
            raise GrowthError(
                "where: a post-norm layer inserted below layer 0 would normalise the (unnormalised) embedding "
                "sum and change the function (expansion.md A.5); use where='interleave' or 'top', or a list "
                "of layer indices ≥ 0"
            )

        # DeepNet α′ = (2L′)^¼: carried by norm affines ÷ c and readers × c (exact with ε > 0)
        self.c, note = deepnorm_factor(s, b)
        if note:
            self.notes.append(note)

        # tied embeddings and the MLM head (A.1): logits = ⟨Q h, f·Q e⟩ = f·(D/d)⟨h, e⟩
        ratio = b.hidden_size / s.hidden_size
        decoder_tied = s.tie_word_embeddings
        self.embedding_factor = 1.0
        self.head_norm_factor = 1.0
        if not s.embedding_norm:
            self.embedding_factor = 1.0 / self.c
        if s.mlm_head == "tied" and decoder_tied and ratio != 1:
            if s.embedding_norm:
                self.embedding_factor = 1.0 / ratio
            elif self._has_decoder():
                raise GrowthError(
                    "this model ties its MLM decoder to embeddings that feed the residual stream without a norm, "
                    "so no embedding scale keeps both the input and the logits: grow it with a transform MLM head "
                    "(mlm_head='transform'), untied embeddings (tie_word_embeddings=False), or an embedding norm"
                )
        if s.mlm_head == "tied" and decoder_tied and not s.embedding_norm and self.c != 1 and self._has_decoder():
            raise GrowthError(
                "this DeepNet ties its MLM decoder to embeddings without a norm, so the α change cannot be carried "
                "exactly; pass alpha='keep'"
            )
        if s.mlm_head == "transform" and decoder_tied:
            self.head_norm_factor = 1.0 / (ratio * self.embedding_factor)
        if self.embedding_factor != 1.0 and s.embedding_norm:
            eps = s.embedding_norm_eps if s.embedding_norm_eps is not None else s.layer_norm_eps
            self.big.embedding_norm_eps = eps * self.embedding_factor**2

        self.block = BLOCKS[s.block_type](self)  # the family's block: its inner widths (A.2–A.4)
        self.norms = DeepNetNorms(self) if self.affine_norm else None
        self._check_post_norm_depth()

    def _has_decoder(self) -> bool:
        return any(name.startswith("lm_head.") for name in self.small_names)

    def _check_post_norm_depth(self) -> None:
        s = self.small
        if self.post_norm and self.chains:
            eps = s.layer_norm_eps
            self.exact = False
            kind = "LayerNorm" if self.affine_norm else "RMS norm"
            self.notes.append(
                f"depth {s.num_hidden_layers} → {self.big.num_hidden_layers}: each inserted post-norm block "
                f"re-normalises an already normalised state; with the {kind}'s ε = {eps:g} that changes it by a "
                "relative "
                + ("≈ ε/(2·variance)" if self.affine_norm else "ε(1 − m)/(2m), m the mean square")
                + "; exact at ε = 0 (expansion.md A.5)"
                + ("; the norm affine moved to the last inserted block (move-affine)" if self.affine_norm else "")
            )

    def share(self, amap: AxisMap) -> AxisMap:
        """The reading shares of one tensor: fresh unequal shares with symmetry='split', else equal."""
        return amap.with_random_shares(self.generator) if self.symmetry == "split" else amap

    # -- rules
    def rules(self) -> dict[str, TensorRule]:
        s, p = self.small, self.prefix
        rules: dict[str, TensorRule] = {}
        out = (self.residual, "out")
        # the last norm of the grown post-norm model feeds the head, so it alone is not ÷ c (A.5)
        self.last_norm = f"layers.{len(self.layers) - 1}.{self.block.norm_names[-1]}" if self.post_norm else None

        # embeddings: residual writers, scaled by the tied factor (A.1)
        for table in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
            name = p + f"embeddings.{table}.weight"
            if name in self.small_set:
                rules[name] = TensorRule(name, (None, out), factor=self.embedding_factor)
        if s.embedding_norm and self.norms is not None:
            rules.update(self.norms.embedding_rules())
        for big_layer, (origin, small_layer) in enumerate(self.layers):
            rules.update(self.block_rules(big_layer, origin == "new", small_layer))
        if s.residual == "pre" and self.norms is not None:
            rules.update(self.norms.final_rules())
        rules.update(self._head_rules())
        return rules

    def block_rules(self, big_layer: int, new: bool, small_layer: int) -> dict[str, TensorRule]:
        """Grown block `big_layer` from small block `small_layer`: the block itself (kind "map") or an
        inserted copy (kind "copy") whose writers are zero, so that it adds nothing (A.4, A.5)."""
        p = self.prefix
        rules: dict[str, TensorRule] = {}

        def add(suffix: str, axes: tuple, factor: float = 1.0, writer: bool = False) -> None:
            source = p + f"layers.{small_layer}.{suffix}"
            if source not in self.small_set:  # biases and offsets exist only in some configs
                return
            if new and writer:
                rule = TensorRule(source, axes, kind="fill", fill=0.0)
            else:
                rule = TensorRule(source, axes, factor=factor, kind="copy" if new else "map")
            rules[p + f"layers.{big_layer}.{suffix}"] = rule

        self.block.add_rules(add)
        if self.norms is not None:
            rules.update(self.norms.block_rules(big_layer, small_layer))
        return rules

    def _head_rules(self) -> dict[str, TensorRule]:
        R = self.residual
        rules = {}
        for name in self.small_names:
            if name.startswith(self.prefix) and self.prefix:
                continue
            if not self.prefix and (name.startswith(("embeddings.", "layers.", "final_norm."))):
                continue
            if name.startswith("lm_head.transform.0."):
                axes = ((R, "out"), (self.share(R), "in")) if name.endswith("weight") else ((R, "out"),)
                rules[name] = TensorRule(name, axes)
            elif name.startswith("lm_head.transform.2."):
                rules[name] = TensorRule(name, ((R, "out"),), factor=self.head_norm_factor)
            elif name == "lm_head.decoder.weight":  # untied decoder: a reader
                rules[name] = TensorRule(name, (None, (self.share(R), "in")))
            elif name in HEAD_READERS:
                rules[name] = TensorRule(name, (None, (self.share(R), "in")))
            elif name in HEAD_UNCHANGED or name.startswith("global_pointer.q_dense."):
                rules[name] = TensorRule(name, ())
            else:
                raise GrowthError(
                    f"zoo.expand does not know how to grow parameter {name!r} of {type(self.model).__name__}"
                )
        return rules

    def layer_map(self) -> tuple[dict[int, int], dict[int, float]]:
        """Small layer (−1 = embeddings) → grown layer carrying its output, and the factor on it."""
        s = self.small
        mapping, factor = {}, {}
        for l in range(-1, s.num_hidden_layers):
            big = -1 if l == -1 else self.layers.index(("old", l))
            if self.post_norm and l in self.chains:
                big = self.chains[l][-1]
            mapping[l] = big
            last = l == s.num_hidden_layers - 1
            if l == -1 and not s.embedding_norm:  # the raw embedding sum: the tables' own factor
                factor[l] = self.embedding_factor
            else:
                factor[l] = 1.0 if (last or not self.post_norm) else 1.0 / self.c
        return mapping, factor
