"""Flax ResNet -> torchvision ResNet state_dict: names, shapes, the .pth file.

Names and shapes derive from the model's own layout (dense_ssl/models/
resnet.py: `stem`, `blocks`, `block_convs`): each convolution + BatchNorm pair
becomes torchvision's modules, the Flax module path renamed by

  Flax                                      torchvision
  layer{s}_{i}                              layer{s}.{i}
  downsample_conv, downsample_bn            downsample.0, downsample.1
  <conv>/kernel  [kh,kw,I,O] HWIO (params)  <conv>.weight  [O,I,kh,kw] OIHW
  <bn>/scale, <bn>/bias          (params)   <bn>.weight, <bn>.bias
  <bn>/mean, <bn>/var       (batch_stats)   <bn>.running_mean, .running_var
  (none)                                    <bn>.num_batches_tracked = 0 int64

`num_batches_tracked` only matters to torch BN with momentum=None; 0 is what a
fresh torchvision model holds. A pretraining checkpoint has no classifier:
`fc` is added zero-initialised (see `zero_fc`) so that a strict load works.
The padding of both implementations is the same (symmetric, FACTS.md §3 "The
padding trap"), so the converted network computes the same function;
dense_ssl/export/verify.py checks that numerically.

torch is imported lazily (`import_torch`): it lives in requirements-torch.txt,
not in the core requirements.
"""

import collections
import dataclasses
import sys
from typing import Dict, List, Mapping, Optional, Tuple

from flax import traverse_util
import numpy as np

from dense_ssl.models import resnet

# Depths with a torchvision builder, torchvision.models.resnet{depth}().
TORCHVISION_BUILDERS = (18, 34, 50, 101, 152)
# Depths --to=torchvision writes: the builders, and ResNet-10 (the trainer
# tests' network), which torchvision's ResNet class builds
# (`torchvision_constructor`). ResNet-200, which has no builder either, is
# refused there (--to=detectron2 --allow_custom_detectron2_depth writes it).
TORCHVISION_DEPTHS = (10,) + TORCHVISION_BUILDERS
IMAGENET_CLASSES = 1000

TORCH_MISSING = ('dense_ssl.convert needs torch and torchvision for this; '
                 'install them with `pip install -r requirements-torch.txt` '
                 '(or pass --noverify to skip the numerical check).')


class ArchitectureError(ValueError):
  """The checkpoint's encoder does not match the requested/declared ResNet."""


@dataclasses.dataclass(frozen=True)
class ResNetArchitecture:
  """A ResNet of dense_ssl.models.resnet: depth and width multiplier."""
  depth: int
  width_multiplier: int = 1

  def __post_init__(self):
    if self.depth not in resnet.RESNET_SPECS:
      raise ArchitectureError(
          f'ResNet depth {self.depth} is not one of '
          f'{sorted(resnet.RESNET_SPECS)}.')
    if int(self.width_multiplier) != self.width_multiplier or (
        self.width_multiplier < 1):
      raise ArchitectureError(
          f'width multiplier {self.width_multiplier} must be a positive '
          'integer.')

  @property
  def block(self) -> str:
    return resnet.RESNET_SPECS[self.depth][0]

  @property
  def stages(self) -> Tuple[int, ...]:
    return tuple(resnet.RESNET_SPECS[self.depth][1])

  @property
  def c5_channels(self) -> int:
    return resnet.c5_channels(self.depth, self.width_multiplier)

  def __str__(self):
    w = f' (width x{self.width_multiplier})' if self.width_multiplier > 1 else ''
    return f'ResNet-{self.depth}{w}'


def flatten(tree: Mapping) -> Dict[str, np.ndarray]:
  """Nested dict -> {'a/b/c': leaf} (empty dicts vanish)."""
  return traverse_util.flatten_dict(dict(tree), sep='/')


# ----------------------------------------------------------------------------
# Names and shapes, from the model's layout.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchTensor:
  """One torchvision state_dict entry and the Flax leaf it comes from."""
  shape: Tuple[int, ...]
  collection: Optional[str]     # 'params' | 'batch_stats'; None: added here
  flax_path: Tuple[str, ...] = ()  # path within that collection's encoder

  @property
  def flax_name(self) -> str:
    return '/'.join(self.flax_path)


_TORCH_MODULE = {'downsample_conv': 'downsample.0',
                 'downsample_bn': 'downsample.1'}


