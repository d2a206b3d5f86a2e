"""LC-loss: the NLL on hand-built correspondences, and a real training step."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import lc_byol as lc_config
from dense_ssl.losses import lc as lc_losses
from dense_ssl.ops import geometry


def test_loss_low_at_true_correspondence_high_when_shuffled():
  # I_c is the whole image; I_sc its left-right mirror (crop = whole, flip).
  g = 4
  box = jnp.array([[0.0, 0.0, 1.0, 1.0]])
  coords, valid = geometry.cell_correspondence(box, jnp.array([0]), box,
                                               jnp.array([1]), g, g)
  assert bool(valid.all())
  r = np.random.default_rng(0)
  target = jnp.asarray(r.normal(size=(1, g, g, 16)), jnp.float32)
  online = target[:, :, ::-1]                           # What a flip shows.
  good, frac = lc_losses.local_contrastive_loss(target, online, coords, valid,
                                                temperature=0.1)
  shuffled = jnp.asarray(r.permutation(np.asarray(online).reshape(g * g, 16))
                         ).reshape(1, g, g, 16)
  bad, _ = lc_losses.local_contrastive_loss(target, shuffled, coords, valid,
                                            temperature=0.1)
  assert float(frac) == 1.0
  assert float(good) < 0.5 * float(bad)
  # The same features without the flip in the geometry: wrong pairs, higher loss.
  c2, v2 = geometry.cell_correspondence(box, jnp.array([0]), box, jnp.array([0]), g, g)
  wrong, _ = lc_losses.local_contrastive_loss(target, online, c2, v2, temperature=0.1)
  assert float(good) < float(wrong)


def test_out_of_view_pairs_are_dropped():
  box_c = jnp.array([[0.0, 0.0, 1.0, 1.0]])
  box_sc = jnp.array([[0.0, 0.0, 0.5, 0.5]])           # Top-left quarter only.
  coords, valid = geometry.cell_correspondence(box_c, jnp.array([0]), box_sc,
                                               jnp.array([0]), 4, 4)
  assert int(valid.sum()) == 4
  r = np.random.default_rng(1)
  t = jnp.asarray(r.normal(size=(1, 4, 4, 8)), jnp.float32)
  o = jnp.asarray(r.normal(size=(1, 4, 4, 8)), jnp.float32)
  loss, frac = lc_losses.local_contrastive_loss(t, o, coords, valid, temperature=0.1)
  np.testing.assert_allclose(float(frac), 4 / 16)
  none, _ = lc_losses.local_contrastive_loss(t, o, coords, valid & False,
                                             temperature=0.1)
  assert np.isfinite(float(loss)) and float(none) == 0.0
  grad = jax.grad(lambda x: lc_losses.local_contrastive_loss(
      t, x, coords, valid & False, temperature=0.1)[0])(o)
  assert np.all(np.isfinite(grad))


# LC-loss's real step (the trainer, real data, lc_valid_pairs > 0): the
# composed run of tests/test_train.py::test_kill_and_resume_is_exact.


def test_paper_preset():
  c = lc_config.get_config('paper')
  assert (c.objectives.byol.weight, c.objectives.lc.weight) == (0.9, 0.1)
  assert c.data.view_modes == ('color_only', 'crop')
  assert c.model.depth == 50 and c.objectives.lc.local_dim == 256
