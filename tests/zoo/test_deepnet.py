"""DeepNet / DeepNorm (architectures.md §3): constants, where β goes, depth 200–1000."""

import math

import torch

import zoo
from zoo.families import model_class

def test_deepnet_alpha_beta_table():
    """α = (2N)^¼ and β = (8N)^−¼ for encoders of 6/12/24/48/1000 layers (§3.2)."""
    table = {6: (1.861, 0.380), 12: (2.213, 0.320), 24: (2.632, 0.269), 48: (3.130, 0.226), 1000: (6.687, 0.106)}
    for layers, (alpha, beta) in table.items():
        config = zoo.DeepNetConfig(num_hidden_layers=layers)
        assert abs(config.alpha - alpha) < 6e-4 and abs(config.beta - beta) < 6e-4  # table rounded to 3 places


def test_deepnet_beta_goes_to_v_out_fc1_fc2_only():
    """Paper init: xavier_normal with gain β on v/out/fc1/fc2, gain 1 on q/k (§3.2)."""
    config = zoo.DeepNetConfig(vocab_size=50, hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024)
    model = model_class(config, "base")(config)
    beta = config.beta
    for layer in model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w = getattr(layer.self_attn, name).weight
            xavier = math.sqrt(2 / sum(w.shape))
            gain = beta if name in ("v_proj", "out_proj") else 1.0
            assert abs(w.std().item() / (xavier * gain) - 1) < 0.05, name
        for name in ("fc1", "fc2"):
            w = getattr(layer.ffn, name).weight
            assert abs(w.std().item() / (math.sqrt(2 / sum(w.shape)) * beta) - 1) < 0.05, name


def test_deepnet_1000_layers_forward_backward():
    model = zoo.create("deepnet-1000", hidden_size=64, num_attention_heads=1, intermediate_size=128, vocab_size=200)
    assert len(model.encoder.layers) == 1000
    ids = torch.randint(1, 200, (2, 16))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    norms = torch.stack([layer.ffn.fc2.weight.grad.norm() for layer in model.encoder.layers])
    assert torch.isfinite(norms).all()
    assert norms.max() / norms.median() < 100




def test_deepnet_torchscale_init_scales_default_init_by_beta():
    """torchscale: PyTorch's default Linear init U(±1/√fan_in), weights and biases of v/out/fc1/fc2 times β."""
    config = zoo.DeepNetConfig(vocab_size=50, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                               intermediate_size=1024, initializer="deepnorm_torchscale")
    model = model_class(config, "base")(config)
    for layer in model.layers:
        for module, gain in ((layer.self_attn.q_proj, 1.0), (layer.self_attn.k_proj, 1.0), (layer.self_attn.v_proj, config.beta),
                             (layer.self_attn.out_proj, config.beta), (layer.ffn.fc1, config.beta), (layer.ffn.fc2, config.beta)):
            bound = gain / math.sqrt(module.weight.shape[1])
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.95 * bound
            assert module.bias.abs().max() <= bound and module.bias.abs().max() > 0.5 * bound


def test_deepnet_200_layers_optimizer_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = zoo.create("deepnet-200", hidden_size=64, num_attention_heads=1, intermediate_size=128, vocab_size=300,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(5, 300, (4, 24))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5


def test_deepnet_layer_matches_the_equations_fp64():
    """One DeepNorm layer, written out: h = LN(α·x + Attn(x)), y = LN(α·h + FFN(h))."""
    config = zoo.DeepNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                               intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               position_embedding_type="none")
    model = model_class(config, "base")(config).double().eval()
    layer = model.layers[0]
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    alpha = (2 * 6) ** 0.25

    def ln(t, norm):
        return torch.nn.functional.layer_norm(t, (16,), norm.weight, norm.bias, 1e-5)

    a = layer.self_attn
    q = (x @ a.q_proj.weight.T + a.q_proj.bias).view(2, 5, 2, 8).transpose(1, 2)
    k = (x @ a.k_proj.weight.T + a.k_proj.bias).view(2, 5, 2, 8).transpose(1, 2)
    v = (x @ a.v_proj.weight.T + a.v_proj.bias).view(2, 5, 2, 8).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    attn = attn.transpose(1, 2).reshape(2, 5, 16) @ a.out_proj.weight.T + a.out_proj.bias
    h = ln(alpha * x + attn, layer.self_attn_norm)
    f = layer.ffn
    hidden = torch.nn.functional.gelu(h @ f.fc1.weight.T + f.fc1.bias)
    y = ln(alpha * h + hidden @ f.fc2.weight.T + f.fc2.bias, layer.ffn_norm)
    ctx = model.attention_context(2, 5, None, None, torch.float64, x.device)
    out, _ = layer(x, ctx)
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)
