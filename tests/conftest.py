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
# The suite is compile-bound (tiny models, few steps): LLVM at -O0 compiles a
# train step in about two thirds of the CPU time (measured: 207 vs 313 CPU-s
# for two 1-vs-4-device tests, empty cache) and gives the same numbers (the
# golden values hold). An explicit opt level in XLA_FLAGS wins.
if 'xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'
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
