"""ResNet v1.5 in Flax with torchvision's padding, layout and parameter names.

The backbone of DetCon-B/S, BYOL and SimCLR (He et al. 2016; DetCon Sec. 3.1
"Architecture": the C5 map before the final mean-pooling).

Why not `padding='SAME'`: on stride-2 convolutions and the stem max-pool SAME
pads bottom/right only, while torchvision pads symmetrically; weights trained
one way compute a different function the other way (FACTS.md §3, "The
padding trap"). Every convolution here pads explicitly like torchvision
(7x7/2 pad 3, 3x3 pad 1, 1x1 pad 0, max-pool 3x3/2 pad 1 with -inf), and the
stride of a bottleneck sits on its 3x3 conv (torchvision v1.5, Detectron2
`STRIDE_IN_1X1: False`), so a converted network is exactly torchvision's.

The layout is written once, as data: `stem()`, `blocks()` and `block_convs()`
describe every convolution + BatchNorm pair (module names, channels, kernel,
stride). The Flax modules below are built from them, and the torchvision
export (dense_ssl/export/torchvision_format.py) derives its names and shapes
from them. Parameter tree (mirrors torchvision names 1:1; conv kernels HWIO):
  conv1, bn1,
  layer{1..4}_{i}: conv1, bn1, conv2, bn2[, conv3, bn3][, downsample_conv,
                   downsample_bn]
BN `scale`/`bias` are torchvision's `weight`/`bias`; `batch_stats` `mean`/`var`
are `running_mean`/`running_var`.
"""

import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

