#!/usr/bin/env bash
# Pretrain on one machine with N processes (GPUs, or CPU ranks when there is no GPU).
#   scripts/launch_single_node.sh RECIPE.yaml [N] [key=value ...] [--resume]
# N (default 2) is the second argument only when it is a number: `RECIPE.yaml --resume` or
# `RECIPE.yaml training.steps=10` run 2 processes and hand the rest to pretrain.
set -euo pipefail
recipe="$1"; shift
ranks=2
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then ranks="$1"; shift; fi
exec deepspeed --num_gpus "$ranks" --module pretrain --config "$recipe" "$@"
