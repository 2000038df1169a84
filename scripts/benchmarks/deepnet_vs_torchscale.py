"""Our DeepNet against Microsoft's torchscale reference encoder, with copied weights (fp64).

    python -m venv --system-site-packages /tmp/tsvenv
    /tmp/tsvenv/bin/pip install --no-deps torchscale==0.3.0 fairscale==0.4.0
    /tmp/tsvenv/bin/python scripts/benchmarks/deepnet_vs_torchscale.py [--depths 6,12,100] [--hidden 64] [--device auto]

torchscale 0.3.0 imports timm only for `drop_path`, which pulls in torchvision; with drop-path off
it is never called, so a stub module stands in for timm (architectures.md §6, DeepNet item 5).
The torchscale encoder is built with `EncoderConfig(deepnorm=True, ...)` directly (its
`override()` does not re-derive normalize_before/subln, §6 item 2), no positions (torchscale takes
them from the caller; our DeepNet defaults to RoPE, which torchscale lacks, so both run with
`position_embedding_type="none"`), `layernorm_embedding=True` as in its BERT example, and our
segment-0 embedding set to zero (torchscale has none). Compared: every layer's hidden states at
the non-padded positions of a padded batch (torchscale zeroes padded positions after the embedding), once with torchscale as shipped
(softmax and FFN activation cast to float32) and once with those two casts removed.
Also compared: the initialisation torchscale applies (default init divided by (8N)^¼ on
v/out/fc1/fc2) against our `initializer="deepnorm_torchscale"`, by the std ratios per module type.
The forward comparison runs on `--device` (default auto: CUDA when present, else the CPU), in fp64
on either; the initialisation statistics need no forward pass and are taken on the CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zoo.runtime import DeviceError, Runtime  # noqa: E402

CPU = Runtime(torch.device("cpu"))


def stub_timm() -> None:
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = lambda x, drop_prob=0.0, training=False: x  # never called with drop_path_rate 0
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def full_precision_torchscale() -> None:
    """torchscale computes the attention softmax and the FFN activation in float32 (for half-precision
    training); in an fp64 comparison those two casts alone cost ~1e-7. Remove just them."""
    from torchscale.component import feedforward_network, multihead_attention

    class SoftmaxInInputDtype:
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def softmax(x, dim=-1, dtype=None):
            return torch.softmax(x, dim=dim)

    multihead_attention.F = SoftmaxInInputDtype()

    def forward(self, x):  # FeedForwardNetwork.forward of torchscale 0.3.0 without `.float()`
        x_shape = x.shape
        x = self.fc2(self.activation_fn(self.fc1(x.reshape(-1, x.size(-1)))))
        return self.dropout_module(x.view(x_shape))

    feedforward_network.FeedForwardNetwork.forward = forward


def build_pair(depth: int, hidden: int, heads: int, ffn: int, vocab: int):
    stub_timm()
    from torchscale.architecture.config import EncoderConfig
    from torchscale.architecture.encoder import Encoder

    import zoo
    from zoo.families import model_class

    config = zoo.DeepNetConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                               intermediate_size=ffn, position_embedding_type="none", hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, initializer="deepnorm_torchscale")
    ours = model_class(config, "base")(config).double().eval()
    args = EncoderConfig(deepnorm=True, encoder_embed_dim=hidden, encoder_attention_heads=heads, encoder_ffn_embed_dim=ffn,
                         encoder_layers=depth, vocab_size=vocab, layernorm_embedding=True, no_output_layer=True,
                         activation_fn="gelu", layernorm_eps=1e-5)
    assert args.deepnorm and not args.encoder_normalize_before and not args.subln
    embed = torch.nn.Embedding(vocab, hidden)
    theirs = Encoder(args, embed_tokens=embed).double().eval()
    return ours, theirs


def copy_weights(ours, theirs) -> None:
    """Our names → torchscale's (architectures.md §3.4)."""
    sd = ours.state_dict()
    mapping = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
               "layernorm_embedding.weight": "embeddings.norm.weight", "layernorm_embedding.bias": "embeddings.norm.bias"}
    for i in range(ours.config.num_hidden_layers):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            for p in ("weight", "bias"):
                mapping[f"layers.{i}.self_attn.{proj}.{p}"] = f"layers.{i}.self_attn.{proj}.{p}"
        for p in ("weight", "bias"):
            mapping[f"layers.{i}.self_attn_layer_norm.{p}"] = f"layers.{i}.self_attn_norm.{p}"
            mapping[f"layers.{i}.ffn.fc1.{p}"] = f"layers.{i}.ffn.fc1.{p}"
            mapping[f"layers.{i}.ffn.fc2.{p}"] = f"layers.{i}.ffn.fc2.{p}"
            mapping[f"layers.{i}.final_layer_norm.{p}"] = f"layers.{i}.ffn_norm.{p}"
    target = theirs.state_dict()
    missing = sorted(set(target) - set(mapping))
    if missing:
        raise KeyError(f"torchscale tensors without a source: {missing[:5]}")
    theirs.load_state_dict({t: sd[s] for t, s in mapping.items()})
    with torch.no_grad():
        ours.embeddings.token_type_embeddings.weight.zero_()  # torchscale has no segment embedding


