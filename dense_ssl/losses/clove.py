"""CLoVE's margin ranking loss with in-image hard negatives (Silva et al., Eq. 2).

  L = sum_{(i, j) in M} max(0, -lambda cos(C_i, F_j) + cos(C_i, F_neg(i)) + mu)

C the online contextualised predictions of view a (NMHSA output), F the
target's local embeddings of view b, M the neighbour pairs (geometry.
neighbour_pairs, T_pos = 0.7). F_neg(i): the k (= 10) cells of F most similar
to C_i among the cells that are NOT neighbours of i, the most similar one
discarded (a likely false negative), averaged. The sum runs over the pairs;
we divide by their number (global over devices) so the scale does not
depend on the batch or grid size.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize
from dense_ssl.losses.reduce import global_masked_mean


def hard_negative_mean(pred, target, positive, *, top_k=10):
  """F_neg: the mean of the top-k non-positive target cells, hardest dropped.

  Args:
    pred: [B, La, D] normalised predictions; target: [B, Lb, D] normalised.
    positive: [B, La, Lb] bool, the neighbour pairs (excluded).
    top_k: k; fewer non-positive cells than k use those there are.
  Returns:
    ([B, La, D] mean negative vectors (0 where none is left), [B, La] count used).
  """
  sim = jnp.einsum('bld,bmd->blm', pred, target)
  sim = jnp.where(positive, -jnp.inf, sim)
  k = min(top_k, target.shape[1])
  top, idx = jax.lax.top_k(sim, k)                                    # [B, La, k]
  use = jnp.isfinite(top) & (jnp.arange(k) > 0)                       # drop the hardest
  gathered = jax.vmap(lambda t, i: t[i])(target, idx)                 # [B, La, k, D]
  w = use.astype(target.dtype)[..., None]
  count = jnp.sum(w, axis=(-2, -1))
  mean = jnp.sum(gathered * w, -2) / jnp.maximum(count, 1.0)[..., None]
  return mean, count


def clove_loss(pred, target, positive, *, top_k=10, margin=100.0, lam=1.0,
               axis_name=None):
  """One direction of Eq. 2 (online view a -> target view b), mean over pairs.

  Args:
    pred: [B, La, D] online contextualised predictions (gradients flow).
    target: [B, Lb, D] target local embeddings (stopped).
    positive: [B, La, Lb] bool neighbour pairs M.
    top_k, margin, lam: k, mu, lambda of Eq. 2.
    axis_name: mean over the pairs of all devices when given.
  Returns:
    (loss scalar, dict(positive_pairs_per_image, positive_cos, negative_cos)).
  """
  c = l2_normalize(pred)
  f = jax.lax.stop_gradient(l2_normalize(target))
  pos_cos = jnp.einsum('bld,bmd->blm', c, f)
  f_neg, _ = hard_negative_mean(jax.lax.stop_gradient(c), f, positive, top_k=top_k)
  neg_cos = jnp.sum(c * l2_normalize(f_neg), -1)                     # [B, La]
  hinge = jnp.maximum(0.0, -lam * pos_cos + neg_cos[..., None] + margin)
  loss, _ = global_masked_mean(hinge, positive, axis_name)
  n = jnp.maximum(jnp.sum(positive), 1)
  return loss, dict(
      positive_pairs_per_image=jnp.mean(jnp.sum(positive, axis=(1, 2))),
      positive_cos=jnp.sum(jnp.where(positive, pos_cos, 0.0)) / n,
      negative_cos=jnp.mean(neg_cos))
