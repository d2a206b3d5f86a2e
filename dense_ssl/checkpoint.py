"""Orbax checkpoints of the TrainState, and the config saved beside them.

Layout of a workdir:
  config.json                    the full config of the run (process 0)
  checkpoints/<step>/state/      the TrainState (orbax StandardSave, a pytree
                                 with online_params, online_batch_stats,
                                 target_params, target_batch_stats,
                                 opt_state, step, rng, method_state)
  checkpoints/<step>/meta/       JSON: step, total_steps, data position, ...
  events.out.tfevents.*          TensorBoard scalars (process 0)

Orbax writes each step to a temporary folder and renames it when complete
(atomic), in a background thread (async), and keeps the last N. Every
process calls save/restore: with several hosts orbax coordinates them.

A complete step can still be damaged afterwards (a truncated array file, a
deleted _METADATA). `Checkpointer.restore_newest` then names the step and
the file, moves the step folder aside into `checkpoints_corrupt/<step>.<time>`
(never deletes it) and falls back to the newest step that restores; with
several processes they all take the same decision (each tries the same step,
the verdicts are all-gathered, and process 0 moves the folder). A checkpoint
that reads fine but does not fit this run's TrainState (another optimiser,
another method) is not damaged: that is `RunMismatchError`, and
`config_differences` says which config keys differ from config.json.

Tools that read a finished run (dense_ssl.convert, dense_ssl.flip_test) need no
model: `restore_encoder` restores the state's raw tree and takes the encoder
from where the TrainState always keeps it:
  online_params['encoder'], online_batch_stats['encoder']   the online network
  target_params['encoder'], target_batch_stats['encoder']   the EMA target
                                           (empty dicts: the method has none)
  online_params['fpn'], target_params['fpn']                ReSim-FPN's FPN
                                           (params only: it has no BN)
"""

import dataclasses
import json
import logging as py_logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
import warnings

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

STATE_ITEM = 'state'  # the orbax item of the TrainState (Checkpointer.save)
META_ITEM = 'meta'
NETWORKS = ('online', 'target')
CORRUPT_DIR = 'checkpoints_corrupt'  # damaged steps are moved here, never deleted


def checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


class CheckpointError(RuntimeError):
  """A workdir cannot give what was asked; the message says what to do."""


class RunMismatchError(ValueError):
  """A readable checkpoint whose TrainState does not fit this run's."""

  def __init__(self, step, detail):
    self.step, self.detail = step, detail
    super().__init__(f'the checkpoint of step {step} does not fit this run\'s '
                     f'TrainState ({detail})')


# ----------------------------------------------------------------------------
# Damaged checkpoints: what is wrong, in one line; no asyncio noise.
# ----------------------------------------------------------------------------

_NOISE_FILTER_INSTALLED = False


def _is_read_failure_echo(text):
  return any(s in text for s in ('OCDBT', 'TensorStore', 'reading array index'))


class _AsyncioEchoFilter(py_logging.Filter):
  """Drops asyncio's 'Future/Task exception was never retrieved' for failed array reads.

  A read abandoned while it was still a bare future is reported as a Future;
  one already wrapped in a task (more often on a loaded machine) as a Task.
  """

  def filter(self, record):
    message = record.getMessage()
    return not (message.startswith(('Future exception was never retrieved',
                                    'Task exception was never retrieved'))
                and _is_read_failure_echo(message))


def quiet_closed_loop_noise():
  """Drops the echoes of a failed restore, which the caller reports in one line.

  When one array read of an orbax restore fails, orbax's event loop ends
  while tensorstore still completes the other reads: each completion then
  reports 'RuntimeError: Event loop is closed' through sys.unraisablehook,
  orbax's abandoned read coroutines report their own errors the same way,
  and asyncio logs 'Future exception was never retrieved' for each: hundreds
  of traceback lines after the real error. Only those reports are dropped.
  """
  global _NOISE_FILTER_INSTALLED
  if _NOISE_FILTER_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    value = unraisable.exc_value
    code = getattr(unraisable.object, 'cr_code', None)
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    if code is not None and '/orbax/' in code.co_filename and _is_read_failure_echo(
        str(value)):
      return
    previous(unraisable)

  sys.unraisablehook = hook
  py_logging.getLogger('asyncio').addFilter(_AsyncioEchoFilter())
  _NOISE_FILTER_INSTALLED = True


