"""ResNet v1.5 in Flax with torchvision's padding, layout and parameter names.

The backbone of DetCon-B/S, BYOL and SimCLR (He et al. 2016; DetCon Sec. 3.1
"Architecture": the C5 map before the final mean-pooling).

Why not `padding='SAME'`: on stride-2 convolutions and the stem max-pool SAME
pads bottom/right only, while torchvision pads symmetrically; weights trained
one way compute a different function the other way (see NOTES.md, "The
padding trap"). Every convolution here pads explicitly like torchvision
(7x7/2 pad 3, 3x3 pad 1, 1x1 pad 0, max-pool 3x3/2 pad 1 with -inf), and the
stride of a bottleneck sits on its 3x3 conv (torchvision v1.5, Detectron2
`STRIDE_IN_1X1: False`), so a converted network is exactly torchvision's.

Parameter tree (mirrors torchvision names 1:1; conv kernels HWIO):
  conv1, bn1,
  layer{1..4}_{i}: conv1, bn1, conv2, bn2[, conv3, bn3][, downsample_conv,
                   downsample_bn]
BN `scale`/`bias` are torchvision's `weight`/`bias`; `batch_stats` `mean`/`var`
are `running_mean`/`running_var`.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

# depth -> (block kind, blocks per stage).
RESNET_SPECS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
_EXPANSION = {'basic': 1, 'bottleneck': 4}

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
  _check_depth(depth)
  kind, _ = RESNET_SPECS[depth]
  return 512 * _EXPANSION[kind] * width_multiplier


# The name used in CONTRACT.md.
RESNET_C5_CHANNELS = c5_channels


def stage_channels(depth: int, width_multiplier: int = 1) -> Tuple[int, ...]:
  """Output channels of C2..C5."""
  _check_depth(depth)
  kind, _ = RESNET_SPECS[depth]
  return tuple(64 * width_multiplier * 2**i * _EXPANSION[kind]
               for i in range(4))


def _conv(features, kernel, stride, dtype, name):
  pad = (kernel - 1) // 2  # torchvision: 7x7 -> 3, 3x3 -> 1, 1x1 -> 0.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class _Block(nn.Module):
  """One residual block (basic or bottleneck); stride on the 3x3 conv."""
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

    out_ch = self.width * _EXPANSION[self.kind]
    if self.kind == 'basic':
      y = _conv(self.width, 3, self.stride, self.dtype, 'conv1')(x)
      y = nn.relu(bn('bn1')(y))
      y = _conv(self.width, 3, 1, self.dtype, 'conv2')(y)
      y = bn('bn2', last=True)(y)
    else:
      y = _conv(self.width, 1, 1, self.dtype, 'conv1')(x)
      y = nn.relu(bn('bn1')(y))
      y = _conv(self.width, 3, self.stride, self.dtype, 'conv2')(y)
      y = nn.relu(bn('bn2')(y))
      y = _conv(out_ch, 1, 1, self.dtype, 'conv3')(y)
      y = bn('bn3', last=True)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = _conv(out_ch, 1, self.stride, self.dtype, 'downsample_conv')(x)
      shortcut = bn('downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1.5 backbone returning the C2..C5 feature maps.

  Attributes:
    depth: 18, 34, 50, 101, 152 or 200 (200 = bottleneck [3, 24, 36, 3]).
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
    kind, stages = RESNET_SPECS[self.depth]
    w = self.width_multiplier
    x = jnp.asarray(x, self.dtype)
    x = _conv(64 * w, 7, 2, self.dtype, 'conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                     dtype=self.dtype, param_dtype=jnp.float32, name='bn1')(x)
    x = nn.relu(x)
    # Explicit padding in max_pool pads with -inf (the reduction's identity).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {}
    for i, num_blocks in enumerate(stages):
      for j in range(num_blocks):
        x = _Block(kind=kind, width=64 * w * 2**i,
                   stride=2 if (i > 0 and j == 0) else 1, dtype=self.dtype,
                   bn_axis_name=self.bn_axis_name,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                   zero_init_last_bn=self.zero_init_last_bn,
                   name=f'layer{i + 1}_{j}')(x, train)
      feats[f'c{i + 2}'] = x.astype(jnp.float32)
    return feats
