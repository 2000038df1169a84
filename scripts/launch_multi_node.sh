#!/usr/bin/env bash
# Pretrain over several machines ("nodes") with DeepSpeed's own launcher. Three forms:
#
# 1. ssh/pdsh: a cluster where the first machine reaches the others by passwordless ssh and has pdsh.
#      scripts/launch_multi_node.sh HOSTFILE RECIPE [key=value ...] [--resume]
#    Run it once, on the first machine of HOSTFILE; DeepSpeed starts every machine's ranks over pdsh:
#      deepspeed --hostfile HOSTFILE --master_addr <first host> --master_port 29500 --module pretrain --config RECIPE ...
#
# 2. no ssh: one launcher per machine, started by you or a scheduler.
#      scripts/launch_multi_node.sh --node-rank R HOSTFILE RECIPE [key=value ...] [--resume]
#    Run it on every machine, R being that machine's line in HOSTFILE (0 = the first line, which
#    hosts global rank 0 and the rendezvous at MASTER_ADDR:MASTER_PORT):
#      deepspeed --no_ssh --node_rank R --hostfile HOSTFILE --master_addr <first host> --master_port 29500 \
#          --module pretrain --config RECIPE ...
#
# 3. loopback: NODES "nodes" of RANKS ranks each on this one machine, form 2 on 127.0.0.1. It checks
#    a multi-node run (same loss curve as one node with the same number of ranks) without a cluster.
#      scripts/launch_multi_node.sh --loopback NODESxRANKS RECIPE [key=value ...] [--resume]
#    e.g. --loopback 2x1: writes the hostfile "node0 slots=1 / node1 slots=1" and starts
#      deepspeed --no_ssh --node_rank 0 --hostfile H --master_addr 127.0.0.1 --master_port P --module pretrain ...
#      deepspeed --no_ssh --node_rank 1 --hostfile H --master_addr 127.0.0.1 --master_port P --module pretrain ...
#    side by side, each in its own process group, its output prefixed [nodeI]. The launchers do not
#    collide: a no-ssh launcher starts only the slots of its own hostfile line, numbered from global
#    rank (sum of the slots above it), and DeepSpeed's shared-memory all-reduce, which assumes every
#    rank is on one machine, is off when the world is larger than a node (LOCAL_SIZE < WORLD_SIZE).
#    If a node exits with an error, the others stop on their own (a lost peer is an immediate
#    connection error, a silent one trips ZOO_DIST_TIMEOUT_S); those still running 30 s later are
#    terminated.
#
# Environment: MASTER_ADDR (default: the first host of HOSTFILE; 127.0.0.1 for --loopback),
# MASTER_PORT (default 29500; a free port for --loopback), ZOO_DIST_TIMEOUT_S (seconds a collective
# waits for a silent peer before the run stops, default 1800), DEEPSPEED_ARGS (more launcher flags,
# e.g. "--ssh_port 2222"), OMP_NUM_THREADS (--loopback: cores ÷ all ranks).
#
# Not "--launcher slurm": DeepSpeed's SLURM runner drops --module and runs `python pretrain`, which
# cannot import the package. Under SLURM start the ranks with srun itself, one task per GPU:
#   srun --ntasks-per-node G python -u -m pretrain --config RECIPE [key=value ...] [--resume]
# pretrain takes each rank from srun's SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID and the
# rendezvous from MASTER_ADDR (default: the first host of the job's node list) and MASTER_PORT (default
# 29500). MPI launchers (deepspeed --launcher openmpi|mvapich|mpich|impi, or mpirun ... python -u -m
# pretrain) work the same way; across machines they need MASTER_ADDR (a MASTER_ADDR=... line in
# ./.deepspeed_env) or mpi4py.
#
# Every machine needs the same checkout and environment. The run directory (training.output_dir,
# default checkpoints/runs/<run_name>) must be on a file system every machine sees: each rank writes
# its part of a checkpoint there, and --resume reads them all. With pdsh (form 1) the ranks on other
# machines get only PYTHON*, UCX*, MV2*, MLFLOW* variables and those in ~/.deepspeed_env or
# ./.deepspeed_env (KEY=value lines): put OMP_NUM_THREADS, GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME
# (the network interface the machines reach each other on) and ZOO_DIST_TIMEOUT_S there.
# A checkpoint resumes on any number of nodes and ranks (README, Pretraining: Checkpoints).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
mode=pdsh node_rank="" layout=""
case "${1:-}" in
    --node-rank) mode=no_ssh; node_rank="${2:?--node-rank needs a number}"; shift 2 ;;
    --loopback) mode=loopback; layout="${2:?--loopback needs NODESxRANKS, e.g. 2x1}"; shift 2 ;;
    -h|--help|"") usage ;;
