"""Community peer implementations of RoFormerV2 and GAU-α, built on transformers 5 for side-by-side runs.

Used by scripts/benchmarks/speed.py. The peers and their pinned versions live in
scripts/benchmarks/requirements-peers.txt:

    pip install --no-deps -r scripts/benchmarks/requirements-peers.txt

(`--no-deps` on purpose: roformer declares rjieba, a compiled tokenizer dependency not needed here, and
nothing may touch the installed torch / transformers; their declared torch>1.6 / transformers>=4.13 are
satisfied anyway). None of this is needed by the project or its tests.

API
---
    available_peers() -> dict[str, str | None]
        Every peer name mapped to None when it can be built here, or to the reason it cannot
        (package missing, wrong version, import failure).
    build_peer(name, family, *, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
               gau_expansion, gau_key_size, hidden_dropout, attention_dropout, max_len) -> nn.Module
        A freshly initialised masked-LM model in train mode. `model(input_ids, attention_mask=None,
        labels=None)` returns an object with `.loss` (MLM cross-entropy over labels != -100, when labels
        are given) and `.logits` [B, S, V]. Peers with a position table (JunnYu's sinusoid tables,
        bert4torch's max_position_embeddings, BERT's learned positions) are built with `max_len` rows.
    copy_weights_from_zoo(peer_model, zoo_model) -> None
        Load a zoo RoFormerV2 / GAU-α masked-LM model's weights into the matching JunnYu or bert4torch peer
        (architectures.md §4 name maps), after checking that the zoo config is one the peer can express.
    fix_bert4torch_gau_alpha(peer_model) -> peer_model
        The two fixes that make bert4torch 0.6.2's GAU-α correct (architectures.md §6, GAU-α item 2).

    python scripts/benchmarks/peers.py --check [--device auto]   # availability, smoke/dropout tests, fp64 logits vs zoo

Peers
-----
    name                      family           what is built
    transformers-bert-sdpa    any              transformers BertForMaskedLM, attn_implementation="sdpa"
    transformers-bert-eager   any              transformers BertForMaskedLM, attn_implementation="eager"
    transformers-roformer     any              transformers RoFormerForMaskedLM (RoFormer v1; eager only)
    junnyu-roformer-v2        roformer-v2      roformer==0.4.3 RoFormerForMaskedLM, norm_type="rms_norm",
                                               use_bias=False, hidden_act="relu" (its V2 switches)
    junnyu-gau-alpha          gau-alpha        gau-alpha==0.0.3 GAUAlphaForMaskedLM
    bert4torch-roformer-v2    roformer-v2      bert4torch==0.6.2 model "roformer_v2", layer_norm_mode="rmsnorm",
                                               pos_emb_type="rotary", its default sdpa attention
    bert4torch-gau-alpha      gau-alpha        bert4torch==0.6.2 model "gau_alpha", as shipped (numerically
                                               wrong: see below), is_dropout=True when attention dropout > 0

BERT and RoFormer v1 are the transformers reference points and are always built as Transformer stacks
(num_layers × [attention + FFN of intermediate_size], gelu, as their configs ship), whatever `family` says.
The JunnYu and bert4torch peers must be asked for with their own family.

What had to be patched, and why (all of it here, applied only when a peer is imported)
--------------------------------------------------------------------------------------
JunnYu `roformer` 0.4.3 and `gau_alpha` 0.0.3 were written for transformers 4.x:
  * import: `transformers.file_utils.is_tf_available` (TF was removed in v5: shimmed to return False);
    `transformers.modeling_utils.{SequenceSummary, apply_chunking_to_forward,
    find_pruneable_heads_and_indices, prune_linear_layer}` moved or were removed. SequenceSummary is
    v5's own copy of the v4 class (`transformers.models.xlm.modeling_xlm.XLMSequenceSummary`),
    apply_chunking_to_forward / prune_linear_layer come from `transformers.pytorch_utils`,
    find_pruneable_heads_and_indices is the v4 function re-implemented here. Names are only added
    where missing; nothing that exists in transformers is replaced.
  * runtime: v5 configs no longer carry `is_decoder` / `add_cross_attention` (class defaults False added
    to the peers' config classes), `PreTrainedModel.get_head_mask` (and the decoder-only
    `invert_attention_mask`, `create_extended_attention_mask_for_decoder`) are gone (the v4 methods are
    added to the peers' PreTrainedModel subclasses), and JunnYu's 4.x-style
    `_set_gradient_checkpointing(module, value)` override clashes with v5's signature (removed, so v5's
    own implementation sets the `gradient_checkpointing` flags JunnYu's encoders read).
  * weight tying: on 4.x these MLM decoders were tied to the token embedding (4.x configs defaulted to
    tie_word_embeddings=True and tying went through get_output_embeddings). v5 ties only through a
    `_tied_weights_keys` dict *and* `config.tie_word_embeddings`, neither of which the ports define, so
    on v5 they come out untied and `tie_word_embeddings=True` is silently ignored. The dict and the v4
    default (tie_word_embeddings=True on the config classes) are added: the peers are tied as shipped.
bert4torch 0.6.2 (with torch4keras 0.3.4) has no transformers dependency, but `import bert4torch` runs
`bert4torch/models/__init__.py`, which imports every model it has, including Qwen2-VL's video processor
(`torchvision`, not installable here without replacing torch) and an image loader (`httpx`). The
packages `bert4torch`, `bert4torch.models` and `bert4torch.models.auto` are therefore registered as
plain namespace shells (their real submodules load from the installed files) and only the modules the
two peers need are imported: models.roformer, models.gau_alpha and models.auto.modeling_auto. A
process that has imported these shells cannot later `import bert4torch` the normal way. Also patched:
`bert4torch.layers.layer_norm.LayerNorm.__repr__` reads a `norm_mode` attribute no norm sets, so
printing any bert4torch model raised KeyError (cosmetic; it now prints its fields).
bert4torch builds models only from a file named `bert4torch_config.json` (architectures.md §6,
RoFormerV2 item 6): the config is written to a temporary folder and passed to
`build_transformer_model` as users do. Weight tying is left as bert4torch ships it: untied (its
`tie_word_embeddings=True` crashes on RoFormerV2/GAU-α because their MLM bias was deleted).

Known numerical facts (checked by --check)
------------------------------------------
  * JunnYu RoFormerV2 / GAU-α equal the zoo model to float rounding once ε is matched; with our default
    ε = 1e-7 (bert4keras K.epsilon()) against their 1e-12 the difference is of order ε / mean(x²).
    Their masks are additive −1e4 / masked_fill(−1e4), which underflow to exactly 0 after the softmax.
    Their sinusoid tables are computed in float32 and stay so after `.double()`, which bounds the
    fp64 agreement at about 1e-7 relative; with ε matched and those tables recomputed in float64
    (`float64_tables`) the difference is ~1e-15.
  * bert4torch RoFormerV2 with layer_norm_mode="rmsnorm" is correct; its RMSNorm and its RoPE tables
    compute in float32 even in an fp64 model, so agreement is about 1e-7 relative (its GAU's softmax_plus
    also counts keys and takes log 512 in float32: ~1e-9).
  * bert4torch GAU-α as shipped is wrong: `GAU_alpha.__init__` deletes the embedding norm and every
    GauLayer uses RoformerV2LayerNorm, which subtracts the mean. `fix_bert4torch_gau_alpha` puts a
    parameter-free RMS norm in both places; the fixed model then matches.
  * Both GAU-α ports mask with a finite number and then multiply the logits by log(n)/log 512, so a
    row with exactly one valid key (n = 1, factor 0) attends uniformly over the padding too; bert4keras
    scales only the unmasked entries and the zoo keeps masked keys at −∞. Only single-token sequences.
  * bert4torch's GatedAttention applies attention dropout only when `is_dropout=True` (default False);
    build_peer sets is_dropout=True whenever attention_dropout > 0 so the dropout asked for is applied.
  * Training-time dropout placement differs from bert4keras in all four ports (inference unaffected):
    norm → dropout on the embeddings instead of dropout → norm, and no dropout before the MLM projection.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PINS = {"roformer": "0.4.3", "gau-alpha": "0.0.3", "bert4torch": "0.6.2", "torch4keras": "0.3.4"}
INSTALL_HINT = "pip install --no-deps -r scripts/benchmarks/requirements-peers.txt"

FAMILIES = ("roformer-v2", "gau-alpha")
# name → (family it implements, or None for the transformers reference models, which take any family)
PEER_FAMILIES: dict[str, str | None] = {
    "transformers-bert-sdpa": None,
    "transformers-bert-eager": None,
    "transformers-roformer": None,
    "junnyu-roformer-v2": "roformer-v2",
    "junnyu-gau-alpha": "gau-alpha",
    "bert4torch-roformer-v2": "roformer-v2",
    "bert4torch-gau-alpha": "gau-alpha",
}
PEERS = tuple(PEER_FAMILIES)


class PeerUnavailable(RuntimeError):
    """A peer cannot be imported or built in this environment; the message says why."""


# ---------------------------------------------------------------------------------------------- imports


def _require(distribution: str) -> None:
    """Raise PeerUnavailable unless `distribution` is installed at the pinned version."""
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable(f"{distribution}=={PINS[distribution]} is not installed ({INSTALL_HINT})") from None
    if installed != PINS[distribution]:
        raise PeerUnavailable(
            f"{distribution} {installed} is installed, but the shims in scripts/benchmarks/peers.py are written "
            f"for {distribution}=={PINS[distribution]} ({INSTALL_HINT})"
        )


def _memoized_import(fn):
    """Run an import function once; remember its module or its PeerUnavailable."""
    state: dict = {}

    def wrapper():
        if "module" not in state and "error" not in state:
            try:
                state["module"] = fn()
            except PeerUnavailable as error:
                state["error"] = error
            except Exception as error:  # an import error inside the peer: report it, with its type
                state["error"] = PeerUnavailable(f"importing failed after the transformers-5 shims: "
                                                 f"{type(error).__name__}: {error}")
        if "error" in state:
            raise state["error"]
        return state["module"]

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads: set):
    """transformers 4.x `find_pruneable_heads_and_indices`: the heads left to prune and the kept indices."""
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _install_transformers_import_shims() -> None:
    """Add the names JunnYu's packages import from transformers 4.x, where transformers 5 lacks them."""
    import transformers.file_utils as file_utils
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils
    from transformers.models.xlm.modeling_xlm import XLMSequenceSummary

    def is_tf_available() -> bool:
        return False  # transformers 5 has no TensorFlow backend

    additions = {
        (file_utils, "is_tf_available"): is_tf_available,
        (modeling_utils, "SequenceSummary"): XLMSequenceSummary,  # v5's verbatim copy of the v4 class
        (modeling_utils, "apply_chunking_to_forward"): pytorch_utils.apply_chunking_to_forward,
        (modeling_utils, "prune_linear_layer"): pytorch_utils.prune_linear_layer,
        (modeling_utils, "find_pruneable_heads_and_indices"): _find_pruneable_heads_and_indices,
    }
    for (module, name), value in additions.items():
        if not hasattr(module, name):
            setattr(module, name, value)


