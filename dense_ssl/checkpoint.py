"""Orbax checkpoints of the TrainState, and the config saved beside them.

Layout of a workdir:
  config.json                    the full config of the run (process 0)
  checkpoints/<step>/state/      the TrainState (orbax StandardSave, a pytree
                                 with online_params, online_batch_stats,
                                 target_params, target_batch_stats,
                                 opt_state, step, rng)
  checkpoints/<step>/meta/       JSON: step, total_steps, data position, ...
  events.out.tfevents.*          TensorBoard scalars (process 0)

Orbax writes each step to a temporary folder and renames it when complete
(atomic), in a background thread (async), and keeps the last N. Every
process calls save/restore: with several hosts orbax coordinates them.
"""

import json
import os

from absl import logging
from etils import epath
import orbax.checkpoint as ocp


def checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


class Checkpointer:
  """A CheckpointManager for (state, meta) items at workdir/checkpoints."""

  def __init__(self, workdir, *, keep, async_save=True):
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step, state, meta):
    """Starts saving (returns at once when async); force: ignore intervals."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def restore(self, step, target_state):
    """Restores step into the structure, shapes and shardings of target_state."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def save_config(workdir, config):
  """Writes workdir/config.json (what the converter and plots read)."""
  # epath: local paths and gs:// alike.
  path = epath.Path(workdir) / 'config.json'
  tmp = epath.Path(workdir) / 'config.json.tmp'
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  tmp.replace(path)


def check_config_matches(workdir, config):
  """Refuses to resume a workdir with an incompatible model or method."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return
  old = json.loads(path.read_text())
  new = json.loads(config.to_json_best_effort())
  keys = [('method',), ('model', 'depth'), ('model', 'width_multiplier'),
          ('model', 'projector_dim'), ('model', 'projector_hidden'),
          ('model', 'predictor_hidden'), ('batch_size',), ('seed',)]
  for key in keys:
    a, b = old, new
    for k in key:
      a, b = (a or {}).get(k), (b or {}).get(k)
    if a != b:
      raise ValueError(
          f'{path} says config.{".".join(key)}={a!r} but this run has {b!r}: '
          'the workdir holds checkpoints of a different run. Use another '
          '--workdir, or pass the same setting to resume.')
  logging.info('config matches %s', path)