esac
read -r -a extra <<< "${DEEPSPEED_ARGS:-}"

if [ "$mode" != loopback ]; then
    [ $# -ge 2 ] || usage
    hostfile="$1"; recipe="$2"; shift 2
    master="${MASTER_ADDR:-$(grep -v '^\s*#' "$hostfile" | awk 'NF {print $1; exit}')}"
    command=(deepspeed --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}")
    [ "$mode" = no_ssh ] && command+=(--no_ssh --node_rank "$node_rank")
    set -x
    exec "${command[@]}" ${extra[@]+"${extra[@]}"} --module pretrain --config "$recipe" "$@"
fi

# --loopback NODESxRANKS
[[ "$layout" =~ ^([0-9]+)x([0-9]+)$ ]] || { echo "--loopback takes NODESxRANKS, e.g. 2x1; got '$layout'" >&2; exit 2; }
nodes="${BASH_REMATCH[1]}"; ranks="${BASH_REMATCH[2]}"
[ $# -ge 1 ] || usage
recipe="$1"; shift
workdir="$(mktemp -d)"
hostfile="$workdir/hostfile"
for ((i = 0; i < nodes; i++)); do echo "node$i slots=$ranks"; done > "$hostfile"
port="${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / (nodes * ranks) > 0 ? $(nproc) / (nodes * ranks) : 1 ))}"

pids=() filters=()
stop() {  # terminate every node still running: its launcher, DeepSpeed's launch.py and its ranks
    for pid in ${pids[@]+"${pids[@]}"}; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    sleep 5
    for pid in ${pids[@]+"${pids[@]}"}; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap 'stop; rm -rf "$workdir"; exit 130' INT TERM
trap 'rm -rf "$workdir"' EXIT

echo "loopback: $nodes node(s) × $ranks rank(s) on 127.0.0.1:$port, hostfile $hostfile:" $(cat "$hostfile") >&2
for ((i = 0; i < nodes; i++)); do
    command=(deepspeed --no_ssh --node_rank "$i" --hostfile "$hostfile" --master_addr 127.0.0.1 --master_port "$port"
             ${extra[@]+"${extra[@]}"} --module pretrain --config "$recipe" "$@")
    echo "loopback: node $i: ${command[*]}" >&2
    exec {out}> >(sed -u "s/^/[node$i] /")
    filters+=($!)
    # setsid: each node is its own process group (pid = group id), stopped as a whole
    setsid "${command[@]}" >&"$out" 2>&1 &
    pids+=($!)
    exec {out}>&-
done

status=0 failed_at=""
while :; do
    running=0
    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        [ -n "$pid" ] || continue
        if kill -0 "$pid" 2>/dev/null; then running=$((running + 1)); continue; fi
        rc=0; wait "$pid" || rc=$?
        pids[$i]=""
        if [ "$rc" != 0 ]; then
            echo "loopback: node $i exited with status $rc" >&2
            [ "$status" != 0 ] || { status=$rc; failed_at=$SECONDS; }
        fi
    done
    [ "$running" -gt 0 ] || break
    if [ -n "$failed_at" ] && [ $((SECONDS - failed_at)) -ge 30 ]; then
        echo "loopback: terminating the nodes still running 30 s after a node failed" >&2
        stop
        break
    fi
    sleep 1
done
wait ${filters[@]+"${filters[@]}"} 2>/dev/null || true  # the output filters: let them print the last lines
exit "$status"
