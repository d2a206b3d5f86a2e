"""Flax ResNet parameters -> a torchvision ResNet state_dict (pure numpy).

Our Flax ResNet (dense_ssl/models/resnet.py) mirrors torchvision 1:1, so the
conversion is a renaming plus a layout change:

  Flax (params / batch_stats)                torchvision
  conv1/kernel             [7,7,3,64w] HWIO  conv1.weight        [64w,3,7,7] OIHW
  bn1/scale, bn1/bias                        bn1.weight, bn1.bias
  bn1/mean, bn1/var        (batch_stats)     bn1.running_mean, bn1.running_var
  (none)                                     bn1.num_batches_tracked = 0 (int64)
  layer{s}_{i}/conv{k}/kernel                layer{s}.{i}.conv{k}.weight
  layer{s}_{i}/bn{k}/...                     layer{s}.{i}.bn{k}.*
  layer{s}_{i}/downsample_conv/kernel        layer{s}.{i}.downsample.0.weight
  layer{s}_{i}/downsample_bn/...             layer{s}.{i}.downsample.1.*

`num_batches_tracked` only matters to torch BN with momentum=None; 0 is what a
fresh torchvision model holds. A pretraining checkpoint has no classifier:
`fc` is added zero-initialised (see `zero_fc`) so that a strict load works.

The padding of both implementations is the same (symmetric, NOTES.md "The
padding trap"), so the converted network computes the same function; the
converter's --verify checks that numerically.
"""

import collections
import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from dense_ssl.models.resnet import RESNET_SPECS

_EXPANSION = {'basic': 1, 'bottleneck': 4}
# torchvision ResNet builders; depth 200 has none.
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)
IMAGENET_CLASSES = 1000


class ArchitectureError(ValueError):
  """The checkpoint's encoder does not match the requested/declared ResNet."""


@dataclasses.dataclass(frozen=True)
class ResNetArchitecture:
  depth: int
  width_multiplier: int = 1

  def __post_init__(self):
    if self.depth not in RESNET_SPECS:
      raise ArchitectureError(
          f'ResNet depth {self.depth} is not one of {sorted(RESNET_SPECS)}.')
    if int(self.width_multiplier) != self.width_multiplier or (
        self.width_multiplier < 1):
      raise ArchitectureError(
          f'width multiplier {self.width_multiplier} must be a positive '
          'integer.')

  @property
  def block(self) -> str:
    return RESNET_SPECS[self.depth][0]

  @property
  def stages(self) -> Tuple[int, ...]:
    return tuple(RESNET_SPECS[self.depth][1])

  @property
  def c5_channels(self) -> int:
    return 512 * _EXPANSION[self.block] * self.width_multiplier

  def __str__(self):
    w = f' (width x{self.width_multiplier})' if self.width_multiplier > 1 else ''
    return f'ResNet-{self.depth}{w}'


def _bn_names(prefix, channels):
  return [(f'{prefix}.weight', (channels,)), (f'{prefix}.bias', (channels,)),
          (f'{prefix}.running_mean', (channels,)),
          (f'{prefix}.running_var', (channels,)),
          (f'{prefix}.num_batches_tracked', ())]


