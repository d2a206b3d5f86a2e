"""Heads shared by several objectives: the MLP head and an FPN.

DetCon-B and BYOL: projector 2048 -> 4096 -> 256 and predictor 256 -> 4096 ->
256, each Linear -> BN -> ReLU -> Linear (MLPHead; MoCo-v2's head has no BN,
CLoVE's projector ends in a BN without affine). The caller picks the sizes.
Heads that belong to one objective live in its file (dense_ssl/objectives/:
ReSim's RegionHead, CLoVE's NormalizedMultiHeadAttention).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
  """Linear -> BN -> ReLU -> Linear on the last axis.

  BN statistics run over all leading dims (e.g. batch and the K mask-pooled
  vectors of DetCon), and across replicas when `bn_axis_name` is set.

  Params: `linear1` {kernel, bias}, `bn1` {scale, bias}, `linear2`
  {kernel, bias}; batch_stats `bn1` {mean, var}.
  """
  hidden_dim: int
  output_dim: int
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  use_bn: bool = True              # False: MoCo-v2's Linear -> ReLU -> Linear.
  final_bn: bool = False           # True: + BN without scale/bias (CLoVE, PixPro).

  @nn.compact
  def __call__(self, x, train: bool):
    """x: [..., D] -> [..., output_dim] float32."""
    lead = x.shape[:-1]
    x = jnp.asarray(x, self.dtype).reshape((-1, x.shape[-1]))
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='linear1')(x)
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                       dtype=self.dtype, param_dtype=jnp.float32, name='bn1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.output_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='linear2')(x)
    if self.final_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                       use_scale=False, use_bias=False, dtype=self.dtype,
                       param_dtype=jnp.float32, name='bn2')(x)
    return x.astype(jnp.float32).reshape(lead + (self.output_dim,))


class FPN(nn.Module):
  """Feature Pyramid Network top-down path (Lin et al. 2017), as ReSim-FPN uses it.

  P5 = lateral_5(C5); P_k = lateral_k(C_k) + nearest_upsample_2x(P_{k+1});
  outputs output_k(P_k), 3x3. Laterals run over `levels` (the lowest of them
  up to 5), outputs only at `out_levels`. Param names are Detectron2's FPN
  (dense_ssl/export/detectron2_format.py: lateral_{k}, output_{k}, conv with
  bias, no norm), so a trained FPN transfers (`MODEL.FPN.NORM ""`).
  """
  dim: int = 256
  out_levels: Sequence[int] = (3, 4)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    """{'c2'..'c5'} -> {'p3': [B, H/8, W/8, dim], 'p4': ...} float32."""
    conv = lambda k, name: nn.Conv(self.dim, (k, k), padding=((k // 2,) * 2,) * 2,
                                   dtype=self.dtype, param_dtype=jnp.float32, name=name)
    lowest = min(self.out_levels)
    top, out = None, {}
    for k in range(5, lowest - 1, -1):
      lateral = conv(1, f'lateral_{k}')(feats[f'c{k}'])
      if top is not None:
        top = jnp.repeat(jnp.repeat(top, 2, axis=1), 2, axis=2)  # nearest 2x
        top = lateral + top[:, :lateral.shape[1], :lateral.shape[2]]
      else:
        top = lateral
      if k in self.out_levels:
        out[f'p{k}'] = conv(3, f'output_{k}')(top).astype(jnp.float32)
    return out