# transformers 4.x PreTrainedModel methods that JunnYu's models call and transformers 5 removed


def _get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask.unsqueeze(0).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
        head_mask = head_mask.expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)  # a mask per layer
    if head_mask.dim() != 5:
        raise ValueError(f"head_mask must have 1, 2 or 5 dimensions, got {head_mask.dim()}")
    head_mask = head_mask.to(dtype=self.dtype)
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask


def _invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    elif encoder_attention_mask.dim() == 2:
        extended = encoder_attention_mask[:, None, None, :]
    else:
        raise ValueError(f"encoder_attention_mask must be 2D or 3D, got {encoder_attention_mask.dim()}D")
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def _create_extended_attention_mask_for_decoder(input_shape, attention_mask, device=None):
    batch_size, seq_length = input_shape
    seq_ids = torch.arange(seq_length, device=device)
    causal_mask = seq_ids[None, None, :].repeat(batch_size, seq_length, 1) <= seq_ids[None, :, None]
    causal_mask = causal_mask.to(attention_mask.dtype)
    if causal_mask.shape[1] < attention_mask.shape[1]:
        prefix = attention_mask.shape[1] - causal_mask.shape[1]
        ones = torch.ones((batch_size, seq_length, prefix), device=device, dtype=causal_mask.dtype)
        causal_mask = torch.cat([ones, causal_mask], dim=-1)
    return causal_mask[:, None, :, :] * attention_mask[:, None, None, :]