def expected_torchvision_shapes(
    arch: ResNetArchitecture, include_fc: bool = True
) -> 'collections.OrderedDict[str, Tuple[int, ...]]':
  """Every key of torchvision's ResNet state_dict, in its order, with shapes.

  For width_multiplier > 1 (not a torchvision model) these are the names and
  shapes of torchvision's ResNet class built with that width (stem 64w,
  blocks 64w*2^s), the network torch_reference.build_torch_resnet makes.
  """
  w = arch.width_multiplier
  out = [('conv1.weight', (64 * w, 3, 7, 7))] + _bn_names('bn1', 64 * w)
  in_ch = 64 * w
  for s, num_blocks in enumerate(arch.stages):
    planes = 64 * w * 2**s
    out_ch = planes * _EXPANSION[arch.block]
    for i in range(num_blocks):
      p = f'layer{s + 1}.{i}'
      if arch.block == 'basic':
        out += [(f'{p}.conv1.weight', (planes, in_ch, 3, 3))]
        out += _bn_names(f'{p}.bn1', planes)
        out += [(f'{p}.conv2.weight', (planes, planes, 3, 3))]
        out += _bn_names(f'{p}.bn2', planes)
      else:
        out += [(f'{p}.conv1.weight', (planes, in_ch, 1, 1))]
        out += _bn_names(f'{p}.bn1', planes)
        out += [(f'{p}.conv2.weight', (planes, planes, 3, 3))]
        out += _bn_names(f'{p}.bn2', planes)
        out += [(f'{p}.conv3.weight', (out_ch, planes, 1, 1))]
        out += _bn_names(f'{p}.bn3', out_ch)
      stride = 2 if (s > 0 and i == 0) else 1
      if stride != 1 or in_ch != out_ch:
        out += [(f'{p}.downsample.0.weight', (out_ch, in_ch, 1, 1))]
        out += _bn_names(f'{p}.downsample.1', out_ch)
      in_ch = out_ch
  if include_fc:
    out += [('fc.weight', (IMAGENET_CLASSES, in_ch)),
            ('fc.bias', (IMAGENET_CLASSES,))]
  return collections.OrderedDict(out)


def flatten(tree: Mapping, prefix: str = '') -> Dict[str, np.ndarray]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      flat.update(flatten(v, path))
    else:
      flat[path] = v
  return flat


def is_resnet_tree(tree) -> bool:
  """Whether a params subtree looks like our Flax ResNet (stem + layer1_0)."""
  return (isinstance(tree, Mapping) and 'conv1' in tree and 'bn1' in tree
          and 'layer1_0' in tree)


