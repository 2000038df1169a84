"""GAU's attention as several heads that share q and k (zoo.attention.sdpa_shared_qk, the CUDA sdpa
path): the same function as the single wide head, checked in fp64 on the CPU, with softmax_plus row
scales, padded and unpadded rows, for outputs and gradients."""

import pytest
import torch

import zoo
import zoo.attention as attention_module
from zoo.attention import sdpa_shared_qk
from zoo.kernels import registry


def reference(q, k, v, key_valid, row_scale):
    """softmax_plus written out: a_ij = (log n_i / log 512)(q_i·k_j)/√s over the valid keys."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * row_scale
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("value_width", [None, 12, 24])
@pytest.mark.parametrize("padded", [False, True])
def test_shared_heads_equal_one_wide_head(padded, value_width):
    torch.manual_seed(0)
    batch, length, size, width = 3, 9, 8, 24
    q, k = (torch.randn(batch, 1, length, size, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(batch, 1, length, width, dtype=torch.float64, requires_grad=True)
    key_valid = None
    if padded:
        key_valid = torch.ones(batch, length, dtype=torch.bool)
        key_valid[1, 6:] = False
        key_valid[2, 2:] = False
    visible = (torch.full((batch,), float(length), dtype=torch.float64) if key_valid is None
               else key_valid.sum(-1, dtype=torch.float64))
    row_scale = (torch.log(visible) / torch.log(torch.tensor(512.0, dtype=torch.float64)))[:, None, None, None]
    mask = None if key_valid is None else key_valid[:, None, None, :]
    got = sdpa_shared_qk(q * row_scale * size**-0.5, k, v, mask, 0.0, 1.0, value_width)
    want = reference(q, k, v, key_valid, row_scale)
    assert got.shape == want.shape == (batch, 1, length, width)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gau_model_through_the_shared_path_equals_the_matmul_backend():
    """The whole GAU-α model (softmax_plus, padding) with the shared-q/k sdpa route forced on the CPU."""
    torch.manual_seed(0)
    model = zoo.create("gau-alpha-mini", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).double().eval()
    ids = torch.randint(104, 12000, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    model.config.attention_backend = "matmul"
    want = model(input_ids=ids, attention_mask=mask).logits
    used = []

    def spy(q, k, v, *args, **kwargs):
        used.append(v.shape[-1] // q.shape[-1])
        return attention_module.shared_qk_attention(q, k, v, *args, **kwargs)

    model.config.attention_backend = "sdpa"
    with registry.registered("softmax_attention", "shared-qk-on-the-cpu", spy, device_types=("cpu",),
                             accepts=attention_module.gau_wide_head, before="sdpa-shared-qk"):
        got = model(input_ids=ids, attention_mask=mask).logits
    assert used and set(used) == {model.config.intermediate_size // model.config.attention_key_size}
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
