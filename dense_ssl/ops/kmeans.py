"""Per-image spherical k-means: Odin's mask discovery (Hénaff et al. 2022, Sec. 3).

Odin clusters the feature map of an EMA "discovery" network over each whole
image and uses the clusters as the masks of the object-level loss. Each image
is clustered on its own, from its own PRNG key, so an image's clusters do not
depend on the rest of the batch nor on how the batch is split over devices.

All functions are pure, batched over B, with static shapes (jit- and
shard_map-friendly), and carry no gradient.
"""

import jax
import jax.numpy as jnp

# Floor on a norm before dividing by it: an all-zero feature (possible after a
# ReLU) gets cosine 0 with every centroid instead of a NaN.
_EPS = 1e-12
# Full float32 matmuls: TF32/bf16 passes on accelerators would move near-ties
# between clusters differently at different per-device batch sizes.
_PRECISION = jax.lax.Precision.HIGHEST


def init_indices(keys, num_points: int, num_clusters: int):
  """K distinct points per image, uniformly without replacement (the seeds).

  Args:
    keys: [B] PRNG keys, one per image.
    num_points: N, points per image. num_clusters: K <= N.
  Returns:
    int32 [B, K] point indices, distinct within each row.
  """
  if num_clusters > num_points:
    raise ValueError(
        f'dense_ssl/ops/kmeans.py: num_clusters={num_clusters} exceeds the'
        f' {num_points} points per image (the feature map\'s h * w); use fewer'
        ' clusters or a larger discovery feature map')
  draw = lambda k: jax.random.choice(k, num_points, (num_clusters,), replace=False)
  return jax.vmap(draw)(keys).astype(jnp.int32)


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _assign(points, centroids):
  """Index of the most cosine-similar centroid, ties -> lowest. [B, N]."""
  sim = jnp.einsum('bnc,bkc->bnk', points, centroids, precision=_PRECISION)
  return jnp.argmax(sim, -1).astype(jnp.int32)


def kmeans(features, keys, *, num_clusters: int, num_iterations: int):
  """Spherical (cosine) k-means of each image's feature vectors.

  With x_n = f_n / ||f_n|| the L2-normalised features and centroids
  mu_k^(0) = x_{init_indices[k]}, each of `num_iterations` Lloyd steps is
    z_n = argmax_k <x_n, mu_k>                        (ties -> lowest k)
    mu_k <- m_k / ||m_k||,  m_k = mean_{n : z_n = k} x_n,
  where an empty cluster (or one whose mean is the zero vector) keeps its
  previous centroid. The labels returned are the assignment to the final
  centroids.

  Cosine rather than Euclidean distance is our choice where the Odin paper's
  details are not available to us: a ResNet's features after a ReLU differ
  mainly in direction, their norms varying with contrast and scale.

  Args:
    features: [B, N, C], any float dtype (computed in float32; no gradient).
    keys: [B] PRNG keys, one per image (the seeds: init_indices).
    num_clusters: K <= N. num_iterations: Lloyd steps (0: the seeds only).
  Returns:
    (labels int32 [B, N] in [0, K), centroids float32 [B, K, C], unit norm).
  """
  x = _normalize(jax.lax.stop_gradient(features).astype(jnp.float32))
  keys = jax.lax.stop_gradient(keys)
  seeds = init_indices(keys, x.shape[1], num_clusters)
  centroids = jnp.take_along_axis(x, seeds[..., None], axis=1)

  def lloyd_step(_, mu):
    onehot = jax.nn.one_hot(_assign(x, mu), num_clusters, dtype=jnp.float32)
    # The mean's direction is the sum's: no need to divide by the counts.
    total = jnp.einsum('bnk,bnc->bkc', onehot, x, precision=_PRECISION)
    norm = jnp.linalg.norm(total, axis=-1, keepdims=True)
    return jnp.where(norm > 0, total / jnp.where(norm > 0, norm, 1.0), mu)

  centroids = jax.lax.fori_loop(0, num_iterations, lloyd_step, centroids)
  return _assign(x, centroids), centroids
