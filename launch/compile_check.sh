#!/usr/bin/env bash
# Compiles the training step for a TPU slice or NVIDIA GPUs on this host (no
# TPU or GPU needed) and reports per-device memory, FLOPs and collectives
# (dense_ssl/compile_check.py). Installs the project's venv, libtpu and the
# CUDA plugin on first use.
#
#   bash launch/compile_check.sh --config=configs/detcon_b.py:imagenet --accelerator=v4-32
#   bash launch/compile_check.sh --config=configs/clove.py:imagenet --accelerator=v4-32 \
#       --find_max_batch
#   bash launch/compile_check.sh --config=configs/detcon_b.py:imagenet \
#       --accelerator=h100-80gb-8 --per_device_batch=128
#
# Exit status: 0 fits, 3 does not fit, 1 a user error (one line on stderr).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
source "$(dirname "$0")/compilers.sh"
exec python -m dense_ssl.compile_check "$@"
