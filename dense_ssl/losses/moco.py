"""MoCo-v2's InfoNCE with a queue of keys (He et al. 2020, Chen et al. 2020).

ReSim Eq. 4 (the image-level term): L^is_q = -log D+ / (D+ + sum_k- D-),
D = exp(q . k / tau), q the online query, k+ the momentum encoder's key of
the other view of the same image, k- the queued keys of earlier batches.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize


def moco_loss(query, key, queue, *, temperature=0.2):
  """InfoNCE of each query against its key and the queue.

  Args:
    query: [B, D] online projections (gradients flow).
    key: [B, D] momentum-encoder projections (stop-gradient here).
    queue: [K, D] L2-normalised keys of earlier steps (no gradient).
    temperature: tau (MoCo-v2: 0.2).
  Returns:
    (mean loss over this device's B queries, accuracy of the positive being
     the top logit), both scalars.
  """
  q = l2_normalize(query)
  k = jax.lax.stop_gradient(l2_normalize(key))
  hi = jax.lax.Precision.HIGHEST
  l_pos = jnp.sum(q * k, -1, keepdims=True)
  l_neg = jnp.matmul(q, jax.lax.stop_gradient(queue).T, precision=hi)
  logits = jnp.concatenate([l_pos, l_neg], -1) / temperature
  loss = jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])
  acc = jnp.mean((jnp.argmax(logits, -1) == 0).astype(jnp.float32))
  return loss, acc


def enqueue(queue, pointer, keys):
  """MoCo's FIFO: writes keys [N, D] at `pointer` (K % N == 0); returns both new."""
  n = keys.shape[0]
  queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), pointer, 0)
  return queue, (pointer + n) % queue.shape[0]
