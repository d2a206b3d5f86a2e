"""SCRL: the box loss on hand-built cases, box pooling of mirrored views, the
method's loss on 1 and 4 simulated devices, and one real training step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scrl as scrl_config
from dense_ssl import method as method_lib
from dense_ssl.losses import scrl as scrl_losses
from dense_ssl.objectives import scrl as scrl_objective
from dense_ssl.ops import geometry
from tests.fake_data import fake_batch
from tests.fake_data import run_loss


# -------------------------------------------------------------- the loss ---

def reference_scrl_loss(pred1, pred2, target1, target2, valid):
  """float64 numpy: Eqs. 2-3 with the mean over valid boxes."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
  v = np.asarray(valid)
  n = max(v.sum(), 1)
  e12 = np.sum((unit(pred1) - unit(target2)) ** 2, -1)
  e21 = np.sum((unit(pred2) - unit(target1)) ** 2, -1)
  return (e12[v].sum() + e21[v].sum()) / n


def test_scrl_loss_matches_reference_and_is_zero_for_matched_boxes():
  r = np.random.default_rng(0)
  z1, z2 = (jnp.asarray(r.normal(size=(3, 5, 16)), jnp.float32) for _ in range(2))
  valid = jnp.asarray(r.uniform(size=(3, 5)) < 0.7).at[2].set(False)  # Image 2: none.
  # Online predictions equal to the target projections of the same box.
  perfect, m = scrl_losses.scrl_loss(z1, z2, z2, z1, valid)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-6)
  assert float(m['valid_boxes_per_image']) == pytest.approx(float(valid.sum()) / 3)
  assert float(m['images_without_boxes']) == pytest.approx(1 / 3)
  # Boxes paired with the wrong box of the other view: a larger loss.
  shuffled, _ = scrl_losses.scrl_loss(z1, z2, z2[:, ::-1], z1[:, ::-1], valid)
  assert float(shuffled) > 1.0
  np.testing.assert_allclose(shuffled, reference_scrl_loss(
      z1, z2, z2[:, ::-1], z1[:, ::-1], valid), rtol=1e-5)
  # Whatever sits in invalid slots (here: NaN) changes nothing.
  junk = jnp.where(valid[..., None], z1, jnp.nan)
  again, _ = scrl_losses.scrl_loss(junk, z2, z2, junk, valid)
  np.testing.assert_allclose(again, 0.0, atol=1e-6)


def test_scrl_loss_with_no_valid_box_is_zero_with_finite_gradients():
  r = np.random.default_rng(1)
  z = jnp.asarray(r.normal(size=(2, 4, 8)), jnp.float32)
  none = jnp.zeros((2, 4), bool)
  loss, grad = jax.value_and_grad(
      lambda p: scrl_losses.scrl_loss(p, p, z, z, none)[0])(z[:, ::-1])
  assert float(loss) == 0.0
  assert np.all(np.isfinite(grad)) and not np.any(grad)


# ------------------------------------------------ boxes and RoI pooling ---