def _patch_junnyu_classes(config_class, pretrained_class, tied: dict[type, dict[str, str]]) -> None:
    """Make a JunnYu config / model family behave on transformers 5 as it did on 4.x."""
    for name, default in (("is_decoder", False), ("add_cross_attention", False), ("chunk_size_feed_forward", 0),
                          ("tie_word_embeddings", True)):
        if name not in vars(config_class) and not hasattr(config_class(), name):
            setattr(config_class, name, default)
    if not hasattr(pretrained_class, "get_head_mask"):
        pretrained_class.get_head_mask = _get_head_mask
    if not hasattr(pretrained_class, "invert_attention_mask"):
        pretrained_class.invert_attention_mask = _invert_attention_mask
    if not hasattr(pretrained_class, "create_extended_attention_mask_for_decoder"):
        pretrained_class.create_extended_attention_mask_for_decoder = staticmethod(
            _create_extended_attention_mask_for_decoder)
    if "_set_gradient_checkpointing" in vars(pretrained_class):  # 4.x signature (module, value)
        del pretrained_class._set_gradient_checkpointing
    for model_class, keys in tied.items():
        if not isinstance(vars(model_class).get("_tied_weights_keys"), dict):
            model_class._tied_weights_keys = dict(keys)


@_memoized_import
def _junnyu_roformer():
    """JunnYu's `roformer` package, importable and runnable on transformers 5."""
    _require("roformer")
    _install_transformers_import_shims()
    import roformer
    from roformer import modeling_roformer

    tied = {"cls.predictions.decoder.weight": "roformer.embeddings.word_embeddings.weight"}
    _patch_junnyu_classes(roformer.RoFormerConfig, modeling_roformer.RoFormerPreTrainedModel,
                          {modeling_roformer.RoFormerForMaskedLM: tied, modeling_roformer.RoFormerForCausalLM: tied})
    return roformer


@_memoized_import
def _junnyu_gau_alpha():
    """JunnYu's `gau_alpha` package, importable and runnable on transformers 5."""
    _require("gau-alpha")
    _install_transformers_import_shims()
    import gau_alpha
    from gau_alpha import modeling_gau_alpha

    tied = {"cls.predictions.decoder.weight": "gau_alpha.embeddings.word_embeddings.weight"}
    _patch_junnyu_classes(gau_alpha.GAUAlphaConfig, modeling_gau_alpha.GAUAlphaPreTrainedModel,
                          {modeling_gau_alpha.GAUAlphaForMaskedLM: tied})
    return gau_alpha


def _namespace_shell(name: str) -> None:
    """Register package `name` without running its __init__.py; its submodules still import from disk."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise PeerUnavailable(f"cannot locate the {name} package ({INSTALL_HINT})")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__spec__ = spec
    module.__package__ = name
    module.__peers_shell__ = True  # marks a package whose __init__.py was deliberately not run
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


@_memoized_import
def _bert4torch():
    """bert4torch's RoFormerV2 / GAU-α modules and `build_transformer_model`, without its vision stack."""
    _require("bert4torch")
    _require("torch4keras")
    # If bert4torch was already imported the normal way (an environment with torchvision and httpx), its
    # packages are complete and are used as they are; otherwise they become shells (module docstring).
    for name in ("bert4torch", "bert4torch.models", "bert4torch.models.auto"):
        _namespace_shell(name)
    importlib.import_module("bert4torch.models.roformer")
    importlib.import_module("bert4torch.models.gau_alpha")
    modeling_auto = importlib.import_module("bert4torch.models.auto.modeling_auto")
    layer_norm = importlib.import_module("bert4torch.layers.layer_norm")

    def layer_norm_repr(self) -> str:  # the shipped __repr__ reads a `norm_mode` attribute no norm has
        bias = getattr(self, "bias", None) is not None
        weight = isinstance(getattr(self, "weight", None), nn.Parameter)
        return f"{type(self).__name__}({self.normalized_shape}, eps={self.eps}, weight={weight}, bias={bias})"

    layer_norm.LayerNorm.__repr__ = layer_norm_repr
    return types.SimpleNamespace(build_transformer_model=modeling_auto.build_transformer_model,
                                 layer_norm=layer_norm)


_IMPORTERS = {
    "junnyu-roformer-v2": _junnyu_roformer,
    "junnyu-gau-alpha": _junnyu_gau_alpha,
    "bert4torch-roformer-v2": _bert4torch,
    "bert4torch-gau-alpha": _bert4torch,
}


def available_peers() -> dict[str, str | None]:
    """Each peer name → None if it can be built here, else the reason it cannot."""
    result: dict[str, str | None] = {}
    for name in PEERS:
        importer = _IMPORTERS.get(name)
        if importer is None:
            result[name] = None  # transformers' own models: always present
            continue
        try:
            importer()
            result[name] = None
        except PeerUnavailable as error:
            result[name] = str(error)
    return result


# ------------------------------------------------------------------------------------------- building


class Bert4TorchForMaskedLM(nn.Module):
    """Adapter giving a bert4torch MLM model the transformers calling convention.

    bert4torch models take positional [token_ids, segment_ids] and return [hidden, mlm_scores]; the
    adapter passes all-zero segment ids (or `token_type_ids`), forwards an explicit `attention_mask`
    (bert4torch otherwise derives it from token_ids != 0) and computes the MLM loss the way users of
    bert4torch do: cross-entropy of the full logits, labels −100 ignored. The model is `self.model`.
    """

    def __init__(self, model: nn.Module, vocab_size: int):
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None):
        from transformers.modeling_outputs import MaskedLMOutput

        segment_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        extra = {} if attention_mask is None else {"attention_mask": attention_mask}
        hidden, logits = self.model(input_ids, segment_ids, **extra)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=None, attentions=None)


class _QuietTransformers:
    """Silence transformers' logger while a JunnYu model is constructed: v5 warns on every build that the
    class defines `prepare_inputs_for_generation` without inheriting GenerationMixin (irrelevant to MLM)."""

    def __enter__(self):
        from transformers.utils import logging

        self.logging = logging
        self.level = logging.get_verbosity()
        logging.set_verbosity_error()

    def __exit__(self, *exc):
        self.logging.set_verbosity(self.level)
        return False