def _chain(error):
  """The exception and its causes/contexts, outermost first."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def describe_restore_failure(error: BaseException, step_dir) -> str:
  """One line: which file of the step folder is damaged, and how."""
  step_dir = str(step_dir).rstrip('/')
  rel = lambda path: os.path.relpath(str(path), step_dir) if '://' not in step_dir else str(path)
  text = '\n'.join(str(e) for e in _chain(error))
  # A deleted/missing metadata file (orbax: "... (named _METADATA) does not exist at DIR").
  m = re.search(r'named (\w+)\) does not exist at (\S+?)\.?$', text, re.M)
  if m:
    return f'{rel(os.path.join(m[2], m[1]))} is missing'
  # A truncated array file (tensorstore, OCDBT): the value's size names the file.
  m = re.search(r'Error reading "([^"/]+)[^"]*" in OCDBT database at local file "([^"]+)"'
                r'.*?is not valid for value of size (\d+)', text, re.S)
  if m:
    array, database, size = m[1], m[2], int(m[3])
    culprits = []
    for root, _, files in os.walk(database):
      culprits += [os.path.join(root, f) for f in files
                   if os.path.getsize(os.path.join(root, f)) == size]
    where = (f'{rel(culprits[0])} is truncated ({size} bytes)' if len(culprits) == 1
             else f'an array file under {rel(database)} is truncated ({size} bytes)')
    return f'{where}: reading array {array} goes past its end'
  for e in _chain(error):
    if isinstance(e, FileNotFoundError) and getattr(e, 'filename', None):
      return f'{rel(e.filename)} is missing'
  innermost = _chain(error)[-1]
  error = innermost if str(innermost).strip() else error
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(first) > 300:
    first = first[:300] + '...'
  return f'{type(error).__name__}: {first}'


def _key_name(k):
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_shapes(tree) -> Dict[str, Tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


def structure_difference(saved_tree, target) -> Optional[str]:
  """None if the saved metadata tree has the target's leaves and shapes, else a line."""
  saved, wanted = _leaf_shapes(saved_tree), _leaf_shapes(target)
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  if only_saved or only_wanted:
    parts = []
    if only_saved:
      parts.append(f'{len(only_saved)} arrays only in the checkpoint, e.g. {only_saved[0]}')
    if only_wanted:
      parts.append(f'{len(only_wanted)} only in this run, e.g. {only_wanted[0]}')
    return '; '.join(parts)
  shapes = [k for k in sorted(wanted) if saved[k] != wanted[k]]
  if shapes:
    k = shapes[0]
    return (f'{len(shapes)} arrays have other shapes, e.g. {k}: {saved[k]} in the '
            f'checkpoint, {wanted[k]} now')
  return None


def _flatten_config(tree, prefix='config'):
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten_config(v, f'{prefix}.{k}'))
  else:
    out[prefix] = tuple(tree) if isinstance(tree, list) else tree
  return out


