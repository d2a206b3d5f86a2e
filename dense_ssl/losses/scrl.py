"""SCRL's box-level BYOL loss (Roh et al. 2021, Sec. 3.2)."""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize


def box_byol_loss(pred, target, valid):
  """Mean over VALID boxes of 2 - 2 cos(q(r_a), sg(z'(r_b))) (SCRL Eq. 2).

  pred [B, K, D]: online predictions of the K boxes of one view; target
  [B, K, D]: target projections of the SAME boxes in the other view;
  valid [B, K] bool (boxes outside the views' overlap are invalid). Images
  without a valid box contribute nothing; with no valid box at all the loss
  is 0 with zero (finite) gradients.

  Returns (loss scalar float32, number of valid boxes).
  """
  target = jax.lax.stop_gradient(target)
  cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
  w = valid.astype(jnp.float32)
  n = jnp.sum(w)
  return jnp.sum((2.0 - 2.0 * cos) * w) / jnp.maximum(n, 1.0), n
