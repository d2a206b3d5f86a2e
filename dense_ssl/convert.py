r"""Converts a pretrained encoder to PyTorch: torchvision or Detectron2.

  python -m dense_ssl.convert --workdir=out/detcon_b --to=torchvision \
      --out=detcon_b_r50.pth
  python -m dense_ssl.convert --workdir=out/detcon_b --to=detectron2 \
      --out=detcon_b_r50.pkl [--network=target] [--step=N]

Reads the workdir's latest checkpoint (or --step), takes the ResNet encoder of
the online network (or the EMA target with --network=target), and writes
  --to=torchvision  a state_dict (.pth) that torchvision.models.resnet{D}()
                    loads with strict=True. A pretraining checkpoint has no
                    classifier: `fc` is written zero-initialised (flagged in
                    the listing) so the strict load works; --drop_fc leaves it
                    out (then load with strict=False).
  --to=detectron2   a pickle {"model": {name: ndarray}, "__author__":
                    "dense_ssl", "matching_heuristics": True} with Detectron2
                    names (dense_ssl/export/detectron2_names.py), plus the FPN
                    of methods that train one; prints the config keys
                    (MODEL.RESNETS.*) that build the matching backbone.
Every exported tensor (name, shape) and every skipped one (with the reason)
is printed and written to OUT.txt. --verify (on by default when torch is
importable) runs the Flax encoder and the converted torchvision network (for
Detectron2 files: after renaming back) on one random batch and fails when
C2..C5 differ beyond float32 tolerance.
"""

import dataclasses
import json
import os
import sys
import warnings

# The PyPI torch wheel bundles triton, whose native library segfaults the
# process when loaded after TensorFlow (which orbax or the data pipeline may
# import). The CPU checks here need no triton: hide it before torch loads.
sys.modules.setdefault('triton', None)
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from dense_ssl.export import detectron2_names as d2names
from dense_ssl.export import torch_reference
from dense_ssl.export import torchvision_names as tvnames
from dense_ssl.export.torchvision_names import ArchitectureError
from dense_ssl.export.torchvision_names import ResNetArchitecture
from dense_ssl.models.resnet import stage_channels

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to read.')
_STEP = flags.DEFINE_integer('step', None,
                             'Checkpoint step; default: the latest.')
_NETWORK = flags.DEFINE_enum(
    'network', 'online', ['online', 'target'],
    'Which encoder: the online network (default) or the EMA target.')
_TO = flags.DEFINE_enum('to', None, ['torchvision', 'detectron2'],
                        'Output format.')
_OUT = flags.DEFINE_string('out', None, 'Output file (.pth or .pkl).')
_VERIFY = flags.DEFINE_bool(
    'verify', None, 'Compare Flax and torch outputs after converting; '
    'default: on when torch is importable.')
_DROP_FC = flags.DEFINE_bool(
    'drop_fc', False, '--to=torchvision: write no fc (load with '
    'strict=False) instead of a zero-initialised one.')
_DEPTH = flags.DEFINE_integer(
    'depth', None, 'Expected ResNet depth; refuse a checkpoint that differs.')
_WIDTH = flags.DEFINE_integer(
    'width_multiplier', None,
    'Expected width multiplier; refuse a checkpoint that differs.')
_ALLOW_CUSTOM_DEPTH = flags.DEFINE_bool(
    'allow_custom_detectron2_depth', False,
    'Write Detectron2 weights for ResNet-200 although Detectron2\'s '
    'build_resnet_backbone cannot build it (for a custom backbone).')
_RTOL = flags.DEFINE_float(
    'verify_rtol', torch_reference.DEFAULT_RTOL,
    'Largest accepted max|flax - torch| / max|torch| per stage.')
_IMAGE_SIZE = flags.DEFINE_integer('verify_image_size', 128,
                                   'Side of the random verification images.')
_BATCH = flags.DEFINE_integer('verify_batch', 2, 'Verification batch size.')

_OPTIMIZER_WORDS = ('opt_state', 'optimizer', 'opt')


class ConversionError(RuntimeError):
  """What went wrong and what to do; the CLI prints it and exits with 1."""


# ----------------------------------------------------------------------------
# Reading a workdir.
# ----------------------------------------------------------------------------