def _check_family(name: str, family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    wanted = PEER_FAMILIES[name]
    if wanted is not None and wanted != family:
        raise ValueError(f"peer {name!r} implements {wanted}, not {family}")


def build_peer(name: str, family: str, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
               intermediate_size: int, gau_expansion: int, gau_key_size: int, hidden_dropout: float,
               attention_dropout: float, max_len: int) -> nn.Module:
    """Build peer `name` for `family`, freshly initialised and in train mode (see the module docstring).

    RoFormerV2-shaped peers use num_layers, num_heads and intermediate_size; GAU-α peers use num_layers,
    gau_expansion (e) and gau_key_size (s). Raises PeerUnavailable if the peer cannot be imported here
    and ValueError for an unknown name or a family the peer does not implement.
    """
    if name not in PEER_FAMILIES:
        raise ValueError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    _check_family(name, family)
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    shapes = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                  intermediate_size=intermediate_size, gau_expansion=gau_expansion, gau_key_size=gau_key_size,
                  hidden_dropout=hidden_dropout, attention_dropout=attention_dropout, max_len=max_len)
    builder = {
        "transformers-bert-sdpa": lambda: _build_transformers_bert("sdpa", **shapes),
        "transformers-bert-eager": lambda: _build_transformers_bert("eager", **shapes),
        "transformers-roformer": lambda: _build_transformers_roformer(**shapes),
        "junnyu-roformer-v2": lambda: _build_junnyu_roformer_v2(**shapes),
        "junnyu-gau-alpha": lambda: _build_junnyu_gau_alpha(**shapes),
        "bert4torch-roformer-v2": lambda: _build_bert4torch("roformer_v2", **shapes),
        "bert4torch-gau-alpha": lambda: _build_bert4torch("gau_alpha", **shapes),
    }[name]
    model = builder()
    model.train()
    return model


def _build_transformers_bert(attn_implementation: str, *, vocab_size, hidden_size, num_layers, num_heads,
                             intermediate_size, hidden_dropout, attention_dropout, max_len, **_):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=intermediate_size,
                        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout,
                        max_position_embeddings=max_len)
    model = BertForMaskedLM._from_config(config, attn_implementation=attn_implementation)
    if model.config._attn_implementation != attn_implementation:
        raise PeerUnavailable(f"transformers built BERT with {model.config._attn_implementation!r} attention, "
                              f"not {attn_implementation!r}")
    return model


def _build_transformers_roformer(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                                 hidden_dropout, attention_dropout, max_len, **_):
    from transformers import RoFormerConfig, RoFormerForMaskedLM

    config = RoFormerConfig(vocab_size=vocab_size, embedding_size=hidden_size, hidden_size=hidden_size,
                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                            intermediate_size=intermediate_size, hidden_dropout_prob=hidden_dropout,
                            attention_probs_dropout_prob=attention_dropout, max_position_embeddings=max_len)
    return RoFormerForMaskedLM._from_config(config, attn_implementation="eager")


def _check_tied(decoder: nn.Linear, embedding: nn.Embedding, label: str) -> None:
    if decoder.weight is not embedding.weight:
        raise RuntimeError(f"{label}: the MLM decoder is not tied to the token embedding after the "
                           "transformers-5 tying shim (scripts/benchmarks/peers.py)")


def _build_junnyu_roformer_v2(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                              hidden_dropout, attention_dropout, max_len, **_):
    roformer = _junnyu_roformer()
    if hidden_size % num_heads:
        raise ValueError(f"JunnYu's RoFormer needs hidden_size divisible by num_heads ({hidden_size}, {num_heads})")
    # the settings of JunnYu's own V2 configs (junnyu/roformer_v2_chinese_char_*): norm_type other than
    # "layer_norm" selects the parameter-free Norm and the bias-free tied MLM head
    config = roformer.RoFormerConfig(
        vocab_size=vocab_size, embedding_size=hidden_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size, hidden_act="relu",
        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_len, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
        rotary_value=False, use_bias=False, norm_type="rms_norm", use_cache=False,
    )
    with _QuietTransformers():
        model = roformer.RoFormerForMaskedLM(config)
    _check_tied(model.cls.predictions.decoder, model.roformer.embeddings.word_embeddings,
                "junnyu-roformer-v2")
    return model


def _build_junnyu_gau_alpha(*, vocab_size, hidden_size, num_layers, gau_expansion, gau_key_size,
                            hidden_dropout, attention_dropout, max_len, **_):
    gau_alpha = _junnyu_gau_alpha()
    config = gau_alpha.GAUAlphaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        intermediate_size=gau_expansion, attention_key_size=gau_key_size, hidden_act="swish",
        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_len, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
        use_bias=False, normalization="softmax_plus", attention_scale=True,
    )
    with _QuietTransformers():
        model = gau_alpha.GAUAlphaForMaskedLM(config)
    _check_tied(model.cls.predictions.decoder, model.gau_alpha.embeddings.word_embeddings,
                "junnyu-gau-alpha")
    return model


def _build_bert4torch(model_name: str, *, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                      gau_expansion, gau_key_size, hidden_dropout, attention_dropout, max_len):
    b4t = _bert4torch()
    config = {
        "model": model_name, "vocab_size": vocab_size, "hidden_size": hidden_size, "embedding_size": hidden_size,
        "num_hidden_layers": num_layers, "hidden_dropout_prob": hidden_dropout,
        "attention_probs_dropout_prob": attention_dropout, "max_position_embeddings": max_len,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0, "use_bias": False,
        "initializer_range": 0.02, "pos_emb_type": "rotary",
    }
    if model_name == "roformer_v2":
        # rmsnorm is the only mode that computes RoFormerV2's norm (§6, RoFormerV2 item 6)
        config.update(num_attention_heads=num_heads, intermediate_size=intermediate_size, hidden_act="relu",
                      rotary_value=False, layer_norm_mode="rmsnorm")
    else:
        # GatedAttention drops attention probabilities only with is_dropout=True (default False)
        config.update(num_attention_heads=1, intermediate_size=gau_expansion, attention_key_size=gau_key_size,
                      hidden_act="swish", normalization="softmax_plus", is_dropout=attention_dropout > 0)
    with tempfile.TemporaryDirectory(prefix="bert4torch-peer-") as folder:
        path = Path(folder) / "bert4torch_config.json"  # the only file name bert4torch reads (§6)
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        model = b4t.build_transformer_model(config_path=str(path), with_mlm=True, verbose=0)
    if model_name == "gau_alpha" and attention_dropout > 0:
        for layer in model.encoderLayer:
            if not layer.gau.is_dropout:
                raise RuntimeError("bert4torch GAU-α was built without attention dropout (is_dropout=False)")
    return Bert4TorchForMaskedLM(model, vocab_size)


