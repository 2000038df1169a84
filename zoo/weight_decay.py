"""Which parameters are weight-decayed: one rule for pretraining (pretrain/optim.py) and CLUE
fine-tuning (evaluate/clue/finetune.py).

The published recipes train RoFormerV2 and GAU-α with bert4keras's LAMB and
`exclude_from_weight_decay=['Norm', 'bias']` (architectures.md §1.6, §2.6): the parameters of the
norm layers and the biases do not decay; every other weight does, the embeddings included (§1.3:
the unused segment row "was only weight-decayed"). GAU-α's q/k scales γ_q, γ_k (`q_scaleoffset`,
`k_scaleoffset`) are attention weights, not norm weights (§4), so they decay; the ScaleOffset's
offset β, present only with `use_bias`, is that layer's bias and does not. DeepNet's LayerNorm γ, β
and biases do not decay either (the DeepSpeed BERT recipe, ecosystem.md §1.1). The rule goes by the
module a parameter belongs to, not by its name, so a head's LayerNorm (`lm_head.transform.2`) counts
as a norm whatever it is called.
"""

from __future__ import annotations

from torch import nn

from .norms import RMSNorm

NORM_TYPES = (nn.LayerNorm, RMSNorm)  # zoo's LayerNorm subclasses nn.LayerNorm; the RMS norm has no parameters


def decays(module: nn.Module, name: str) -> bool:
    """Whether the parameter `name` held by `module` itself (not by a submodule) is weight-decayed."""
    return not (isinstance(module, NORM_TYPES) or name == "bias")


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: the trainable parameters that decay (with `weight_decay`), then, when
    there are any, those that do not (weight_decay 0). Each parameter once (tied weights are shared),
    in `model.named_parameters()` order."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (decay if decays(module, name) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
