#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every host; JAX finds the pod (--coordinator=auto).
#   bash launch/tpu_pod.sh my-tpu us-central2-b configs/vade_mnist.py [--config.x=y ...]
# The project must be on every host (e.g. git clone + pip install -e . "jax[tpu]"), and the run
# directory on a file system all hosts mount (--workdir=/mnt/shared/runs/vade_mnist): the
# checkpoints are written by all hosts together.
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; CONFIG=${3:?config file}; shift 3
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
  --command="cd gmvc && python -m gmvc.main --config=$CONFIG --coordinator=auto$ARGS"
