"""DetCon, BYOL and NT-Xent losses against float64 numpy references."""

import os

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from dense_ssl.losses.byol import byol_loss  # noqa: E402
from dense_ssl.losses.detcon import detcon_loss  # noqa: E402
from dense_ssl.losses.simclr import nt_xent_loss  # noqa: E402
from tests import reference_numpy as ref  # noqa: E402


def _latents(rng, b, k, d):
  return [rng.normal(size=(b, k, d)).astype(np.float32) for _ in range(4)]


def _tricky_ids():
  """B=4, K=5: duplicates, ids absent from the other view, no positives."""
  ids1 = np.array([[1, 1, 2, 7, 300],     # dup id 1; 300 absent in view 2
                   [3, 4, 5, 6, 3],       # no positives at all (disjoint)
                   [0, 0, 0, 0, 0],       # a single id, all duplicates
                   [9, 8, 9, 8, 10]], np.int32)
  ids2 = np.array([[2, 1, 7, 7, 11],      # dup id 7; 11 absent in view 1
                   [13, 14, 15, 16, 17],
                   [0, 5, 0, 5, 0],
                   [8, 9, 10, 10, 10]], np.int32)
  return ids1, ids2


@pytest.mark.parametrize('local_negatives', [True, False])
@pytest.mark.parametrize('temperature,correlated', [(0.1, False), (0.5, False),
                                                    (0.1, True)])
def test_detcon_matches_reference(local_negatives, temperature, correlated):
  rng = np.random.default_rng(0)
  p1, p2, t1, t2 = _latents(rng, 4, 5, 6)
  if correlated:  # targets near the predictions: removed entries matter
    t1, t2 = p1 + 0.2 * t1, p2 + 0.2 * t2
  ids1, ids2 = _tricky_ids()
  loss, metrics = jax.jit(functools.partial(
      detcon_loss, temperature=temperature,
      local_negatives=local_negatives))(p1, p2, t1, t2, ids1, ids2)
  want, npos = ref.detcon_loss_ref(p1, p2, t1, t2, ids1, ids2, temperature,
                                   local_negatives)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['positives_per_roi']), npos,
                             rtol=1e-6)
  np.testing.assert_allclose(
      float(metrics['loss_1to2'] + metrics['loss_2to1']), want, rtol=1e-5)
  # View 1: 14 of 20 ROIs have a positive (image 1 none, id 300 absent);
  # view 2: 12 of 20 (image 1 none, id 11 and the two 5s absent).
  np.testing.assert_allclose(float(metrics['rois_with_positive']), 26 / 40)


# local_negatives: the float64 reference above (both settings); the config
# switches reaching the loss: tests/test_method.py.


def test_detcon_aligned_lower_than_shuffled():
  """Targets equal to the predictions of the same id: low loss; shuffled: high."""
  rng = np.random.default_rng(2)
  b, k, d = 8, 4, 32
  ids = np.tile(np.arange(k, dtype=np.int32), (b, 1))
  z = rng.normal(size=(b, k, d)).astype(np.float32)
  aligned, m = detcon_loss(z, z, z, z, ids, ids)
  perm = rng.permutation(b)
  shuffled, _ = detcon_loss(z, z, z[perm], z[perm], ids, ids)
  assert float(aligned) < 0.1 < float(shuffled)
  assert float(m['accuracy']) == 1.0
  assert float(m['positives_per_roi']) == 1.0


def test_detcon_stop_gradient_targets():
  rng = np.random.default_rng(3)
  p1, p2, t1, t2 = _latents(rng, 4, 5, 6)
  ids1, ids2 = _tricky_ids()

  def f(t, sg):
    return detcon_loss(p1, p2, t, t2, ids1, ids2, stop_gradient_targets=sg)[0]

  assert np.all(np.asarray(jax.grad(f)(t1, True)) == 0)
  assert np.abs(np.asarray(jax.grad(f)(t1, False))).sum() > 0


def _mesh():
  assert jax.device_count() >= 4, 'tests need 4 simulated CPU devices'
  return Mesh(np.array(jax.devices()[:4]), ('batch',))


def _shard(mesh, *xs):
  s = NamedSharding(mesh, P('batch'))
  return [jax.device_put(jnp.asarray(x), s) for x in xs]


