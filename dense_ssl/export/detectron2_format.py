"""Detectron2 backbone files: names, the FPN, config keys, the .pkl pickle.

Detectron2 loads a pickle `{"model": {name: ndarray}, "__author__": ...,
"matching_heuristics": True}`; with matching heuristics a checkpoint name
matches every model parameter whose name ends with it, so `res2.0.conv1.weight`
lands in `backbone.bottom_up.res2.0.conv1.weight` (FPN models) and
`res5.*` in `roi_heads.res5.*` (C4 models). The renaming (FACTS.md §9,
"Detectron2 conventions"):

  conv1.weight                  -> stem.conv1.weight
  bn1.*                         -> stem.conv1.norm.*
  layer{N}.{i}.conv{K}.weight   -> res{N+1}.{i}.conv{K}.weight
  layer{N}.{i}.bn{K}.*          -> res{N+1}.{i}.conv{K}.norm.*
  layer{N}.{i}.downsample.0.*   -> res{N+1}.{i}.shortcut.*
  layer{N}.{i}.downsample.1.*   -> res{N+1}.{i}.shortcut.norm.*
  fc.*, *.num_batches_tracked   -> dropped (fc: no classifier in a backbone;
                                   num_batches_tracked: a BN step counter, not
                                   a weight. Detectron2's get_norm "BN" and
                                   "SyncBN" (torch BatchNorm2d/SyncBatchNorm)
                                   have the buffer; Detectron2 loads a plain
                                   dict without version metadata, so torch
                                   fills the absent key with the layer's own
                                   counter (0 at build) and reports nothing
                                   missing. FrozenBatchNorm2d registers it as
                                   None and GroupNorm has no running stats:
                                   nothing to fill there.)

FPN (a Flax FPN as ReSim's, layout documented in `flax_fpn_to_detectron2`):
  fpn/lateral_{k}/kernel, bias  -> fpn_lateral{k}.weight, bias   (k = 2..5)
  fpn/output_{k}/kernel, bias   -> fpn_output{k}.weight, bias
These match Detectron2's FPN with `MODEL.FPN.NORM: ""` (convs with bias);
with a normalised FPN Detectron2 has no biases and fresh norms.
"""

import collections
import pickle
import re
from typing import Dict, List, Mapping, Tuple

import numpy as np

from dense_ssl.export.torchvision_format import ArchitectureError
from dense_ssl.export.torchvision_format import flatten
from dense_ssl.export.torchvision_format import ResNetArchitecture

AUTHOR = 'dense_ssl'
# Detectron2's build_resnet_backbone: num_blocks_per_stage table
# (detectron2/modeling/backbone/resnet.py). Depths 10 and 200 are not in it.
DETECTRON2_DEPTHS = (18, 34, 50, 101, 152)
FPN_LEVELS = (2, 3, 4, 5)

_LAYER = re.compile(r'^layer(\d)\.(\d+)\.(.+)$')
_RES = re.compile(r'^res(\d)\.(\d+)\.(.+)$')


def _rename_in_block(rest: str) -> str:
  """'bn2.weight' -> 'conv2.norm.weight'; 'downsample.1.x' -> 'shortcut.norm.x'."""
  m = re.match(r'^bn(\d)\.(.+)$', rest)
  if m:
    return f'conv{m.group(1)}.norm.{m.group(2)}'
  if rest.startswith('downsample.0.'):
    return 'shortcut.' + rest[len('downsample.0.'):]
  if rest.startswith('downsample.1.'):
    return 'shortcut.norm.' + rest[len('downsample.1.'):]
  if re.match(r'^conv\d\.weight$', rest):
    return rest
  raise ArchitectureError(f'no Detectron2 name for block tensor {rest!r}.')


def torchvision_to_detectron2_name(name: str) -> str:
  """One torchvision ResNet key -> its Detectron2 key (see module docstring)."""
  if name == 'conv1.weight':
    return 'stem.conv1.weight'
  if name.startswith('bn1.'):
    return 'stem.conv1.norm.' + name[len('bn1.'):]
  m = _LAYER.match(name)
  if not m:
    raise ArchitectureError(f'no Detectron2 name for {name!r}.')
  stage, index, rest = m.groups()
  return f'res{int(stage) + 1}.{index}.{_rename_in_block(rest)}'


def detectron2_to_torchvision_name(name: str) -> str:
  """Inverse of torchvision_to_detectron2_name (used by verify.py)."""
  if name == 'stem.conv1.weight':
    return 'conv1.weight'
  if name.startswith('stem.conv1.norm.'):
    return 'bn1.' + name[len('stem.conv1.norm.'):]
  m = _RES.match(name)
  if not m:
    raise ArchitectureError(f'{name!r} is not a Detectron2 ResNet name.')
  stage, index, rest = m.groups()
  if rest.startswith('shortcut.norm.'):
    rest = 'downsample.1.' + rest[len('shortcut.norm.'):]
  elif rest.startswith('shortcut.'):
    rest = 'downsample.0.' + rest[len('shortcut.'):]
  else:
    k = re.match(r'^conv(\d)\.norm\.(.+)$', rest)
    if k:
      rest = f'bn{k.group(1)}.{k.group(2)}'
  return f'layer{int(stage) - 1}.{index}.{rest}'


