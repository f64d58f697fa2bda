#!/usr/bin/env bash
# M processes on this machine, joined by jax.distributed (gloo collectives on CPU), each with
# D CPU devices: the multi-host code path without a cluster. Process 0 writes the outputs;
# each process's log is in $WORKDIR/process_<i>.log.
#   bash launch/local_processes.sh 2 2 configs/gmvae_spiral.py [--workdir=runs/mp] [--config.x=y ...]
set -euo pipefail
M=${1:?number of processes}; D=${2:?CPU devices per process}; CONFIG=${3:?config file}; shift 3
cd "$(dirname "$0")/.."
PORT=${GMVC_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
NAME=$(python -c "import runpy, sys; print(runpy.run_path(sys.argv[1])['get_config']().name)" "$CONFIG")
WORKDIR=runs/$NAME
for a in "$@"; do case $a in --workdir=*) WORKDIR=${a#--workdir=};; esac; done
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < M; i++)); do
  XLA_FLAGS= python -m gmvc.main --config="$CONFIG" --workdir="$WORKDIR" --coordinator="localhost:$PORT" \
    --num_processes="$M" --process_id="$i" --cpu_devices="$D" "$@" > "$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 20 "$WORKDIR/process_0.log"
exit $status
