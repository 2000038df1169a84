#!/usr/bin/env bash
# The main job: pretrain a tiny RoFormerV2 on the embedded corpus with DeepSpeed on 2 CPU ranks
# (about 5 minutes), publish it to the local registry, then load it back by name and print its
# predictions for masked characters, and build the zoo's web site.  Extra arguments are recipe
# overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS="${RANKS:-2}"
# the recipe's bf16 autocast is the fast path on a CPU with AVX-512 or AMX; without them (an AVX2 CPU) bf16
# runs through a fallback many times slower than fp32, so there the quickstart trains in fp32
PRECISION=()
if python -c "import sys, zoo.runtime as r; sys.exit(0 if not r.bf16_is_native(r.default_device()) else 1)"; then
    echo "quickstart: this CPU has no bf16 arithmetic (AVX-512 or AMX): training in fp32"
    PRECISION=("deepspeed.torch_autocast.enabled=false")
fi
# the run's folder named here: its default follows ZOO_REGISTRY (the registry's parent folder, then runs/)
RUN_DIR="checkpoints/runs/quickstart"
deepspeed --num_gpus "$RANKS" --module pretrain --config pretrain/recipes/quickstart.yaml --restart \
    "training.output_dir=$RUN_DIR" "${PRECISION[@]}" "$@"
python -m pretrain.summary "$RUN_DIR"
python -m zoo fill-mask quickstart-roformer-v2-tiny \
    "今天天气很[MASK]，我们去公园散步吧。" \
    "北[MASK]是中华人民共和国的首都。" \
    "这本书的内容很精彩，我非常[MASK]欢。" \
    "人民日报社论指出，要坚持改革开[MASK]。"
# the registry as a web page: an index of every model, a page per version (card, metrics, figures,
# recipe, how to load it) and a comparison page; `python -m zoo serve` serves it on 127.0.0.1
python -m zoo site --out checkpoints/site