class ParameterFreeRMSNorm(nn.Module):
    """x / √(mean(x²) + ε) with no γ/β: RoFormerV2 / GAU-α's Norm, with bert4torch's norm signature."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return hidden_states * torch.rsqrt(variance + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def fix_bert4torch_gau_alpha(peer_model: nn.Module) -> nn.Module:
    """Repair bert4torch 0.6.2's GAU-α in place: restore the embedding norm that `GAU_alpha.__init__`
    deletes, and replace each GauLayer's mean-subtracting RoformerV2LayerNorm by the RMS norm."""
    model = _unwrap(peer_model)
    if type(model).__name__ != "GAU_alpha":
        raise TypeError(f"expected a bert4torch GAU_alpha model, got {type(model).__name__}")
    eps = float(model.config.get("layer_norm_eps", 1e-12))
    model.embeddings.layerNorm = ParameterFreeRMSNorm(eps)
    for layer in model.encoderLayer:
        layer.attnLayerNorm = ParameterFreeRMSNorm(eps)
    return peer_model


# ----------------------------------------------------------------------------------------- weight copy


def _unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, Bert4TorchForMaskedLM) else model


def _peer_kind(model: nn.Module) -> tuple[str, str]:
    """(format, family) of a peer model: ("junnyu" | "bert4torch", "roformer-v2" | "gau-alpha")."""
    module = type(model).__module__
    name = type(model).__name__
    if module.startswith("roformer.") and name == "RoFormerForMaskedLM":
        if model.config.norm_type == "layer_norm" or model.config.use_bias:
            raise ValueError("this JunnYu RoFormer is v1 (norm_type='layer_norm' or use_bias=True), not RoFormerV2")
        return "junnyu", "roformer-v2"
    if module.startswith("gau_alpha.") and name == "GAUAlphaForMaskedLM":
        return "junnyu", "gau-alpha"
    if module.startswith("bert4torch.") and name == "RoFormerV2":
        return "bert4torch", "roformer-v2"
    if module.startswith("bert4torch.") and name == "GAU_alpha":
        return "bert4torch", "gau-alpha"
    raise TypeError(f"copy_weights_from_zoo supports the JunnYu and bert4torch RoFormerV2 / GAU-α masked-LM "
                    f"peers, not {module}.{name}")


def _check_zoo_config(config, family: str, fmt: str, peer_config) -> None:
    """Refuse zoo settings the peer cannot compute (the copy would then compare different functions)."""
    expected = {"norm_type": "rms", "residual": "post", "use_bias": False, "position_embedding_type": "rope",
                "mlm_head": "tied", "embedding_norm": True, "rope_theta": 10000.0}
    if family == "gau-alpha":
        expected.update(attention_normalization="softmax_plus", softmax_plus_base=512, softmax_plus_min_len=1)
    else:
        expected.update(attention_normalization="softmax")
    for key, value in expected.items():
        if getattr(config, key) != value:
            raise ValueError(f"zoo config.{key}={getattr(config, key)!r}; the {fmt} {family} peer implements only "
                             f"{value!r}")

    def peer(key, default=None):
        return peer_config.get(key, default) if isinstance(peer_config, dict) else getattr(peer_config, key, default)

    # shapes alone do not pin these down (e.g. GAU's i_dense is [2e + s, H] for many (e, s) pairs)
    if family == "roformer-v2":
        same = {"num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
                "hidden_act": config.hidden_act, "rotary_value": False}
        if config.head_size * config.num_attention_heads != config.hidden_size:
            raise ValueError("the peers derive head size = hidden_size / num_attention_heads; the zoo config differs")
    else:
        if config.hidden_act not in ("swish", "silu"):
            raise ValueError(f"GAU-α's i_dense activation is swish; zoo config has {config.hidden_act!r}")
        same = {"intermediate_size": config.intermediate_size, "attention_key_size": config.attention_key_size,
                "normalization": "softmax_plus"}
        if fmt == "junnyu":
            same["attention_scale"] = True
    for key, value in same.items():
        theirs = peer(key, False if key == "rotary_value" else None)
        if theirs != value:
            raise ValueError(f"peer {key}={theirs!r} but the zoo model needs {value!r}")


def _zoo_state(zoo_model: nn.Module) -> dict[str, torch.Tensor]:
    state = zoo_model.state_dict()
    if not any(k.startswith("encoder.") for k in state):
        raise TypeError("copy_weights_from_zoo needs a zoo masked-LM model (RoFormerV2ForMaskedLM / "
                        "GAUAlphaForMaskedLM), whose encoder lives under `encoder.`")
    return state


def _targets(fmt: str, family: str, num_layers: int) -> dict[str, tuple[str, int | None]]:
    """peer parameter name → (zoo parameter name, row or None) (architectures.md §4.1 / §4.2)."""
    if fmt == "junnyu":
        prefix = "roformer." if family == "roformer-v2" else "gau_alpha."
        out = {f"{prefix}embeddings.word_embeddings.weight": ("encoder.embeddings.word_embeddings.weight", None),
               f"{prefix}embeddings.token_type_embeddings.weight":
                   ("encoder.embeddings.token_type_embeddings.weight", None),
               "cls.predictions.decoder.weight": ("encoder.embeddings.word_embeddings.weight", None)}
        for i in range(num_layers):
            theirs, ours = f"{prefix}encoder.layer.{i}.", f"encoder.layers.{i}."
            if family == "roformer-v2":
                pairs = [("attention.self.query", "self_attn.q_proj"), ("attention.self.key", "self_attn.k_proj"),
                         ("attention.self.value", "self_attn.v_proj"), ("attention.output.dense", "self_attn.out_proj"),
                         ("intermediate.dense", "ffn.fc1"), ("output.dense", "ffn.fc2")]
            else:
                pairs = [("gau.i_dense", "gau.i_dense"), ("gau.o_dense", "gau.o_dense"),
                         ("gau.q_scaleoffset", "gau.q_scaleoffset"), ("gau.k_scaleoffset", "gau.k_scaleoffset")]
            out.update({f"{theirs}{a}.weight": (f"{ours}{b}.weight", None) for a, b in pairs})
        return out
    out = {"embeddings.word_embeddings.weight": ("encoder.embeddings.word_embeddings.weight", None),
           "embeddings.segment_embeddings.weight": ("encoder.embeddings.token_type_embeddings.weight", None),
           "mlmDecoder.weight": ("encoder.embeddings.word_embeddings.weight", None)}  # untied copy in bert4torch
    for i in range(num_layers):
        theirs, ours = f"encoderLayer.{i}.", f"encoder.layers.{i}."
        if family == "roformer-v2":
            pairs = [("multiHeadAttention.q", "self_attn.q_proj"), ("multiHeadAttention.k", "self_attn.k_proj"),
                     ("multiHeadAttention.v", "self_attn.v_proj"), ("multiHeadAttention.o", "self_attn.out_proj"),
                     ("feedForward.intermediateDense", "ffn.fc1"), ("feedForward.outputDense", "ffn.fc2")]
            out.update({f"{theirs}{a}.weight": (f"{ours}{b}.weight", None) for a, b in pairs})
        else:
            out[f"{theirs}gau.i_dense.weight"] = (f"{ours}gau.i_dense.weight", None)
            out[f"{theirs}gau.o_dense.weight"] = (f"{ours}gau.o_dense.weight", None)
            out[f"{theirs}gau.offsetscale.gamma#0"] = (f"{ours}gau.q_scaleoffset.weight", 0)  # row 0 = q
            out[f"{theirs}gau.offsetscale.gamma#1"] = (f"{ours}gau.k_scaleoffset.weight", 1)  # row 1 = k
    return out


