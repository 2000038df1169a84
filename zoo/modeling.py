"""The encoder core and its task heads, shared by every family.

Embeddings → N × EncoderLayer → (final norm for pre-norm) → head. A family's model classes are
these classes with its config class bound (zoo/families/tasks.py makes them); initialisation is
zoo/initialization.py's, by the role each dense layer declares where it is built.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .attention import AttentionContext, AttentionMask, log_length_scale
from .casting import at_least_fp32
from .configuration import ATTN_IMPLEMENTATIONS, EncoderConfig
from .dropout import Dropout
from .heads import EfficientGlobalPointer, GlobalPointer, MaskedLMHead, global_pointer_loss
from .initialization import dense, init_dense, init_embedding
from .layers import EncoderLayer
from .norms import LayerNorm, ScaleOffset, make_norm
from .projections import runs_unwatched
from .rope import RotaryEmbedding


class Embeddings(nn.Module):
    """e = E_tok[ids] + E_seg[seg] (+ E_pos[pos] if learned); then Dropout → Norm (bert4keras order)
    or Norm → Dropout (torchscale order). No absolute positions with RoPE (§1.1)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "learned"
            else None
        )
        self.norm = make_norm(config, eps=config.embedding_norm_eps) if config.embedding_norm else None
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.dropout_first = config.dropout_before_embedding_norm

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        segments = self.token_type_embeddings
        if token_type_ids is None and type(segments) is nn.Embedding and runs_unwatched(segments):
            # every Zhuiyi script passes all-zero segment ids (§1.3): add row 0 without a gather
            embeddings = inputs_embeds + segments.weight[0]
        elif token_type_ids is None:  # through the module, whose hooks (ZeRO-3's gather) must see it run
            embeddings = inputs_embeds + segments(torch.zeros((), dtype=torch.long, device=inputs_embeds.device))
        else:
            embeddings = inputs_embeds + segments(token_type_ids)
        if self.position_embeddings is not None:
            table = self.position_embeddings.num_embeddings
            if position_ids is None:  # 0 … S − 1: checked on the host (reading the largest id back would wait for a GPU)
                if embeddings.shape[1] > table:
                    raise ValueError(f"a {embeddings.shape[1]}-token input is longer than the learned position "
                                     f"embeddings' max_position_embeddings={table}")
                position_ids = torch.arange(embeddings.shape[1], device=embeddings.device)[None]
            else:
                message = f"learned position embeddings take integer position_ids below max_position_embeddings={table}"
                if position_ids.is_floating_point():
                    raise ValueError(message)
                if torch.compiler.is_compiling():  # checked in the graph: reading the ids back would break it
                    torch._assert_async(position_ids.max() < table, message)
                elif int(position_ids.max()) >= table:
                    raise ValueError(message)
            embeddings = embeddings + self.position_embeddings(position_ids)
        if self.norm is None:
            return self.dropout(embeddings)
        if self.dropout_first:
            return self.norm(self.dropout(embeddings))
        return self.dropout(self.norm(embeddings))


