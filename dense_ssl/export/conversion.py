"""One conversion of a restored encoder: checks, tensors, listing, the file.

Input is a dense_ssl.checkpoint.RestoredEncoder (the encoder of one network
read from the TrainState's fixed place). `export_encoder` checks its
architecture against config.json and the flags, converts it to torchvision or
Detectron2 names (with the FPN for Detectron2), records where every tensor
came from and why every other checkpoint tensor is left out; `write_export`
writes the file and `listing` says all of it.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from dense_ssl.export import detectron2_format
from dense_ssl.export import torchvision_format
from dense_ssl.export.torchvision_format import ArchitectureError
from dense_ssl.export.torchvision_format import ResNetArchitecture
from dense_ssl.models.resnet import stage_channels


class ConversionError(RuntimeError):
  """What went wrong and what to do; the CLI prints it and exits with 1."""


@dataclasses.dataclass
class Export:
  arch: ResNetArchitecture
  to: str                                    # 'torchvision' | 'detectron2'
  tensors: 'Dict[str, np.ndarray]'           # name -> array, in file order
  sources: Dict[str, str]                    # name -> checkpoint path
  added: Dict[str, str]                      # name -> why it is not from the ckpt
  skipped: List[Tuple[str, tuple, str]]      # (path, shape, reason)
  detectron2_keys: Optional[Mapping] = None
  declared: Optional[ResNetArchitecture] = None  # from config.json


def declared_architecture(config: Optional[Mapping],
                          workdir: str) -> Optional[ResNetArchitecture]:
  """model.depth / model.width_multiplier of config.json (None: no depth)."""
  model = (config or {}).get('model') or {}
  if model.get('depth') is None:
    return None
  try:
    return ResNetArchitecture(int(model['depth']),
                              int(model.get('width_multiplier', 1)))
  except (ArchitectureError, TypeError, ValueError) as e:
    raise ConversionError(
        f'{workdir}/config.json: model depth/width: {e}') from e


def check_architecture(inferred: ResNetArchitecture,
                       declared: Optional[ResNetArchitecture],
                       depth: Optional[int], width: Optional[int]):
  """Refuses a checkpoint that differs from the config or the flags."""
  if declared is not None and declared != inferred:
    raise ConversionError(
        f'the workdir config declares {declared} but the checkpoint\'s encoder '
        f'is {inferred}: the checkpoint does not belong to this config.')
  if depth is not None and depth != inferred.depth:
    raise ConversionError(
        f'--depth={depth} but the checkpoint holds a {inferred} encoder; '
        f'drop --depth or pass --depth={inferred.depth}.')
  if width is not None and width != inferred.width_multiplier:
    raise ConversionError(
        f'--width_multiplier={width} but the checkpoint holds a {inferred} '
        f'encoder; pass --width_multiplier={inferred.width_multiplier}.')


def _check_torchvision_can_build(arch: ResNetArchitecture):
  if arch.depth not in torchvision_format.TORCHVISION_DEPTHS:
    builders = ', resnet'.join(map(str, torchvision_format.TORCHVISION_BUILDERS))
    raise ConversionError(
        f'--to=torchvision: torchvision has no ResNet-{arch.depth} '
        f'(its builders: resnet{builders}). '
        'Use --to=detectron2 --allow_custom_detectron2_depth, or keep the '
        'Flax checkpoint.')
  if arch.width_multiplier != 1:
    raise ConversionError(
        f'--to=torchvision: {arch} has a width multiplier; torchvision has '
        'no such ResNet (wide_resnet50_2 widens only the bottleneck 3x3, a '
        'different network). Use --to=detectron2 (bottleneck ResNets).')


def export_encoder(encoder, to: str, *,
                   declared: Optional[ResNetArchitecture] = None,
                   depth: Optional[int] = None, width: Optional[int] = None,
                   drop_fc: bool = False,
                   allow_custom_detectron2_depth: bool = False) -> Export:
  """Converts a RestoredEncoder; lists every tensor left out and why."""
  try:
    arch = torchvision_format.infer_architecture(encoder.params)
  except ArchitectureError as e:
    raise ConversionError(f'{encoder.params_path}: {e}') from e
  check_architecture(arch, declared, depth, width)
  if to == 'torchvision':
    _check_torchvision_can_build(arch)
  include_fc = to == 'torchvision' and not drop_fc
  try:
    state, added = torchvision_format.flax_resnet_to_torchvision(
        encoder.params, encoder.batch_stats, arch=arch, include_fc=include_fc)
  except ArchitectureError as e:
    raise ConversionError(f'{encoder.params_path}: {e}') from e

  added_why = {}
  for name in added:
    if name.startswith('fc.'):
      added_why[name] = ('ADDED, zero-initialised: a pretraining checkpoint '
                         'has no classifier (train one, or --drop_fc)')
    else:
      added_why[name] = 'ADDED, 0: fresh BN step counter'
  roots = {'params': encoder.params_path,
           'batch_stats': encoder.batch_stats_path}
  sources = {name: f'{roots[t.collection]}/{t.flax_name}' for name, t in
             torchvision_format.torchvision_layout(arch, include_fc).items()
             if t.collection}

  detectron2_keys = None
  if to == 'torchvision':
    tensors = state
  else:
    try:
      detectron2_keys = detectron2_format.detectron2_config_keys(
          arch, allow_custom_depth=allow_custom_detectron2_depth,
          has_fpn=encoder.fpn is not None)
    except ArchitectureError as e:
      raise ConversionError(f'--to=detectron2: {e}') from e
    tensors, _ = detectron2_format.torchvision_to_detectron2(state)
    sources = {detectron2_format.torchvision_to_detectron2_name(k): v
               for k, v in sources.items()}
    added_why = {}
    if encoder.fpn is not None:
      in_ch = dict(zip(detectron2_format.FPN_LEVELS, stage_channels(
          arch.depth, arch.width_multiplier)))
      try:
        fpn = detectron2_format.flax_fpn_to_detectron2(encoder.fpn,
                                                       in_channels=in_ch)
      except ArchitectureError as e:
        raise ConversionError(f'{encoder.fpn_path}: {e}') from e
      for name, value in fpn.items():
        tensors[name] = value
        kind, rest = name[len('fpn_'):].split('.', 1)
        level = kind[-1]
        sources[name] = (f'{encoder.fpn_path}/{kind[:-1]}_{level}/'
                         f'{"kernel" if rest == "weight" else "bias"}')

  skipped = skipped_tensors(encoder, to)
  return Export(arch, to, tensors, sources, added_why, skipped,
                detectron2_keys, declared)


def skipped_tensors(encoder, to: str) -> List[Tuple[str, tuple, str]]:
  """Every leaf of the restored state that is not exported, with the reason.

  Reasons follow the TrainState's fields (dense_ssl/state.py): the exported
  network's `{network}_params` / `{network}_batch_stats` hold the encoder,
  the method's heads and maybe the FPN; the other network's the same; then
  opt_state, step, rng and method_state.
  """
  role = encoder.network
  other = 'target' if role == 'online' else 'online'
  exported = [encoder.params_path, encoder.batch_stats_path]
  if encoder.fpn_path and to == 'detectron2':
    exported.append(encoder.fpn_path)
  item = encoder.params_path.split('/', 1)[0]
  skipped = []
  for path, value in torchvision_format.flatten(encoder.state).items():
    full = f'{item}/{path}'
    if any(full.startswith(r + '/') for r in exported):
      continue
    parts = path.split('/')
    field, sub = parts[0], (parts[1] if len(parts) > 1 else None)
    if field == 'opt_state':
      reason = 'optimizer state'
    elif field in (f'{role}_params', f'{role}_batch_stats'):
      reason = ('FPN: torchvision ResNets have none (use --to=detectron2)'
                if sub == 'fpn' else
                'head of the pretraining method (projector/predictor), not '
                'backbone')
    elif field in (f'{other}_params', f'{other}_batch_stats'):
      reason = (f'{other} network encoder (export it with --network={other})'
                if sub == 'encoder' else
                f'{other} network (not exported with --network={role})')
    elif field in ('step', 'rng'):
      reason = 'training bookkeeping (step, RNG)'
    elif field == 'method_state':
      reason = 'state of the pretraining method (e.g. a queue), not backbone'
    else:
      reason = 'not part of the encoder'
    skipped.append((full, tuple(np.shape(value)), reason))
  return skipped


def write_export(export: Export, out: str):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if export.to == 'torchvision':
    try:
      torchvision_format.write_state_dict(out, export.tensors)
    except ImportError as e:
      raise ConversionError(f'--to=torchvision writes a torch file: {e}') from e
  else:
    detectron2_format.write_detectron2_pickle(out, export.tensors)


def listing(export: Export, out: str, encoder: Any) -> str:
  """What was written, from where, what was left out, and how to load it."""
  lines = [f'dense_ssl.convert: {encoder.network} encoder of step '
           f'{encoder.step} ({encoder.params_path}) -> {export.to} {out}',
           f'architecture: {export.arch} ' + (
               '(read from the checkpoint; matches config.json)'
               if export.declared else '(read from the checkpoint)'),
           f'exported ({len(export.tensors)} tensors):']
  width = max(len(n) for n in export.tensors)
  for name, value in export.tensors.items():
    note = export.added.get(name) or f'<- {export.sources.get(name, "?")}'
    lines.append(f'  {name:<{width}}  {str(tuple(np.shape(value))):<22} {note}')
  lines.append(f'skipped ({len(export.skipped)} checkpoint tensors):')
  for path, shape, reason in export.skipped:
    lines.append(f'  {path}  {shape}  -- {reason}')
  if export.to == 'torchvision':
    if export.arch.depth not in torchvision_format.TORCHVISION_BUILDERS:
      lines.append(
          f'torchvision has no resnet{export.arch.depth}() builder: load into '
          f'{torchvision_format.torchvision_constructor(export.arch)} '
          '(from torchvision.models.resnet import BasicBlock, Bottleneck).')
  else:
    dropped = [n for n in torchvision_format.expected_torchvision_shapes(
        export.arch) if n.startswith('fc.') or n.endswith('num_batches_tracked')]
    lines.append(f'not written for Detectron2: {len(dropped)} torchvision keys '
                 '(fc.*: no classifier in a backbone; *.num_batches_tracked: BN '
                 'step counters, not weights. Detectron2\'s BN and SyncBN layers '
                 '(the detectron2_configs/ recipe) do have this buffer: loading '
                 'a file without it, torch keeps the layer\'s own counter (0 at '
                 'build) and reports nothing missing; FrozenBN and GN have '
                 'none).')
    lines.append('Detectron2 config keys for this backbone (the '
                 'detectron2_configs/ files set them for R50; '
                 'launch/detectron2_eval.sh derives them from the .pkl):')
    for k, v in export.detectron2_keys.items():
      lines.append(f'  {k}: {v!r}')
    lines.append('  as opts: ' + detectron2_format.format_opts(
        export.detectron2_keys))
    if export.arch.depth not in detectron2_format.DETECTRON2_DEPTHS:
      lines.append(f'  WARNING: MODEL.RESNETS.DEPTH {export.arch.depth} needs '
                   'a custom backbone registered with blocks per stage '
                   f'{list(export.arch.stages)}.')
  return '\n'.join(lines)
