"""Methods on one device batch: shapes, the DetCon-S / SimCLR identity, switches.

The full train step (optimiser, EMA, devices, checkpoints) is tested in
test_train.py; here each method's loss is run inside shard_map over 4
simulated devices, as the trainer runs it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import byol, detcon_b, detcon_s, simclr
from dense_ssl import methods
from dense_ssl.methods import base

CONFIGS = dict(byol=byol, simclr=simclr, detcon_b=detcon_b, detcon_s=detcon_s)
SIZE, PER_DEVICE = 64, 2


def fake_batch(n, rng, *, num_ids=5):
  r = np.random.default_rng(rng)
  b = {}
  for v in ('view1', 'view2'):
    b[f'{v}/image'] = r.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    # Blocky masks so that several ids own C5 cells (2 x 2 grid at 64 px).
    coarse = r.integers(0, num_ids, size=(n, 4, 4))
    b[f'{v}/mask'] = np.repeat(np.repeat(coarse, 16, 1), 16, 2).astype(np.int32)
    b[f'{v}/box'] = np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1))
    b[f'{v}/flip'] = np.zeros((n,), np.int32)
  return b


def run_loss(method, variables, batch, rng, devices=4):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), (base.AXIS,))

  def per_device(online, target, batch, rng):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(base.AXIS))
    loss, (stats, tstats, metrics) = method.loss(
        online['params'], online['batch_stats'], target, batch, rng)
    return jax.lax.pmean(loss, base.AXIS), jax.lax.pmean(metrics, base.AXIS)

  rep = NamedSharding(mesh, P())
  shard = NamedSharding(mesh, P(base.AXIS))
  target = variables['target']
  f = jax.jit(jax.shard_map(per_device, mesh=mesh,
                            in_specs=(P(), P(), P(base.AXIS), P()), out_specs=(P(), P())))
  return f(jax.device_put(variables['online'], rep),
           jax.device_put(target, rep) if target is not None else None,
           jax.device_put(batch, shard), jax.device_put(rng, rep))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_each_method_loss_is_finite(name):
  config = CONFIGS[name].get_config('test')
  method = methods.get_method(config)
  batch = fake_batch(4 * PER_DEVICE, 0)
  variables = method.init(jax.random.key(0), {k: v[:PER_DEVICE] for k, v in batch.items()})
  assert (variables['target'] is not None) == method.uses_target
  if method.uses_target:
    assert 'predictor' in variables['online']['params']
    assert 'predictor' not in variables['target']['params']
  loss, metrics = run_loss(method, variables, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(metrics['loss']) == pytest.approx(float(loss), rel=1e-6)
  if name.startswith('detcon'):
    assert float(metrics['detcon_positives_per_roi']) > 0.0


@pytest.mark.parametrize('k', [1, 4])
def test_detcon_s_with_one_global_mask_is_simclr(k):
  """DetCon Sec. 3.2: with a single global mask DetCon-S reverts to SimCLR.

  With K identical samples every logit appears K times, so
  detcon = (2 / K) (nt_xent + log K) (DetCon sums both directions, SimCLR
  averages them); K = 1 gives exactly twice SimCLR.
  """
  cs = detcon_s.get_config('test')
  cs.loss.num_samples = k
  cs.data.mask = 'grid'
  csim = simclr.get_config('test')
  ds, sim = methods.get_method(cs), methods.get_method(csim)
  batch = fake_batch(4 * PER_DEVICE, 2)
  for v in ('view1', 'view2'):
    batch[f'{v}/mask'] = np.zeros_like(batch[f'{v}/mask'])  # 1 x 1 grid
  variables = sim.init(jax.random.key(0), {k_: v[:PER_DEVICE] for k_, v in batch.items()})
  l_sim, _ = run_loss(sim, variables, batch, jax.random.key(3))
  l_ds, _ = run_loss(ds, variables, batch, jax.random.key(3))
  np.testing.assert_allclose(float(l_ds), 2 / k * (float(l_sim) + np.log(k)), rtol=1e-5)


def test_local_negatives_and_device_only_switches_change_the_loss():
  c = detcon_b.get_config('test')
  batch = fake_batch(4 * PER_DEVICE, 4)
  losses = {}
  for local, gather in [(True, True), (False, True), (True, False)]:
    c2 = detcon_b.get_config('test')
    c2.loss.local_negatives, c2.loss.gather_negatives = local, gather
    m = methods.get_method(c2)
    variables = m.init(jax.random.key(0), {k: v[:PER_DEVICE] for k, v in batch.items()})
    losses[(local, gather)] = float(run_loss(m, variables, batch, jax.random.key(5))[0])
  del c
  # Fewer negatives -> lower contrastive loss (same features, same samples).
  assert losses[(False, True)] < losses[(True, True)]
  assert losses[(True, False)] < losses[(True, True)]


def test_unknown_method_is_a_clear_error():
  c = byol.get_config('test')
  c.method = 'bogus'
  with pytest.raises(ValueError, match='config.method'):
    methods.get_method(c)


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(ValueError, match='demo'):
    detcon_b.get_config('nope')
