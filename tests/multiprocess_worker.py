r"""One JAX process of a multi-process test (tests/test_multiprocess.py).

  python -m tests.multiprocess_worker --record=FILE.npz [--late_exit_s=S] \
      [--fixed_batch_out=FILE2.npz] MAIN_FLAGS...

Runs the trainer's entry point (dense_ssl.main, same flags) unchanged, with
test hooks: every process logs at INFO (main.py quiets processes > 0, and
the tests read "resuming from step N" from each); when training returns,
FILE.npz gets the final step, the last logged loss and the online
parameters as THIS process holds them; with --fixed_batch_out the process
then also runs `run(FIXED_BATCH_STEPS)` (DetCon-B steps on a fixed global
batch, in the processes main joined) and writes its losses and parameters
to FILE2.npz; with --late_exit_s this process then sleeps S seconds before
main.py goes on to its end (a process that finishes well after the others).
"""

import functools
import os
import sys

FIXED_BATCH_STEPS = 2


def run(steps):
  """S DetCon-B test-preset steps on a fixed global batch, over all devices.

  Works in any process layout: each process feeds its own devices' slice.
  Returns (losses [S], {param path: array} as this process holds them).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import detcon_b  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim, train  # pylint: disable=g-import-not-at-top
  from tests.fake_data import fake_batch  # pylint: disable=g-import-not-at-top

  config = detcon_b.get_config('test')
  config.optimizer.base_lr = 2.0
  mesh = train.make_mesh()
  method = method_lib.Method(config)
  schedule = optim.learning_rate_schedule(config, 10, 0)
  tx = optim.make_optimizer(config, schedule)
  n_dev = jax.device_count()
  batch = fake_batch(n_dev * 2, 1)                  # 2 examples per device.
  local_devices = jax.local_device_count()
  first = jax.process_index() * local_devices * 2   # This process's slice.
  local = {k: v[first:first + local_devices * 2].reshape(
      (local_devices, 2) + v.shape[1:]) for k, v in batch.items()}
  state = train.init_state(method, tx, config, local, mesh)
  step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh)
  hyper = optim.step_hyperparameters(config, 10, 0)
  batch = train.global_batch(local, mesh)
  # Compile first, then meet: gloo gives a process 30 s to join the first
  # collective, and a loaded machine can compile one process that much later.
  step = step.lower(state, batch, hyper(0)).compile()
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier('worker_compiled', 600_000)
  losses = []
  for k in range(steps):
    state, metrics = step(state, batch, hyper(k))
    losses.append(float(np.asarray(metrics['loss'].addressable_data(0))))
  flat = {'/'.join(str(k.key) for k in path): np.asarray(x.addressable_data(0))
          for path, x in jax.tree_util.tree_leaves_with_path(state.online_params)}
  return losses, flat


def record_main(out, main_flags, late_exit_s=0.0, fixed_batch_out=None):
  """dense_ssl.main with `main_flags`; saves this process's final state to out
  (and run(FIXED_BATCH_STEPS)'s results to fixed_batch_out)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dense_ssl import main as entry  # pylint: disable=g-import-not-at-top
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  train_and_evaluate = train.train_and_evaluate

  def recorded(config, workdir, **kwargs):
    logging.set_verbosity(logging.INFO)  # Also on processes > 0.
    result = train_and_evaluate(config, workdir, **kwargs)
    if result.get('state') is not None:
      flat = {'/'.join(str(k.key) for k in path): np.asarray(x.addressable_data(0))
              for path, x in jax.tree_util.tree_leaves_with_path(
                  result['state'].online_params)}
      np.savez(out, step=result['step'],
               loss=result['metrics'].get('train/loss', np.nan), **flat)
    if fixed_batch_out:
      losses, flat = run(FIXED_BATCH_STEPS)
      np.savez(fixed_batch_out, losses=np.asarray(losses), **flat)
    if late_exit_s:
      logging.info('test hook: finishing %.0f s late', late_exit_s)
      import time  # pylint: disable=g-import-not-at-top
      time.sleep(late_exit_s)
    return result

  train.train_and_evaluate = recorded
  app.run(entry.main, argv=['dense_ssl.main'] + list(main_flags),
          flags_parser=entry.parse_flags)


def main(argv):
  if len(argv) > 1 and argv[1].startswith('--record='):
    hooks, rest = {}, argv[2:]
    while rest and rest[0].split('=', 1)[0] in ('--late_exit_s', '--fixed_batch_out'):
      key, value = rest[0][2:].split('=', 1)
      hooks[key], rest = value, rest[1:]
    return record_main(argv[1].split('=', 1)[1], rest,
                       float(hooks.get('late_exit_s', 0.0)), hooks.get('fixed_batch_out'))
  raise SystemExit(f'usage: {__doc__}')


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main(sys.argv)
