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
import os
from typing import Any, Dict, List, Mapping, Optional
import warnings

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

STATE_ITEM = 'state'  # the orbax item of the TrainState (Checkpointer.save)
NETWORKS = ('online', 'target')


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
  """Refuses to resume a workdir of another run: other objectives or weights, model, batch."""
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


class CheckpointError(RuntimeError):
  """A workdir cannot give what was asked; the message says what to do."""


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
  sharding wrote it. Raises CheckpointError with a one-line message when the
  workdir has no checkpoint, the step does not exist, or the network does not.
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
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(
        f'--step={step}: no such checkpoint in {checkpoint_dir(workdir)}; '
        f'available: {steps}.')
  path = epath.Path(checkpoint_dir(workdir)) / str(step) / STATE_ITEM
  state = _restore_raw_tree(path)
  run_name = None
  if network == 'target' and not state.get('target_params'):
    config = read_config(workdir) or {}
    # configs/<name>.py's name; older runs saved it as `method`.
    run_name = config.get('name') or config.get('method')
  return RestoredEncoder.from_state(state, network, step, run_name=run_name)


def _restore_raw_tree(path: epath.Path) -> Dict[str, Any]:
  """An orbax pytree item as nested dicts of host numpy arrays."""
  warnings.filterwarnings('ignore', message='Sharding info not provided')
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
    raise CheckpointError(
        f'{path}: orbax could not restore this checkpoint item '
        f'({type(e).__name__}: {e}).') from e
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
