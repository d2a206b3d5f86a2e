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
A finished run waits (up to --shutdown_timeout_s) for every process to
finish before it leaves the distributed service, so all exit 0.

Errors: a mistake of the user (a config key typo, a bad value, a missing
dataset, a workdir of another run, ...) prints `dense_ssl.main: ERROR: ...`
naming the flag or config key, exit status 1, no traceback (--verbose shows
it); unexpected exceptions (bugs) keep their traceback.
"""

import logging as py_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data_pipeline import tf_setup
from dense_ssl import cli

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
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    'shutdown_timeout_s', 600,
    'Several processes: how long a process that has finished waits for the '
    'others to finish too (and JAX\'s shutdown barrier waits), so that a '
    'process finishing well after another does not make it fail.')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Print the traceback of user errors too (config, data, '
    'workdir problems); by default they are one line each.')
flags.mark_flags_as_required(['config', 'workdir'])

PROG = 'dense_ssl.main'


def fail(message, code=1):
  """Prints `dense_ssl.main: ERROR: message` on stderr and exits."""
  cli.fail(PROG, message, code)


_last_line = cli.last_line
parse_flags = cli.config_flags_parser(PROG, _CONFIG)


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
        fail(f'process {_PROCESS_ID.value} cannot reach the coordinator '
             f'{address} (process 0) within --distributed_timeout_s={timeout}: '
             f'{e}. Start process 0 with the same --coordinator_address, and '
             'check the host name and firewall.')
      time.sleep(1)


def finish_processes(jax, timeout_s):
  """Several processes: wait for all of them, then leave the service together.

  Pending checkpoint writes are done (the trainer closes its checkpointer).
  A barrier of the coordination service with a generous timeout lets a
  process that finishes late (a slow or loaded host) catch up; then every
  process shuts down its client at about the same time, well within JAX's
  shutdown barrier (--shutdown_timeout_s too).
  """
  if jax.process_count() == 1:
    return
  logging.info('waiting up to %d s (--shutdown_timeout_s) for all %d processes to '
               'finish', timeout_s, jax.process_count())
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  try:
    train.wait_for_all_processes('dense_ssl_main_finished', timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    fail(f'process {jax.process_index()} finished, but not all '
         f'{jax.process_count()} processes did within --shutdown_timeout_s='
         f'{timeout_s} ({type(e).__name__}: {_last_line(e)}); the checkpoints '
         'are complete: check the other processes\' logs.')
  logging.info('all %d processes finished', jax.process_count())
  jax.distributed.shutdown()


def user_errors():
  """Exception types that are the user's to fix: one line, no traceback."""
  from dense_ssl import checkpoint  # pylint: disable=g-import-not-at-top
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  tf = tf_setup.hide_accelerators()
  return (train.NonFiniteLossError, checkpoint.CheckpointError, ValueError,
          FileNotFoundError, NotADirectoryError, PermissionError,
          tf.errors.DataLossError)


def main(argv):
  if len(argv) > 1:
    cli.usage_error(PROG, f'unexpected arguments: {argv[1:]}')
  # TF serves tf.data only: it must never claim accelerator memory.
  tf_setup.hide_accelerators()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  # Every problem of the config at once, before joining other processes or
  # touching devices (each process checks the same config the same way).
  from dense_ssl import config_check  # pylint: disable=g-import-not-at-top
  problems = config_check.problems(config)
  if problems:
    fail(str(config_check.ConfigError(problems)))
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value or _COORDINATOR.value:
    join_processes_or_explain()
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               initialization_timeout=_DIST_TIMEOUT.value,
                               heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
                               shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT.value)
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: %d processes, %d devices (%d local): %s', jax.__version__,
               jax.process_count(), jax.device_count(), jax.local_device_count(),
               jax.devices()[0].device_kind)
  try:
    result = train.train_and_evaluate(config, _WORKDIR.value)
  except user_errors() as e:
    if _VERBOSE.value:
      logging.exception('stopping: %s', e)
    message = str(e)
    if not (_VERBOSE.value or '\n' in message
            or isinstance(e, (config_check.ConfigError, train.NonFiniteLossError))):
      message += ' (--verbose shows the traceback)'
    fail(message)
  finish_processes(jax, _SHUTDOWN_TIMEOUT.value)
  if result.get('finished'):
    print(f'finished: step {result["step"]}; checkpoints in '
          f'{os.path.join(_WORKDIR.value, "checkpoints")}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
