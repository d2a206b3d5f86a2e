"""One network's encoder from a finished run, for the tools (convert, evaluate,
flip_test): the raw saved tree as numpy, no model, no devices needed."""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple
import warnings

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from dense_ssl.checkpoint.damage import describe_restore_failure
from dense_ssl.checkpoint.damage import quiet_closed_loop_noise
from dense_ssl.checkpoint.layout import available_steps
from dense_ssl.checkpoint.layout import CheckpointError
from dense_ssl.checkpoint.layout import checkpoint_dir
from dense_ssl.checkpoint.layout import NETWORKS
from dense_ssl.checkpoint.layout import STATE_ITEM
from dense_ssl.checkpoint.run_config import read_config


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


def fallback_lines(encoder: RestoredEncoder) -> List[str]:
  """What every tool says when restore_encoder fell back past damaged steps.

  One line per skipped step (newest first); the tools print them prefixed
  with their name (dense_ssl.convert, .evaluate, .flip_test).
  """
  return [f'step {bad} cannot be restored ({reason}); using step {encoder.step}, the '
          'newest checkpoint that restores (--step=N to choose; the trainer moves '
          'damaged steps aside when it resumes).' for bad, reason in encoder.skipped]


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
