"""ReSim's region-level similarity (Xiao et al. 2021, Eqs. 1-2).

For the valid window pairs (u_q^i, u_k^i) of an image,
  L^rs_q = -1/n sum_i log E+_ii / (E+_ii + sum_neg E_i,neg),
  E_i,x = exp(f(I_q, u_q^i) . f(I_k, x) / tau),
with f the Precise-RoI-pooled, L2-normalised region feature. As in the
official code (FACTS.md §7), the negatives are every stride-1 k x k average-
pooled location of the key maps (k = window / feature stride = 3): all
images of all devices on C4/P4, this device's images on P3.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize
from dense_ssl.losses.reduce import global_masked_mean


def key_map_negatives(key_map, kernel=3):
  """[B, h, w, C] -> [B * (h-k+1) * (w-k+1), C] normalised k x k mean-pooled cells."""
  b, h, w, c = key_map.shape
  k = min(kernel, h, w)
  pooled = jax.lax.reduce_window(key_map, 0.0, jax.lax.add, (1, k, k, 1),
                                 (1, 1, 1, 1), 'VALID') / (k * k)
  return l2_normalize(pooled.reshape(-1, c))


def region_contrast_loss(query, key, valid, negatives, *, temperature=0.2,
                         axis_name=None):
  """InfoNCE of each valid query window against its key window and the negatives.

  Args:
    query: [B, N, C] pooled online features of the query windows (gradients flow).
    key: [B, N, C] pooled key-view features of the matching windows (stopped).
    valid: [B, N] bool, the key window lies inside the key view.
    negatives: [M, C] L2-normalised negatives (stopped).
    temperature: tau (ReSim keeps MoCo-v2's 0.2).
    axis_name: mean over the valid windows of all devices when given.
  Returns:
    (loss scalar, dict(valid_windows_per_image, accuracy)).
  """
  q = l2_normalize(query)
  k = jax.lax.stop_gradient(l2_normalize(key))
  hi = jax.lax.Precision.HIGHEST
  l_pos = jnp.sum(q * k, -1)[..., None]                                  # [B, N, 1]
  l_neg = jnp.einsum('bnc,mc->bnm', q, jax.lax.stop_gradient(negatives), precision=hi)
  logits = jnp.concatenate([l_pos, l_neg], -1) / temperature
  ce = jax.nn.logsumexp(logits, -1) - logits[..., 0]
  loss, _ = global_masked_mean(ce, valid, axis_name)
  hit = (jnp.argmax(logits, -1) == 0).astype(jnp.float32)
  acc = jnp.sum(hit * valid) / jnp.maximum(jnp.sum(valid), 1.0)
  return loss, dict(valid_windows_per_image=jnp.mean(jnp.sum(valid, -1)), accuracy=acc)
