"""dense_ssl/ops/mask_pool.py against the float64 numpy references."""

import os

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dense_ssl.ops import mask_pool as mp  # noqa: E402
from tests import reference_numpy as ref  # noqa: E402


def test_downsample_majority_and_ties():
  # 4x4 map, 2x2 grid: clear majority, 2-2 tie, 1-1-1-1 tie, uniform cell.
  m = np.array([[[9, 9, 4, 300],
                 [9, 3, 300, 4],
                 [7, 5, 2, 2],
                 [6, 8, 2, 2]]], np.int32)
  out = np.asarray(mp.downsample_masks(jnp.asarray(m), (2, 2)))
  np.testing.assert_array_equal(out, [[[9, 4], [5, 2]]])
  np.testing.assert_array_equal(out, ref.downsample_masks_ref(m, (2, 2)))


@pytest.mark.parametrize('num_ids,hw,grid', [
    (3, (32, 48), (4, 6)),        # few ids: real majorities, many ties
    (2000, (64, 64), (4, 4)),     # ids > 256, mostly unique: ties dominate
    (40, (28, 28), (7, 7)),       # 4x4 blocks
])
def test_downsample_matches_onehot_argmax(num_ids, hw, grid):
  rng = np.random.default_rng(num_ids)
  # Non-contiguous id values.
  values = np.sort(rng.choice(5000, size=num_ids, replace=False)).astype(np.int32)
  m = values[rng.integers(0, num_ids, size=(3,) + hw)]
  out = jax.jit(mp.downsample_masks, static_argnums=1)(jnp.asarray(m), grid)
  assert out.dtype == jnp.int32 and out.shape == (3,) + grid
  np.testing.assert_array_equal(np.asarray(out), ref.downsample_masks_ref(m, grid))


def test_downsample_fh_like_224():
  """224x224 FH-like map with 350 segments to the 7x7 C5 grid."""
  rng = np.random.default_rng(0)
  # Piecewise-constant regions (like FH) plus noise pixels with other ids.
  coarse = rng.integers(0, 350, size=(2, 28, 28)) * 3 + 11
  m = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.int32)
  noise = rng.random(m.shape) < 0.3
  m[noise] = rng.integers(0, 1100, size=noise.sum())
  out = jax.jit(mp.downsample_masks, static_argnums=1)(jnp.asarray(m), (7, 7))
  np.testing.assert_array_equal(np.asarray(out),
                                ref.downsample_masks_ref(m, (7, 7)))


def test_downsample_rejects_indivisible():
  with pytest.raises(ValueError, match='multiple'):
    mp.downsample_masks(jnp.zeros((1, 30, 30), jnp.int32), (7, 7))


def test_sample_mask_ids_uniform_over_distinct_ids():
  # Image 0: id 5 owns 15 cells, id 900 owns 1 -> each sampled half the time
  # (uniform over ids, not over area). Image 1: a single id.
  cells = np.full((2, 4, 4), 5, np.int32)
  cells[0, 3, 3] = 900
  cells[1] = 42
  k = 4000
  ids = jax.jit(mp.sample_mask_ids, static_argnums=2)(
      jax.random.PRNGKey(0), jnp.asarray(cells), k)
  ids = np.asarray(ids)
  assert ids.shape == (2, k) and ids.dtype == np.int32
  assert set(np.unique(ids[0])) == {5, 900}
  assert abs((ids[0] == 900).mean() - 0.5) < 0.04
  assert np.all(ids[1] == 42)


def test_sample_mask_ids_only_present_ids_many():
  rng = np.random.default_rng(1)
  cells = rng.choice(np.arange(0, 3000, 7), size=(4, 7, 7)).astype(np.int32)
  ids = np.asarray(mp.sample_mask_ids(jax.random.PRNGKey(3), jnp.asarray(cells), 16))
  for b in range(4):
    assert set(ids[b]) <= set(cells[b].ravel())
  # Different keys give different samples; the same key the same.
  ids2 = np.asarray(mp.sample_mask_ids(jax.random.PRNGKey(4), jnp.asarray(cells), 16))
  ids3 = np.asarray(mp.sample_mask_ids(jax.random.PRNGKey(3), jnp.asarray(cells), 16))
  assert not np.array_equal(ids, ids2)
  np.testing.assert_array_equal(ids, ids3)


def test_mask_pool_matches_reference():
  rng = np.random.default_rng(2)
  cells = rng.choice([0, 4, 257, 1000], size=(3, 5, 5)).astype(np.int32)
  ids = np.stack([rng.choice(np.unique(c), size=6) for c in cells]).astype(np.int32)
  ids[0, 0] = 12345  # absent id pools to zeros
  feats = rng.normal(size=(3, 5, 5, 8)).astype(np.float32)
  out = jax.jit(mp.mask_pool)(jnp.asarray(feats), jnp.asarray(cells),
                              jnp.asarray(ids))
  assert out.shape == (3, 6, 8) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out),
                             ref.mask_pool_ref(feats, cells, ids),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out)[0, 0], 0.0)


def test_mask_pool_single_global_mask_is_mean():
  feats = np.random.default_rng(3).normal(size=(2, 7, 7, 4)).astype(np.float32)
  out = mp.mask_pool(jnp.asarray(feats), jnp.zeros((2, 7, 7), jnp.int32),
                     jnp.zeros((2, 3), jnp.int32))
  np.testing.assert_allclose(np.asarray(out),
                             np.broadcast_to(feats.mean((1, 2))[:, None], (2, 3, 4)),
                             rtol=1e-5, atol=1e-6)


def test_duplicate_counts():
  ids = jnp.array([[3, 3, 7, 3], [1, 2, 3, 4]], jnp.int32)
  np.testing.assert_array_equal(np.asarray(mp.duplicate_counts(ids)),
                                [[3, 3, 1, 3], [1, 1, 1, 1]])
