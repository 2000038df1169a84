"""`torch.compile` sees through the compiled CPU kernels (zoo/kernels/ops.py): each is one operator
in the graph, with no graph break, and the compiled training step computes what eager mode computes.

The models run in bf16 autocast on the CPU with every kernel in use (RMS norm, RoPE, dropout, the
blocked attention; DeepNet's LayerNorm and GAU's attention through their own entries). The
`aot_eager` backend runs the traced forward and backward graphs op by op, so it checks the fake
implementations, the registered backward formulas and the seeds drawn as tensors without inductor's
code generation; with the same `torch.manual_seed` it draws the same dropout masks as eager mode, so
losses and gradients agree to the last bit but for the order of gradient accumulation.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import zoo
from zoo.kernels import ops

from .kernel_switch import kernels_off

FAMILIES = ["roformer-v2-mini", "gau-alpha-mini", "deepnet-mini"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_model(name: str, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.create(name, task="masked-lm", hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return model.train()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(104, 12000, (2, 24), generator=g)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 17:] = 0  # padded keys: the attention takes its additive bias
    labels = torch.where(torch.rand(2, 24, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    return ids, mask, labels


def loss_of(model, ids, mask, labels):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def step(model, forward, seed: int):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = forward(model, *batch())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def zoo_ops_in(graphs) -> set[str]:
    return {str(node.target) for graph in graphs for node in graph.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("zoo.")}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_kernels_are_operators_in_one_graph(name):
    """dynamo traces a whole training forward (autocast, padding, dropout) into one graph in which the
    kernels appear as torch.ops.zoo operators."""
    model = make_model(name, dropout=0.1)
    explanation = torch._dynamo.explain(loss_of)(model, *batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    expected = {"zoo.masked_scale.default", "zoo.blocked_attention.default"}
    expected |= {"zoo.rms_norm.default", "zoo.rope.default"} if name != "deepnet-mini" else set()
    assert expected <= zoo_ops_in(explanation.graphs)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_compiled_training_step_equals_eager(name):
    """aot_eager-compiled forward and backward, dropout on, against eager mode with the same seed. The
    compiled model runs first, so nothing eager filled a cache (RoPE's tables) that tracing would see;
    its second call reuses the compiled graph, no recompilation."""
    model = make_model(name, dropout=0.1)
    compiler = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss_of, backend=compiler, fullgraph=True)
    runs = [step(model, compiled, seed=5) for _ in range(2)]
    assert compiler.frame_count == 1
    want_loss, want_grads = step(model, loss_of, seed=5)
    for got_loss, got_grads in runs:
        assert torch.equal(got_loss, want_loss)
        assert got_grads.keys() == want_grads.keys()
        for key, grad in want_grads.items():
            torch.testing.assert_close(got_grads[key], grad, rtol=1e-6, atol=1e-7, msg=key)


def test_inductor_compiles_a_training_step_through_the_kernels():
    """inductor (C++ code generation on the CPU) around the kernel operators, dropout off: the same loss
    and gradients as eager to bf16 rounding of the fused elementwise code around them (inductor keeps
    fp32 intermediates where eager rounds each op to bf16: 2⁻⁸ relative)."""
    model = make_model("roformer-v2-mini", dropout=0.0)
    want_loss, want_grads = step(model, loss_of, seed=0)
    got_loss, got_grads = step(model, torch.compile(loss_of, fullgraph=True), seed=0)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-2, atol=1e-2)
    for key, grad in want_grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (got_grads[key] - grad).abs().max() / scale < 5e-2, key


def test_without_the_kernels_compilation_takes_the_pytorch_paths(monkeypatch):
    """With every compiled module switched off, the graph holds no zoo operator and still no break."""
    kernels_off(monkeypatch, "attention", "dropout", "elementwise")
    explanation = torch._dynamo.explain(loss_of)(make_model("roformer-v2-mini", dropout=0.1), *batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert zoo_ops_in(explanation.graphs) == set()


def operator_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)
    cos, sin = torch.randn(1, 1, 5, 4, generator=g), torch.randn(1, 1, 5, 4, generator=g)
    q, k, v = (torch.randn(6, n, 8, generator=g) for n in (5, 7, 7))
    bias = torch.zeros(2, 3, 5, 7).masked_fill_(torch.rand(2, 3, 5, 7, generator=g) < 0.3, -1e9)
    seed = torch.tensor([12345])
    grad_q, grad_k, grad_v, probs = torch.randn(6, 5, 8, generator=g), q, v, torch.rand(6, 5, 7, generator=g)
    return [
        ("rms_norm", ops.rms_norm, (x.requires_grad_(), 1e-6)),
        ("rope", ops.rope, (x.detach().requires_grad_(), cos, sin, 1.0, False)),
        ("masked_scale", ops.masked_scale, (x.detach().requires_grad_(), seed, ops_threshold(0.1), 1.25)),
        ("blocked_attention", ops.blocked_attention,
         (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), bias, 3, seed, ops_threshold(0.1), True)),
        ("blocked_attention_backward", ops.blocked_attention_backward,
         (grad_q, grad_k.detach(), k.detach(), grad_v.detach(), probs, seed, 0)),
        # strided views, as a traced program hands them over (a reshape at batch 1): the operators take them, and
        # their outputs are laid out as the fake implementations say (the gradients came back contiguous, where the
        # fake said like q, k and v: inductor's stride assertion failed a compiled step at batch 1)
        ("rms_norm, strided", ops.rms_norm, (x.detach().transpose(1, 2).requires_grad_(), 1e-6)),
        ("rope, strided", ops.rope, (last_strided(x).requires_grad_(), last_strided(cos), last_strided(sin), 1.0, True)),
        ("masked_scale, strided", ops.masked_scale,
         (x.detach().transpose(0, 3).requires_grad_(), seed, ops_threshold(0.1), 1.25)),
        ("blocked_attention, strided", ops.blocked_attention,
         (*strided(q, k, v, requires_grad=True), bias, 3, seed, ops_threshold(0.1), True)),
        ("blocked_attention_backward, strided", ops.blocked_attention_backward,
         (*strided(grad_q, grad_k, k, grad_v), probs, seed, 0)),
    ]


def last_strided(t):
    """The same values, the last dimension read at a stride other than 1."""
    return t.detach().transpose(-1, -2).contiguous().transpose(-1, -2)


def strided(*tensors, requires_grad=False):
    """The same values as views whose rows are not contiguous: [A, S, d] made from [S, A, d]."""
    views = [t.detach().transpose(0, 1).contiguous().transpose(0, 1) for t in tensors]
    return [v.requires_grad_() for v in views] if requires_grad else views


def ops_threshold(p: float) -> int:
    from zoo.kernels import threshold_for

    return threshold_for(p)


@pytest.mark.parametrize("case", range(10), ids=lambda i: operator_cases()[i][0])
def test_the_operators_pass_torch_library_opcheck(case):
    """torch.library.opcheck: the schema (mutations declared), the fake implementation against the real
    outputs, the registered autograd, and tracing under AOTAutograd.

    The attention's forward hands its probabilities out as a second output, which its backward then
    overwrites: AOTAutograd rightly refuses to partition a graph that returns them to the caller, so for
    that operator the AOT check is the whole-model compiled step above, where they stay inside."""
    name, op, args = operator_cases()[case]
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(op, args, test_utils=checks[:-1] if name.startswith("blocked_attention,") or
                          name == "blocked_attention" else checks)


def test_a_compiled_step_with_elementwise_recomputation_equals_eager():
    """GAU with `recompute_elementwise` (selective checkpointing) compiles into one graph and gives
    eager's loss and gradients, dropout on."""
    model = make_model("gau-alpha-mini", dropout=0.1)
    for layer in model.encoder.layers:
        layer.gau.recompute = True
    want_loss, want_grads = step(model, loss_of, seed=5)
    explanation = torch._dynamo.explain(loss_of)(model, *batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    got_loss, got_grads = step(model, torch.compile(loss_of, backend="aot_eager", fullgraph=True), seed=5)
    assert torch.equal(got_loss, want_loss)
    for key, grad in want_grads.items():
        torch.testing.assert_close(got_grads[key], grad, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", FAMILIES)
def test_an_exported_model_runs_at_any_batch_size_and_length(name):
    """torch.export with dynamic batch and length, traced at 2 × 16 with padding, in bf16 (the blocked
    attention kernel's dtype for inference): the program equals eager mode at batch 1 and past S = 724.
    A `.contiguous()` before an operator was dropped from the program where the traced tensor was contiguous
    already, and at batch 1 `reshape` hands the kernel a strided view (it refused v, RoFormerV2 and DeepNet);
    the kernel's block shape, chosen before the call, put S² < 2¹⁹ into the program as a guard."""
    from torch.export import Dim

    torch.manual_seed(0)
    model = zoo.create(name, task="masked-lm", num_hidden_layers=2, vocab_size=500, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0).eval().to(torch.bfloat16)

    def inputs(batch, length):
        ids = torch.randint(1, 500, (batch, length), generator=torch.Generator().manual_seed(length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length // 2:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    traced = inputs(2, 16)
    program = torch.export.export(model, (), traced, dynamic_shapes={key: {0: Dim.AUTO, 1: Dim.AUTO} for key in traced},
                                  strict=False).module()
    with torch.no_grad():
        for batch, length in ((1, 16), (1, 800), (3, 20)):
            given = inputs(batch, length)
            got, want = program(**given).logits.float(), model(**given).logits.float()
            # the same operators; DeepNet's logits differ by one bf16 step in a few percent of places at the longer
            # lengths (RoFormerV2's and GAU-α's are equal): one step of the largest logit's binade allowed
            step = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(want.abs().max()))
            torch.testing.assert_close(got, want, rtol=0, atol=float(step), msg=f"{batch} × {length}")


def test_learned_positions_with_given_ids_compile_without_a_break_and_still_refuse_ids_past_the_table():
    """Learned position embeddings check given position_ids against their table; the check read the largest id
    back (a graph break under torch.compile, and with fullgraph=True an error). Compiled, the graph checks it."""
    torch.manual_seed(0)
    model = zoo.create("deepnet-mini", task="masked-lm", num_hidden_layers=1, position_embedding_type="learned",
                       max_position_embeddings=64).eval()
    ids = torch.randint(104, 12000, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16)[None].expand(2, 16)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(input_ids=ids, position_ids=positions)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(input_ids=ids, position_ids=positions).logits,
                                   model(input_ids=ids, position_ids=positions).logits)
        with pytest.raises(RuntimeError, match="max_position_embeddings=64"):
            compiled(input_ids=ids, position_ids=positions + 60)
        with pytest.raises(ValueError, match="max_position_embeddings=64"):
            model(input_ids=ids, position_ids=positions + 60)


def test_the_operators_take_empty_inputs_of_any_strides():
    """An empty tensor counts as contiguous whatever its strides, so `.contiguous()` returned an expanded empty
    gradient as it was and the RoPE kernel refused its last stride; the attention's block shape divided by a
    length of 0."""
    from zoo.kernels.ops import block_shape

    x = torch.zeros(1, 1, 1, 1).expand(0, 2, 5, 8)  # strides (0, 0, 0, 0)
    cos, sin = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    for keep_layout in (False, True):
        assert ops.rope(x, cos, sin, 1.0, keep_layout).shape == (0, 2, 5, 8)
    assert block_shape(0, 5, 3) == (1, 1) and block_shape(5, 0, 3) == (1, 5)


@pytest.mark.parametrize("name", ["ntk_mixed", "yarn", "ntk", "pi"])
def test_a_length_scaled_position_variant_compiles_once_for_every_longer_length(name):
    """κ = L/N is symbolic in the length under torch.compile. NTK-mixed's ln κ and YaRN's temperature were
    taken with math.log, which fixed κ to one value: every new length compiled the model again, and past
    dynamo's limit of 8 the model ran eagerly without a word. Now the first length compiles with its sizes
    fixed, the second with them symbolic, and every later one reuses that graph; the logits are eager's."""
    torch.manual_seed(0)
    model = zoo.create("roformer-v2-mini", task="masked-lm", num_hidden_layers=1).eval()
    variant = zoo.positions.variant(name, train_length=16)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lambda ids: model(input_ids=ids, position_variant=variant).logits, backend=counter)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for length in (24, 32, 40, 48, 56):
            ids = torch.randint(104, 12000, (2, length), generator=generator)
            assert torch.equal(compiled(ids), model(input_ids=ids, position_variant=variant).logits), length
    assert counter.frame_count == 2