@torch.no_grad()
def copy_weights_from_zoo(peer_model: nn.Module, zoo_model: nn.Module) -> None:
    """Copy a zoo RoFormerV2ForMaskedLM / GAUAlphaForMaskedLM into the matching JunnYu or bert4torch peer.

    Every peer parameter is written or checked: JunnYu's tied decoder is the embedding itself and its
    RoFormer sinusoid table is not a weight; bert4torch's untied `mlmDecoder` gets a copy of the
    embedding and its rmsnorm-mode norm weights are set to 1 (RoFormerV2 has no norm scale).
    """
    from zoo.families import family_of

    model = _unwrap(peer_model)
    fmt, family = _peer_kind(model)
    config = zoo_model.config
    if family_of(config) != family:
        raise ValueError(f"zoo model is {family_of(config)}, the peer is {family}")
    _check_zoo_config(config, family, fmt, model.config)
    state = _zoo_state(zoo_model)
    params = dict(model.named_parameters(remove_duplicate=False))
    written: set[str] = set()
    for target, (source, row) in _targets(fmt, family, config.num_hidden_layers).items():
        name = target.split("#")[0]
        if name not in params:
            raise KeyError(f"{fmt} {family} peer has no parameter {name!r}: is it built with "
                           f"{config.num_hidden_layers} layers?")
        value = state[source]
        destination = params[name] if row is None else params[name][row]
        if destination.shape != value.shape:
            raise ValueError(f"shape mismatch for {target}: peer {tuple(destination.shape)}, "
                             f"zoo {source} {tuple(value.shape)}")
        destination.copy_(value.to(destination.dtype))
        written.add(name)
    for name, param in params.items():
        if name in written:
            continue
        if fmt == "junnyu" and name.endswith("encoder.embed_positions.weight"):
            continue  # JunnYu's non-trainable sinusoid table
        if fmt == "bert4torch" and re.search(r"[lL]ayer[nN]orm\.weight$", name):
            param.fill_(1.0)  # rmsnorm mode's γ, which RoFormerV2 does not have
            continue
        raise ValueError(f"peer parameter {name!r} has no zoo counterpart (unexpected peer structure)")
    if fmt == "junnyu":
        decoder = model.cls.predictions.decoder.weight
        embedding = model.get_input_embeddings().weight
        if decoder is not embedding and not torch.equal(decoder, embedding):
            raise RuntimeError("JunnYu decoder differs from the token embedding after the copy")


# ------------------------------------------------------------------------------------------------ check


def _zoo_model(family: str, eps: float | None = None, seed: int = 0):
    import zoo
    from zoo.families import model_class

    torch.manual_seed(seed)
    common = dict(vocab_size=CHECK_SHAPES["vocab_size"], hidden_size=CHECK_SHAPES["hidden_size"],
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    if eps is not None:
        common["layer_norm_eps"] = eps
    if family == "gau-alpha":
        config = zoo.GAUAlphaConfig(num_hidden_layers=CHECK_SHAPES["num_layers"],
                                    intermediate_size=CHECK_SHAPES["gau_expansion"],
                                    attention_key_size=CHECK_SHAPES["gau_key_size"], **common)
    else:
        config = zoo.RoFormerV2Config(num_hidden_layers=CHECK_SHAPES["num_layers"],
                                      num_attention_heads=CHECK_SHAPES["num_heads"],
                                      intermediate_size=CHECK_SHAPES["intermediate_size"], **common)
    model = model_class(config, "masked-lm")(config)
    with torch.no_grad():
        # bert4keras init is deliberately small (L^(-1/order)); make the check sensitive: sharper attention,
        # segment row 0 non-trivial, and q/k scales that differ from 1 and from each other
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if name.endswith("scaleoffset.weight"):
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))
            elif "proj" in name or "dense" in name:
                param.mul_(3.0)
    return model.double().eval()


CHECK_SHAPES = dict(vocab_size=500, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                    gau_expansion=96, gau_key_size=32, hidden_dropout=0.1, attention_dropout=0.1, max_len=2048)


