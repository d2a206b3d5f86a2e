"""LC-loss: local contrastive NLL at known correspondences (Islam et al., Sec. 3)."""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize
from dense_ssl.ops import roi


def local_contrastive_loss(target_local, online_local, coords, valid, *, temperature):
  """L_LC = mean over valid pairs of NLL(p_c, p_sc) (LC Eqs. 2-4).

  C'(p_c, p_k) = cos(F_xi(p_c), F_theta(p_k)) over all cells k of I_sc;
  NLL(p_c, .) = -log softmax_k(C'(p_c, k) / tau), a map over I_sc's grid,
  read at the true sub-pixel correspondence p_sc by bilinear interpolation.

  Args:
    target_local: [B, hc, wc, D] target local features of I_c (colour only);
      gradients are stopped.
    online_local: [B, hs, ws, D] online local features of I_sc (crop + flip).
    coords: [B, hc * wc, 2] (row, col) of each p_c in I_sc's cell units
      (geometry.cell_correspondence).
    valid: [B, hc * wc] bool, p_sc inside I_sc.
    temperature: tau.
  Returns:
    (loss scalar float32, fraction of valid pairs).
  """
  b, hs, ws, d = online_local.shape
  t = l2_normalize(jax.lax.stop_gradient(target_local)).reshape(b, -1, d)
  o = l2_normalize(online_local).reshape(b, -1, d)
  nll = -jax.nn.log_softmax(jnp.einsum('bnd,bmd->bnm', t, o) / temperature, -1)
  n = nll.shape[1]
  # One [hs, ws] NLL map per (image, p_c), sampled at its own p_sc.
  maps = nll.reshape(b * n, hs, ws, 1)
  at = roi.bilinear_sample(maps, coords.reshape(b * n, 1, 2)).reshape(b, n)
  w = valid.astype(jnp.float32)
  return jnp.sum(at * w) / jnp.maximum(jnp.sum(w), 1.0), jnp.mean(w)
