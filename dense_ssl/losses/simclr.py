"""SimCLR's NT-Xent loss (Chen et al. 2020, Eq. 1), negatives across devices."""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize

_REMOVED_LOGIT = -1e9


def nt_xent_loss(z1, z2, *, temperature=0.1, axis_name=None):
  """Symmetric NT-Xent.

  For z1_i the positive is z2_i; the negatives are every other z2_j and every
  z1_j (j != i) of the global batch. The loss is the mean over i of the
  cross-entropy, averaged over both directions (z1 -> z2 and z2 -> z1).

  Args:
    z1, z2: [B, D] projections of the two views (gradients flow through both,
      and through the all_gather).
    temperature: logits are cos / temperature.
    axis_name: mapped axis to all_gather the negatives over; this device's z_i
      is global index axis_index * B + i. None: negatives from this device.

  Returns:
    (loss scalar, metrics {'loss_1to2', 'loss_2to1', 'accuracy'}), per device.
  """
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
  b = z1.shape[0]
  if axis_name is not None:
    z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
    z2_all = jax.lax.all_gather(z2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * b
  else:
    z1_all, z2_all, offset = z1, z2, 0
  n = z1_all.shape[0]
  labels = offset + jnp.arange(b)
  self_mask = jnp.arange(n)[None, :] == labels[:, None]
  hi = jax.lax.Precision.HIGHEST

  def one_direction(za, zb_all, za_all):
    logits_ab = jnp.matmul(za, zb_all.T, precision=hi) / temperature
    logits_aa = jnp.matmul(za, za_all.T, precision=hi) / temperature
    logits_aa = jnp.where(self_mask, _REMOVED_LOGIT, logits_aa)
    logits = jnp.concatenate([logits_ab, logits_aa], axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))
    acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, acc

  loss12, acc12 = one_direction(z1, z2_all, z1_all)
  loss21, acc21 = one_direction(z2, z1_all, z2_all)
  metrics = {'loss_1to2': loss12, 'loss_2to1': loss21,
             'accuracy': 0.5 * (acc12 + acc21)}
  return 0.5 * (loss12 + loss21), metrics