def config_differences(old: Optional[Mapping], config) -> List[str]:
  """`config.key: OLD in the checkpoint's run, NEW now` for every differing key."""
  if old is None:
    return []
  new = json.loads(config.to_json_best_effort())
  a, b = _flatten_config(old), _flatten_config(new)
  lines = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, '<absent>') != b.get(key, '<absent>'):
      lines.append(f'{key}: {a.get(key, "<absent>")!r} in the checkpoint\'s run, '
                   f'{b.get(key, "<absent>")!r} now')
  return lines


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
  """Refuses to resume a workdir of another run: other objectives or weights, model, batch.

  Only meaningful when the workdir holds checkpoints: the trainer calls it
  then only (a config.json left by a start that failed before its first
  checkpoint binds nothing).
  """
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return
  old = json.loads(path.read_text())
  new = json.loads(config.to_json_best_effort())
  names = sorted(set((old.get('objectives') or {})) | set(new.get('objectives') or {}))
  keys = [('objectives', n, 'weight') for n in names] + [
      ('model', 'depth'), ('model', 'width_multiplier'), ('model', 'projector_dim'),
      ('model', 'projector_hidden'), ('model', 'predictor_hidden'), ('batch_size',),
      ('seed',)]
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


# ----------------------------------------------------------------------------
# Reading a finished run without the model (converter, flip test).
# ----------------------------------------------------------------------------


def read_config(workdir) -> Optional[Dict[str, Any]]:
  """The config.json save_config wrote in the workdir (None if absent)."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path}: unreadable config ({e}).') from e


def available_steps(workdir) -> List[int]:
  """Steps with a complete checkpoint, ascending (orbax writes each step to a
  temporary folder and renames it to the bare number when complete)."""
  directory = epath.Path(checkpoint_dir(workdir))
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and p.is_dir())


@dataclasses.dataclass
class RestoredEncoder:
  """One network's encoder (and FPN) of a checkpoint, as numpy arrays."""
  step: int
  network: str                 # 'online' | 'target'
  params: Dict[str, Any]       # the ResNet's params (conv1, bn1, layer1_0, ...)
  batch_stats: Dict[str, Any]  # its BN statistics
  fpn: Optional[Dict[str, Any]]  # FPN params (ReSim-FPN), None if none
  state: Dict[str, Any]        # the whole restored TrainState, nested dicts
                               # (sequences keyed '0', '1', ...): for listings
  # Newer steps that could not be restored, newest first: [(step, reason)].
  skipped: List[Tuple[int, str]] = dataclasses.field(default_factory=list)

  @property
  def params_path(self) -> str:
    """Where `params` sit in the step folder, '/'-joined."""
    return f'{STATE_ITEM}/{self.network}_params/encoder'

  @property
  def batch_stats_path(self) -> str:
    return f'{STATE_ITEM}/{self.network}_batch_stats/encoder'

  @property
  def fpn_path(self) -> Optional[str]:
    return (f'{STATE_ITEM}/{self.network}_params/fpn'
            if self.fpn is not None else None)

  @classmethod
  def from_state(cls, state: Mapping, network: str, step: int,
                 run_name: Optional[str] = None) -> 'RestoredEncoder':
    """Takes `network`'s encoder from a restored TrainState tree.

    `run_name` (config.json's name) only makes the no-target message more
    specific.
    """
    if network not in NETWORKS:
      raise ValueError(f'network={network!r}: choose one of {NETWORKS}.')
    params = state.get(f'{network}_params') or {}
    stats = state.get(f'{network}_batch_stats') or {}
    if network == 'target' and not params:
      which = f'a {run_name} checkpoint' if run_name else 'the checkpoint'
      raise CheckpointError(
          f'--network=target: {which} has no target encoder (it has: '
          'online). Methods without an EMA target (SimCLR, DetCon-S) have '
          'only the online network: use --network=online.')
    for field, tree in ((f'{network}_params', params),
                        (f'{network}_batch_stats', stats)):
      if not isinstance(tree, Mapping) or not tree.get('encoder'):
        raise CheckpointError(
            f'step {step}: the checkpoint\'s {field} has no encoder (keys: '
            f'{sorted(tree) if isinstance(tree, Mapping) else tree}): not a '
            'dense_ssl TrainState.')
    return cls(step, network, params['encoder'], stats['encoder'],
               params.get('fpn'), dict(state))


