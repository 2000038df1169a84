"""scripts/benchmarks/kernel_launches.py: what it counts, and what the fused RMS norm and RoPE save."""

import collections
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks"
sys.path.insert(0, str(SCRIPTS))

import kernel_launches  # noqa: E402


def test_views_and_allocations_are_not_launches():
    mode = kernel_launches.Launches()
    x = torch.ones(4, 6)
    with mode:
        y = x.reshape(24)[3:].view(3, 7)  # views: nothing launched
        torch.empty(8)
        z = y * 2 + 1  # two kernels
        z.contiguous()  # already contiguous: no copy
        z.t().reshape(21)  # a copy (one kernel), then a view of it
    assert mode.counts == {"aten.mul.Tensor": 1, "aten.add.Tensor": 1, "aten.clone.default": 1}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(kernel_launches.MODELS, "tiny", "roformer-v2-tiny")
    return "tiny"


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU with Triton's interpreter, which the suite "
                                                     "switches on only where there is no GPU (tests/conftest.py)")
def test_the_fused_kernels_are_one_launch_each_way(tiny):
    """Per layer the fused setting launches RoPE twice each way (q, k), the residual norm twice each way
    (after attention, after the FFN); the embeddings keep their RMS norm and dropout, one each way; the
    reference runs the same functions as several PyTorch operations each."""
    fused = kernel_launches.count(tiny, "fused")
    reference = kernel_launches.count(tiny, "reference")
    layers, ops = fused["layers"], fused["by_operation"]
    assert ops["zoo.rope.default"] == 4 * layers
    assert ops["triton.residual_norm_forward"] == ops["triton.residual_norm_backward"] == 2 * layers
    assert ops["zoo.rms_norm.default"] == ops["zoo.rms_norm_backward.default"] == 1
    assert ops["aten.native_dropout.default"] == ops["aten.native_dropout_backward.default"] == 1
    assert not any(name.startswith(("zoo.", "triton.")) for name in reference["by_operation"])
    assert fused["forward"] + fused["backward"] == fused["total"]
    saved_per_layer = (reference["total"] - fused["total"]) / layers
    assert saved_per_layer > 2 * 4  # each RMS norm and RoPE call was several launches each way


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU with Triton's interpreter, which the suite "
                                                     "switches on only where there is no GPU (tests/conftest.py)")
def test_gau_scale_pair_counts_one_launch_each_way(monkeypatch):
    """GAU's q/k scale pair with RoPE's rotation and q's row factor: one Triton launch forward, one
    backward (and the sum of its partial dγ), in place of the reference's casts, products and sums, the
    two RoPE calls and the factor's product with q."""
    monkeypatch.setitem(kernel_launches.MODELS, "tiny gau", "gau-alpha-tiny")
    fused = kernel_launches.count("tiny gau", "fused")
    layers, ops = fused["layers"], fused["by_operation"]
    assert ops["triton.scale_pair_forward"] == ops["triton.scale_pair_backward"] == layers
    assert "zoo.rope.default" not in ops  # rotated inside the pair's kernel
    inference = fused["inference_by_operation"]
    assert inference["triton.scale_pair_forward"] == layers
    # softmax_plus's row factor is applied to q in the pair's kernel too: the one product left per layer
    # is the gate u ⊙ A·v
    assert inference["aten.mul.Tensor"] == layers
    assert ops["triton.residual_norm_forward"] == layers  # one sublayer per GAU layer


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU with Triton's interpreter, which the suite "
                                                     "switches on only where there is no GPU (tests/conftest.py)")
def test_deepnet_layer_norm_residual_step_is_one_launch_each_way(monkeypatch):
    """DeepNet's post-norm steps with LayerNorm: one Triton launch forward and one backward (and one sum
    of the shares of dγ and dβ) each, where the reference launched dropout, the addition, LayerNorm and
    its fp32 casts; in inference the same kernel, once per sublayer, and no dropout."""
    monkeypatch.setitem(kernel_launches.MODELS, "tiny deepnet", "deepnet-tiny")
    fused = kernel_launches.count("tiny deepnet", "fused")
    reference = kernel_launches.count("tiny deepnet", "reference")
    layers, ops = fused["layers"], fused["by_operation"]
    assert ops["triton.residual_norm_forward"] == ops["triton.residual_layer_norm_backward"] == 2 * layers
    assert ops["aten.native_layer_norm.default"] == 1  # the embeddings' norm, no residual step
    assert reference["by_operation"]["aten.native_layer_norm.default"] == 2 * layers + 1
    assert fused["inference_by_operation"]["triton.residual_norm_forward"] == 2 * layers
    assert not any("dropout" in name for name in fused["inference_by_operation"])
    assert fused["inference"] < reference["inference"] and fused["total"] < reference["total"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU with Triton's interpreter, which the suite "
                                                     "switches on only where there is no GPU (tests/conftest.py)")
