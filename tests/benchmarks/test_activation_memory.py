"""scripts/benchmarks/activation_memory.py: its storage count, and what recompute_elementwise saves."""

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks"
sys.path.insert(0, str(SCRIPTS))

import activation_memory  # noqa: E402

import zoo  # noqa: E402


def test_the_count_is_what_outlives_the_pass():
    mode = activation_memory.LiveStorages()
    with mode:
        kept = torch.ones(1000)  # 4000 bytes
        view = kept[10:]  # same storage: counted once
        temporary = torch.ones(500) * 2  # both storages freed below
        del temporary
    assert mode.alive_bytes() == 4000
    del kept, view
    assert mode.alive_bytes() == 0


def test_the_cpu_copy_merging_gau_heads_is_not_counted():
    """With q expanded over heads that share it (GAU), torch's CPU sdpa returns [B, H, S, d] heads first,
    so merging the heads copies, where CUDA's kernels return it sequence first and the merge is a view:
    that copy is left out. With a dense heads-first q both devices copy: counted, as other copies are."""
    mode = activation_memory.LiveStorages()
    with mode:
        q = torch.randn(1, 1, 8, 4)
        shared = q.expand(1, 2, 8, 4)
        out = torch.nn.functional.scaled_dot_product_attention(shared, shared, shared)
        merged = out.transpose(1, 2).reshape(1, 8, 8)
        dense = q.repeat(1, 2, 1, 1)
        dense_out = torch.nn.functional.scaled_dot_product_attention(dense, dense, dense)
        dense_merged = dense_out.transpose(1, 2).reshape(1, 8, 8)
    assert merged.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()  # a copy on the CPU
    assert dense_merged.untyped_storage().data_ptr() != dense_out.untyped_storage().data_ptr()
    assert mode.alive_bytes() == q.nbytes + out.nbytes + dense.nbytes + dense_out.nbytes + dense_merged.nbytes


SMALL = {  # preset → small shape (the base models' proportions), the bound on kept bytes with/without
    "gau-alpha-base": (dict(hidden_size=64, num_hidden_layers=4, intermediate_size=128, attention_key_size=32), 0.65),
    "deepnet-12": (dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256), 0.9),
}


@pytest.mark.parametrize("preset", SMALL)
def test_recompute_elementwise_keeps_less_for_the_same_outputs(preset):
    """A GAU layer keeps its gate pre-activation, attention output and projection instead of also swish's
    output, q, k and u ⊙ A·v (measured 0.52 of the bytes per token here, 0.61 at 128 tokens); a GELU FFN
    keeps W_2's output instead of GELU's (0.79, and 0.88 at 128: the FFN's share of these small layers).
    Outputs unchanged."""
    shape, bound = SMALL[preset]
    per_token, outputs = {}, {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = zoo.create(preset, task="base", recompute_elementwise=recompute, attention_probs_dropout_prob=0.0,
                           attention_backend="sdpa", **shape).train()
        # 32 tokens: the Triton kernels run in the interpreter, a program per row (dropout's Philox there costs
        # about 13 ms a row on an AVX2 CPU); at 128 this test took minutes
        one, two = (activation_memory.retained_bytes(model, batch, 32) for batch in (1, 2))
        per_token[recompute] = (two - one) / 32
        torch.manual_seed(1)
        outputs[recompute] = model(input_ids=torch.randint(104, 12000, (2, 16))).last_hidden_state
    assert per_token[True] < bound * per_token[False], per_token
    assert torch.equal(outputs[True], outputs[False])


@pytest.mark.parametrize("recompute", [False, True])
def test_the_explicit_attention_keeps_no_score_matrix(recompute, triton_launches):
    """GAU-α's explicit attention (CUDA's Triton entry, here in the interpreter) keeps q, k and v, and makes
    q·kᵀ and the softmax again backward; sdpa's heads sharing q and k keep the same tensors and one fp32
    log-sum-exp per head (e/s = 4 heads here). Nothing grows with the length: per token and layer, 4·4
    bytes less than sdpa, exactly, at two lengths, with recomputation or without."""
    shape = SMALL["gau-alpha-base"][0]
    heads = shape["intermediate_size"] // shape["attention_key_size"]
    models = {backend: zoo.create("gau-alpha-base", task="base", recompute_elementwise=recompute,
                                  attention_probs_dropout_prob=0.0, attention_backend=backend, **shape).train()
              for backend in ("sdpa", "matmul")}
    for length in (16, 32):
        per_token = {}
        for backend, model in models.items():
            one, two = (activation_memory.retained_bytes(model, batch, length) for batch in (1, 2))
            per_token[backend] = (two - one) / length
            # one forward pass at batch 1 and one at batch 2
            assert triton_launches.count("softmax_dropout_forward") == (2 * shape["num_hidden_layers"] if backend == "matmul"
                                                                 else 0)
            triton_launches.clear()
        assert per_token["matmul"] - per_token["sdpa"] == -shape["num_hidden_layers"] * 4 * heads, per_token


def test_the_report_and_plot_take_several_lengths(tmp_path):
    rows = [{"model": model, "seq_len": length, "bytes_per_token": 1024.0 * size * length / 512, "per_forward_bytes": 2.0**20}
            for length in (512, 2048) for model, size in ((activation_memory.REFERENCE, 256), ("other", 300))]
    table = activation_memory.report(rows, None)
    assert "| other | 2048 | 1200.0 KiB | 1.17× | 18.8 GiB | 1 MiB |" in table  # 8 × 2048 tokens
    activation_memory.plot(rows, tmp_path / "memory.png")
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
