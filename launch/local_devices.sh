#!/usr/bin/env bash
# Data-parallel training on N devices of this machine. Without accelerators, N fake CPU devices
# show the mechanics (shard_map over a 1-D mesh; the batch must divide by N).
#   bash launch/local_devices.sh 8 configs/gmvae_spiral.py [--config.parallel.mode=pmap ...]
set -euo pipefail
N=${1:?number of devices}; CONFIG=${2:?config file}; shift 2
cd "$(dirname "$0")/.."
exec python -m gmvc.main --config="$CONFIG" --cpu_devices="$N" --config.parallel.devices="$N" "$@"
