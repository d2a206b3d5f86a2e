#!/usr/bin/env bash
# Pretraining on GPU hosts: one host (all its GPUs) or several hosts under SLURM.
#
#   # one host, all local GPUs, one process:
#   WORKDIR=/runs/detcon_b MASKS=/data/masks/imagenet bash launch/slurm_gpu.sh
#   # several hosts: submit this script; one task per host:
#   WORKDIR=/shared/runs/detcon_b MASKS=/shared/masks/imagenet \
#     sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/slurm_gpu.sh
#
# Required: WORKDIR, MASKS (on a file system every host sees, or gs://).
# Optional: CONFIG (configs/detcon_b.py:imagenet), PORT (coordinator port,
# 12345), PYTHON (default: .venv/bin/python of this checkout, made by
# launch/setup_env.sh plus `pip install "jax[cuda12]==<version>"`),
# DRY_RUN=1 (print the command, run nothing). Extra arguments go to
# dense_ssl.main.
#
# Under SLURM (SLURM_JOB_ID set with more than one task) every task runs
# srun's copy of the same command with --coordinator_address (the first host
# of the job), --num_processes=$SLURM_NTASKS and --process_id=$SLURM_PROCID;
# process 0 writes logs and config.json. Restart after preemption: submit the
# same job again; it resumes from the latest checkpoint in WORKDIR.
set -euo pipefail

die() { echo "slurm_gpu.sh: ERROR: $*" >&2; exit 1; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for v in WORKDIR MASKS; do
  [ -n "${!v:-}" ] || die "set $v (see the header of launch/slurm_gpu.sh)"
done
CONFIG="${CONFIG:-configs/detcon_b.py:imagenet}"
PORT="${PORT:-12345}"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
[ "${DRY_RUN:-0}" = 1 ] || [ -x "$PYTHON" ] || die "$PYTHON not found: run \
'source launch/setup_env.sh' and pip install \"jax[cuda12]\" first, or set PYTHON"

cmd=(env PYTHONPATH="$repo" "$PYTHON" -m dense_ssl.main --config="$CONFIG"
     --workdir="$WORKDIR" --config.data.dir="$MASKS")
ntasks="${SLURM_NTASKS:-1}"
if [ -n "${SLURM_JOB_ID:-}" ] && [ "$ntasks" -gt 1 ]; then
  [ -n "${SLURM_JOB_NODELIST:-}" ] || die "SLURM_JOB_NODELIST is empty"
  if command -v scontrol >/dev/null; then
    head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
  else
    head_node="${SLURM_JOB_NODELIST%%,*}"
  fi
  # srun expands the per-task id itself: keep $SLURM_PROCID for the task.
  cmd+=(--coordinator_address="$head_node:$PORT" --num_processes="$ntasks"
        --process_id='$SLURM_PROCID')
  launcher=(srun --ntasks="$ntasks" bash -c)
  line="${cmd[*]} $*"
  echo "+ ${launcher[*]} '$line'"
  [ "${DRY_RUN:-0}" = 1 ] || exec "${launcher[@]}" "cd '$repo' && $line"
else
  cmd+=("$@")
  echo "+ ${cmd[*]}"
  [ "${DRY_RUN:-0}" = 1 ] || exec "${cmd[@]}"
fi
