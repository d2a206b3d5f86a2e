"""Composed objectives: equal to the single methods they generalise; validation.

A composition with one objective (or LC-loss's BYOL + LC mix) must compute
exactly the loss of the dedicated method on the same parameters, batch and
random choices: the composed network, pooling and loss terms add nothing.
"""

import jax
import numpy as np
import pytest

from configs import byol as byol_config
from configs import common
from configs import detcon_b as detcon_config
from configs import detcon_b_lc
from configs import lc_byol as lc_config
from configs import scrl as scrl_config
from dense_ssl import methods
from dense_ssl.methods import compose
from tests.test_methods import PER_DEVICE, fake_batch, run_loss


def composed_like(config, **weights):
  """The composed method on `config`'s settings with the given weights."""
  c = common.composed_config('compose', **weights)
  for key in ('model', 'data', 'optimizer', 'ema', 'loss'):
    for k, v in config[key].items():
      c[key][k] = v
  c.batch_size = config.batch_size
  return c


class _StreamOf:
  """The dedicated method fed the random stream the composition gives `name`."""

  def __init__(self, method, name):
    self.method, self.stream = method, compose._RNG_STREAM[name]  # pylint: disable=protected-access

  def loss(self, *args):
    *args, rng = args
    return self.method.loss(*args, jax.random.fold_in(rng, self.stream))


@pytest.mark.parametrize('name,weights,stream', [
    ('byol', dict(byol=1.0), None),
    ('lc_byol', dict(byol=0.9, lc=0.1), None),
    ('detcon_b', dict(detcon=1.0), 'detcon'),
    ('scrl', dict(scrl=1.0), 'scrl'),
])
def test_single_objective_compositions_equal_the_methods(name, weights, stream):
  config = dict(byol=byol_config, lc_byol=lc_config, detcon_b=detcon_config,
                scrl=scrl_config)[name].get_config('test')
  config.data.image_size = 64
  dedicated = methods.get_method(config)
  composed = methods.get_method(composed_like(config, **weights))
  batch = fake_batch(4 * PER_DEVICE, 7)
  batch['view2/flip'] = np.array([0, 1] * (2 * PER_DEVICE), np.int32)
  batch['view2/box'] = np.tile(np.array([0.1, 0.0, 0.9, 0.8], np.float32),
                               (4 * PER_DEVICE, 1))
  sample = {k: v[:PER_DEVICE] for k, v in batch.items()}
  v_ded = dedicated.init(jax.random.key(0), sample)
  v_com = composed.init(jax.random.key(0), sample)
  # Same modules, same names, same initial values.
  assert jax.tree.structure(v_ded) == jax.tree.structure(v_com)
  jax.tree.map(np.testing.assert_array_equal, v_ded, v_com)
  rng = jax.random.key(3)
  l_ded, m_ded = run_loss(_StreamOf(dedicated, stream) if stream else dedicated,
                          v_ded, batch, rng)
  l_com, m_com = run_loss(composed, v_com, batch, rng)
  np.testing.assert_allclose(float(l_com), float(l_ded), rtol=2e-6)
  if name == 'lc_byol':
    np.testing.assert_allclose(float(m_com['lc_loss']), float(m_ded['lc_loss']), rtol=2e-6)


def test_detcon_b_lc_is_the_weighted_sum_of_its_terms():
  config = detcon_b_lc.get_config('test')
  composed = methods.get_method(config)
  batch = fake_batch(4 * PER_DEVICE, 8)
  variables = composed.init(jax.random.key(0), {k: v[:PER_DEVICE] for k, v in batch.items()})
  assert {'encoder', 'projector', 'predictor', 'local_projector'} <= set(
      variables['online']['params'])
  loss, m = run_loss(composed, variables, batch, jax.random.key(1))
  np.testing.assert_allclose(float(loss), 0.9 * float(m['detcon_loss']) +
                             0.1 * float(m['lc_loss']), rtol=1e-5)
  assert float(m['detcon_loss']) > 0 and float(m['lc_loss']) > 0


def test_objective_validation_names_the_keys():
  c = detcon_b_lc.get_config('test')
  c.objectives.byol = 1.0
  c.objectives.moco = 1.0
  with pytest.raises(ValueError, match=r"at most one global objective.*byol.*moco"):
    methods.get_method(c)
  c = detcon_b_lc.get_config('test')
  for k in c.objectives:
    c.objectives[k] = 0.0
  with pytest.raises(ValueError, match='every weight is 0'):
    methods.get_method(c)
  c = detcon_b_lc.get_config('test')
  c.objectives.moco = 1.0
  c.loss.moco_queue_size = 100
  with pytest.raises(ValueError, match='moco_queue_size=100 must be a multiple'):
    methods.get_method(c)
