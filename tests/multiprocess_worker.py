r"""One JAX process of a multi-process test (tests/test_multiprocess.py).

  python -m tests.multiprocess_worker --record=FILE.npz [--late_exit_s=S] \
      [--fixed_batch_out=FILE2.npz] MAIN_FLAGS...

Runs the trainer's entry point (dense_ssl.main, same flags) unchanged, with
test hooks: every process logs at INFO (main.py quiets processes > 0, and
the tests read "resuming from step N" from each); when training returns,
FILE.npz gets the final step, the last logged loss and the online
parameters as THIS process holds them; with --fixed_batch_out the process
then also runs `run(config, FIXED_BATCH_STEPS)` (the run's own step on a
fixed global batch, in the processes main joined) and writes its losses and parameters
to FILE2.npz; with --late_exit_s this process then sleeps S seconds before
main.py goes on to its end (a process that finishes well after the others).
"""

import functools
import os
import sys

FIXED_BATCH_STEPS = 2


def run(config, steps):
  """S steps of the trainer's own step for `config` on one fixed global batch.

  The step is the program train_and_evaluate compiles for the run's config
  (here from the persistent cache); the batch is the dataset's first global
  batch as ONE process reads it, each process feeding its own devices'
  slice, so any process layout steps on the same global batch. The learning
  rate is 2.0 x batch/256 (an input of the step), large enough that the
  updates are worth comparing.
  Returns (losses [S], {param path: array} of the online network and the
  online probes, as this process holds them).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim, train  # pylint: disable=g-import-not-at-top

  from dense_ssl import online_eval  # pylint: disable=g-import-not-at-top

  mesh = train.make_mesh()
  method = method_lib.Method(config)
  probes = online_eval.OnlineProbes.from_config(
      config, input_pipeline.read_manifest(config.data.dir), method.passes)
  n_dev, local_devices = jax.device_count(), jax.local_device_count()
  whole = next(input_pipeline.make_pretrain_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=0,
      process_index=0, process_count=1, num_local_devices=n_dev,
      probe_targets=probes is not None))  # [n_dev, B, ...]
  first = jax.process_index() * local_devices                      # This process's slice.
  local = {k: v[first:first + local_devices] for k, v in whole.items()}
  tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 10, 0))
  state = train.init_state(method, tx, config, local, mesh, probes=probes)
  step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh, seed=config.seed, data_config=config.data,
                                  probes=probes)
  faster = config.copy_and_resolve_references()
  faster.optimizer.base_lr = 2.0
  hyper = optim.step_hyperparameters(faster, 10, 0)
  batch = train.global_batch(local, mesh)
  # Compile first, then meet: gloo gives a process 30 s to join the first
  # collective, and a loaded machine can compile one process that much later.
  step = step.lower(state, batch, hyper(0)).compile()
  if jax.process_count() > 1:
    train.wait_for_all_processes('worker_compiled', 600)
  losses = []
  for k in range(steps):
    state, metrics = step(state, batch, hyper(k))
    losses.append(float(np.asarray(metrics['loss'].addressable_data(0))))
  # The online parameters and the online probes' (which the run trains too).
  flat = {'/'.join(str(k.key) for k in path): np.asarray(x.addressable_data(0))
          for path, x in jax.tree_util.tree_leaves_with_path(
              dict(online=state.online_params, probe=state.probe_params))}
  return losses, flat


def record_main(out, main_flags, late_exit_s=0.0, fixed_batch_out=None):
  """dense_ssl.main with `main_flags`; saves this process's final state to out
  (and run(config, FIXED_BATCH_STEPS)'s results to fixed_batch_out)."""
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
      losses, flat = run(config, FIXED_BATCH_STEPS)
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
