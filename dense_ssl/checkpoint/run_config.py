"""config.json beside the checkpoints: written once, compared on resume, read by the tools."""

import json
from typing import Any, Dict, List, Mapping, Optional

from absl import logging
from etils import epath

from dense_ssl.checkpoint.layout import CheckpointError


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


def read_config(workdir) -> Optional[Dict[str, Any]]:
  """The config.json save_config wrote in the workdir (None if absent)."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path}: unreadable config ({e}).') from e
