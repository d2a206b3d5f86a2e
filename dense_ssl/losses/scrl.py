"""SCRL's spatial consistency loss (Roh et al. 2021, Sec. 3.2, Eqs. 2-3).

BYOL's normalised MSE, taken per box: the online prediction of box k in one
view regresses the EMA target projection of the SAME box k in the other view.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize


def box_regression_error(pred, target):
  """||q_bar - z_bar||^2 per box (SCRL Eq. 2's summand), = 2 - 2 cos.

  Args:
    pred: [B, K, D] online predictions q_theta(z_i^k).
    target: [B, K, D] target projections z_j^k of the same boxes (other view);
      gradients are stopped.
  Returns:
    [B, K] float32 in [0, 4].
  """
  target = jax.lax.stop_gradient(target)
  diff = l2_normalize(pred) - l2_normalize(target)
  return jnp.sum(diff * diff, axis=-1)


def scrl_loss(pred1, pred2, target1, target2, valid, *, axis_name=None):
  """Symmetrised SCRL loss over the VALID boxes (SCRL Eqs. 2-3).

    L = L^SCRL + L~^SCRL,
    L^SCRL  = 1/N sum_{b,k valid} || q(z_1^{b,k})_bar - z'_2^{b,k}_bar ||^2,
    L~^SCRL = 1/N sum_{b,k valid} || q(z_2^{b,k})_bar - z'_1^{b,k}_bar ||^2,

  where N is the number of valid boxes. Eq. 2 averages over the K boxes of an
  image; here every image's K slots may not all be valid (no room in the
  views' overlap), so the mean runs over the valid boxes of the whole batch.
  An image with no valid box contributes nothing; with no valid box at all
  the loss is 0 with zero (finite) gradients.

  Args:
    pred1, pred2: [B, K, D] online predictions of view 1's and view 2's boxes.
    target1, target2: [B, K, D] target projections of the same boxes in view
      1 and view 2 (box k is the same original-image region in both views).
    valid: [B, K] bool, the box slots that hold a real box.
    axis_name: mapped axis of the data-parallel step, or None. When given, N
      counts the valid boxes of ALL devices and each device returns
      (its sum) * n_devices / N, so the trainer's pmean of the loss (and of
      the gradients) is the global mean: 1 and 4 devices agree.
  Returns:
    (loss: scalar float32 in [0, 8], metrics: dict of scalars, per device
     before the trainer's pmean).
  """
  w = valid.astype(jnp.float32)
  err_12 = jnp.where(valid, box_regression_error(pred1, target2), 0.0)
  err_21 = jnp.where(valid, box_regression_error(pred2, target1), 0.0)
  count = jnp.sum(w)
  scale = 1.0
  if axis_name is not None:
    scale = jax.lax.psum(1.0, axis_name)
    count = jax.lax.psum(count, axis_name)
  norm = scale / jnp.maximum(count, 1.0)
  loss_12 = jnp.sum(err_12) * norm
  loss_21 = jnp.sum(err_21) * norm
  per_image = jnp.sum(w, axis=1)
  metrics = dict(
      loss_1to2=loss_12, loss_2to1=loss_21,
      valid_boxes_per_image=jnp.mean(per_image),
      images_without_boxes=jnp.mean((per_image == 0).astype(jnp.float32)))
  return loss_12 + loss_21, metrics