def torchvision_to_detectron2(
    state: Mapping[str, np.ndarray]
) -> Tuple['collections.OrderedDict[str, np.ndarray]', List[Tuple[str, str]]]:
  """Renames a torchvision ResNet state_dict for Detectron2.

  Returns (model dict in the input's order, skipped [(name, reason)]).
  """
  out = collections.OrderedDict()
  skipped = []
  for name, value in state.items():
    if name.startswith('fc.'):
      skipped.append((name, 'classifier: Detectron2 backbones have no fc'))
    elif name.endswith('.num_batches_tracked'):
      skipped.append((name, 'BN step counter, not a weight: Detectron2\'s '
                            'BN/SyncBN layers have it and keep their own (0 at '
                            'build; torch fills the absent key, nothing is '
                            'reported missing); FrozenBN and GN have none'))
    else:
      out[torchvision_to_detectron2_name(name)] = np.asarray(value)
  return out, skipped


def detectron2_to_torchvision(
    model: Mapping[str, np.ndarray]
) -> 'collections.OrderedDict[str, np.ndarray]':
  """Detectron2 ResNet names back to torchvision names (FPN keys ignored).

  Adds num_batches_tracked = 0 for every BN so a strict load works (fc is the
  caller's business).
  """
  out = collections.OrderedDict()
  for name, value in model.items():
    if name.startswith('fpn_'):
      continue
    tv = detectron2_to_torchvision_name(name)
    out[tv] = np.asarray(value)
    if tv.endswith('.running_var'):
      out[tv[:-len('running_var')] + 'num_batches_tracked'] = np.array(
          0, np.int64)
  return out


def flax_fpn_to_detectron2(
    fpn_params: Mapping, *, in_channels: Mapping[int, int] = None,
) -> 'collections.OrderedDict[str, np.ndarray]':
  """A Flax FPN's params -> Detectron2 FPN names (ReSim-FPN transfer).

  Documented Flax layout (the `fpn` subtree of a method's params):
    lateral_{k}/kernel [1, 1, C_k, D] HWIO, lateral_{k}/bias [D]
    output_{k}/kernel  [3, 3, D, D]  HWIO, output_{k}/bias  [D]
  for k in 2..5 (C2..C5 -> P2..P5; D = 256 in ReSim and Detectron2). Kernels
  go HWIO -> OIHW; names become fpn_lateral{k}.*, fpn_output{k}.*. Levels a
  method does not train may be absent (ReSim-FPN: laterals 3-5, outputs 3-4);
  Detectron2 then initialises those convs itself.

  Args:
    fpn_params: the subtree above.
    in_channels: optional {k: C_k} (the ResNet's stage channels) to check the
      lateral input widths against.
  Raises:
    ArchitectureError: a level or tensor missing, an unknown leaf, or an
      inconsistent shape.
  """
  out = collections.OrderedDict()
  flat = flatten(fpn_params)
  known = {f'{kind}_{k}/{leaf}' for kind in ('lateral', 'output')
           for k in FPN_LEVELS for leaf in ('kernel', 'bias')}
  unknown = sorted(set(flat) - known)
  convs = sorted({name.split('/')[0] for name in flat if name in known})
  half = sorted(c for c in convs if f'{c}/kernel' not in flat or f'{c}/bias' not in flat)
  if unknown or half or not any(c.startswith('lateral_') for c in convs):
    raise ArchitectureError(
        'the fpn subtree does not have the documented layout '
        '(lateral_{k}, output_{k} for k in 2..5, each kernel + bias): '
        f'unknown {unknown}, without kernel or bias {half}'
        + ('' if any(c.startswith('lateral_') for c in convs) else ', no lateral conv')
        + '.')
  dims = set()
  for kind, ksize in (('lateral', 1), ('output', 3)):
    for k in FPN_LEVELS:
      if f'{kind}_{k}' not in convs:
        continue  # Not trained (e.g. ReSim-FPN has no P2): Detectron2 initialises it.
      kernel = np.asarray(flat[f'{kind}_{k}/kernel'], np.float32)
      bias = np.asarray(flat[f'{kind}_{k}/bias'], np.float32)
      if kernel.ndim != 4 or kernel.shape[:2] != (ksize, ksize):
        raise ArchitectureError(
            f'fpn/{kind}_{k}/kernel has shape {kernel.shape}; expected '
            f'[{ksize}, {ksize}, C_in, D].')
      if bias.shape != (kernel.shape[3],):
        raise ArchitectureError(
            f'fpn/{kind}_{k}/bias has shape {bias.shape}; expected '
            f'({kernel.shape[3]},).')
      if kind == 'output' and kernel.shape[2] != kernel.shape[3]:
        raise ArchitectureError(
            f'fpn/output_{k}/kernel maps {kernel.shape[2]} -> '
            f'{kernel.shape[3]} channels; an FPN output conv keeps D.')
      if (kind == 'lateral' and in_channels is not None
          and kernel.shape[2] != in_channels[k]):
        raise ArchitectureError(
            f'fpn/lateral_{k}/kernel reads {kernel.shape[2]} channels but '
            f'C{k} of the encoder has {in_channels[k]}.')
      dims.add(kernel.shape[3])
      out[f'fpn_{kind}{k}.weight'] = kernel.transpose(3, 2, 0, 1)
      out[f'fpn_{kind}{k}.bias'] = bias
  if len(dims) != 1:
    raise ArchitectureError(
        f'FPN levels have different output widths {sorted(dims)}.')
  return out


