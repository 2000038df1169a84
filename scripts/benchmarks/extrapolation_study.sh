#!/usr/bin/env bash
# The issue 7 length-extrapolation study in one command (see extrapolation_study.py for what it runs):
# pretrain five tiny N = 64 checkpoints, evaluate them at 64 … 1024 tokens with the variant grid,
# run the robustness probes, and write scripts/benchmarks/results/extrapolation/summary.md.
#   bash scripts/benchmarks/extrapolation_study.sh [--retrain] [--reevaluate] [--models a,b] [--summary-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one thread per process: much faster on a shared 2-core CPU
exec python scripts/benchmarks/extrapolation_study.py "$@"