def compare(depth: int, hidden: int, heads: int, ffn: int, vocab: int = 500, seed: int = 0,
            runtime: Runtime = CPU) -> dict:
    torch.manual_seed(seed)
    ours, theirs = build_pair(depth, hidden, heads, ffn, vocab)
    with torch.no_grad():  # O(1) weights so every term matters
        for name, p in ours.named_parameters():
            p.normal_(0, 0.3 if p.dim() == 1 else 1 / math.sqrt(p.shape[-1])).add_(1.0 if "norm.weight" in name else 0.0)
    copy_weights(ours, theirs)
    ours, theirs = ours.to(runtime.device), theirs.to(runtime.device)
    ids = torch.randint(1, vocab, (3, 21))  # drawn on the CPU (the same ids on every device), then moved
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    ids, mask = runtime.to_device((ids, mask))
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        out = theirs(ids, encoder_padding_mask=(mask == 0), return_all_hiddens=True)
    states = out["encoder_states"]  # embedding output, then every layer's output (T × B × C in 0.3.0? check)
    valid = mask.bool()
    errors = []
    for a, b in zip(mine, states):
        b = b if b.shape[:2] == a.shape[:2] else b.transpose(0, 1)
        errors.append(((a - b).abs()[valid].max() / b.abs()[valid].max()).item())
    return {"depth": depth, "layers_compared": len(errors), "max_relative_error": max(errors), "alpha": ours.config.alpha}


def init_ratios(depth: int, hidden: int, heads: int, ffn: int) -> dict:
    """torchscale's init vs ours (deepnorm_torchscale): std of each module type over all layers."""
    torch.manual_seed(0)
    ours, theirs = build_pair(depth, hidden, heads, ffn, vocab=500)

    def stds(model, names):
        return {n: torch.cat([dict(model.named_parameters())[f"layers.{i}.{n}"].flatten() for i in range(depth)]).std().item()
                for n in names}

    names = ["self_attn.q_proj.weight", "self_attn.v_proj.weight", "self_attn.out_proj.weight", "ffn.fc1.weight", "ffn.fc2.weight"]
    return {"ours": stds(ours, names), "torchscale": stds(theirs, names)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="6,12,100")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=256)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    args = parser.parse_args(argv)
    try:
        runtime = Runtime.resolve(args.device)
    except DeviceError as error:
        sys.exit(f"deepnet_vs_torchscale.py: {error}")
    if runtime.is_cuda:
        print(f"device: {runtime.device} ({torch.cuda.get_device_name(runtime.device)}), fp64 models\n")
    torch.set_default_dtype(torch.float64)
    depths = [int(d) for d in args.depths.split(",")]
    shipped = {d: compare(d, args.hidden, args.heads, args.ffn, runtime=runtime) for d in depths}
    full_precision_torchscale()
    exact = {d: compare(d, args.hidden, args.heads, args.ffn, runtime=runtime) for d in depths}
    print("| layers | α | hidden states compared | max relative error: torchscale as shipped | without its two fp32 casts |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for d in depths:
        print(f"| {d} | {shipped[d]['alpha']:.4f} | {shipped[d]['layers_compared']} | "
              f"{shipped[d]['max_relative_error']:.2e} | {exact[d]['max_relative_error']:.2e} |")
    ratios = init_ratios(12, 256, 4, 1024)
    print("\ninitialisation std, 12 layers, hidden 256 (ours: initializer='deepnorm_torchscale'):")
    print("| tensor | torchscale | ours |\n| --- | ---: | ---: |")
    for name in ratios["ours"]:
        print(f"| {name} | {ratios['torchscale'][name]:.5f} | {ratios['ours'][name]:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
