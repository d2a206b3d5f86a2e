#!/usr/bin/env bash
# Runs the test suite on CPU with 4 simulated devices. Installs what it needs
# (requirements.txt, requirements-torch.txt for the torchvision references,
# requirements-dev.txt for pytest) into .venv on first use, and libtpu
# (requirements-tpu.txt) beside it for the TPU compile check.
#
#   bash launch/test.sh                 # whole suite
#   bash launch/test.sh tests/test_x.py # extra args go to pytest
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-torch.txt requirements-dev.txt requirements-beam.txt
# libtpu for the compile check's test (tests/test_compile_check.py).
source "$(dirname "$0")/tpu_compiler.sh"
export JAX_PLATFORMS=cpu
# Two workers use both cores: most tests are single-threaded compile work.
workers="${PYTEST_WORKERS:-2}"
exec python -m pytest -q -n "$workers" --dist loadgroup --durations=15 "${@:-tests}"