def _conv_bn_entries(scope: Tuple[str, ...], prefix: str,
                     spec: resnet.ConvBN):
  conv, bn = (prefix + _TORCH_MODULE.get(n, n) for n in (spec.conv, spec.bn))
  out_ch = spec.out_channels
  yield f'{conv}.weight', TorchTensor(
      (out_ch, spec.in_channels, spec.kernel, spec.kernel), 'params',
      scope + (spec.conv, 'kernel'))
  for tv_leaf, collection, leaf in (('weight', 'params', 'scale'),
                                    ('bias', 'params', 'bias'),
                                    ('running_mean', 'batch_stats', 'mean'),
                                    ('running_var', 'batch_stats', 'var')):
    yield f'{bn}.{tv_leaf}', TorchTensor((out_ch,), collection,
                                         scope + (spec.bn, leaf))
  yield f'{bn}.num_batches_tracked', TorchTensor((), None)


def torchvision_layout(
    arch: ResNetArchitecture, include_fc: bool = True
) -> 'collections.OrderedDict[str, TorchTensor]':
  """Every key of torchvision's ResNet state_dict, in its order.

  For width_multiplier > 1 (not a torchvision model) these are the names and
  shapes of torchvision's ResNet class built with that width (stem 64w,
  blocks 64w*2^s), the network `build_torch_resnet` makes.
  """
  out = collections.OrderedDict(
      _conv_bn_entries((), '', resnet.stem(arch.width_multiplier)))
  for block in resnet.blocks(arch.depth, arch.width_multiplier):
    main, shortcut = block.convs
    for spec in main + ((shortcut,) if shortcut else ()):
      out.update(_conv_bn_entries((block.name,),
                                  f'layer{block.stage}.{block.index}.', spec))
  if include_fc:
    out['fc.weight'] = TorchTensor((IMAGENET_CLASSES, arch.c5_channels), None)
    out['fc.bias'] = TorchTensor((IMAGENET_CLASSES,), None)
  return out


def expected_torchvision_shapes(
    arch: ResNetArchitecture, include_fc: bool = True
) -> 'collections.OrderedDict[str, Tuple[int, ...]]':
  """{torchvision key: shape} in torchvision's order (see torchvision_layout)."""
  return collections.OrderedDict(
      (k, t.shape) for k, t in torchvision_layout(arch, include_fc).items())