def find_checkpoint_dir(workdir: str) -> str:
  """The orbax CheckpointManager directory of a workdir."""
  for d in (os.path.join(workdir, 'checkpoints'), workdir):
    if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
      return d
  raise ConversionError(
      f'--workdir={workdir}: no checkpoints found (looked for numbered step '
      f'folders in {workdir}/checkpoints and {workdir}). Train first, or '
      'point --workdir at a training run.')


def available_steps(ckpt_dir: str) -> List[int]:
  """Steps whose checkpoint is complete (orbax writes to a tmp name first)."""
  return sorted(int(n) for n in os.listdir(ckpt_dir)
                if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n)))


def _to_numpy_tree(tree):
  if isinstance(tree, Mapping):
    return {str(k): _to_numpy_tree(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return {str(i): _to_numpy_tree(v) for i, v in enumerate(tree)}
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    return {f.name: _to_numpy_tree(getattr(tree, f.name))
            for f in dataclasses.fields(tree)}
  if hasattr(tree, '_asdict'):
    return _to_numpy_tree(tree._asdict())
  if tree is None:
    return {}
  return np.asarray(tree)


def restore_checkpoint(workdir: str, step: Optional[int] = None
                       ) -> Tuple[int, Dict[str, Any]]:
  """Restores a checkpoint as a nested dict of numpy arrays (no target tree).

  Each item folder of the step (orbax Composite items, or `default`) is
  restored with orbax's PyTree handler on CPU.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings('ignore', message='Sharding info not provided')
  if '://' not in workdir:  # orbax refuses relative paths (gs:// as is).
    workdir = os.path.abspath(workdir)
  ckpt_dir = find_checkpoint_dir(workdir)
  steps = available_steps(ckpt_dir)
  if not steps:
    raise ConversionError(f'{ckpt_dir}: no complete checkpoint step.')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ConversionError(
        f'--step={step}: no such checkpoint in {ckpt_dir}; available: {steps}.')
  step_dir = os.path.join(ckpt_dir, str(step))
  items = {}
  for name in sorted(os.listdir(step_dir)):
    path = os.path.join(step_dir, name)
    if os.path.isdir(path):
      items[name] = _restore_item(ocp, path)
  return step, items


def _restore_item(ocp, path):
  """One orbax item as numpy, whatever devices or sharding it was saved with."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(path, 'metadata')) and not os.path.exists(
      os.path.join(path, '_METADATA')):
    try:  # A JSON item (orbax JsonSave), e.g. a saved config.
      with open(os.path.join(path, 'metadata')) as f:
        return json.load(f)
    except (OSError, ValueError):
      pass
  # The item handler, not a Checkpointer: a Checkpointer expects its own
  # _CHECKPOINT_METADATA in the item folder (the manager writes it one level
  # up) and warns about every item.
  handler = ocp.PyTreeCheckpointHandler()
  path = epath.Path(path)
  try:
    meta = handler.metadata(path)
    tree = getattr(meta, 'tree', meta)
    # Arrays come back as host numpy arrays: the checkpoint may have been
    # written by 8 GPUs and be converted on a laptop.
    is_array = lambda m: all(hasattr(m, a) for a in ('shape', 'dtype',
                                                     'sharding'))
    restore_args = jax.tree.map(
        lambda m: ocp.RestoreArgs(
            restore_type=np.ndarray if is_array(m) else None), tree)
    restored = handler.restore(
        path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f'{path}: orbax could not restore this checkpoint item '
        f'({type(e).__name__}: {e}).') from e
  finally:
    handler.close()
  return _to_numpy_tree(restored)


def read_workdir_config(workdir: str) -> Optional[Dict[str, Any]]:
  """The config.json the trainer saved in the workdir (None if absent)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f'{path}: unreadable config ({e}).') from e


def read_workdir_architecture(workdir: str) -> Optional[ResNetArchitecture]:
  """Depth and width from the config the trainer saved in the workdir."""
  config = read_workdir_config(workdir)
  if config is None:
    return None
  model = config.get('model', config)
  depth = model.get('depth', model.get('resnet_depth'))
  width = model.get('width_multiplier', model.get('width', 1))
  if depth is None:
    return None
  try:
    return ResNetArchitecture(int(depth), int(width))
  except (ArchitectureError, TypeError, ValueError) as e:
    raise ConversionError(
        f'{workdir}/config.json: model depth/width: {e}') from e


# ----------------------------------------------------------------------------
# Finding the encoder in a restored state.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Network:
  """The tensors of one network's encoder (and FPN) in the restored tree."""
  role: str                      # 'online' | 'target'
  params_path: str               # '/'-joined path of the encoder params
  stats_path: str                # ... of its batch_stats
  params: Mapping
  batch_stats: Mapping
  fpn_path: Optional[str] = None
  fpn: Optional[Mapping] = None


def _walk(tree, path=()):
  """Yields (path tuple, subtree) for every dict in a nested dict."""
  if isinstance(tree, Mapping):
    yield path, tree
    for k, v in tree.items():
      yield from _walk(v, path + (str(k),))


def _encoder_kind(sub) -> Optional[str]:
  """'params' / 'batch_stats' if `sub` is our ResNet's tree of that kind."""
  if not (isinstance(sub, Mapping) and 'bn1' in sub and 'layer1_0' in sub):
    return None
  leaves = {p.rsplit('/', 1)[-1] for p in tvnames.flatten(sub)}
  if leaves and leaves <= {'mean', 'var'}:
    return 'batch_stats'  # BN statistics: no conv1 (convs have none).
  return 'params' if tvnames.is_resnet_tree(sub) else None


def _is_optimizer_path(path) -> bool:
  return any(p.lower() in _OPTIMIZER_WORDS or p.lower().startswith('opt_')
             for p in path)


def _explicit_role(path) -> Optional[str]:
  """'target' / 'online' if a path component names the network, else None."""
  low = [p.lower() for p in path]
  if any('target' in p or p == 'ema' or p.startswith('ema_') for p in low):
    return 'target'
  if any('online' in p for p in low):
    return 'online'
  return None


def _role(path) -> str:
  """A network without a name (SimCLR/DetCon-S: one network) is 'online'."""
  return _explicit_role(path) or 'online'


def locate_network(tree: Mapping, role: str,
                   method: Optional[str] = None) -> Network:
  """Finds the `role` encoder's params, batch_stats (and FPN) in `tree`.

  An encoder is a subtree with conv1/bn1/layer1_0 (our ResNet); it is a
  params tree if its leaves are kernel/scale/bias and a batch_stats tree if
  they are mean/var. Optimizer state (paths through opt_state) is ignored. A
  path component containing 'target' (or 'ema') marks the EMA target.
  `method` (from config.json) only makes error messages more specific.
  """
  found = {'params': [], 'batch_stats': []}
  for path, sub in _walk(tree):
    if _is_optimizer_path(path):
      continue
    kind = _encoder_kind(sub)
    if kind:
      found[kind].append(path)
  mine = {k: [p for p in v if _role(p) == role] for k, v in found.items()}
  roles = sorted({_role(p) for v in found.values() for p in v})
  if not found['params']:
    raise ConversionError(
        'no ResNet encoder (conv1, bn1, layer1_0, ...) found in the '
        'checkpoint; top-level items: ' + ', '.join(sorted(tree)))
  if not mine['params']:
    which = f'a {method} checkpoint' if method else 'the checkpoint'
    raise ConversionError(
        f'--network={role}: {which} has no {role} encoder (it has: '
        f'{", ".join(roles)}). Methods without an EMA target (SimCLR, '
        'DetCon-S) have only the online network: use --network=online.')
  for kind in ('params', 'batch_stats'):
    if len(mine[kind]) != 1:
      raise ConversionError(
          f'expected one {role} encoder {kind} tree, found '
          f'{len(mine[kind])}: ' + ', '.join('/'.join(p) for p in mine[kind]))
  params_path, stats_path = mine['params'][0], mine['batch_stats'][0]
  get = lambda p: _get(tree, p)
  net = Network(role, '/'.join(params_path), '/'.join(stats_path),
                get(params_path), get(stats_path))
  # An FPN is a sibling of the encoder (same parent module) named 'fpn'.
  parent = get(params_path[:-1])
  if isinstance(parent, Mapping) and 'fpn' in parent:
    net.fpn_path = '/'.join(params_path[:-1] + ('fpn',))
    net.fpn = parent['fpn']
  return net


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


# ----------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Export:
  arch: ResNetArchitecture
  to: str
  tensors: 'Dict[str, np.ndarray]'          # name -> array, in file order
  sources: Dict[str, str]                    # name -> checkpoint path / note
  added: Dict[str, str]                      # name -> why it is not from the ckpt
  skipped: List[Tuple[str, tuple, str]]      # (path, shape, reason)
  detectron2_keys: Optional[Mapping] = None
  declared: Optional[ResNetArchitecture] = None  # from config.json


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


def export_network(tree: Mapping, net: Network, to: str, *,
                   declared: Optional[ResNetArchitecture] = None,
                   depth: Optional[int] = None, width: Optional[int] = None,
                   drop_fc: bool = False,
                   allow_custom_detectron2_depth: bool = False) -> Export:
  """Converts `net` of a restored tree; lists every tensor left out and why."""
  try:
    inferred = tvnames.infer_architecture(net.params)
  except ArchitectureError as e:
    raise ConversionError(f'{net.params_path}: {e}') from e
  check_architecture(inferred, declared, depth, width)
  arch = inferred
  if to == 'torchvision':
    if arch.depth not in tvnames.TORCHVISION_DEPTHS:
      raise ConversionError(
          f'--to=torchvision: torchvision has no ResNet-{arch.depth} '
          f'(its builders: resnet{", resnet".join(map(str, tvnames.TORCHVISION_DEPTHS))}). '
          'Use --to=detectron2 --allow_custom_detectron2_depth, or keep the '
          'Flax checkpoint.')
    if arch.width_multiplier != 1:
      raise ConversionError(
          f'--to=torchvision: {arch} has a width multiplier; torchvision has '
          'no such ResNet (wide_resnet50_2 widens only the bottleneck 3x3, a '
          'different network). Use --to=detectron2 (bottleneck ResNets).')
  try:
    state, added = tvnames.flax_resnet_to_torchvision(
        net.params, net.batch_stats, arch=arch,
        include_fc=(to == 'torchvision' and not drop_fc))
  except ArchitectureError as e:
    raise ConversionError(f'{net.params_path}: {e}') from e

  added_why = {}
  for name in added:
    if name.startswith('fc.'):
      added_why[name] = ('ADDED, zero-initialised: a pretraining checkpoint '
                         'has no classifier (train one, or --drop_fc)')
    else:
      added_why[name] = 'ADDED, 0: fresh BN step counter'
  sources = {}
  for name in state:
    if name not in added_why:
      sources[name] = _flax_source(net, name)

  detectron2_keys = None
  if to == 'torchvision':
    tensors = state
  else:
    try:
      detectron2_keys = d2names.detectron2_config_keys(
          arch, allow_custom_depth=allow_custom_detectron2_depth,
          has_fpn=net.fpn is not None)
    except ArchitectureError as e:
      raise ConversionError(f'--to=detectron2: {e}') from e
    tensors, _ = d2names.torchvision_to_detectron2(state)
    sources = {d2names.torchvision_to_detectron2_name(k): v
               for k, v in sources.items()}
    added_why = {}
    if net.fpn is not None:
      in_ch = dict(zip(d2names.FPN_LEVELS, stage_channels(
          arch.depth, arch.width_multiplier)))
      try:
        fpn = d2names.flax_fpn_to_detectron2(net.fpn, in_channels=in_ch)
      except ArchitectureError as e:
        raise ConversionError(f'{net.fpn_path}: {e}') from e
      for name, value in fpn.items():
        tensors[name] = value
        kind, rest = name[len('fpn_'):].split('.', 1)
        level = kind[-1]
        sources[name] = (f'{net.fpn_path}/{kind[:-1]}_{level}/'
                         f'{"kernel" if rest == "weight" else "bias"}')

  skipped = _skipped_tensors(tree, net, to)
  return Export(arch, to, tensors, sources, added_why, skipped,
                detectron2_keys, declared)


def _flax_source(net: Network, tv_name: str) -> str:
  """torchvision key -> the checkpoint path it came from."""
  module, leaf = tv_name.rsplit('.', 1)
  parts = module.split('.')
  if parts[0].startswith('layer'):
    inner = '.'.join(parts[2:])
    inner = {'downsample.0': 'downsample_conv',
             'downsample.1': 'downsample_bn'}.get(inner, inner)
    module = f'{parts[0]}_{parts[1]}/{inner}'
  if leaf in ('running_mean', 'running_var'):
    return f'{net.stats_path}/{module}/{leaf[len("running_"):]}'
  flax_leaf = {'weight': 'kernel' if 'conv' in module else 'scale',
               'bias': 'bias'}[leaf]
  return f'{net.params_path}/{module}/{flax_leaf}'


def _skipped_tensors(tree, net: Network, to: str):
  """Every checkpoint leaf that is not exported, with the reason."""
  exported_roots = [net.params_path, net.stats_path]
  if net.fpn_path and to == 'detectron2':
    exported_roots.append(net.fpn_path)
  # The method's heads (projector, predictor) sit next to the encoder in the
  # same params / batch_stats dicts (TrainState.online_params['projector']).
  head_roots = [p.rsplit('/', 1)[0] for p in (net.params_path, net.stats_path)
                if '/' in p]
  other = 'target' if net.role == 'online' else 'online'
  skipped = []
  for path, value in tvnames.flatten(tree).items():
    if any(path == r or path.startswith(r + '/') for r in exported_roots):
      continue
    parts = tuple(path.split('/'))
    if _is_optimizer_path(parts):
      reason = 'optimizer state'
    elif net.fpn_path and path.startswith(net.fpn_path + '/'):
      reason = 'FPN: torchvision ResNets have none (use --to=detectron2)'
    elif _explicit_role(parts) == other and any(
        _encoder_kind(_safe_get(tree, parts[:i]))
        for i in range(1, len(parts))):
      reason = f'{other} network encoder (export it with --network={other})'
    elif _explicit_role(parts) == other:
      reason = f'{other} network (not exported with --network={net.role})'
    elif any(path.startswith(r + '/') for r in head_roots):
      reason = 'head of the pretraining method (projector/predictor), not backbone'
    elif (np.ndim(value) == 0 or not isinstance(value, np.ndarray)
          or parts[-1] in ('rng', 'step')):
      reason = 'training bookkeeping (step, RNG, scalars)'
    else:
      reason = 'not part of the encoder'
    skipped.append((path, tuple(np.shape(value)), reason))
  return skipped


def _safe_get(tree, path):
  try:
    return _get(tree, path)
  except (KeyError, TypeError):
    return None


# ----------------------------------------------------------------------------
# Writing and verifying.
# ----------------------------------------------------------------------------


def write_export(export: Export, out: str):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if export.to == 'torchvision':
    try:
      torch, _ = torch_reference.import_torch()
    except ImportError as e:
      raise ConversionError(f'--to=torchvision writes a torch file: {e}') from e
    import collections  # pylint: disable=g-import-not-at-top
    torch.save(collections.OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in export.tensors.items()),
               out)
  else:
    d2names.write_detectron2_pickle(out, export.tensors)


