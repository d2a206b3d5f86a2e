"""DetCon mask pooling: masks to the feature grid, id sampling, masked means.

DetCon Sec. 3.1: for a mask m, h_m = sum_ij m_ij h[i, j] / sum_ij m_ij, with
the binary mask downsampled to the feature grid. As in the DetCon release
(FACTS.md §6 "DetCon's mask pooling and loss"), the downsampled mask is a hard
assignment: each cell belongs to the majority id of its stride x stride block
(one-hot average-pool then argmax, ties to the smallest id). Here that mode is
computed exactly without a one-hot over all ids (FH maps can have hundreds of
arbitrary ids): sort each block's values and take the longest run.
"""

from typing import Tuple

import jax
import jax.numpy as jnp


def _cell_mode(values):
  """Mode along the last axis, ties -> smallest value. values: [..., n]."""
  n = values.shape[-1]
  v = jnp.sort(values, axis=-1)
  pos = jnp.arange(n, dtype=jnp.int32)
  is_start = jnp.concatenate(
      [jnp.ones(v.shape[:-1] + (1,), bool), v[..., 1:] != v[..., :-1]], -1)
  run_start = jax.lax.cummax(jnp.where(is_start, pos, 0), axis=v.ndim - 1)
  run_len_so_far = pos - run_start + 1
  # The first position reaching the longest run length ends the earliest
  # (= smallest id) run among those of maximal length.
  best = jnp.argmax(run_len_so_far, axis=-1)
  return jnp.take_along_axis(v, best[..., None], axis=-1)[..., 0]


def downsample_masks(masks, grid_hw: Tuple[int, int]):
  """Majority id of each feature cell.

  Args:
    masks: [B, H, W] int32 label map, any non-negative ids (not necessarily
      contiguous, may exceed 255).
    grid_hw: (h, w) feature grid; H and W must be multiples of h and w.

  Returns:
    cell_ids: [B, h, w] int32, the id owning the most pixels of each
    (H/h) x (W/w) block; ties go to the smallest id (one-hot average-pool
    then argmax, as DetCon does).
  """
  b, hh, ww = masks.shape
  h, w = grid_hw
  if hh % h or ww % w:
    raise ValueError(
        f'dense_ssl/ops/mask_pool.py: mask size {(hh, ww)} is not a multiple '
        f'of the feature grid {(h, w)}; use an image_size divisible by the '
        f'backbone stride (config key data.image_size).')
  sh, sw = hh // h, ww // w
  blocks = masks.astype(jnp.int32).reshape(b, h, sh, w, sw)
  blocks = blocks.transpose(0, 1, 3, 2, 4).reshape(b, h, w, sh * sw)
  return _cell_mode(blocks)


def sample_mask_ids(rng, cell_ids, num_samples: int = 16):
  """Samples ids uniformly, with replacement, among the ids owning a cell.

  Every image is sampled independently; call once per view with its own rng
  (the online and target branches of a view share the ids).

  Args:
    rng: PRNG key.
    cell_ids: [B, h, w] int32 from `downsample_masks`.
    num_samples: K (16 in DetCon).

  Returns:
    ids: [B, K] int32.
  """
  b = cell_ids.shape[0]
  flat = jnp.sort(cell_ids.reshape(b, -1), axis=-1)
  first = jnp.concatenate(
      [jnp.ones((b, 1), bool), flat[:, 1:] != flat[:, :-1]], axis=-1)
  # Uniform over first occurrences = uniform over the distinct ids.
  logits = jnp.where(first, 0.0, -jnp.inf)[:, None, :]
  idx = jax.random.categorical(rng, logits, axis=-1, shape=(b, num_samples))
  return jnp.take_along_axis(flat, idx, axis=-1).astype(jnp.int32)


def mask_pool(features, cell_ids, ids):
  """Masked mean of the features of each sampled id (DetCon Sec. 3.1, h_m).

  Args:
    features: [B, h, w, C].
    cell_ids: [B, h, w] int32 (hard-assigned masks on the feature grid).
    ids: [B, K] int32 sampled ids.

  Returns:
    [B, K, C] float32 (an id owning no cell pools to zeros).
  """
  m = (cell_ids[:, None, :, :] == ids[:, :, None, None]).astype(jnp.float32)
  area = m.sum(axis=(2, 3))
  pooled = jnp.einsum('bkhw,bhwc->bkc', m, features.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  return pooled / jnp.maximum(area, 1.0)[..., None]


def duplicate_counts(ids):
  """How many of an image's K sampled ids equal each one. ids: [B, K] -> [B, K]."""
  return (ids[:, :, None] == ids[:, None, :]).sum(-1).astype(jnp.float32)
