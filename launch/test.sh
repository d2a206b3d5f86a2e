#!/usr/bin/env bash
# Runs the test suite on CPU with 4 simulated devices. Installs what it needs
# (requirements.txt, requirements-torch.txt for the torchvision references,
# requirements-dev.txt for pytest) into .venv on first use, and libtpu
# (requirements-tpu.txt) and the CUDA plugin (requirements-gpu-compile.txt)
# beside it for the TPU and GPU compile checks.
#
#   bash launch/test.sh                 # whole suite
#   bash launch/test.sh tests/test_x.py # extra args go to pytest
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-torch.txt requirements-dev.txt requirements-beam.txt
# libtpu and the CUDA plugin for the compile check's tests
# (tests/test_compile_check.py, tests/test_compile_check_gpu.py).
source "$(dirname "$0")/compilers.sh"
export JAX_PLATFORMS=cpu
# Two workers use both cores: most tests are single-threaded compile work.
workers="${PYTEST_WORKERS:-2}"
exec python -m pytest -q -n "$workers" --dist loadgroup --durations=15 "${@:-tests}"