@pytest.mark.parametrize('aligned', [True, False])
def test_same_box_in_a_mirrored_view_pools_the_same_vector(aligned):
  """View 2 = view 1 mirrored (same crop, flip 0 vs 1): its C5 map is view 1's
  mirrored, and box k must pool the same vector in both, so the loss with
  identity heads is 0. torchvision's aligned=False (SCRL's code) reads each
  box half a cell off, mirrored in the flipped view: the pairs no longer match.
  """
  size, bsz = 224, 4
  r = np.random.default_rng(2)
  c5 = jnp.asarray(r.normal(size=(bsz, size // 32, size // 32, 8)), jnp.float32)
  crop = jnp.tile(jnp.array([[0.1, 0.2, 0.9, 0.8]], jnp.float32), (bsz, 1))
  boxes = geometry.sample_boxes_in_overlap(
      jax.random.key(0), crop, jnp.zeros(bsz, jnp.int32), crop,
      jnp.ones(bsz, jnp.int32), size_a=size, size_b=size, num_boxes=10)
  assert bool(jnp.all(boxes['valid']))
  pool = lambda b: scrl_objective.box_pool(b, sampling_ratio=7, aligned=aligned)
  p1 = pool(boxes['boxes_a'])(dict(c5=c5))
  p2 = pool(boxes['boxes_b'])(dict(c5=c5[:, :, ::-1]))
  assert p1.shape == (bsz, 10, 8)
  # Identity heads: prediction = projection = pooled vector.
  loss, _ = scrl_losses.scrl_loss(p1, p2, p1, p2, boxes['valid'])
  if aligned:
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-5)
    assert float(loss) < 1e-6
  else:
    assert float(loss) > 0.05


# ---------------------------------------------------------- the method ---

def overlapping_batch(n, seed=3):
  """fake_batch with real crops (overlapping, random flips) at 64 px."""
  b = fake_batch(n, seed)
  r = np.random.default_rng(seed)
  for v in ('view1', 'view2'):
    y0, x0 = r.uniform(0.0, 0.25, (2, n))
    side = r.uniform(0.7, 0.75, n)
    b[f'{v}/box'] = np.stack([y0, x0, y0 + side, x0 + side], -1).astype(np.float32)
    b[f'{v}/flip'] = r.integers(0, 2, n).astype(np.int32)
  return b


def test_scrl_loss_on_four_devices_equals_one_device():
  config = scrl_config.get_config('test')
  method = method_lib.Method(config)
  assert [o.name for o in method.objectives] == ['scrl']
  batch = overlapping_batch(8)
  variables = method.init(jax.random.key(0), {k: v[:2] for k, v in batch.items()})
  assert 'predictor' not in variables['target']['params']
  loss4, m4, _ = run_loss(method, variables, batch, jax.random.key(1), 4)
  loss1, m1, _ = run_loss(method, variables, batch, jax.random.key(1), 1)
  assert np.isfinite(float(loss4)) and float(loss4) > 0
  assert float(m4['scrl_valid_boxes_per_image']) > 1
  np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
  np.testing.assert_allclose(m1['scrl_valid_boxes_per_image'],
                             m4['scrl_valid_boxes_per_image'])


def test_byol_weight_adds_the_global_byol_term():
  config = scrl_config.get_config('test')
  config.objectives.byol.weight = 0.5
  method = method_lib.Method(config)
  batch = overlapping_batch(8)
  variables = method.init(jax.random.key(0), {k: v[:2] for k, v in batch.items()})
  loss, m, _ = run_loss(method, variables, batch, jax.random.key(1), 4)
  assert 0.0 < float(m['byol_loss']) <= 8.0
  np.testing.assert_allclose(loss, m['scrl_loss'] + 0.5 * m['byol_loss'], rtol=1e-5)


# -------------------------------------------------------------- configs ---

@pytest.mark.parametrize('preset', ['imagenet', 'paper', 'paper200', 'coco', 'demo', 'test'])
def test_presets(preset):
  c = scrl_config.get_config(preset)
  s = c.objectives.scrl
  assert c.name == 'scrl' and s.num_boxes == 10 and c.data.mask == 'grid'
  assert {n for n, sub in c.objectives.items() if sub.weight} == {'scrl'}
  # 0: follow the view size, 32 px at 224 px views and image_size / 32 samples.
  assert s.min_box_size == 0 and s.sampling_ratio == 0
  if preset in ('imagenet', 'paper', 'paper200'):
    assert (c.model.depth, c.batch_size, c.data.crop_area) == (50, 8192, (0.2, 1.0))
    assert (c.model.projector_hidden, c.model.projector_dim) == (4096, 256)
    expect = dict(paper200=(0.45, 1e-6, 0.97, 200.0)).get(preset, (0.2, 1.5e-6, 0.996, 1000.0))
    assert (c.optimizer.base_lr, c.optimizer.weight_decay, c.ema.base,
            c.total_epochs) == expect


# SCRL's real step (the trainer, real data, valid boxes > 0): the composed
# run of tests/test_train.py::test_kill_and_resume_is_exact.