class ZooPreTrainedModel(PreTrainedModel):
    """Base of every zoo model: initialisation, gradient checkpointing, attention backend."""

    config_class = EncoderConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer"]
    _supports_sdpa = True  # attn_implementation "sdpa" / "eager" map onto `attention_backend`

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str | None:
        """transformers' `attn_implementation` → our kernels: "sdpa" (torch's fused attention), "eager"
        (the explicit two-matmul kernel); None (nothing requested) leaves `config.attention_backend`
        in charge, "auto" by default. Flash/flex kernels take one q/k/v head size, which GAU's wide
        value head is not; "sdpa" reaches CUDA's flash kernels for every family."""
        if requested_attention is None or requested_attention in ATTN_IMPLEMENTATIONS:
            return requested_attention
        raise ValueError(
            f"{type(self).__name__} does not support attn_implementation={requested_attention!r}: use "
            f"{' or '.join(map(repr, ATTN_IMPLEMENTATIONS))} (or leave it unset for config.attention_backend, "
            f"now {self.config.attention_backend!r})"
        )

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True  # the attention context reads the choice from the config at every forward

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        realign_parameters(model)
        return loaded

    # -- initialisation (runs inside post_init, and on missing keys at load): zoo/initialization.py
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init_dense(module, self.config)  # by the role the layer declared where it was built
        elif isinstance(module, nn.Embedding):
            init_embedding(module.weight, self.config)
        elif isinstance(module, (LayerNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ScaleOffset):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value


def realign_parameters(model: nn.Module, alignment: int = 64) -> None:
    """Copy parameters and buffers that sit at unaligned addresses into fresh (aligned) memory.

    safetensors files are memory-mapped at an offset set by their header, so loaded CPU tensors are
    often 8-byte aligned only; BLAS then takes slower code paths whose rounding also differs from
    the aligned ones, so a reloaded model would not reproduce the saved model's outputs bit for bit.
    """
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on (embeddings stay fp32 under autocast,
    but q/k/v come out of the projections in the autocast dtype), else the hidden states'."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class EncoderModel(ZooPreTrainedModel):
    """The bare encoder: returns the last hidden states (no pooler, §1.1)."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = make_norm(config) if config.residual == "pre" else None
        self.rotary = RotaryEmbedding(config.rope_dim, config.rope_theta) if config.position_embedding_type == "rope" else None
        self.gradient_checkpointing = False
        self.post_init()

    def attention_context(
        self,
        batch: int,
        seq_len: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        position_variant=None,
    ) -> AttentionContext:
        """Masks, RoPE tables and softmax_plus row scales for one forward pass.

        `position_variant` (a zoo.positions.PositionVariant) builds the context instead, for
        inference-time extrapolation variants (NTK, windows, ReRoPE, log n†, ...).
        """
        config = self.config
        key_valid = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, seq_len):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, seq_len)}"
                )
            # An all-ones mask is dropped (the kernels then skip the bias); under torch.compile that test
            # would read a value back from the tensor and break the graph, and a kept mask is the same function.
            if torch.compiler.is_compiling() or not bool(attention_mask.all()):
                key_valid = attention_mask.bool()
        if position_variant is not None:
            if not hasattr(position_variant, "context"):
                raise TypeError(
                    f"position_variant must be a zoo.positions.PositionVariant, got {type(position_variant).__name__}: "
                    "build one with zoo.positions.variant(name, train_length=N)"
                )
            return position_variant.context(self, key_valid, seq_len, position_ids, dtype, device)
        mask = AttentionMask(key_valid=key_valid)
        cos = sin = None
        if self.rotary is not None:
            rope_positions = position_ids if self.config.position_embedding_type == "rope" else None
            if rope_positions is not None and rope_positions.dim() == 1:
                rope_positions = rope_positions[None]
            cos, sin = self.rotary(seq_len, dtype, device, position_ids=rope_positions)
        row_scale = None
        if config.attention_normalization == "softmax_plus":
            visible = mask.visible_keys(seq_len, seq_len, device)
            row_scale = log_length_scale(visible, config.softmax_plus_base, config.softmax_plus_min_len)
        return AttentionContext(mask=mask, cos=cos, sin=sin, row_scale=row_scale,
                                backend=config.active_attention_backend)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        attention_context: AttentionContext | None = None,
        position_variant=None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """Inputs as in transformers; `position_ids` may be any real numbers (RoPE, no cap);
        `attention_context` replaces the default masks/tables; `position_variant` (zoo.positions)
        chooses an inference-time position/attention variant for this call."""
        if kwargs:  # a misspelt option must not be ignored silently
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        batch, seq_len = hidden.shape[:2]
        if attention_context is not None and position_variant is not None:
            raise ValueError("pass attention_context or position_variant, not both")
        if attention_context is None:
            attention_context = self.attention_context(
                batch, seq_len, attention_mask, position_ids, compute_dtype(hidden), hidden.device, position_variant
            )
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden, probs = layer(hidden, attention_context, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attentions += (probs,)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
            if output_hidden_states:
                all_hidden = all_hidden[:-1] + (hidden,)
        output = BaseModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attentions)
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------- heads


class _EncoderHeadModel(ZooPreTrainedModel):
    """A task model: `self.encoder` plus a head; shares the input plumbing."""

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                output_attentions, output_hidden_states, **kwargs) -> BaseModelOutput:
        return self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )

    def _classifier_dropout(self) -> float:
        p = self.config.classifier_dropout
        return self.config.hidden_dropout_prob if p is None else p

    @staticmethod
    def _finish(output: ModelOutput, return_dict: bool | None, config) -> ModelOutput | tuple:
        return_dict = return_dict if return_dict is not None else config.return_dict
        return output if return_dict else output.to_tuple()


class EncoderForMaskedLM(_EncoderHeadModel):
    """Masked LM: logits = Dropout(h) · E_tokᵀ (tied, no bias; §1.1).

    `masked_positions_only=True` with `labels` computes logits only where labels ≠ −100
    (logits then have shape [n_masked, V]): the training fast path (ecosystem.md §6.1). The
    collator's `masked_positions` (the flat indices of those labels in [batch × seq], made on the
    host) select them without the device→host wait a boolean selection costs on a GPU, and without the
    graph break it costs under `torch.compile` (a selection whose length depends on the values).
    """

    _tied_weights_keys = {"lm_head.decoder.weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.encoder = EncoderModel(config)
        self.lm_head = MaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head.decoder = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, masked_positions_only: bool = False, masked_positions=None, **kwargs):
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, **kwargs)
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None and masked_positions_only:
            if masked_positions is None:
                selected = labels != -100
                hidden, targets = hidden[selected], labels[selected]
            else:
                hidden = hidden.flatten(0, 1).index_select(0, masked_positions)
                targets = labels.flatten().index_select(0, masked_positions)
            logits = self.lm_head(hidden)
            loss = F.cross_entropy(at_least_fp32(logits), targets)
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = F.cross_entropy(at_least_fp32(logits).view(-1, logits.shape[-1]), labels.view(-1))
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                attentions=outputs.attentions)
        return self._finish(output, return_dict, self.config)


class _DenseHeadModel(_EncoderHeadModel, metaclass=abc.ABCMeta):
    """encoder → Dropout → Dense(h → `num_outputs`) on the features `_features` picks: the classification
    heads. Subclasses say which features, which loss and which output class."""

    output_class: type[ModelOutput]

    def __init__(self, config: EncoderConfig, num_outputs: int):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = EncoderModel(config)
        self.dropout = Dropout(self._classifier_dropout())
        self.classifier = dense(config.hidden_size, num_outputs, role="head")
        self.post_init()

    @abc.abstractmethod
    def _features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The features the classifier reads from the last hidden states (each subclass says which)."""

    @abc.abstractmethod
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` against `labels` (each subclass says which)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, **kwargs)
        logits = self.classifier(self.dropout(self._features(outputs.last_hidden_state)))
        loss = self._loss(logits, labels) if labels is not None else None
        output = self.output_class(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
        return self._finish(output, return_dict, self.config)


class EncoderForSequenceClassification(_DenseHeadModel):
    """First-token classification: Dense(Dropout(h[:, 0])) (the CLUE recipe, §1.6)."""

    output_class = SequenceClassifierOutput

    def __init__(self, config: EncoderConfig):
        super().__init__(config, config.num_labels)

    def _features(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.config, logits, labels)


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss by `config.problem_type`, inferred as transformers does when unset."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    logits = at_least_fp32(logits)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class EncoderForTokenClassification(_DenseHeadModel):
    """Per-token classification: Dense(Dropout(h)); labels −100 are ignored."""

    output_class = TokenClassifierOutput

    def __init__(self, config: EncoderConfig):
        super().__init__(config, config.num_labels)

    def _features(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_fp32(logits).view(-1, self.num_labels), labels.view(-1))


class EncoderForQuestionAnswering(_EncoderHeadModel):
    """Span extraction: start and end logits from one Dense(h) → 2."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.encoder = EncoderModel(config)
        self.qa_outputs = dense(config.hidden_size, 2, role="head")
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, **kwargs)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        if attention_mask is not None:
            start_logits = start_logits.masked_fill(attention_mask == 0, torch.finfo(start_logits.dtype).min)
            end_logits = end_logits.masked_fill(attention_mask == 0, torch.finfo(end_logits.dtype).min)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, ignored)
            end = end_positions.view(-1).clamp(0, ignored)
            loss = (
                F.cross_entropy(at_least_fp32(start_logits), start, ignore_index=ignored)
                + F.cross_entropy(at_least_fp32(end_logits), end, ignore_index=ignored)
            ) / 2
        output = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return self._finish(output, return_dict, self.config)


class EncoderForMultipleChoice(_EncoderHeadModel):
    """Multiple choice: inputs [B, C, S]; each choice scored by Dense(Dropout(h[:, 0])) → 1.

    An `attention_mask` row of zeros marks a padded choice (C³ has 2–4 choices): it gets −∞.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.encoder = EncoderModel(config)
        self.dropout = Dropout(self._classifier_dropout())
        self.classifier = dense(config.hidden_size, 1, role="head")
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        reference = input_ids if input_ids is not None else inputs_embeds
        batch, choices = reference.shape[:2]

        def flat(t):
            return None if t is None else t.reshape(batch * choices, *t.shape[2:])

        mask = flat(attention_mask)
        padded_choice = None
        if mask is not None:
            padded_choice = mask.sum(-1) == 0
            mask = mask.clone()
            mask[padded_choice, 0] = 1  # keep the row computable; its score is masked below
        outputs = self._encode(flat(input_ids), mask, flat(token_type_ids), flat(position_ids),
                               flat(inputs_embeds), output_attentions, output_hidden_states, **kwargs)
        scores = self.classifier(self.dropout(outputs.last_hidden_state[:, 0])).view(batch * choices)
        if padded_choice is not None:
            scores = scores.masked_fill(padded_choice, torch.finfo(scores.dtype).min)
        logits = scores.view(batch, choices)
        loss = F.cross_entropy(at_least_fp32(logits), labels) if labels is not None else None
        output = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions)
        return self._finish(output, return_dict, self.config)


@dataclass
class GlobalPointerOutput(ModelOutput):
    """logits [B, num_labels, S, S]: score of the span (start i, end j) for each entity type."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class EncoderForGlobalPointer(_EncoderHeadModel):
    """Entity-span extraction with (Efficient) GlobalPointer; one head per label (`num_labels`).

    `labels` [B, num_labels, S, S] are 0/1 span indicators; the loss is Su's multi-label CE.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.encoder = EncoderModel(config)
        head = EfficientGlobalPointer if config.global_pointer_efficient else GlobalPointer
        self.global_pointer = head(config.hidden_size, config.num_labels, config.global_pointer_head_size,
                                   use_bias=config.global_pointer_use_bias)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, **kwargs)
        logits = self.global_pointer(outputs.last_hidden_state, attention_mask)
        loss = global_pointer_loss(labels, logits) if labels is not None else None
        output = GlobalPointerOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)
        return self._finish(output, return_dict, self.config)
