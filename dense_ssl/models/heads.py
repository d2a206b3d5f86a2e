"""MLP projector and predictor heads (BYOL / DetCon-B, DetCon Sec. 3.1).

DetCon-B and BYOL: projector 2048 -> 4096 -> 256 and predictor 256 -> 4096 ->
256, each Linear -> BN -> ReLU -> Linear. The caller picks the sizes.
"""

from typing import Any, Optional

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

  @nn.compact
  def __call__(self, x, train: bool):
    """x: [..., D] -> [..., output_dim] float32."""
    lead = x.shape[:-1]
    x = jnp.asarray(x, self.dtype).reshape((-1, x.shape[-1]))
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='linear1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                     dtype=self.dtype, param_dtype=jnp.float32, name='bn1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.output_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='linear2')(x)
    return x.astype(jnp.float32).reshape(lead + (self.output_dim,))
