"""BYOL regression loss (Grill et al. 2020, Eq. 2): 2 - 2 cos(pred, target)."""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize


def byol_loss(pred, target, *, stop_gradient_target=True):
  """Mean over all leading dims of 2 - 2 cos(pred, target).

  Args:
    pred: [N, D] (or [..., D]) online predictions.
    target: same shape, target projections; gradients are stopped unless
      stop_gradient_target=False.

  Returns:
    scalar float32 in [0, 4].
  """
  if stop_gradient_target:
    target = jax.lax.stop_gradient(target)
  cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
  return jnp.mean(2.0 - 2.0 * cos)