def _check_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = (40, 23, 9)  # 9 < 16: the softmax_plus short-sequence regime
    ids = torch.randint(1, CHECK_SHAPES["vocab_size"], (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = ids * mask  # padding id 0
    return ids, mask


def _device_of(model: nn.Module) -> torch.device:
    from zoo.runtime import module_device

    return module_device(model)


def compare_logits(peer_name: str, peer_model: nn.Module, zoo_model: nn.Module) -> dict:
    """fp64, eval: max |Δlogits| over the real (unpadded) positions, and relative to max |logits|.
    Runs on the zoo model's device (the peer is moved there)."""
    device = _device_of(zoo_model)
    ids, mask = (t.to(device) for t in _check_inputs())
    peer_model.to(device).double().eval()
    with torch.no_grad():
        ours = zoo_model(input_ids=ids, attention_mask=mask).logits
        theirs = peer_model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    delta = (ours[valid] - theirs[valid]).abs().max().item()
    scale = ours[valid].abs().max().item()
    return {"peer": peer_name, "max_abs": delta, "max_logit": scale, "relative": delta / scale}


@torch.no_grad()
def float64_tables(peer_model: nn.Module) -> nn.Module:
    """Diagnostic for --check: recompute in float64 what the peers keep in float32 even inside a
    `.double()` model (JunnYu's sinusoid tables; bert4torch's RoPE angles, its RMSNorm, which casts to
    float32, and its softmax_plus length factor), so that what remains of the difference to the zoo model
    is the ε choice and rounding alone. Fixes no bug: bert4torch GAU-α's norms stay as they are."""
    model = _unwrap(peer_model)
    fmt, family = _peer_kind(model)
    device = _device_of(model)  # every table below is computed there, where the model reads it
    if fmt == "junnyu" and family == "roformer-v2":
        table = model.roformer.encoder.embed_positions.weight  # [n, d]: sin(angles of even j) | cos(odd j)
        n, d = table.shape
        j = torch.arange(d, dtype=torch.float64, device=device)
        exponent = 2 * torch.div(j, 2, rounding_mode="floor") / d
        angles = torch.arange(n, dtype=torch.float64, device=device)[:, None] / torch.pow(10000.0, exponent)
        table.copy_(torch.cat([torch.sin(angles[:, 0::2]), torch.cos(angles[:, 1::2])], dim=-1).to(table.dtype))
    elif fmt == "junnyu":
        encoder = model.gau_alpha.encoder
        n, half = encoder.sin_pos.shape[1:]
        inv_freq = torch.pow(10000.0, -2 * torch.arange(half, dtype=torch.float64, device=device) / (2 * half))
        angles = torch.arange(n, dtype=torch.float64, device=device)[None, :, None] * inv_freq
        dtype = encoder.sin_pos.dtype
        encoder.sin_pos, encoder.cos_pos = angles.sin().to(dtype), angles.cos().to(dtype)
    else:
        b4t = _bert4torch()
        rms = b4t.layer_norm.LAYER_NORM_MAP["rmsnorm"]
        rope_class = importlib.import_module("bert4torch.layers.position_encoding").RopePositionEncoding
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is rms:
                    if not torch.all(child.weight == 1):
                        raise ValueError("bert4torch RMSNorm weight is not 1: not replaceable by the parameter-free norm")
                    setattr(parent, child_name, ParameterFreeRMSNorm(child.eps))
                elif isinstance(child, rope_class):
                    if child.rope_rank != "adjacent" or child.scaling_factor not in (None, 1, 1.0):
                        raise ValueError("only the plain interleaved RoPE is recomputed in float64")
                    d, base = child.embedding_size, child.rope_theta
                    child.inv_freq = torch.pow(float(base), -torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)

                    def compute_cos_sin(self, inv_freq_expanded, position_ids, device_type, dtype):
                        inv = inv_freq_expanded.double().expand(*position_ids.shape[:-1], -1, 1)
                        freqs = (inv @ position_ids.unsqueeze(-2).double()).transpose(-2, -1)
                        emb = freqs.repeat_interleave(2, dim=-1)
                        return emb.cos().to(dtype), emb.sin().to(dtype)

                    child._compute_cos_sin = types.MethodType(compute_cos_sin, child)
                elif type(child).__name__ == "GatedAttention":
                    # softmax_plus: the shipped code counts the keys with `.float()` and takes log(512) of a
                    # float32 tensor; the same formula with both in the scores' dtype
                    def attention_normalize(self, a, dim=-1, method="softmax"):
                        if method == "softmax":
                            return F.softmax(a, dim=dim)
                        n = (a > -1e11).to(a.dtype).sum(dim, keepdim=True).clamp(min=1)
                        if method == "squared_relu":
                            return F.relu(a) ** 2 / n
                        if method == "softmax_plus":
                            return F.softmax(a * torch.log(n) / torch.log(torch.tensor(512.0, dtype=a.dtype, device=a.device)),
                                             dim=dim)
                        return a

                    child.attention_normalize = types.MethodType(attention_normalize, child)
    return peer_model


def _cpu_runtime():
    from zoo.runtime import Runtime

    return Runtime(torch.device("cpu"))


def _smoke(name: str, family: str, runtime=None) -> str:
    """Train step (loss finite, gradients reach the embedding) at max_len=2048, bf16 autocast forward too,
    on the runtime's device (default: the CPU)."""
    runtime = runtime or _cpu_runtime()
    bf16 = dataclasses.replace(runtime, compute_dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_peer(name, family, **CHECK_SHAPES).to(runtime.device)
    ids = torch.randint(1, CHECK_SHAPES["vocab_size"], (2, 64))  # drawn on the CPU: the same ids on every device
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    ids, labels = runtime.to_device((ids, labels))
    out = model(input_ids=ids, labels=labels)
    loss = out.loss if hasattr(out, "loss") else out[0]
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name}: non-finite loss {loss}")
    loss.backward()
    embedding = _unwrap(model).get_input_embeddings().weight
    if embedding.grad is None or not torch.isfinite(embedding.grad).all():
        raise RuntimeError(f"{name}: no finite gradient on the token embedding")
    with bf16.autocast():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels)
        (out.loss if hasattr(out, "loss") else out[0]).backward()
    long_ids = runtime.to_device(torch.randint(1, CHECK_SHAPES["vocab_size"], (1, 2048)))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=long_ids).logits
    if logits.shape != (1, 2048, CHECK_SHAPES["vocab_size"]):
        raise RuntimeError(f"{name}: logits of shape {tuple(logits.shape)} at S=2048")
    model_params = sum(p.numel() for p in model.parameters())
    inner = _unwrap(model)
    decoder = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is None and hasattr(inner, "mlmDecoder"):
        decoder = inner.mlmDecoder
    tied = decoder is not None and decoder.weight is inner.get_input_embeddings().weight
    return f"loss {loss.item():.3f}, {model_params} params, decoder {'tied' if tied else 'untied'}, S=2048 ok"


