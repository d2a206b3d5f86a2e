"""The trainer's checkpoints: orbax saves of (state, meta), and the restore that
falls back past damaged steps, setting them aside, with every process agreeing."""

import time
import warnings

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from dense_ssl.checkpoint.damage import describe_restore_failure
from dense_ssl.checkpoint.damage import quiet_closed_loop_noise
from dense_ssl.checkpoint.damage import structure_difference
from dense_ssl.checkpoint.layout import CheckpointError
from dense_ssl.checkpoint.layout import CORRUPT_DIR
from dense_ssl.checkpoint.layout import checkpoint_dir
from dense_ssl.checkpoint.layout import META_ITEM
from dense_ssl.checkpoint.layout import RunMismatchError
from dense_ssl.checkpoint.layout import STATE_ITEM


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

  # --------------------------------------------------- restore, or fall back --

  _OK, _MISMATCH, _CORRUPT = 0, 1, 2

  def _try_step(self, step, target_state):
    """(verdict, detail, (state, meta) or None) of restoring `step` on this process.

    Item handlers, not the manager: no cross-process barrier inside, so a
    process whose read fails cannot leave the others waiting in one.
    """
    step_dir = epath.Path(self.directory) / str(step)
    quiet_closed_loop_noise()
    warnings.filterwarnings('ignore', message='Sharding info not provided')
    handler = ocp.StandardCheckpointHandler()
    try:
      try:
        saved = handler.metadata(step_dir / STATE_ITEM)
      except Exception as e:  # pylint: disable=broad-except
        return self._CORRUPT, describe_restore_failure(e, step_dir), None
      difference = structure_difference(getattr(saved, 'tree', saved), target_state)
      if difference:
        return self._MISMATCH, difference, None
      try:
        state = handler.restore(step_dir / STATE_ITEM,
                                args=ocp.args.StandardRestore(target_state))
        meta_handler = ocp.JsonCheckpointHandler()
        try:
          meta = meta_handler.restore(step_dir / META_ITEM, args=ocp.args.JsonRestore())
        finally:
          meta_handler.close()
      except Exception as e:  # pylint: disable=broad-except
        return self._CORRUPT, describe_restore_failure(e, step_dir), None
    finally:
      handler.close()
    return self._OK, '', (state, dict(meta or {}))

  @staticmethod
  def _worst_over_processes(verdict):
    if jax.process_count() == 1:
      return verdict
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))

  def set_aside(self, step) -> str:
    """Moves checkpoints/<step> to checkpoints_corrupt/<step>.<time> (process 0).

    Every process must call it (it is a collective); returns the new path.
    """
    source = epath.Path(self.directory) / str(step)
    stamp = int(time.time())
    if jax.process_count() > 1:  # One name on every process: process 0's clock.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      stamp = int(multihost_utils.broadcast_one_to_all(np.int64(stamp)))
    target = (epath.Path(self.directory).parent / CORRUPT_DIR /
              f'{step}.{time.strftime("%Y%m%dT%H%M%S", time.gmtime(stamp))}')
    error = ''
    if jax.process_index() == 0:
      try:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
      except Exception as e:  # pylint: disable=broad-except
        error = f'{type(e).__name__}: {e}'
    ok = not error
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not ok:
      raise CheckpointError(
          f'{source} cannot be restored and could not be moved aside to {target}'
          f' ({error or "see process 0"}); move it out of {self.directory} by hand '
          '(keep it for inspection) and run again.')
    self.manager.reload()   # Orbax must no longer list (or garbage-collect) it.
    return str(target)

  def restore_newest(self, target_state, log=logging.warning):
    """Restores the newest step that restores; damaged newer ones are set aside.

    Returns (step, state, meta, skipped) with skipped = [(step, reason,
    moved_to)] of the damaged steps (newest first). Raises RunMismatchError
    when a readable checkpoint does not fit `target_state` (another
    optimiser, another method: falling back would not help), and
    CheckpointError when no step restores (nothing is moved then).
    """
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      verdict, detail, restored = self._try_step(step, target_state)
      agreed = self._worst_over_processes(verdict)
      if agreed == self._OK:
        break
      if agreed == self._MISMATCH:
        raise RunMismatchError(step, detail or 'another process found a mismatch')
      detail = detail or 'another process could not read it'
      log(f'checkpoint of step {step} cannot be restored: {detail} '
          f'({self.directory}/{step})')
      failed.append((step, detail))
    else:
      listing = '; '.join(f'step {s}: {d}' for s, d in failed)
      raise CheckpointError(
          f'no checkpoint in {self.directory} restores ({listing}). Nothing was '
          'moved: inspect them, move them away to start over from step 0, or use '
          'another --workdir.')
    skipped = []
    for bad, detail in failed:
      moved = self.set_aside(bad)
      log(f'moved the damaged checkpoint of step {bad} aside to {moved} (kept, '
          'not deleted)')
      skipped.append((bad, detail, moved))
    state, meta = restored
    return step, state, meta, skipped

  def save(self, step, state, meta):
    """Starts saving `step` (returns at once when async). The trainer decides
    when to save (config.ckpt_every_steps), so orbax's own interval policy is
    overridden (force=True)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