def test_gau_explicit_attention_is_its_products_and_one_softmax_launch_each_way(monkeypatch):
    """GAU-α's explicit attention: per layer two products and the Triton softmax forward, five products
    (q·kᵀ made again, dP̃, dV, dQ, dK) and the softmax backward, where sdpa's heads sharing q and k launch
    one kernel each way and then sum the heads' gradients of q and of k (two sums); inference, two
    products and the softmax."""
    monkeypatch.setitem(kernel_launches.MODELS, "tiny gau", "gau-alpha-tiny")
    monkeypatch.setitem(kernel_launches.MODELS, "tiny gau explicit", "gau-alpha-tiny")
    monkeypatch.setitem(kernel_launches.OVERRIDES, "tiny gau explicit", {"attention_backend": "matmul"})
    shared, explicit = (kernel_launches.count(name, "fused") for name in ("tiny gau", "tiny gau explicit"))
    layers = shared["layers"]
    for key in ("by_operation", "inference_by_operation"):
        more = collections.Counter(explicit[key]) - collections.Counter(shared[key])
        fewer = collections.Counter(shared[key]) - collections.Counter(explicit[key])
        if key == "by_operation":
            assert more == {"aten.bmm.default": 7 * layers, "triton.softmax_dropout_forward": layers,
                            "triton.softmax_dropout_backward": layers}
            assert fewer == {"aten._scaled_dot_product_flash_attention_for_cpu.default": layers,
                             "aten._scaled_dot_product_flash_attention_for_cpu_backward.default": layers,
                             "aten.sum.dim_IntList": 2 * layers}
        else:
            assert more == {"aten.bmm.default": 2 * layers, "triton.softmax_dropout_forward": layers}
            assert fewer == {"aten._scaled_dot_product_flash_attention_for_cpu.default": layers}


def test_merging_the_heads_of_gau_attention_is_not_a_launch():
    """With q expanded over heads that share it (GAU), torch's CPU sdpa returns its heads first, so
    merging them copies, where CUDA's kernels return the sequence first and the merge is a view: that
    copy is not counted. With a dense heads-first q both devices copy: counted, as other copies are."""
    q = torch.randn(1, 1, 4, 8).expand(1, 2, 4, 8)
    dense = q.contiguous()
    mode = kernel_launches.Launches()
    with mode:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        out.transpose(1, 2).reshape(1, 4, 16)  # the merge through reshape
        out.transpose(1, 2).contiguous()  # and through contiguous
        dense_out = torch.nn.functional.scaled_dot_product_attention(dense, dense, dense)
        dense_out.transpose(1, 2).reshape(1, 4, 16)  # a copy on CUDA too
    assert mode.counts == {"aten._scaled_dot_product_flash_attention_for_cpu.default": 2, "aten.clone.default": 1}


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU with Triton's interpreter, which the suite "
                                                     "switches on only where there is no GPU (tests/conftest.py)")
def test_rope_keeps_q_sequence_first_so_merging_the_heads_copies_nothing(tiny, monkeypatch):
    """CUDA's RoPE entry lays q and k out as their projections are (sequence first); the flash kernel
    allocates its output like q, so the output is sequence first too and merging the heads is a view,
    forward and backward. The copies left are v's, one per layer (copied out of the q/k/v product so that
    attention keeps only its columns: zoo/projections.py), and the loss's expanded gradient's, where a
    heads-first q cost one copy per layer forward and one per q and k backward (counted with the CPU
    artefact's rule switched off, which only concerns GAU's expanded q)."""
    monkeypatch.setattr(kernel_launches.MergedHeadsCopies, "see", lambda self, func, args, out: False)
    fused = kernel_launches.count(tiny, "fused")
    assert fused["by_operation"].get("aten.clone.default", 0) == fused["layers"] + 1
