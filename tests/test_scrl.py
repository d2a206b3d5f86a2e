"""SCRL: the box loss on hand-built cases, device invariance, a real step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scrl as scrl_config
from dense_ssl import train
from dense_ssl.losses import scrl as scrl_losses
from tests import mask_records
from tests.test_methods import fake_batch
from tests.test_train import one_step


def test_box_loss_perfect_shuffled_and_all_invalid():
  r = np.random.default_rng(0)
  z = jnp.asarray(r.normal(size=(2, 5, 8)), jnp.float32)
  valid = jnp.ones((2, 5), bool)
  perfect, n = scrl_losses.box_byol_loss(z, z, valid)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-6)
  assert int(n) == 10
  shuffled, _ = scrl_losses.box_byol_loss(z, z[:, ::-1], valid)
  assert shuffled > 0.5
  # Invalid boxes are ignored: garbage there changes nothing.
  half = valid.at[:, 3:].set(False)
  noisy = z.at[:, 3:].set(-z[:, 3:])
  np.testing.assert_allclose(scrl_losses.box_byol_loss(z, noisy, half)[0], 0.0, atol=1e-6)
  # Nothing valid: 0 and finite zero gradients.
  none = jnp.zeros((2, 5), bool)
  loss, grad = jax.value_and_grad(
      lambda p: scrl_losses.box_byol_loss(p, z, none)[0])(z[:, ::-1])
  assert float(loss) == 0.0 and np.all(np.isfinite(grad)) and not np.any(grad)


def overlapping_batch(n):
  b = fake_batch(n, 2)
  r = np.random.default_rng(3)
  for v in ('view1', 'view2'):
    y0, x0 = r.uniform(0, 0.2, (2, n))
    b[f'{v}/box'] = np.stack([y0, x0, y0 + 0.75, x0 + 0.75], -1).astype(np.float32)
    b[f'{v}/flip'] = r.integers(0, 2, n).astype(np.int32)
  return b


def test_scrl_step_same_on_one_and_four_devices():
  config = scrl_config.get_config('test')
  config.optimizer.base_lr = 2.0
  batch = overlapping_batch(8)
  before, s1, m1 = one_step(config, batch, 1)
  _, s4, m4 = one_step(config, batch, 4)
  assert m1['scrl_valid_boxes_per_image'] > 1
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5),
               s1.online_params, s4.online_params)


@pytest.mark.parametrize('preset', ['imagenet', 'paper200'])
def test_presets(preset):
  c = scrl_config.get_config(preset)
  assert c.method == 'scrl' and c.loss.num_boxes == 10 and c.model.depth == 50
  assert (c.optimizer.base_lr, c.ema.base) == ((0.2, 0.996) if preset == 'imagenet'
                                               else (0.45, 0.97))


def test_one_real_step(tmp_path):
  data = str(tmp_path / 'masks')
  mask_records.write_blocky_dataset(data, num_examples=16, size=64, num_shards=4)
  config = scrl_config.get_config('test')
  config.data.dir = data
  config.total_steps = 1
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert out['finished'] and np.isfinite(out['metrics']['train/loss'])
  assert 'train/scrl_valid_boxes_per_image' in out['metrics']
