#!/usr/bin/env bash
# Pretrain on one machine with N processes (GPUs, or CPU ranks when there is no GPU).
#   scripts/launch_single_node.sh RECIPE.yaml [N] [key=value ...] [--resume]
set -euo pipefail
recipe="$1"; shift
ranks="${1:-2}"; [[ $# -gt 0 ]] && shift
exec deepspeed --num_gpus "$ranks" --module pretrain --config "$recipe" "$@"