# depth -> (block kind, blocks per stage). Depth 10 (one basic block per
# stage) is the tiny network of the trainer's tests; torchvision builds it as
# torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1]).
RESNET_SPECS = {
    10: ('basic', (1, 1, 1, 1)),
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
_EXPANSION = {'basic': 1, 'bottleneck': 4}
_BASE_WIDTH = 64  # stem width and stage-1 block width at width multiplier 1
# Input pixels per feature cell of c3, c4, c5 (the stem and stages 2-4 halve).
FEATURE_STRIDES = {'c2': 4, 'c3': 8, 'c4': 16, 'c5': 32}
C5_STRIDE = FEATURE_STRIDES['c5']

# torchvision's conv init: kaiming_normal_(mode='fan_out', nonlinearity='relu'),
# an untruncated normal with variance 2 / (out_channels * kh * kw).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _check_depth(depth: int):
  if depth not in RESNET_SPECS:
    raise ValueError(
        f'dense_ssl/models/resnet.py: unsupported ResNet depth {depth}; '
        f'choose one of {sorted(RESNET_SPECS)} (config key model.depth).')


def c5_channels(depth: int, width_multiplier: int = 1) -> int:
  """Channels of the C5 map: 512*w (basic blocks) or 2048*w (bottleneck)."""
  return stage_channels(depth, width_multiplier)[-1]


def stage_channels(depth: int, width_multiplier: int = 1) -> Tuple[int, ...]:
  """Output channels of C2..C5."""
  _check_depth(depth)
  kind, _ = RESNET_SPECS[depth]
  return tuple(_BASE_WIDTH * width_multiplier * 2**i * _EXPANSION[kind]
               for i in range(4))


# ----------------------------------------------------------------------------
# The layout, as data.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvBN:
  """A bias-free convolution and the BatchNorm after it."""
  conv: str          # Flax module name of the conv, e.g. 'conv2'
  bn: str            # Flax module name of its BatchNorm, e.g. 'bn2'
  in_channels: int
  out_channels: int
  kernel: int        # square; padded (kernel - 1) // 2 on every side
  stride: int


@dataclasses.dataclass(frozen=True)
class Block:
  """One residual block of a ResNet: where it sits and what it computes."""
  name: str          # Flax module name: f'layer{stage}_{index}'
  stage: int         # 1..4 (its output is C{stage + 1})
  index: int         # 0-based position within the stage
  kind: str          # 'basic' | 'bottleneck'
  in_channels: int
  width: int         # inner width (bottleneck) or width (basic)
  stride: int

  @property
  def convs(self) -> Tuple[Tuple[ConvBN, ...], Optional[ConvBN]]:
    return block_convs(self.kind, self.in_channels, self.width, self.stride)


def block_convs(kind: str, in_channels: int, width: int, stride: int
                ) -> Tuple[Tuple[ConvBN, ...], Optional[ConvBN]]:
  """(main path, shortcut) of one residual block.

  The main path runs its ConvBNs in order with a ReLU after every BN but the
  last; the shortcut is a strided 1x1 projection, or None (identity) when the
  block keeps resolution and channels. The stride sits on the 3x3 conv.
  """
  out_ch = width * _EXPANSION[kind]
  if kind == 'basic':
    main = (ConvBN('conv1', 'bn1', in_channels, width, 3, stride),
            ConvBN('conv2', 'bn2', width, width, 3, 1))
  elif kind == 'bottleneck':
    main = (ConvBN('conv1', 'bn1', in_channels, width, 1, 1),
            ConvBN('conv2', 'bn2', width, width, 3, stride),
            ConvBN('conv3', 'bn3', width, out_ch, 1, 1))
  else:
    raise ValueError(f'unknown ResNet block kind {kind!r}.')
  shortcut = None
  if stride != 1 or in_channels != out_ch:
    shortcut = ConvBN('downsample_conv', 'downsample_bn', in_channels, out_ch,
                      1, stride)
  return main, shortcut


def stem(width_multiplier: int = 1) -> ConvBN:
  """The 7x7/2 stem conv (followed by ReLU and the 3x3/2 max-pool)."""
  return ConvBN('conv1', 'bn1', 3, _BASE_WIDTH * width_multiplier, 7, 2)


def blocks(depth: int, width_multiplier: int = 1) -> Tuple[Block, ...]:
  """Every residual block of a ResNet, in order."""
  _check_depth(depth)
  kind, stages = RESNET_SPECS[depth]
  out = []
  in_ch = stem(width_multiplier).out_channels
  for s, num_blocks in enumerate(stages):
    width = _BASE_WIDTH * width_multiplier * 2**s
    for i in range(num_blocks):
      out.append(Block(f'layer{s + 1}_{i}', s + 1, i, kind, in_ch, width,
                       2 if (s > 0 and i == 0) else 1))
      in_ch = width * _EXPANSION[kind]
  return tuple(out)


def _out_size(size: int, kernel: int, stride: int) -> int:
  pad = (kernel - 1) // 2
  return (size + 2 * pad - kernel) // stride + 1


def forward_macs(depth: int, image_size: int, width_multiplier: int = 1) -> int:
  """Multiply-accumulates of the convolutions of one forward pass on one image.

  Counted from the layout above (stem, blocks, shortcuts; no BN, ReLU,
  pooling or classifier): sum over convs of k^2 C_in C_out H_out W_out.
  ResNet-50 at 224 px: 4.09e9 (the "4.1 GFLOPs" of He et al. 2016 are
  these MACs). An independent count for the compile check's FLOPs
  (dense_ssl/compile_check.py), which the compiler's cost analysis can be
  read against.
  """
  first = stem(width_multiplier)
  size = _out_size(image_size, first.kernel, first.stride)
  macs = first.kernel**2 * first.in_channels * first.out_channels * size**2
  size = _out_size(size, 3, 2)  # The max-pool.
  for b in blocks(depth, width_multiplier):
    main, shortcut = b.convs
    s = size
    for spec in main:
      s = _out_size(s, spec.kernel, spec.stride)
      macs += spec.kernel**2 * spec.in_channels * spec.out_channels * s**2
    if shortcut is not None:
      macs += shortcut.in_channels * shortcut.out_channels * s**2
    size = s
  return macs


# ----------------------------------------------------------------------------
# The Flax modules.
# ----------------------------------------------------------------------------


def _conv(spec: ConvBN, dtype):
  pad = (spec.kernel - 1) // 2  # torchvision: 7x7 -> 3, 3x3 -> 1, 1x1 -> 0.
  return nn.Conv(spec.out_channels, (spec.kernel, spec.kernel),
                 strides=(spec.stride, spec.stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=spec.conv)


class _Block(nn.Module):
  """One residual block (basic or bottleneck), laid out by block_convs."""
  kind: str
  width: int            # inner width (bottleneck) or width (basic)
  stride: int
  dtype: Any
  bn_axis_name: Optional[str]
  bn_momentum: float
  bn_epsilon: float
  zero_init_last_bn: bool

  @nn.compact
  def __call__(self, x, train: bool):
    def bn(name, last=False):
      zero = last and self.zero_init_last_bn
      return nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum,
          epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
          dtype=self.dtype, param_dtype=jnp.float32,
          scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
          name=name)

    main, shortcut = block_convs(self.kind, x.shape[-1], self.width,
                                 self.stride)
    y = x
    for k, spec in enumerate(main):
      last = k == len(main) - 1
      y = bn(spec.bn, last=last)(_conv(spec, self.dtype)(y))
      if not last:
        y = nn.relu(y)
    if shortcut is not None:
      x = bn(shortcut.bn)(_conv(shortcut, self.dtype)(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet v1.5 backbone returning the C2..C5 feature maps.

  Attributes:
    depth: a key of RESNET_SPECS: 10, 18, 34, 50, 101, 152 or 200 (10 = basic
      [1, 1, 1, 1], the trainer tests' network; 200 = bottleneck
      [3, 24, 36, 3]).
    width_multiplier: scales the stem and every block (BYOL's ResNet-200 x2):
      bottleneck inner width 64*w*2^i, output 4x that.
    dtype: compute dtype (e.g. jnp.bfloat16); params are always float32.
    bn_axis_name: mapped axis name for cross-replica BN statistics ('batch'
      under shard_map), None for per-device statistics.
    bn_momentum: Flax convention (0.9 here == torch momentum 0.1).
    bn_epsilon: 1e-5 like torchvision.
    zero_init_last_bn: initialise the scale of each block's last BN to zero.
  """
  depth: int
  width_multiplier: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_last_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool) -> dict:
    """x: [B, H, W, 3] -> {'c2','c3','c4','c5'}: [B, H/s, W/s, C] float32.

    Strides of C2..C5 are 4, 8, 16, 32 (for H divisible by 32).
    """
    _check_depth(self.depth)
    first = stem(self.width_multiplier)
    x = jnp.asarray(x, self.dtype)
    x = _conv(first, self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                     dtype=self.dtype, param_dtype=jnp.float32,
                     name=first.bn)(x)
    x = nn.relu(x)
    # Explicit padding in max_pool pads with -inf (the reduction's identity).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {}
    all_blocks = blocks(self.depth, self.width_multiplier)
    for k, b in enumerate(all_blocks):
      x = _Block(kind=b.kind, width=b.width, stride=b.stride, dtype=self.dtype,
                 bn_axis_name=self.bn_axis_name,
                 bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                 zero_init_last_bn=self.zero_init_last_bn, name=b.name)(
                     x, train)
      if k == len(all_blocks) - 1 or all_blocks[k + 1].stage != b.stage:
        feats[f'c{b.stage + 1}'] = x.astype(jnp.float32)
    return feats