@pytest.mark.parametrize('local_negatives', [True, False])
def test_detcon_across_devices_equals_global(local_negatives):
  """pmean over 4 devices of the gathered loss == loss on the full batch."""
  rng = np.random.default_rng(4)
  p1, p2, t1, t2 = _latents(rng, 8, 5, 6)
  ids1 = np.concatenate(_tricky_ids()[:1] * 2)
  ids2 = np.concatenate(_tricky_ids()[1:] * 2)
  mesh = _mesh()

  def per_device(p1, p2, t1, t2, i1, i2):
    gathered, m = detcon_loss(p1, p2, t1, t2, i1, i2, axis_name='batch',
                              local_negatives=local_negatives)
    local, _ = detcon_loss(p1, p2, t1, t2, i1, i2, axis_name=None,
                           local_negatives=local_negatives)
    return (jax.lax.pmean(gathered, 'batch'),
            jax.lax.pmean(m['positives_per_roi'], 'batch'),
            local[None])

  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('batch'),) * 6,
                            out_specs=(P(), P(), P('batch'))))
  gathered, npos, local = f(*_shard(mesh, p1, p2, t1, t2, ids1, ids2))
  want, want_npos = ref.detcon_loss_ref(p1, p2, t1, t2, ids1, ids2, 0.1,
                                        local_negatives)
  single, _ = detcon_loss(p1, p2, t1, t2, ids1, ids2,
                          local_negatives=local_negatives)
  np.testing.assert_allclose(float(gathered), want, rtol=1e-5)
  np.testing.assert_allclose(float(gathered), float(single), rtol=1e-6)
  np.testing.assert_allclose(float(npos), want_npos, rtol=1e-6)
  # axis_name=None: negatives from this device only (paper Table 5).
  for d in range(4):
    sl = slice(2 * d, 2 * d + 2)
    want_d, _ = ref.detcon_loss_ref(p1[sl], p2[sl], t1[sl], t2[sl], ids1[sl],
                                    ids2[sl], 0.1, local_negatives)
    np.testing.assert_allclose(float(local[d]), want_d, rtol=1e-5)


@pytest.mark.parametrize('k', [1, 3])
def test_detcon_s_with_global_mask_is_simclr(k):
  """DetCon-S on a 1x1 grid (all K samples one id) is SimCLR's NT-Xent.

  With K copies of z per image every softmax entry appears K times, so a
  ROI's cross-entropy is NT-Xent's + log K; its weight is 1/K (K duplicates)
  and ROIs are averaged, and DetCon sums the two directions while NT-Xent
  averages them: detcon = (2 / K) * (nt_xent + log K); gradients are
  (2 / K) * NT-Xent's (K = 1: exactly twice SimCLR).
  """
  rng = np.random.default_rng(5)
  b, d = 6, 8
  z1 = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  z2 = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  ids = jnp.zeros((b, k), jnp.int32)

  def detcon_s(z1, z2):
    v1 = jnp.broadcast_to(z1[:, None], (b, k, d))
    v2 = jnp.broadcast_to(z2[:, None], (b, k, d))
    return detcon_loss(v1, v2, v1, v2, ids, ids,
                       stop_gradient_targets=False)[0]

  def simclr(z1, z2):
    return (2.0 / k) * (nt_xent_loss(z1, z2)[0] + np.log(k))

  v_d, g_d = jax.value_and_grad(detcon_s, argnums=(0, 1))(z1, z2)
  v_s, g_s = jax.value_and_grad(simclr, argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(v_d), float(v_s), rtol=1e-5)
  for a, c in zip(g_d, g_s):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4,
                               atol=1e-6)


def test_nt_xent_matches_reference():
  rng = np.random.default_rng(6)
  z1, z2 = rng.normal(size=(2, 7, 5)).astype(np.float32)
  for t in (0.1, 0.5):
    loss, m = nt_xent_loss(z1, z2, temperature=t)
    np.testing.assert_allclose(float(loss), ref.nt_xent_ref(z1, z2, t),
                               rtol=1e-5)
  loss, m = nt_xent_loss(z1, z1 * 3.0)  # positives identical (up to scale)
  assert float(m['accuracy']) == 1.0


def test_nt_xent_across_devices_equals_global():
  rng = np.random.default_rng(7)
  z1, z2 = rng.normal(size=(2, 8, 5)).astype(np.float32)
  mesh = _mesh()

  def per_device(z1, z2):
    return jax.lax.pmean(nt_xent_loss(z1, z2, axis_name='batch')[0], 'batch')

  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('batch'),) * 2,
                            out_specs=P()))
  got = f(*_shard(mesh, z1, z2))
  np.testing.assert_allclose(float(got), ref.nt_xent_ref(z1, z2, 0.1),
                             rtol=1e-5)


def test_byol_loss_known_values():
  x = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
  assert float(byol_loss(x, 5.0 * x)) == pytest.approx(0.0, abs=1e-6)
  assert float(byol_loss(x, -x)) == pytest.approx(4.0, abs=1e-6)
  y = jnp.array([[0.0, 1.0], [1.0, 0.0], [-4.0, 3.0]])
  assert float(byol_loss(x, y)) == pytest.approx(2.0, abs=1e-6)
  rng = np.random.default_rng(8)
  p, t = rng.normal(size=(2, 3, 4, 16)).astype(np.float32)
  np.testing.assert_allclose(float(byol_loss(p, t)), ref.byol_loss_ref(p, t),
                             rtol=1e-5)
  g = jax.grad(lambda t: byol_loss(p, t))(jnp.asarray(t))
  assert np.all(np.asarray(g) == 0)