def _dropout_is_applied(name: str, family: str, runtime=None) -> str:
    """Train-mode forwards differ with attention dropout only (0.5), and agree with all dropout 0."""
    runtime = runtime or _cpu_runtime()
    ids = runtime.to_device(torch.randint(1, CHECK_SHAPES["vocab_size"], (2, 32)))
    results = []
    for attention_dropout in (0.0, 0.5):
        shapes = dict(CHECK_SHAPES, hidden_dropout=0.0, attention_dropout=attention_dropout)
        torch.manual_seed(0)
        model = build_peer(name, family, **shapes).to(runtime.device)
        with torch.no_grad():
            a = model(input_ids=ids).logits
            b = model(input_ids=ids).logits
        results.append((a - b).abs().max().item())
    if results[0] != 0.0:
        raise RuntimeError(f"{name}: forwards differ with all dropout 0 ({results[0]:.3g})")
    if results[1] == 0.0:
        raise RuntimeError(f"{name}: attention dropout 0.5 changes nothing: it is not applied")
    return f"no dropout: identical; attention dropout 0.5 only: max |Δ| {results[1]:.3g}"


def run_check(runtime=None) -> int:
    """Every check on the runtime's device (default: the CPU); the fp64 comparisons too."""
    import zoo  # noqa: F401  (registers the families)

    runtime = runtime or _cpu_runtime()
    failures = 0
    if runtime.is_cuda:
        print(f"device: {runtime.device} ({torch.cuda.get_device_name(runtime.device)})\n")
    print("== availability")
    available = available_peers()
    for name, reason in available.items():
        print(f"  {name:24s} {'ok' if reason is None else 'UNAVAILABLE: ' + reason}")

    print("\n== build + train step (hidden 64, max_len 2048; fp32 and bf16 autocast), attention-dropout check")
    for name, reason in available.items():
        if reason is not None:
            continue
        family = PEER_FAMILIES[name] or "roformer-v2"
        try:
            print(f"  {name:24s} {_smoke(name, family, runtime)}")
            print(f"  {'':24s} {_dropout_is_applied(name, family, runtime)}")
        except Exception as error:  # report and go on with the other peers
            failures += 1
            print(f"  {name:24s} FAILED: {type(error).__name__}: {error}")

    print("\n== fp64 eval logits vs the zoo model (same weights; batch of 3, lengths 40/23/9, padded with id 0)")
    print("   zoo ε = 1e-7 is our default (bert4keras K.epsilon()); ε = 1e-12 is the peers' value; 'fp64 internals'")
    print("   (diagnostic): what the peer computes in float32 inside an fp64 model (RoPE tables; bert4torch's")
    print("   RMSNorm and softmax_plus log n) recomputed in float64 by float64_tables()")
    rows = []
    for name in ("junnyu-roformer-v2", "junnyu-gau-alpha", "bert4torch-roformer-v2", "bert4torch-gau-alpha"):
        if available.get(name) is not None:
            print(f"  {name:34s} skipped: {available[name]}")
            continue
        family = PEER_FAMILIES[name]
        variants = [(name, None)]
        if name == "bert4torch-gau-alpha":
            variants.append((name + " (fixed)", fix_bert4torch_gau_alpha))
        for label, fix in variants:
            for eps, tables64 in ((None, False), (1e-12, False), (1e-12, True)):
                try:
                    zoo_model = _zoo_model(family, eps)
                    peer = build_peer(name, family, **CHECK_SHAPES)
                    if fix is not None:
                        fix(peer)
                    copy_weights_from_zoo(peer, zoo_model)
                    zoo_model.to(runtime.device)
                    peer.to(runtime.device).double()
                    if tables64:
                        float64_tables(peer)
                    result = compare_logits(label, peer, zoo_model)
                    setting = "zoo ε 1e-7 " if eps is None else "zoo ε 1e-12"
                    setting += ", fp64 internals" if tables64 else ""
                    rows.append(dict(result, setting=setting))
                    print(f"  {label:30s} {setting:28s} max|Δlogits| {result['max_abs']:.3e}  "
                          f"(max|logits| {result['max_logit']:.3f}, relative {result['relative']:.3e})")
                except Exception as error:
                    failures += 1
                    print(f"  {label:34s} FAILED: {type(error).__name__}: {error}")
    print("\n== GAU-α, a sequence with a single real token (n = 1) padded to 4; ε matched, fp64 internals")
    print("   softmax_plus scales the logits by log(n)/log 512 = 0 there: the ports multiply their finite mask")
    print("   by 0 too and so attend uniformly over the padding; bert4keras/zoo keep the padding masked")
    ids = torch.tensor([[5, 0, 0, 0], [5, 7, 0, 0]], device=runtime.device)
    mask = (ids != 0).long()
    for name, fix in (("junnyu-gau-alpha", None), ("bert4torch-gau-alpha", fix_bert4torch_gau_alpha)):
        if available.get(name) is not None:
            continue
        try:
            zoo_model = _zoo_model("gau-alpha", 1e-12)
            peer = build_peer(name, "gau-alpha", **CHECK_SHAPES)
            if fix is not None:
                fix(peer)
            copy_weights_from_zoo(peer, zoo_model)
            zoo_model.to(runtime.device)
            float64_tables(peer.to(runtime.device).double().eval())
            with torch.no_grad():
                ours = zoo_model(input_ids=ids, attention_mask=mask).logits
                theirs = peer(input_ids=ids, attention_mask=mask).logits
            label = name + (" (fixed)" if fix is not None else "")
            print(f"  {label:30s} n = 1: max|Δlogits| {(ours[0, :1] - theirs[0, :1]).abs().max().item():.3e}   "
                  f"n = 2: {(ours[1, :2] - theirs[1, :2]).abs().max().item():.3e}")
        except Exception as error:
            failures += 1
            print(f"  {name:30s} FAILED: {type(error).__name__}: {error}")
    print(f"\n{'all checks passed' if not failures else f'{failures} check(s) failed'}")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="availability, smoke tests and fp64 logits vs zoo")
    parser.add_argument("--list", action="store_true", help="print the peers and whether they can be built here")
    parser.add_argument("--device", default="auto",
                        help="where --check runs the models: cpu, cuda, cuda:N or auto (default: CUDA when present)")
    args = parser.parse_args(argv)
    if args.check:
        from zoo.runtime import DeviceError, Runtime

        try:
            runtime = Runtime.resolve(args.device)
        except DeviceError as error:
            sys.exit(f"peers.py: {error}")
        return run_check(runtime)
    for name, reason in available_peers().items():
        print(f"{name:24s} {'ok' if reason is None else reason}")
    return 0


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    sys.exit(main())