def detectron2_config_keys(arch: ResNetArchitecture, *,
                           allow_custom_depth: bool = False,
                           has_fpn: bool = False) -> 'collections.OrderedDict':
  """The Detectron2 config keys that build exactly this backbone.

  Detectron2's build_resnet_backbone derives widths from STEM_OUT_CHANNELS,
  RES2_OUT_CHANNELS and NUM_GROUPS * WIDTH_PER_GROUP (the bottleneck width),
  doubling both per stage; R18/R34 must keep RES2_OUT_CHANNELS = 64.
  Raises ArchitectureError for what those keys cannot express.
  """
  w = arch.width_multiplier
  if arch.block == 'basic' and w != 1:
    raise ArchitectureError(
        f'{arch}: Detectron2 cannot express a width multiplier on basic-block '
        'ResNets (build_resnet_backbone asserts MODEL.RESNETS.'
        'RES2_OUT_CHANNELS == 64 for R18/R34).')
  if arch.depth not in DETECTRON2_DEPTHS and not allow_custom_depth:
    raise ArchitectureError(
        f'{arch}: MODEL.RESNETS.DEPTH {arch.depth} is not in Detectron2\'s '
        f'build_resnet_backbone depth table {list(DETECTRON2_DEPTHS)} '
        '(detectron2/modeling/backbone/resnet.py, num_blocks_per_stage); '
        f'blocks per stage {list(arch.stages)} cannot be expressed with '
        'MODEL.RESNETS.* keys. Pass --allow_custom_detectron2_depth to write '
        'the weights anyway (they load into a backbone you register with '
        'that stage table).')
  keys = collections.OrderedDict()
  keys['MODEL.RESNETS.DEPTH'] = arch.depth
  keys['MODEL.RESNETS.STRIDE_IN_1X1'] = False
  keys['MODEL.RESNETS.NUM_GROUPS'] = 1
  keys['MODEL.RESNETS.STEM_OUT_CHANNELS'] = 64 * w
  if arch.block == 'basic':
    keys['MODEL.RESNETS.RES2_OUT_CHANNELS'] = 64
  else:
    keys['MODEL.RESNETS.WIDTH_PER_GROUP'] = 64 * w
    keys['MODEL.RESNETS.RES2_OUT_CHANNELS'] = 256 * w
  keys['INPUT.FORMAT'] = 'RGB'
  keys['MODEL.PIXEL_MEAN'] = [123.675, 116.28, 103.53]
  keys['MODEL.PIXEL_STD'] = [58.395, 57.12, 57.375]
  if has_fpn:
    keys['MODEL.FPN.NORM'] = ''
  return keys


def format_opts(keys: Mapping) -> str:
  """Config keys as `train_net.py` command-line opts (KEY VALUE ...)."""
  def fmt(v):
    if isinstance(v, bool):
      return str(v)
    if isinstance(v, (list, tuple)):
      return '"[' + ', '.join(str(x) for x in v) + ']"'
    if v == '':
      return '""'
    return str(v)
  return ' '.join(f'{k} {fmt(v)}' for k, v in keys.items())


class _PortablePickler(pickle.Pickler):
  """Pickles ndarrays as `numpy.ndarray(shape, dtype, bytearray)`.

  numpy >= 2 pickles arrays through `numpy._core.multiarray._reconstruct`,
  which numpy 1.x (common in Detectron2 environments) cannot import
  (numpy/numpy issue 28340). `numpy.ndarray` and `builtins.bytearray` exist
  under those names in every numpy; a bytearray keeps the array writable.
  """

  def reducer_override(self, obj):
    if isinstance(obj, np.ndarray):
      # tobytes() is C order; shape from obj (ascontiguousarray makes 0-d 1-d).
      return np.ndarray, (obj.shape, obj.dtype.str,
                          bytearray(obj.tobytes(order='C')))
    return NotImplemented


def write_detectron2_pickle(path: str, model: Mapping[str, np.ndarray]):
  """Writes Detectron2's checkpoint format (a plain pickle, not torch.save)."""
  obj = {'model': {k: np.asarray(v) for k, v in model.items()},
         '__author__': AUTHOR, 'matching_heuristics': True}
  with open(path, 'wb') as f:
    _PortablePickler(f, protocol=4).dump(obj)


def read_detectron2_pickle(path: str) -> Dict:
  with open(path, 'rb') as f:
    obj = pickle.load(f)
  if not isinstance(obj, dict) or 'model' not in obj:
    raise ValueError(f'{path}: not a Detectron2 checkpoint pickle '
                     '(no "model" key).')
  return obj
