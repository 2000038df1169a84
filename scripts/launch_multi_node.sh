#!/usr/bin/env bash
# Pretrain on several machines listed in a hostfile (see scripts/hostfile.example). Run it on the
# first machine; DeepSpeed's launcher starts the ranks on the others over ssh (pdsh).
#   scripts/launch_multi_node.sh HOSTFILE RECIPE.yaml [key=value ...] [--resume]
# The run directory (training.output_dir, default checkpoints/runs/<run_name>) must be on a file
# system every machine sees, so that checkpoints written by all ranks can be resumed.
set -euo pipefail
hostfile="$1"; recipe="$2"; shift 2
master="$(grep -v '^\s*#' "$hostfile" | awk 'NF {print $1; exit}')"
exec deepspeed --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}" \
    --module pretrain --config "$recipe" "$@"
