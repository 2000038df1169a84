"""Selective recomputation: keep what costs FLOPs to make, recompute what costs only a pass over memory.

`recompute_elementwise(fn, *args)` runs `fn` under torch's selective activation checkpointing
(`torch.utils.checkpoint` with a `create_selective_checkpoint_contexts` policy). The backward pass
runs `fn` again, except that every operation that is not elementwise (matrix products, the attention
kernels with the dropout they draw inside, anything unknown) hands back the output it made in the
forward pass. What stays in memory between the passes is therefore `fn`'s inputs and the outputs of
its expensive operations; the elementwise chains between them (activations, casts, scales, RoPE,
gates) and the views of them are made again. Random draws are made again too, from the random state
the checkpoint restores first, so the function computed, and its gradients, are the same as without
recomputation.

The product that makes `fn`'s output (GAU's W_o, the FFN's W_2), run under `recomputed_product()`, is not
kept either: nothing in `fn` reads its output again, and the backward pass's run of `fn` stops (torch's
early stop) once it has made again the tensors the backward formulas saved, which for that product are
its inputs, so the product itself is not run twice. The explicit attention's q·kᵀ is marked too: it is
made again in that run (zoo/kernels/triton_softmax_attention.py), not kept.

With `config.recompute_elementwise` a GAU-α layer keeps the gate's pre-activation x·W_i and the
attention output, instead of also keeping swish's output, q and k after scale, offset and RoPE,
u ⊙ A·v, the output projection's output and the bf16 copy of x (x itself is kept by the residual step
before, zoo/layers.py `recompute_block`); a GELU FFN (DeepNet) keeps W_1·x instead of GELU's output and
W_2's (BENCHMARKS.md, activation memory).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from torch.utils.weak import WeakIdKeyDictionary

# Made again in the backward pass besides ATen's pointwise and view operations: casts, copies (a
# reshape that cannot be a view is a clone and an _unsafe_view), the splits that are not tagged as
# views, stacking (the PyTorch RoPE), random draws, allocations, and the kernels' RoPE.
RECOMPUTED = {
    torch.ops.aten._to_copy.default,
    torch.ops.aten.clone.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.split_with_sizes.default,
    torch.ops.aten.split.Tensor,
    torch.ops.aten.stack.default,
    # random draws (made again from the restored random state: the same values); not the attention
    # kernels that draw their dropout inside, which are tagged random too and are kept
    torch.ops.aten.rand.default,
    torch.ops.aten.rand_like.default,
    torch.ops.aten.randint.low,
    torch.ops.aten.randint.default,
    torch.ops.aten.bernoulli.p,
    torch.ops.aten.bernoulli.default,
    torch.ops.aten.native_dropout.default,
    # allocations: a Triton kernel fills them outside ATen, so, kept, the run in the backward pass would
    # write into the kept tensor instead of a new one
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default,
}
RECOMPUTED_NAMES = {"zoo::rope"}
# in-place random fills, made again too: they fill a fresh allocation (the CPU dropout's random words,
# `torch.empty(n).random_()`; torch's dropout, `empty_like(x).bernoulli_(1 − p)`), which is itself made
# again, so the second run writes a new tensor, with the same values from the restored random state
RECOMPUTED_FILLS = {getattr(torch.ops.aten.random_, "from"), torch.ops.aten.random_.default,
                    torch.ops.aten.bernoulli_.float, torch.ops.aten.bernoulli_.Tensor}


def is_elementwise(op) -> bool:
    """True for an operation cheap to run again: pointwise, a view, a cast, RoPE, a random draw, an
    allocation; not one that writes into its inputs (run again, it would write into a kept output a
    second time), except a random fill of a fresh allocation."""
    if op in RECOMPUTED_FILLS:
        return True
    schema = getattr(op, "_schema", None)
    if schema is not None and schema.is_mutable:
        return False
    if op in RECOMPUTED or getattr(op, "name", lambda: "")() in RECOMPUTED_NAMES:
        return True
    return torch.Tag.pointwise in getattr(op, "tags", ()) or bool(getattr(op, "is_view", False))


# the matrix products a linear layer runs, whatever its bias and the input's rank
PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
_IN_RECOMPUTED_PRODUCT = contextvars.ContextVar("zoo_recompute_recomputed_product", default=False)


@contextlib.contextmanager
def recomputed_product():
    """Marks a matrix product whose output `recompute_elementwise` does not keep (elsewhere this does
    nothing): the product that makes a recomputed function's output (module docstring), which the
    backward pass's run never makes again, and the explicit attention's q·kᵀ
    (zoo/kernels/triton_softmax_attention.py), a score matrix that the run makes again, 128 wide for
    GAU, where keeping it would cost S values per token and layer. Under torch.compile it does nothing
    (the partitioner keeps only what the backward graph reads; a ContextVar would break the graph)."""
    if torch.compiler.is_compiling():
        yield
        return
    token = _IN_RECOMPUTED_PRODUCT.set(True)
    try:
        yield
    finally:
        _IN_RECOMPUTED_PRODUCT.reset(token)


def _contexts():
    """The checkpoint contexts of one recomputed call and its policy. An operation that writes into its
    input is kept, not run again: run again, it would write into the kept output a second time (the
    attention kernels scale their product in place, `out.mul_(·)`). The kept entry then holds the value
    after that write, which is why the cache may see it mutated; it is correct as long as nothing reads
    the output between the product and the in-place write, which is how the kernels are written
    (tests/zoo/test_recompute.py compares gradients bit for bit).

    Except a write into a tensor that a random fill made, which is made again too: torch's dropout where
    it has no fused kernel (the CPU's, which sdpa's math path draws) scales its mask in place,
    `empty_like(x).bernoulli_(1 − p).div_(1 − p)`, and reads the mask, not what `div_` returns: kept,
    the run in the backward pass multiplied by the unscaled mask of that run."""
    filled = WeakIdKeyDictionary()  # the tensors a made-again random fill wrote, in either pass

    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        target = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if op in RECOMPUTED_FILLS and target is not None:
            filled[target] = True
        elif target is not None and target in filled and getattr(getattr(op, "_schema", None), "is_mutable", False):
            return CheckpointPolicy.PREFER_RECOMPUTE
        if is_elementwise(op) or (op in PRODUCTS and _IN_RECOMPUTED_PRODUCT.get()):
            return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE

    return create_selective_checkpoint_contexts(policy, allow_cache_entry_mutation=True)


def recompute_elementwise(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, keeping for the backward pass only its inputs and the outputs of its
    operations that are not elementwise (module docstring)."""
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_contexts, **kwargs)
