"""Test-wide set-up: 4 simulated CPU devices, and TensorFlow kept off accelerators.

Every test process sees the same 4 CPU devices (set before JAX is imported), so
single-device and multi-device code paths are both exercised on a CPU-only
machine.
"""

import os
import sys

# The PyPI torch wheel bundles triton, whose native library crashes the process
# when loaded after TensorFlow. Triton only serves GPU kernels: hide it.
sys.modules.setdefault('triton', None)

_flags = os.environ.get('XLA_FLAGS', '')
# No lower LLVM opt level: --xla_backend_optimization_level=0 was tried for
# compile time and measured a net loss (DetCon-B test step, 1 / 4 devices:
# first call 9.5 / 12.1 s at -O0 vs 9.6 / 10.6 s at the default, then
# 2.6 / 3.0 s per step vs 0.57 / 0.95 s): XLA:CPU's compile time here is not
# LLVM's optimisation, while -O0 code runs 3-4x slower.
os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests compile the same ResNet-10 step (test presets): a persistent
# compilation cache shared by the pytest workers compiles each once.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      '.cache', 'jax')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

from data_pipeline import tf_setup  # noqa: E402

tf_setup.hide_accelerators()


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: several local processes (multi-host); CI runs them, '
      'skip locally with -m "not slow"')


def pytest_collection_modifyitems(config, items):
  """The multi-process tests first: they are the longest, and a long test
  started last leaves the other pytest worker idle at the end."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