def infer_architecture(params: Mapping) -> ResNetArchitecture:
  """Reads depth and width multiplier off a Flax ResNet params tree.

  The depth is the one whose blocks (resnet.blocks: names and kind) the tree
  has; the width multiplier is the stem's width over ResNet's base width.
  Raises ArchitectureError when no depth matches.
  """
  stem = resnet.stem()
  if not (isinstance(params, Mapping) and stem.conv in params
          and 'layer1_0' in params):
    raise ArchitectureError(
        'the encoder params have no conv1/bn1/layer1_0: not a '
        'dense_ssl.models.resnet.ResNet tree (keys: '
        f'{sorted(params)[:12]}).')
  names = {k for k in params if k.startswith('layer')}
  kind = 'bottleneck' if 'conv3' in params['layer1_0'] else 'basic'
  matches = [d for d, (k, _) in resnet.RESNET_SPECS.items()
             if k == kind and {b.name for b in resnet.blocks(d)} == names]
  if not matches:
    counts = [sum(1 for n in names if n.startswith(f'layer{s}_'))
              for s in range(1, 5)]
    raise ArchitectureError(
        f'{kind} blocks per stage {counts} match no ResNet depth (known: '
        f'{ {d: list(s) for d, (_, s) in resnet.RESNET_SPECS.items()} }).')
  stem_out = np.shape(params[stem.conv]['kernel'])[-1]
  if stem_out % stem.out_channels:
    raise ArchitectureError(
        f'stem conv1 has {stem_out} output channels, not a multiple of '
        f'{stem.out_channels}: not a width-multiplied ResNet.')
  return ResNetArchitecture(matches[0], stem_out // stem.out_channels)


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
  layout = torchvision_layout(arch, include_fc=include_fc)
  flat = {'params': flatten(params), 'batch_stats': flatten(batch_stats)}
  used = {(t.collection, t.flax_name) for t in layout.values() if t.collection}
  unknown = [(c, p) for c, tree in flat.items() for p in tree
             if (c, p) not in used]
  if unknown:
    collection, path = unknown[0]
    raise ArchitectureError(
        f'encoder {collection} leaf {path!r} has no torchvision counterpart; '
        f'this is not a plain {arch} (nothing is silently dropped).')

  added = []
  state = collections.OrderedDict()
  problems = []
  for name, t in layout.items():
    if t.collection is None:
      state[name] = (np.array(0, np.int64) if name.endswith(
          'num_batches_tracked') else zero_fc(arch.c5_channels)[name])
      added.append(name)
      continue
    if t.flax_name not in flat[t.collection]:
      problems.append(f'missing {name} (expected shape {t.shape})')
      continue
    value = _as_float32(t.flax_name, flat[t.collection][t.flax_name])
    if t.flax_path[-1] == 'kernel':
      if value.ndim != 4:
        raise ArchitectureError(
            f'{t.flax_name}: conv kernel of rank {value.ndim}.')
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if tuple(value.shape) != tuple(t.shape):
      problems.append(f'{name}: shape {tuple(value.shape)}, {arch} needs '
                      f'{tuple(t.shape)}')
      continue
    state[name] = value
  if problems:
    raise ArchitectureError(
        f'the encoder is not a consistent {arch}:\n  ' + '\n  '.join(problems))
  return state, added


# ----------------------------------------------------------------------------
# torch: the network a state_dict loads into, and the .pth file.
# ----------------------------------------------------------------------------


def import_torch():
  """Returns (torch, torchvision) or raises ImportError with the fix."""
  # The PyPI torch wheel's triton segfaults when loaded after TensorFlow
  # (TF may be imported later, too); the CPU work here needs no triton, so
  # torch must treat it as absent.
  sys.modules.setdefault('triton', None)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{TORCH_MISSING} ({e})') from e
  return torch, torchvision


def torch_available() -> bool:
  try:
    import_torch()
    return True
  except ImportError:
    return False


def torchvision_constructor(arch: ResNetArchitecture) -> str:
  """The torchvision call that builds `arch` (width multiplier 1)."""
  if arch.depth in TORCHVISION_BUILDERS:
    return f'torchvision.models.resnet{arch.depth}()'
  block = 'BasicBlock' if arch.block == 'basic' else 'Bottleneck'
  return (f'torchvision.models.resnet.ResNet({block}, '
          f'{list(arch.stages)})')


def build_torch_resnet(arch: ResNetArchitecture):
  """torchvision's ResNet for `arch`, built from torchvision's own classes.

  Width 1 is exactly `torchvision_constructor(arch)`: the builder
  torchvision.models.resnet{depth}() for depths 18..152, the ResNet class
  with the stage table of resnet.RESNET_SPECS otherwise (10, 200). For width
  multipliers, which torchvision has no builder for, the same classes are
  assembled with the wider stem and stages (used by the verification of
  Detectron2 exports).
  """
  torch, torchvision = import_torch()
  from torchvision.models import resnet as tv  # pylint: disable=g-import-not-at-top
  block = tv.BasicBlock if arch.block == 'basic' else tv.Bottleneck
  layers = list(arch.stages)
  if arch.depth in TORCHVISION_BUILDERS:
    model = getattr(torchvision.models, f'resnet{arch.depth}')(weights=None)
  else:
    model = tv.ResNet(block, layers)
  w = arch.width_multiplier
  if w != 1:
    nn = torch.nn
    model.inplanes = 64 * w
    model.conv1 = nn.Conv2d(3, 64 * w, kernel_size=7, stride=2, padding=3,
                            bias=False)
    model.bn1 = nn.BatchNorm2d(64 * w)
    for s, n in enumerate(layers):
      setattr(model, f'layer{s + 1}',
              model._make_layer(block, 64 * w * 2**s, n,  # pylint: disable=protected-access
                                stride=1 if s == 0 else 2))
    model.fc = nn.Linear(arch.c5_channels, IMAGENET_CLASSES)
  return model


def write_state_dict(path: str, state: Mapping[str, np.ndarray]):
  """torch.save of the state_dict (torch tensors, in the given order)."""
  torch, _ = import_torch()
  torch.save(collections.OrderedDict(
      (k, torch.from_numpy(np.array(v))) for k, v in state.items()), path)


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """A .pth state_dict as numpy arrays (tensors only: weights_only=True)."""
  torch, _ = import_torch()
  return {k: v.numpy() for k, v in
          torch.load(path, map_location='cpu', weights_only=True).items()}
