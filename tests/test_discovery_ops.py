"""Odin's discovery ops: ops/kmeans.py and geometry.resample_map_to_view.

k-means is checked against a float64 numpy k-means written here from the
equations of its docstring, started from the same seeds, on clustered data
whose assignments have a clear margin at every step. resample_map_to_view is
checked against the pipeline's own label crop (augment.crop_and_resize_labels)
of a "coordinate map" upsampled to a full-resolution original.
"""

import sys

sys.modules.setdefault('triton', None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

from data_pipeline import augment  # noqa: E402
from dense_ssl.ops import geometry as geo  # noqa: E402
from dense_ssl.ops import kmeans as km  # noqa: E402

tf = augment.tf
run_kmeans = jax.jit(km.kmeans, static_argnames=('num_clusters', 'num_iterations'))


def image_keys(num, seed=0):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(num))


def normalize64(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_kmeans(features, seeds, iterations):
  """Spherical k-means of one image in float64. features [N, C], seeds [K].

  Returns (labels [N], centroids [K, C], the smallest gap between the best and
  second-best similarity over every assignment made).
  """
  x = normalize64(features)
  mu = x[seeds].copy()
  gaps = []

  def assign(mu):
    sim = x @ mu.T
    top2 = np.sort(sim, -1)[:, -2:]
    gaps.append(np.min(top2[:, 1] - top2[:, 0]))
    return np.argmax(sim, -1)

  for _ in range(iterations):
    z = assign(mu)
    for k in range(len(seeds)):
      if np.any(z == k):
        m = x[z == k].mean(0)
        if np.linalg.norm(m) > 0:
          mu[k] = m / np.linalg.norm(m)
  return assign(mu), mu, min(gaps)


def clustered_features(rng, batch, points, channels, groups):
  """[B, N, C] float32: points along `groups` random directions per image,
  random norms in [0.5, 2] and 5% noise."""
  dirs = normalize64(rng.normal(size=(batch, groups, channels)))
  which = rng.integers(0, groups, size=(batch, points))
  base = np.take_along_axis(dirs, which[..., None], 1)
  scale = rng.uniform(0.5, 2.0, size=(batch, points, 1))
  noise = 0.05 * rng.normal(size=(batch, points, channels))
  return (scale * (base + noise)).astype(np.float32)


def one_to_one(got, want, num_clusters):
  """The bijection between cluster ids implied by two labelings (asserted)."""
  mapping = {}
  for g, w in zip(got, want):
    assert mapping.setdefault(int(g), int(w)) == int(w), 'one got-id, two want-ids'
  assert len(set(mapping.values())) == len(mapping), 'two got-ids, one want-id'
  assert len(mapping) <= num_clusters
  return mapping


# ------------------------------------------------------------------ kmeans ---

def test_init_indices_are_distinct_and_in_range():
  idx = np.asarray(jax.jit(km.init_indices, static_argnums=(1, 2))(image_keys(64), 10, 7))
  assert idx.shape == (64, 7) and idx.dtype == np.int32
  assert idx.min() >= 0 and idx.max() < 10
  assert all(len(set(row)) == 7 for row in idx)
  assert len(set(idx[:, 0])) == 10, 'every point can be drawn first'


def test_init_indices_rejects_more_clusters_than_points():
  with pytest.raises(ValueError, match='num_clusters=5 exceeds the 4 points'):
    km.init_indices(image_keys(2), 4, 5)


@pytest.mark.parametrize('batch,points,channels,groups,clusters,iterations', [
    (3, 40, 16, 3, 3, 5),
    (4, 64, 8, 5, 4, 6),
    (2, 30, 12, 4, 5, 4),
    (2, 20, 8, 3, 3, 0),
])
def test_kmeans_matches_float64_reference(batch, points, channels, groups, clusters,
                                          iterations):
  rng = np.random.default_rng(points + clusters)
  f = clustered_features(rng, batch, points, channels, groups)
  keys = image_keys(batch, seed=clusters)
  labels, centroids = run_kmeans(jnp.asarray(f), keys, num_clusters=clusters,
                                 num_iterations=iterations)
  assert labels.shape == (batch, points) and labels.dtype == jnp.int32
  assert centroids.shape == (batch, clusters, channels) and centroids.dtype == jnp.float32
  seeds = np.asarray(km.init_indices(keys, points, clusters))
  for b in range(batch):
    want_labels, want_mu, gap = reference_kmeans(f[b], seeds[b], iterations)
    # float32 similarities are within ~1e-6 of float64's.
    assert gap > 1e-5, 'the data should leave no near-tie to decide the result'
    mapping = one_to_one(np.asarray(labels[b]), want_labels, clusters)
    for g, w in mapping.items():
      np.testing.assert_allclose(centroids[b, g], want_mu[w], atol=1e-5, rtol=0)


def test_two_orthogonal_groups_are_found():
  """Points in span(e0, e1) and in span(e2, e3), K = 2: exactly those groups,
  whichever two points seed the clusters; centroids = the groups' mean directions."""
  rng = np.random.default_rng(0)
  n = 12
  a = np.zeros((n, 4))
  a[:, 0], a[:, 1] = 1.0, rng.uniform(0.0, 0.5, n)
  b = np.zeros((n, 4))
  b[:, 2], b[:, 3] = rng.uniform(0.5, 3.0, n), rng.uniform(0.0, 1.0, n)
  pts = np.concatenate([a, b])
  order = rng.permutation(2 * n)
  group = (np.arange(2 * n) >= n)[order]
  batch = 8
  f = jnp.asarray(np.broadcast_to(pts[order], (batch, 2 * n, 4)), jnp.bfloat16)
  labels, centroids = run_kmeans(f, image_keys(batch, seed=3), num_clusters=2,
                                 num_iterations=4)
  x = normalize64(np.asarray(f, np.float32)[0])
  mean_dir = [normalize64(x[group == g].mean(0)) for g in (0, 1)]
  for i in range(batch):
    got = np.asarray(labels[i])
    assert np.all(got[group] == got[group][0]) and np.all(got[~group] == got[~group][0])
    assert got[group][0] != got[~group][0]
    for g in (0, 1):
      k = got[group == g][0]
      np.testing.assert_allclose(centroids[i, k], mean_dir[g], atol=1e-5)


def test_empty_cluster_keeps_its_centroid():
  """Duplicates: 3 seeds among 2 distinct points p, q, so two centroids coincide
  and ties go to the lower id: the other cluster gets no point and keeps its seed."""
  p, q = [3.0, 0.0], [0.0, 0.5]
  f = jnp.asarray(np.tile([p, p, p, p, q, q], (16, 1, 1)), jnp.float32)
  keys = image_keys(16, seed=7)
  seeds = np.asarray(km.init_indices(keys, 6, 3))
  labels, centroids = run_kmeans(f, keys, num_clusters=3, num_iterations=3)
  labels, centroids = np.asarray(labels), np.asarray(centroids)
  is_q = seeds >= 4
  # Seeds (p, p, q): cluster 1 is empty from the start.
  i = np.flatnonzero((is_q == [False, False, True]).all(1))[0]
  np.testing.assert_array_equal(labels[i], [0, 0, 0, 0, 2, 2])
  np.testing.assert_array_equal(centroids[i], [[1, 0], [1, 0], [0, 1]])
  # Seeds (p, p, p): step 1 puts all in cluster 0 (q ties at 0), whose mean
  # then loses p to cluster 1; cluster 2 is empty at every step.
  i = np.flatnonzero(~is_q.any(1))[0]
  np.testing.assert_array_equal(labels[i], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(centroids[i], [[0, 1], [1, 0], [1, 0]])
  for i in range(16):
    assert len(set(labels[i].tolist())) == 2
    want_labels, want_mu, _ = reference_kmeans(np.asarray(f[i]), seeds[i], 3)
    np.testing.assert_array_equal(labels[i], want_labels)
    np.testing.assert_allclose(centroids[i], want_mu, atol=1e-6)


def test_kmeans_is_per_image_deterministic_and_device_independent():
  rng = np.random.default_rng(5)
  f = jnp.asarray(clustered_features(rng, 4, 36, 8, 4))
  keys = image_keys(4, seed=11)
  kw = dict(num_clusters=4, num_iterations=5)
  labels, centroids = run_kmeans(f, keys, **kw)
  again, _ = run_kmeans(f, keys, **kw)
  np.testing.assert_array_equal(labels, again)
  for i in range(4):
    alone, mu = run_kmeans(f[i:i + 1], keys[i:i + 1], **kw)
    np.testing.assert_array_equal(alone[0], labels[i])
    np.testing.assert_allclose(mu[0], centroids[i], atol=1e-6)
  # One image per device, as the trainer's shard_map runs it.
  mesh = Mesh(np.asarray(jax.devices()[:4]), ('batch',))
  sharded = jax.jit(jax.shard_map(lambda x, k: km.kmeans(x, k, **kw), mesh=mesh,
                                  in_specs=(P('batch'), P('batch')),
                                  out_specs=(P('batch'), P('batch'))))
  four, mu4 = sharded(f, keys)
  assert len(four.sharding.device_set) == 4
  np.testing.assert_array_equal(four, labels)
  np.testing.assert_allclose(mu4, centroids, atol=1e-6)


def test_kmeans_has_no_gradient():
  f = jnp.asarray(clustered_features(np.random.default_rng(1), 2, 16, 4, 2))
  grad = jax.grad(lambda x: km.kmeans(x, image_keys(2), num_clusters=2,
                                      num_iterations=2)[1].sum())(f)
  assert not np.any(np.asarray(grad))


# ---------------------------------------------------- resample_map_to_view ---

MAP_H, MAP_W = 6, 5           # The cluster map over the whole original.
BLOCK_Y, BLOCK_X = 4, 6       # Original pixels per map cell.
H, W = MAP_H * BLOCK_Y, MAP_W * BLOCK_X
# Each cell holds its own (row, col).
COORD_MAP = (np.arange(MAP_H)[:, None] * MAP_W + np.arange(MAP_W)[None, :]).astype(np.int32)


def pipeline_view_mask(cells, size, flip):
  """The pipeline's label crop of the upsampled map, for a window of whole cells.

  cells: (row0, col0, rows, cols). Returns (mask [S, S] int32, box [4]).
  """
  original = np.repeat(np.repeat(COORD_MAP, BLOCK_Y, 0), BLOCK_X, 1)
  r0, c0, nr, nc = cells
  window = tuple(tf.constant(v, tf.int32) for v in
                 (r0 * BLOCK_Y, c0 * BLOCK_X, nr * BLOCK_Y, nc * BLOCK_X))
  mask = augment.crop_and_resize_labels(tf.constant(original), window, size,
                                        tf.constant(bool(flip)))
  return np.asarray(mask), np.asarray(augment.window_to_box(*window, H, W))


WINDOWS = [(0, 0, MAP_H, MAP_W), (1, 1, 3, 3), (2, 0, 4, 2), (0, 3, 6, 2), (5, 4, 1, 1),
           (1, 2, 2, 3)]


# Sizes 3 and 7 put view pixel centres exactly on cell boundaries (the whole
# image's 6 rows at S = 3; window (2, 0, 4, 2) at S = 7).
@pytest.mark.parametrize('size', [3, 7, 8, 16])
def test_resample_map_to_view_equals_the_pipeline_label_crop(size):
  cases = [(cells, flip) for cells in WINDOWS for flip in (0, 1)]
  want, boxes = zip(*(pipeline_view_mask(c, size, f) for c, f in cases))
  flips = jnp.asarray([f for _, f in cases], jnp.int32)
  maps = jnp.broadcast_to(jnp.asarray(COORD_MAP), (len(cases), MAP_H, MAP_W))
  got = jax.jit(geo.resample_map_to_view, static_argnums=3)(
      maps, jnp.asarray(np.stack(boxes)), flips, size)
  assert got.shape == (len(cases), size, size) and got.dtype == jnp.int32
  for (cells, flip), g, w in zip(cases, np.asarray(got), want):
    np.testing.assert_array_equal(g, w, err_msg=f'window {cells} flip {flip}')


def test_whole_image_box_upsamples_the_map():
  size = MAP_H * MAP_W  # Each cell: an exact 5 x 6 block of view pixels.
  maps = jnp.asarray(np.stack([COORD_MAP, COORD_MAP[::-1], COORD_MAP]), jnp.uint8)
  got = jax.jit(geo.resample_map_to_view, static_argnums=3)(
      maps, jnp.tile(jnp.asarray([[0., 0., 1., 1.]]), (3, 1)),
      jnp.asarray([0, 0, 1], jnp.int32), size)
  want = [np.repeat(np.repeat(m, size // MAP_H, 0), size // MAP_W, 1)
          for m in np.asarray(maps)]
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  # Flipped: the same, mirrored.
  np.testing.assert_array_equal(got[2], want[2][:, ::-1])