def infer_architecture(params: Mapping) -> ResNetArchitecture:
  """Reads depth and width multiplier off a Flax ResNet params tree.

  Raises ArchitectureError when the blocks per stage match no known depth.
  """
  if not is_resnet_tree(params):
    raise ArchitectureError(
        'the encoder params have no conv1/bn1/layer1_0: not a '
        'dense_ssl.models.resnet.ResNet tree (keys: '
        f'{sorted(params)[:12]}).')
  counts = []
  for s in range(1, 5):
    n = 0
    while f'layer{s}_{n}' in params:
      n += 1
    counts.append(n)
  block = 'bottleneck' if 'conv3' in params['layer1_0'] else 'basic'
  matches = [d for d, (kind, st) in RESNET_SPECS.items()
             if kind == block and tuple(st) == tuple(counts)]
  if not matches:
    raise ArchitectureError(
        f'{block} blocks per stage {counts} match no ResNet depth '
        f'(known: { {d: list(s) for d, (_, s) in RESNET_SPECS.items()} }).')
  stem_out = np.shape(params['conv1']['kernel'])[-1]
  if stem_out % 64:
    raise ArchitectureError(
        f'stem conv1 has {stem_out} output channels, not a multiple of 64: '
        'not a width-multiplied ResNet.')
  return ResNetArchitecture(matches[0], stem_out // 64)


def _torch_module_name(flax_path: Tuple[str, ...]) -> Optional[str]:
  """('layer2_0', 'downsample_bn') -> 'layer2.0.downsample.1'; None if alien."""
  if len(flax_path) == 1 and flax_path[0] in ('conv1', 'bn1'):
    return flax_path[0]
  if len(flax_path) != 2 or not flax_path[0].startswith('layer'):
    return None
  stage, _, index = flax_path[0][len('layer'):].partition('_')
  if not (stage.isdigit() and index.isdigit()):
    return None
  inner = {'downsample_conv': 'downsample.0',
           'downsample_bn': 'downsample.1'}.get(flax_path[1], flax_path[1])
  if inner not in ('conv1', 'conv2', 'conv3', 'bn1', 'bn2', 'bn3',
                   'downsample.0', 'downsample.1'):
    return None
  return f'layer{stage}.{index}.{inner}'


_PARAM_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_STAT_LEAF = {'mean': 'running_mean', 'var': 'running_var'}


def _as_float32(name, value):
  a = np.asarray(value)
  if not np.issubdtype(a.dtype, np.floating) and a.dtype.name != 'bfloat16':
    raise ArchitectureError(f'{name}: dtype {a.dtype} is not floating point.')
  return a.astype(np.float32)


def zero_fc(c5_channels: int) -> Dict[str, np.ndarray]:
  """torchvision's fc of a ResNet with C5 width c5_channels, all zeros."""
  return {'fc.weight': np.zeros((IMAGENET_CLASSES, c5_channels), np.float32),
          'fc.bias': np.zeros((IMAGENET_CLASSES,), np.float32)}


def flax_resnet_to_torchvision(
    params: Mapping, batch_stats: Mapping, *,
    arch: Optional[ResNetArchitecture] = None, include_fc: bool = True,
) -> Tuple['collections.OrderedDict[str, np.ndarray]', List[str]]:
  """Converts one Flax ResNet (params + batch_stats) to torchvision names.

  Args:
    params: the encoder's params subtree (conv1, bn1, layer1_0, ...).
    batch_stats: the encoder's batch_stats subtree (BN mean/var).
    arch: the architecture the caller expects; None = infer from the tree.
      Any mismatch with the tree raises ArchitectureError.
    include_fc: add a zero-initialised fc (torchvision's [1000, C5] + [1000])
      so that `load_state_dict(strict=True)` works.
  Returns:
    (state_dict, added): numpy arrays in torchvision's key order (float32;
    num_batches_tracked int64 scalars); `added` lists the keys that are not
    in the checkpoint (num_batches_tracked, fc.*).
  Raises:
    ArchitectureError: tree and `arch` disagree, a leaf has no torchvision
      counterpart, a tensor is missing, or a shape is inconsistent.
  """
  inferred = infer_architecture(params)
  if arch is not None and arch != inferred:
    raise ArchitectureError(
        f'the checkpoint holds a {inferred} encoder but {arch} was requested.')
  arch = inferred
  expected = expected_torchvision_shapes(arch, include_fc=include_fc)

  converted = {}
  for tree, leaf_names, kind in ((params, _PARAM_LEAF, 'params'),
                                 (batch_stats, _STAT_LEAF, 'batch_stats')):
    for path, value in flatten(tree).items():
      parts = tuple(path.split('/'))
      module = _torch_module_name(parts[:-1])
      leaf = leaf_names.get(parts[-1])
      if module is None or leaf is None:
        raise ArchitectureError(
            f'encoder {kind} leaf {path!r} has no torchvision counterpart; '
            f'this is not a plain {arch} (nothing is silently dropped).')
      if parts[-1] == 'kernel':
        value = _as_float32(path, value)
        if value.ndim != 4:
          raise ArchitectureError(f'{path}: conv kernel of rank {value.ndim}.')
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      else:
        value = _as_float32(path, value)
      converted[f'{module}.{leaf}'] = value

  added = []
  state = collections.OrderedDict()
  problems = []
  for name, shape in expected.items():
    if name.endswith('num_batches_tracked'):
      state[name] = np.array(0, np.int64)
      added.append(name)
    elif name.startswith('fc.'):
      state[name] = zero_fc(arch.c5_channels)[name]
      added.append(name)
    elif name not in converted:
      problems.append(f'missing {name} (expected shape {shape})')
    elif tuple(converted[name].shape) != tuple(shape):
      problems.append(f'{name}: shape {tuple(converted[name].shape)}, '
                      f'{arch} needs {tuple(shape)}')
    else:
      state[name] = converted[name]
  extra = sorted(set(converted) - set(expected))
  problems += [f'unexpected tensor {n}' for n in extra]
  if problems:
    raise ArchitectureError(
        f'the encoder is not a consistent {arch}:\n  ' + '\n  '.join(problems))
  return state, added