def restore_encoder(workdir, step: Optional[int] = None,
                    network: str = 'online') -> RestoredEncoder:
  """Restores `network`'s encoder of a checkpoint (step None: the latest).

  The state item is restored as saved, without a target tree (so without the
  model or the method), onto the host as numpy arrays, whatever devices or
  sharding wrote it. With step None a damaged latest checkpoint (truncated
  array file, missing _METADATA) is skipped for the newest one that restores;
  the result's `skipped` says which and why. Raises CheckpointError with a
  one-line message when the workdir has no checkpoint, the step does not
  exist or cannot be restored, or the network does not exist.
  """
  if network not in NETWORKS:
    raise ValueError(f'network={network!r}: choose one of {NETWORKS}.')
  if '://' not in str(workdir):  # orbax refuses relative paths.
    workdir = os.path.abspath(workdir)
  steps = available_steps(workdir)
  if not steps:
    raise CheckpointError(
        f'--workdir={workdir}: no checkpoints found (no numbered step folders '
        f'in {checkpoint_dir(workdir)}). Train first, or point --workdir at a '
        'training run.')
  if step is not None and step not in steps:
    raise CheckpointError(
        f'--step={step}: no such checkpoint in {checkpoint_dir(workdir)}; '
        f'available: {steps}.')
  skipped = []
  for candidate in ([step] if step is not None else steps[::-1]):
    step_dir = epath.Path(checkpoint_dir(workdir)) / str(candidate)
    try:
      state = _restore_raw_tree(step_dir / STATE_ITEM)
      step = candidate
      break
    except DamagedCheckpointError as e:
      if step is not None:
        others = [s for s in steps if s != step]
        raise CheckpointError(
            f'--step={step}: the checkpoint cannot be restored: {e.detail} '
            f'({step_dir}); other steps: {others or "none"}.') from e
      skipped.append((candidate, e.detail))
  else:
    listing = '; '.join(f'step {s}: {d}' for s, d in skipped)
    raise CheckpointError(f'no checkpoint in {checkpoint_dir(workdir)} can be '
                          f'restored ({listing}).')
  run_name = None
  if network == 'target' and not state.get('target_params'):
    config = read_config(workdir) or {}
    # configs/<name>.py's name; older runs saved it as `method`.
    run_name = config.get('name') or config.get('method')
  encoder = RestoredEncoder.from_state(state, network, step, run_name=run_name)
  encoder.skipped = skipped
  return encoder


class DamagedCheckpointError(CheckpointError):
  """A checkpoint item that cannot be read; `detail` names the file."""

  def __init__(self, path, detail):
    self.path, self.detail = str(path), detail
    super().__init__(f'{path}: cannot be restored: {detail}')


def _restore_raw_tree(path: epath.Path) -> Dict[str, Any]:
  """An orbax pytree item as nested dicts of host numpy arrays."""
  warnings.filterwarnings('ignore', message='Sharding info not provided')
  quiet_closed_loop_noise()
  # The item handler, not a Checkpointer: a Checkpointer expects its own
  # _CHECKPOINT_METADATA in the item folder (the manager writes it one level
  # up) and warns.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(path)
    tree = getattr(meta, 'tree', meta)
    is_array = lambda m: all(hasattr(m, a) for a in ('shape', 'dtype',
                                                     'sharding'))
    # Arrays come back as numpy: the checkpoint may have been written by 8
    # GPUs and be read on a laptop.
    restore_args = jax.tree.map(
        lambda m: ocp.RestoreArgs(
            restore_type=np.ndarray if is_array(m) else None), tree)
    restored = handler.restore(
        path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(path, describe_restore_failure(e, path.parent)) from e
  finally:
    handler.close()
  return _to_numpy_tree(restored)


def _to_numpy_tree(tree):
  """Nested dicts with str keys; sequences keyed '0', '1', ...; None -> {}."""
  if isinstance(tree, Mapping):
    return {str(k): _to_numpy_tree(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return {str(i): _to_numpy_tree(v) for i, v in enumerate(tree)}
  if tree is None:
    return {}
  return np.asarray(tree)