def read_back_as_torchvision(export: Export, out: str) -> Dict[str, np.ndarray]:
  """Reads the written file and returns torchvision-named arrays (with fc)."""
  if export.to == 'torchvision':
    torch, _ = torch_reference.import_torch()
    state = {k: v.numpy() for k, v in
             torch.load(out, map_location='cpu', weights_only=True).items()}
  else:
    state = dict(d2names.detectron2_to_torchvision(
        d2names.read_detectron2_pickle(out)['model']))
  if 'fc.weight' not in state:
    state.update(tvnames.zero_fc(export.arch.c5_channels))
  return state


def listing(export: Export, out: str, step: int, net: Network) -> str:
  lines = [f'dense_ssl.convert: {net.role} encoder of step {step} '
           f'({net.params_path}) -> {export.to} {out}',
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
  if export.to == 'detectron2':
    dropped = [n for n in tvnames.expected_torchvision_shapes(export.arch)
               if n.startswith('fc.') or n.endswith('num_batches_tracked')]
    lines.append(f'not written for Detectron2: {len(dropped)} torchvision-only '
                 'keys (fc.*: no classifier in a backbone; *.num_batches_'
                 'tracked: not a Detectron2 parameter).')
    lines.append('Detectron2 config keys for this backbone (the '
                 'detectron2_configs/ files set them for R50; '
                 'launch/detectron2_eval.sh derives them from the .pkl):')
    for k, v in export.detectron2_keys.items():
      lines.append(f'  {k}: {v!r}')
    lines.append('  as opts: ' + d2names.format_opts(export.detectron2_keys))
    if export.arch.depth not in d2names.DETECTRON2_DEPTHS:
      lines.append(f'  WARNING: MODEL.RESNETS.DEPTH {export.arch.depth} needs '
                   'a custom backbone registered with blocks per stage '
                   f'{list(export.arch.stages)}.')
  return '\n'.join(lines)


def verify_export(export: Export, net: Network, out: str, *, rtol: float,
                  image_size: int, batch_size: int) -> str:
  """Compares Flax and the converted file; raises ConversionError if off."""
  state = read_back_as_torchvision(export, out)
  diffs = torch_reference.compare_outputs(
      export.arch, net.params, net.batch_stats, state,
      image_size=image_size, batch_size=batch_size)
  lines = [f'verify: Flax ResNet vs torchvision ({export.arch}, eval mode, '
           f'random batch {batch_size}x{image_size}x{image_size}x3)']
  for d in diffs.values():
    lines.append(f'  {d.name} {str(d.shape):<20} max|diff| {d.max_abs_diff:.3e}'
                 f'  max|ref| {d.max_abs_ref:.3e}  relative {d.rel_diff:.3e}')
  problem = torch_reference.check_diffs(diffs, rtol)
  if problem:
    # Keep the file for inspection, under a name nobody loads by accident.
    os.replace(out, out + '.unverified')
    raise ConversionError('\n'.join(lines) + '\nverify FAILED: ' + problem +
                          f'\nthe converted file was moved to {out}.unverified;'
                          ' do not use it. Please report this with the listing.')
  lines.append(f'verify OK (relative tolerance {rtol:g})')
  if any(k.startswith('fpn_') for k in export.tensors):
    lines.append('(the FPN tensors are renamed and transposed only; the '
                 'check covers the ResNet)')
  return '\n'.join(lines)


def convert(workdir: str, to: str, out: str, *, step: Optional[int] = None,
            network: str = 'online', verify: Optional[bool] = None,
            drop_fc: bool = False, depth: Optional[int] = None,
            width_multiplier: Optional[int] = None,
            allow_custom_detectron2_depth: bool = False,
            rtol: float = torch_reference.DEFAULT_RTOL,
            image_size: int = 128, batch_size: int = 2,
            log=print) -> Dict[str, Any]:
  """The whole command; returns a report (used by the tests)."""
  if to not in ('torchvision', 'detectron2'):
    raise ConversionError(f'--to={to}: choose torchvision or detectron2.')
  if drop_fc and to != 'torchvision':
    raise ConversionError('--drop_fc only applies to --to=torchvision '
                          '(Detectron2 files never hold fc).')
  if verify is None:
    verify = torch_reference.torch_available()
    if not verify:
      log(f'note: not verifying: {torch_reference.TORCH_MISSING}')
  elif verify and not torch_reference.torch_available():
    raise ConversionError(f'--verify: {torch_reference.TORCH_MISSING}')
  step, tree = restore_checkpoint(workdir, step)
  config = read_workdir_config(workdir) or {}
  declared = read_workdir_architecture(workdir)
  if declared is None:
    log(f'note: {workdir}/config.json has no model.depth: the architecture '
        'is inferred from the checkpoint alone.')
  net = locate_network(tree, network, method=config.get('method'))
  export = export_network(
      tree, net, to, declared=declared, depth=depth, width=width_multiplier,
      drop_fc=drop_fc,
      allow_custom_detectron2_depth=allow_custom_detectron2_depth)
  write_export(export, out)
  text = listing(export, out, step, net)
  log(text)
  report = {'step': step, 'arch': export.arch, 'export': export,
            'network': net, 'out': out, 'verify': None}
  if verify:
    vtext = verify_export(export, net, out, rtol=rtol, image_size=image_size,
                          batch_size=batch_size)
    log(vtext)
    text += '\n' + vtext
    report['verify'] = vtext
  with open(out + '.txt', 'w') as f:
    f.write(text + '\n')
  log(f'wrote {out} and the listing {out}.txt')
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  for flag in ('workdir', 'to', 'out'):
    if flags.FLAGS[flag].value is None:
      raise app.UsageError(f'--{flag} is required.')
  try:
    convert(_WORKDIR.value, _TO.value, _OUT.value, step=_STEP.value,
            network=_NETWORK.value, verify=_VERIFY.value,
            drop_fc=_DROP_FC.value, depth=_DEPTH.value,
            width_multiplier=_WIDTH.value,
            allow_custom_detectron2_depth=_ALLOW_CUSTOM_DEPTH.value,
            rtol=_RTOL.value, image_size=_IMAGE_SIZE.value,
            batch_size=_BATCH.value)
  except ConversionError as e:
    print(f'dense_ssl.convert: ERROR: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
