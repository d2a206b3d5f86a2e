#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM pod slice: create (or reuse) the TPU VM, install
# dense_ssl on every worker, start the same command on all of them.
#
#   TPU_NAME=detcon ZONE=us-central2-b ACCELERATOR_TYPE=v4-128 \
#   WORKDIR=gs://BUCKET/runs/detcon_b MASKS=gs://BUCKET/masks/imagenet \
#   CONFIG=configs/detcon_b.py:imagenet bash launch/tpu_pod.sh [--config.key=value ...]
#
# Required: TPU_NAME, ZONE, WORKDIR, MASKS (gs:// paths: every worker reads the
# mask shards and writes checkpoints there). Optional: PROJECT (gcloud default),
# ACCELERATOR_TYPE (v4-32: fits DetCon-B, BYOL, SimCLR, LC-loss at batch 4096;
# each config's slice is in benchmarks/results/tpu_compile.md, e.g. DetCon-S
# v4-64), RUNTIME_VERSION (tpu-ubuntu2204-base), CONFIG
# (configs/detcon_b.py:imagenet), REPO_URL (git URL of this repository; default:
# the origin of this checkout), REPO_REF (default: this checkout's commit),
# STEPS=check,create,install,train (any subset), DRY_RUN=1 (print, run nothing).
# Extra arguments go to dense_ssl.main (its --config.* ones to the check too).
#
# The `check` step runs first, on this machine, before any slice is created or
# used: the training step is compiled for ACCELERATOR_TYPE by the TPU compiler
# (launch/compile_check.sh, no TPU needed; 5-20 minutes for a ResNet-50 on a
# laptop-class CPU) and the launch stops if it does not fit the slice's HBM.
# Its report goes to out/compile_check/. Skip it with STEPS=create,install,train.
#
# Logs: process 0 writes TensorBoard events and config.json to WORKDIR; the
# console of every worker goes to ~/dense_ssl_train.log on that worker.
# Preemption / restart: run the script again with STEPS=train; the trainer
# resumes every process from the latest checkpoint in WORKDIR.
set -euo pipefail

die() { echo "tpu_pod.sh: ERROR: $*" >&2; exit 1; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

for v in TPU_NAME ZONE WORKDIR MASKS; do
  [ -n "${!v:-}" ] || die "set $v (see the header of launch/tpu_pod.sh)"
done
case "$WORKDIR$MASKS" in
  *gs://*gs://*) ;;
  *) die "WORKDIR and MASKS must be gs:// paths: every TPU worker reads and writes them" ;;
esac
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/detcon_b.py:imagenet}"
STEPS="${STEPS:-check,create,install,train}"
REPO_URL="${REPO_URL:-$(git -C "$repo" remote get-url origin 2>/dev/null || true)}"
REPO_REF="${REPO_REF:-$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)}"
[ -n "$REPO_URL" ] || die "set REPO_URL: the workers clone dense_ssl from it"
project=()
[ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")
jax_version="$(sed -n 's/^jax==//p' "$repo/requirements.txt")"

run() {
  echo "+ $*"
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
    --worker=all --command="$1"
}

if [[ ",$STEPS," == *",check,"* ]]; then
  overrides=()
  for a in "$@"; do [[ "$a" == --config.* ]] && overrides+=("$a"); done
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "+ bash $repo/launch/compile_check.sh --config=$CONFIG --accelerator=$ACCELERATOR_TYPE ${overrides[*]}"
  else
    echo "== check: does $CONFIG fit $ACCELERATOR_TYPE? (compiling the step for it here)"
    status=0
    bash "$repo/launch/compile_check.sh" --config="$CONFIG" \
      --accelerator="$ACCELERATOR_TYPE" "${overrides[@]}" || status=$?
    case "$status" in
      0) ;;
      3) die "$CONFIG does not fit $ACCELERATOR_TYPE (report above): choose a larger
  ACCELERATOR_TYPE or a smaller --config.batch_size (compile_check --find_max_batch
  finds the largest that fits); no slice was created or used" ;;
      *) die "the compile check failed (exit $status, above); no slice was created or used" ;;
    esac
  fi
fi

if [[ ",$STEPS," == *",create,"* ]]; then
  if [ "${DRY_RUN:-0}" != 1 ] && gcloud compute tpus tpu-vm describe "$TPU_NAME" \
      --zone="$ZONE" "${project[@]}" >/dev/null 2>&1; then
    echo "TPU VM $TPU_NAME exists: reusing it"
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
  fi
fi

if [[ ",$STEPS," == *",install,"* ]]; then
  ssh_all "set -e; [ -d dense_ssl ] || git clone $REPO_URL dense_ssl; cd dense_ssl; \
git fetch -q origin && git checkout -q $REPO_REF; python3 -m venv .venv; \
.venv/bin/pip install -q -r requirements.txt; \
.venv/bin/pip install -q 'jax[tpu]==$jax_version' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
fi

if [[ ",$STEPS," == *",train,"* ]]; then
  extra=""
  for a in "$@"; do extra+=" $(printf '%q' "$a")"; done
  ssh_all "cd dense_ssl && PYTHONPATH=. nohup .venv/bin/python -m dense_ssl.main \
--config=$CONFIG --workdir=$WORKDIR --config.data.dir=$MASKS --multihost$extra \
> ~/dense_ssl_train.log 2>&1 &"
  echo "started on all workers of $TPU_NAME; follow with:"
  echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/dense_ssl_train.log'"
  echo "  tensorboard --logdir $WORKDIR"
fi
