"""The one method: objective terms vs float64 references, the DetCon-S / SimCLR
identity, switches, streams and validation.

Correctness of every term is proven against a literal float64 numpy
re-derivation of its paper's equations (tests/reference_numpy.py), on the
network's own outputs.
"""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import byol, clove, detcon_b, detcon_b_lc, detcon_s, lc_byol, moco, resim, scrl
from configs import simclr
from dense_ssl import config_check
from dense_ssl import method as method_lib
from dense_ssl import objectives
from dense_ssl.objectives import base
from dense_ssl.ops import geometry
from tests import reference_numpy as ref
from tests.fake_data import PER_DEVICE, fake_batch, run_loss

# name -> (config module, objectives.resim overrides)
CASES = {
    'byol': (byol, {}), 'simclr': (simclr, {}), 'detcon_b': (detcon_b, {}),
    'detcon_s': (detcon_s, {}), 'lc_byol': (lc_byol, {}), 'scrl': (scrl, {}),
    'moco': (moco, {}), 'resim': (resim, {}),
    'resim_fpn': (resim, {'variant': 'fpn'}), 'clove': (clove, {}),
    'detcon_b_lc': (detcon_b_lc, {}),
}


def reference_batch(name):
  """A fixed batch: view 2 cropped (ReSim: so that a C4 window fits), flips."""
  batch = fake_batch(8, 7)
  batch['view2/flip'] = np.array([0, 1] * 4, np.int32)
  box = [0.0, 0.0, 0.9, 0.9] if name.startswith('resim') else [0.1, 0.0, 0.9, 0.8]
  batch['view2/box'] = np.tile(np.array(box, np.float32), (8, 1))
  return batch


def init(method, batch):
  init_rng, _ = jax.random.split(jax.random.PRNGKey(0))   # As state.create_train_state.
  return method.init(init_rng, {k: v[:PER_DEVICE] for k, v in batch.items()})


# ---------------------------------- each term against a float64 reference ---

def forward_one_device(method, variables, batch, rng):
  """method.forward + every objective's term on ONE device (the whole batch)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (base.AXIS,))

  def per_device(online, target, mstate, batch, rng):
    ctx, plans, _, _ = method.forward(online['params'], online['batch_stats'], target,
                                      batch, rng)
    terms = {o.name: o.loss(ctx, plans[o.name], mstate.get(o.name, {}))[0]
             for o in method.objectives}
    plans = jax.tree.map(lambda x: None if callable(x) else x, plans)  # Drop the pools.
    return ctx.online, ctx.target, plans, terms

  rep = NamedSharding(mesh, P())
  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) * 5,
                            out_specs=P(), check_vma=False))
  out = f(*(jax.device_put(x, rep) for x in (variables['online'], variables['target'],
                                             variables['state'], batch, rng)))
  return jax.device_get(out)


@pytest.mark.parametrize('name', ['byol', 'simclr', 'detcon_b', 'detcon_s', 'lc_byol',
                                  'scrl', 'moco'])
def test_each_term_equals_a_float64_reference_on_the_networks_outputs(name):
  """The JAX loss term vs a literal numpy re-derivation, on the same network outputs."""
  config = CASES[name][0].get_config('test')
  method = method_lib.Method(config)
  batch = reference_batch(name)
  variables = init(method, batch)
  (o1, o2), (t1, t2), plans, terms = forward_one_device(method, variables, batch,
                                                        jax.random.PRNGKey(5))
  c = config.objectives
  if name == 'byol' or name == 'lc_byol':
    want = (ref.byol_loss_ref(o1['prediction']['global'][:, 0], t2['projection']['global'][:, 0])
            + ref.byol_loss_ref(o2['prediction']['global'][:, 0],
                                t1['projection']['global'][:, 0]))
    np.testing.assert_allclose(terms['byol'], want, rtol=1e-5)
  if name == 'lc_byol':
    coords, valid = geometry.cell_correspondence(
        batch['view1/box'], batch['view1/flip'], batch['view2/box'], batch['view2/flip'],
        t1['local'].shape[1:3], o2['local'].shape[1:3])
    want = ref.local_contrastive_loss_ref(t1['local'], o2['local'], np.asarray(coords),
                                          np.asarray(valid), c.lc.temperature)
    np.testing.assert_allclose(terms['lc'], want, rtol=1e-5)
  if name == 'simclr':
    want = ref.nt_xent_ref(o1['projection']['global'][:, 0], o2['projection']['global'][:, 0],
                           c.simclr.temperature)
    np.testing.assert_allclose(terms['simclr'], want, rtol=1e-5)
  if name.startswith('detcon'):
    ids1, ids2 = plans['detcon']['ids']
    if name == 'detcon_s':
      args = (o1['projection']['masks'], o2['projection']['masks'],
              o1['projection']['masks'], o2['projection']['masks'])
    else:
      args = (o1['prediction']['masks'], o2['prediction']['masks'],
              t1['projection']['masks'], t2['projection']['masks'])
    want, _ = ref.detcon_loss_ref(*args, ids1, ids2, c.detcon.temperature)
    np.testing.assert_allclose(terms['detcon'], want, rtol=1e-5)
  if name == 'scrl':
    want = ref.scrl_loss_ref(o1['prediction']['boxes'], o2['prediction']['boxes'],
                             t1['projection']['boxes'], t2['projection']['boxes'],
                             plans['scrl']['valid'])
    np.testing.assert_allclose(terms['scrl'], want, rtol=1e-5)
  if name == 'moco':
    want = ref.infonce_ref(o1['projection']['global'][:, 0], t2['projection']['global'][:, 0],
                           variables['state']['moco']['queue'], c.moco.temperature)
    np.testing.assert_allclose(terms['moco'], want, rtol=1e-5)


# ------------------------------------------------------- identities, switches ---

# DetCon-S with one global mask is SimCLR (DetCon Sec. 3.2), values and
# gradients: tests/test_losses.py::test_detcon_s_with_global_mask_is_simclr.


def test_local_negatives_and_device_only_switches_change_the_loss():
  batch = fake_batch(4 * PER_DEVICE, 4)
  losses = {}
  for local, gather in [(True, True), (False, True), (True, False)]:
    c = detcon_b.get_config('test')
    c.objectives.detcon.update(local_negatives=local, gather_negatives=gather)
    m = method_lib.Method(c)
    losses[(local, gather)] = float(run_loss(m, init(m, batch), batch, jax.random.key(5))[0])
  # Fewer negatives -> lower contrastive loss (same features, same samples).
  assert losses[(False, True)] < losses[(True, True)]
  assert losses[(True, False)] < losses[(True, True)]


def test_an_objectives_random_choices_do_not_depend_on_the_others():
  """Streams derive from names: switching LC and SCRL on leaves DetCon's mask ids alone."""
  batch = fake_batch(4 * PER_DEVICE, 6)
  ids = []
  for extra in ({}, dict(lc=0.1, scrl=0.5)):
    c = detcon_b.get_config('test')
    for name, w in extra.items():
      c.objectives[name].weight = w
    m = method_lib.Method(c)
    variables = init(m, batch)
    _, _, plans, _ = forward_one_device(m, variables, batch, jax.random.key(9))
    ids.append(np.asarray(plans['detcon']['ids']))
  np.testing.assert_array_equal(ids[0], ids[1])


