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
# LLVM at -O1 instead of XLA:CPU's default -O3: compiling is most of this
# suite's time, and -O1 compiles a test-preset DetCon-B train step and its
# init in 6.2 + 1.8 s instead of 7.6 + 3.6 s on 1 device (8.0 + 2.2 vs
# 8.8 + 3.8 on 4), with the same step time (0.19 s; 1.0 s on 4). -O0 was
# tried before and measured a net loss: its code runs 3-4x slower.
if '--xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=1'
os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests compile the same ResNet-10 step (test presets): a persistent
# compilation cache shared by the pytest workers compiles each once.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      '.cache', 'jax')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import pytest  # noqa: E402

from data_pipeline import tf_setup  # noqa: E402

tf_setup.hide_accelerators()


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: several local processes (multi-host); CI runs them, '
      'skip locally with -m "not slow"')


# The files whose tests take longest (measured), in that order: they start
# first, because a long test started last leaves the other pytest worker idle
# at the end.
_LONG_FILES = ('test_multiprocess.py', 'test_train.py', 'test_dense_objectives.py',
               'test_faults.py', 'test_method.py')


def pytest_collection_modifyitems(config, items):
  """The multi-process tests first, then the other long files; otherwise the
  collection order (a stable sort)."""
  del config

  def rank(item):
    if item.get_closest_marker('slow') is not None:
      return 0
    name = item.path.name
    return 1 + (_LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES))

  items.sort(key=rank)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The trainer tests' dataset: 16 images of 80 px with blocky GT masks
  (tests/mask_records.py), in 4 shards; read-only, one per pytest worker."""
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('blocky_masks'))
  mask_records.write_blocky_dataset(out, num_examples=16, size=80, num_shards=4)
  return out


@pytest.fixture(scope='session')
def labelled_data_dir(tmp_path_factory):
  """data_dir's images with image labels and class maps too: the online
  probes train on it (a distinct step program: only the tests of the probes
  and the composed resume test use it)."""
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('blocky_labelled'))
  mask_records.write_blocky_dataset(out, num_examples=16, size=80, num_shards=4,
                                    labelled=True)
  return out


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """A real 2-step DetCon-B run (tests/trained_run.py), trained once per session.

  Under pytest-xdist every worker has its own basetemp below a common
  parent: the run lives there, so the workers share one.
  """
  from tests import trained_run as trained_run_lib  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  return trained_run_lib.get(str(base / 'trained_detcon_b'))
