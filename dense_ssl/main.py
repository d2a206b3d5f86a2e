r"""Pretraining entry point.

  python -m dense_ssl.main --config=configs/detcon_b.py:demo --workdir=out/demo/detcon_b
  python -m dense_ssl.main --config=configs/detcon_b.py:imagenet --workdir=gs://... \
      --config.data.dir=MASKS --config.batch_size=4096

Running it again on the same workdir resumes from the latest checkpoint. Any
config key can be overridden with --config.key=value; the config is locked,
so a misspelt key is an error that names it.

Several hosts (TPU pod slice, multi-node GPU): pass --multihost (TPU pods
need nothing else; on GPU clusters also --coordinator_address,
--num_processes, --process_id, or the SLURM/Open MPI environment that
jax.distributed.initialize() detects). Each process reads its own shards of
the mask dataset; only process 0 writes config.json and TensorBoard logs.
"""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data_pipeline import tf_setup

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and preset, e.g. configs/detcon_b.py:demo.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints and logs go here.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() (several hosts).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-node GPU).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0-based.')
_DIST_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout_s', 300,
    'Fail when the other processes have not joined within this many seconds.')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100,
    'When a process has sent no heartbeat to the coordinator (process 0) for '
    'this many seconds (it died, or its host was lost), JAX terminates every '
    'other process with "the JAX distributed service detected fatal errors" '
    'instead of letting it hang in a collective; the launcher must then '
    'restart ALL processes, which resume from the latest checkpoint. Also '
    'how long the others take to notice. 100 is JAX\'s default; lower it to '
    'fail faster, but keep it well above any pause of a busy host.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter of orbax (dozens of lines per checkpoint)."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def join_processes_or_explain():
  """Says what is being joined, and fails clearly if the coordinator is absent.

  JAX aborts the process with DEADLINE_EXCEEDED when the others do not join
  in time; the line logged first says what that means.
  """
  address, timeout = _COORDINATOR.value, _DIST_TIMEOUT.value
  logging.info('joining %s processes at %s as process %s; waiting up to %d s '
               'for all of them (an abort with DEADLINE_EXCEEDED after this '
               'line means some process was not started, or was started with '
               'another --coordinator_address/--num_processes)',
               _NUM_PROCESSES.value or 'auto', address or 'auto',
               _PROCESS_ID.value if _PROCESS_ID.value is not None else 'auto',
               timeout)
  if not address or not _PROCESS_ID.value:
    return  # Process 0 hosts the coordinator; TPU pods find it themselves.
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=5):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        print(f'ERROR: process {_PROCESS_ID.value} cannot reach the coordinator '
              f'{address} (process 0) within --distributed_timeout_s={timeout}: '
              f'{e}. Start process 0 with the same --coordinator_address, and '
              'check the host name and firewall.', file=sys.stderr)
        sys.exit(1)
      time.sleep(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # TF serves tf.data only: it must never claim accelerator memory.
  tf_setup.hide_accelerators()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value or _COORDINATOR.value:
    join_processes_or_explain()
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               initialization_timeout=_DIST_TIMEOUT.value,
                               heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: %d processes, %d devices (%d local): %s', jax.__version__,
               jax.process_count(), jax.device_count(), jax.local_device_count(),
               jax.devices()[0].device_kind)
  config = _CONFIG.value
  try:
    result = train.train_and_evaluate(config, _WORKDIR.value)
  except (train.NonFiniteLossError, ValueError, FileNotFoundError) as e:
    logging.exception('stopping: %s', e)
    print(f'ERROR: {e}', file=sys.stderr)
    sys.exit(1)
  if result.get('finished'):
    print(f'finished: step {result["step"]}; checkpoints in '
          f'{os.path.join(_WORKDIR.value, "checkpoints")}')


if __name__ == '__main__':
  app.run(main)