def test_detcon_b_lc_is_the_weighted_sum_of_its_terms():
  config = detcon_b_lc.get_config('test')
  method = method_lib.Method(config)
  batch = fake_batch(4 * PER_DEVICE, 8)
  variables = init(method, batch)
  assert {'encoder', 'projector', 'predictor', 'local_projector'} == set(
      variables['online']['params'])
  assert 'predictor' not in variables['target']['params']
  loss, m, _ = run_loss(method, variables, batch, jax.random.key(1))
  np.testing.assert_allclose(float(loss), 0.9 * float(m['detcon_loss']) +
                             0.1 * float(m['lc_loss']), rtol=1e-5)
  assert float(m['detcon_loss']) > 0 and float(m['lc_loss']) > 0


def test_every_objective_has_a_registered_config_subtree_with_a_weight():
  c = detcon_b.get_config('imagenet')
  assert set(c.objectives) == set(objectives.REGISTRY)
  for name, sub in c.objectives.items():
    assert 'weight' in sub, name
    assert objectives.REGISTRY[name].name == name


def test_objective_validation_names_the_keys():
  # Validation is config_check's alone (the objectives trust a checked config).
  def problems(c):
    return config_check.problems(c, check_data=False)
  c = detcon_b_lc.get_config('test')
  c.objectives.byol.weight = 1.0
  c.objectives.moco.weight = 1.0
  assert problems(c) == ['config.objectives: 2 global objectives are on (byol, moco); at '
                         'most one: set the weight of the others to 0']
  c = detcon_b_lc.get_config('test')
  for sub in c.objectives.values():
    sub.weight = 0.0
  assert problems(c) == ['config.objectives: every weight is 0; give at least one '
                         'objective a weight, e.g. --config.objectives.byol.weight=1.0']
  c = resim.get_config('test')
  c.objectives.resim.variant = 'p5'
  assert problems(c) == ["config.objectives.resim.variant='p5': choose one of c4|fpn"]
  c = clove.get_config('test')
  c.objectives.clove.dim = 30
  assert len(problems(c)) == 1 and problems(c)[0].startswith(
      'config.objectives.clove.dim=30: must be a multiple of '
      'config.objectives.clove.attention_heads=8')


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(ValueError, match='demo'):
    detcon_b.get_config('nope')
