"""Tests of the device-side colour recipe (dense_ssl/ops/color.py).

Against the host recipe (data_pipeline/augment.py, tf.image) op by op at fixed
parameters, the blur against a float64 numpy convolution, the branch
probabilities with the real key derivation, determinism over devices, and the
whole recipe's statistics against augment.byol_color_augment.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from data_pipeline import augment
from data_pipeline import view_config
from dense_ssl.ops import color
from tests import fake_data

tf = augment.tf

MEAN = np.asarray(color.IMAGENET_MEAN, np.float32)
STD = np.asarray(color.IMAGENET_STD, np.float32)
DATA = fake_data.data_config()   # The test preset's config.data: the real recipe.


def _image(h=16, w=20, seed=0):
  """float32 [h, w, 3] in [0, 1] with the edge cases of HSV: white, black, grey,
  pure primaries, and values exactly at the solarize threshold."""
  x = np.random.default_rng(seed).uniform(size=(h, w, 3)).astype(np.float32)
  x[0, :6] = [[1, 1, 1], [0, 0, 0], [.5, .5, .5], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
  x[1, :3] = [[.5, .2, .9], [1., .5, 0.], [.5, .5, .49]]
  return x


def _photo(size=40):
  """A fixed natural uint8 image [size, size, 3] (skimage's astronaut)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  img = skimage.data.astronaut()
  step = img.shape[0] // size
  return np.ascontiguousarray(img[::step, ::step][:size, :size])


# ------------------------------------------------------------------- ops ---

@pytest.mark.parametrize('factor', [0.6, 0.93, 1.0, 1.4])
def test_brightness_contrast_saturation_match_host(factor):
  x = _image()
  tx = tf.constant(x)
  np.testing.assert_allclose(color.adjust_brightness(x, factor),
                             augment.adjust_brightness(tx, factor).numpy(), atol=1e-5)
  np.testing.assert_allclose(color.adjust_brightness(x, factor), x * factor, atol=1e-6)
  np.testing.assert_allclose(color.adjust_contrast(x, factor),
                             augment.adjust_contrast(tx, factor).numpy(), atol=1e-5)
  mean = x.astype(np.float64).mean(axis=(0, 1))  # numpy re-derivation
  np.testing.assert_allclose(color.adjust_contrast(x, factor),
                             factor * (x - mean) + mean, atol=1e-5)
  np.testing.assert_allclose(color.adjust_saturation(x, factor),
                             augment.adjust_saturation(tx, factor).numpy(), atol=1e-5)


@pytest.mark.parametrize('delta', [-0.5, -0.1, -0.03, 0.0, 0.07, 0.1, 0.5])
def test_hue_matches_host(delta):
  x = _image()
  np.testing.assert_allclose(color.adjust_hue(x, delta),
                             augment.adjust_hue(tf.constant(x), delta).numpy(),
                             atol=1e-5)


def test_grayscale_solarize_normalize_match_host():
  x = _image()
  tx = tf.constant(x)
  g = np.asarray(color.to_grayscale(x))
  np.testing.assert_allclose(g, augment.to_grayscale(tx).numpy(), atol=1e-5)
  luma = x.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
  np.testing.assert_allclose(g, np.repeat(luma[..., None], 3, -1), atol=1e-5)
  np.testing.assert_array_equal(color.solarize(x), augment.solarize(tx).numpy())
  np.testing.assert_array_equal(color.solarize(x), np.where(x < .5, x, 1 - x))
  np.testing.assert_allclose(color.normalize(x), augment.normalize(tx).numpy(),
                             atol=1e-5)


def _blur_numpy(x, sigma, kernel_size):
  """float64 separable Gaussian blur with numpy 'reflect' padding."""
  r = kernel_size // 2
  t = np.arange(-r, r + 1, dtype=np.float64)
  k = np.exp(-t ** 2 / (2 * sigma ** 2))
  k /= k.sum()
  x = x.astype(np.float64)
  h, w = x.shape[:2]
  p = np.pad(x, ((r, r), (0, 0), (0, 0)), mode='reflect')
  x = sum(k[i] * p[i:i + h] for i in range(2 * r + 1))
  p = np.pad(x, ((0, 0), (r, r), (0, 0)), mode='reflect')
  return sum(k[i] * p[:, i:i + w] for i in range(2 * r + 1))


@pytest.mark.parametrize('size', [20, 40, 96])
@pytest.mark.parametrize('sigma', [0.1, 0.7, 2.0])
def test_blur_matches_float64_reference(size, sigma):
  x = _image(size, size, seed=size)
  ks = color.gaussian_kernel_size(size)
  assert ks == augment.gaussian_kernel_size(size)
  ref = _blur_numpy(x, sigma, ks)
  for impl in ('taps', 'dm_pix'):
    np.testing.assert_allclose(color.gaussian_blur(x, sigma, ks, impl=impl), ref,
                               atol=1e-5, err_msg=impl)
  np.testing.assert_allclose(augment.gaussian_blur(tf.constant(x), sigma, ks).numpy(),
                             ref, atol=1e-5)


def test_kernel_size_rule_matches_host():
  for s in (20, 32, 64, 96, 128, 160, 192, 224, 256):
    assert color.gaussian_kernel_size(s) == augment.gaussian_kernel_size(s)
  assert color.gaussian_kernel_size(224) == 23


# ---------------------------------------------------------------- config ---

def _configs():
  from configs import common  # pylint: disable=g-import-not-at-top
  from configs import lc_byol  # pylint: disable=g-import-not-at-top
  from configs import moco  # pylint: disable=g-import-not-at-top
  base = common.apply_preset(common.base_config('byol', byol=1.0), 'demo')
  return [base.data, lc_byol.get_config('demo').data, moco.get_config('demo').data,
          fake_data.data_config(view_modes=('crop', 'crop', 'crop'), blur_prob=(1., .1, .5),
                                solarize_prob=(0., .2, .3), hue=0.05, grayscale_prob=0.)]


def test_view_spec_reads_the_pipelines_settings():
  for cfg in _configs():
    kwargs = view_config.color_kwargs(cfg)
    for k, vs in enumerate(view_config.view_specs(cfg)):
      spec = color.view_color_spec(cfg, k)
      assert spec == color.ColorSpec(blur_prob=vs.blur_prob,
                                     solarize_prob=vs.solarize_prob, **kwargs)
  with pytest.raises(ValueError, match='give one per view'):
    color.view_color_spec(fake_data.data_config(view_modes=('crop',) * 3), 2)
  with pytest.raises(ValueError, match='has 2 views'):
    color.view_color_spec(DATA, 2)


# ----------------------------------------------------------- probabilities ---

N_PROB = 4000


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unnormalised(images, view, cfg_items):
  keys = color.example_keys(3, 11, jnp.arange(images.shape[0]), view)
  out = color.color_augment(images, keys, view, dict(cfg_items))
  return out * STD + MEAN


def _branch_rate(cfg, view, changed):
  """Fraction of N_PROB examples (one photo, the real keys) where changed(x, y)."""
  img = _photo(24)
  images = jnp.broadcast_to(img, (N_PROB,) + img.shape)
  items = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                for k, v in fake_data.data_config(**cfg).items())
  y = np.asarray(_unnormalised(images, view, items))
  return np.mean(changed(img.astype(np.float32) / 255., y))


def _within(rate, p):
  sd = np.sqrt(p * (1 - p) / N_PROB)
  assert abs(rate - p) <= 5 * sd + 1e-12, (rate, p, 5 * sd)


OFF = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
           solarize_prob=(0., 0.))


def _differs(x, y):
  return np.abs(y - x).max(axis=(1, 2, 3)) > 1e-3


def test_jitter_probability():
  _within(_branch_rate(dict(OFF, color_jitter_prob=0.8), 0, _differs), 0.8)


def test_grayscale_probability():
  gray = lambda x, y: np.abs(y - y[..., :1]).max(axis=(1, 2, 3)) < 1e-4
  assert not gray(None, _photo(24)[None] / 255.)[0]
  _within(_branch_rate(dict(OFF, grayscale_prob=0.2), 0, gray), 0.2)


@pytest.mark.parametrize('view', [0, 1])
def test_blur_and_solarize_probability_per_view(view):
  # sigma >= 1 so that every blur shows (sigma 0.1 is nearly the identity).
  blur = dict(OFF, blur_prob=(1.0, 0.1), blur_sigma=(1.0, 2.0))
  _within(_branch_rate(blur, view, _differs), (1.0, 0.1)[view])
  sol = dict(OFF, solarize_prob=(0.0, 0.2))
  _within(_branch_rate(sol, view, _differs), (0.0, 0.2)[view])


# ------------------------------------------------------------- determinism ---

def _batch(n, size=32):
  imgs = np.random.default_rng(5).integers(0, 256, (n, size, size, 3), np.uint8)
  imgs[:, :4] = _photo(size)[:4]  # some structure
  return jnp.asarray(imgs)


@functools.partial(jax.jit, static_argnums=(3,))
def _augment_at(images, step, index, view):
  return color.color_augment(images, color.example_keys(0, step, index, view), view, DATA)


def test_same_coordinates_same_output():
  imgs = _batch(8)
  idx = jnp.arange(100, 108)
  a = np.asarray(_augment_at(imgs, 4, idx, 1))
  np.testing.assert_array_equal(a, np.asarray(_augment_at(imgs, 4, idx, 1)))
  # Example 5 alone gives what it gives in the batch.
  alone = np.asarray(_augment_at(imgs[5:6], 4, idx[5:6], 1))
  # (Another batch size may round differently: within 1e-5 of normalised
  # values, i.e. ~2e-6 in [0, 1].)
  np.testing.assert_allclose(alone[0], a[5], atol=1e-5, rtol=0)
  # Another step, view, index or seed: other draws.
  for other in (_augment_at(imgs, 5, idx, 1), _augment_at(imgs, 4, idx + 8, 1),
                _augment_at(imgs, 4, idx, 0)):
    assert np.abs(np.asarray(other) - a).max(axis=(1, 2, 3)).min() > 1e-3
  k0 = jax.random.key_data(color.example_keys(0, 4, idx, 1))
  k1 = jax.random.key_data(color.example_keys(1, 4, idx, 1))
  assert not np.any(np.all(np.asarray(k0) == np.asarray(k1), axis=-1))
  assert len({tuple(k) for k in np.asarray(k0).tolist()}) == 8


def test_one_device_equals_four_devices():
  devices = jax.devices()
  assert len(devices) >= 4, 'conftest.py gives 4 simulated CPU devices'
  mesh = Mesh(np.asarray(devices[:4]), ('batch',))
  imgs = _batch(16)
  step = jnp.int32(7)
  for view in (0, 1):
    one = np.asarray(_augment_at(imgs, step, jnp.arange(16), view))

    def per_device(images, step, view=view):
      idx = color.device_example_indices(images.shape[0], 'batch')
      keys = color.example_keys(0, step, idx, view)
      return color.color_augment(images, keys, view, DATA)

    four = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('batch'), P()),
                                 out_specs=P('batch')))(imgs, step)
    assert len(four.sharding.device_set) == 4
    # Bitwise equal on this CPU; XLA may round differently at another
    # per-device batch size (a batch of 1: up to 2e-6), hence the tolerance.
    np.testing.assert_allclose(np.asarray(four), one, atol=1e-5, rtol=0)


def test_local_crops_get_their_recipe_and_the_same_views_on_one_and_four_devices():
  """Multi-crop: augment_views colours the local crops too (their own blur and
  solarize settings), with the same draws however the batch is split."""
  cfg = fake_data.data_config(num_local_crops=2, local_crop_size=8, local_blur_prob=0.5,
                              local_solarize_prob=0.0)
  specs = view_config.view_specs(cfg)
  assert [s.local for s in specs] == [False, False, True, True]
  assert color.view_color_spec(cfg, 3).blur_prob == 0.5
  assert color.view_color_spec(cfg, 3).solarize_prob == 0.0
  r = np.random.default_rng(1)
  batch = {}
  for k, size in enumerate((16, 16, 8, 8)):
    batch[f'view{k + 1}/image'] = r.integers(0, 256, (8, size, size, 3)).astype(np.uint8)
    batch[f'view{k + 1}/mask'] = r.integers(0, 5, (8, size, size)).astype(np.uint8)
  step = jnp.int32(3)
  one = color.augment_views(batch, seed=0, step=step, data_config=cfg, axis_name=None)
  mesh = Mesh(np.asarray(jax.devices()[:4]), ('batch',))
  four = jax.jit(jax.shard_map(
      lambda b, s: color.augment_views(b, seed=0, step=s, data_config=cfg),
      mesh=mesh, in_specs=(P('batch'), P()), out_specs=P('batch')))(batch, step)
  for key in batch:
    np.testing.assert_allclose(np.asarray(four[key]), np.asarray(one[key]), atol=1e-5,
                               rtol=0, err_msg=key)
  assert one['view3/image'].dtype == jnp.float32 and one['view4/mask'].dtype == jnp.int32
  # A local crop's colour is its own draw, not view 1's.
  assert not np.allclose(np.asarray(one['view3/image']), np.asarray(one['view4/image']))


def test_float_input_and_stop_gradient():
  imgs = _batch(2)
  as_float = jnp.asarray(imgs, jnp.float32) / 255.
  keys = color.example_keys(0, 0, jnp.arange(2), 0)
  run = jax.jit(lambda x, k: color.color_augment(x, k, 0, DATA))
  np.testing.assert_allclose(run(as_float, keys), run(imgs, keys), atol=1e-5)
  grad = jax.jit(jax.grad(lambda x: run(x, keys).sum()))(as_float)
  assert not np.any(np.asarray(grad))


# ----------------------------------------------- the whole recipe vs host ---

N_RECIPE = 2000


def _host_draws(img_f32, view, n):
  """n draws of the host recipe (augment.byol_color_augment + normalize)."""
  cfg = DATA
  spec = view_config.view_specs(cfg)[view]
  kwargs = view_config.color_kwargs(cfg)
  image = tf.constant(img_f32)

  def fn(i):
    seed = tf.stack([i, tf.constant(7, tf.int64)])
    out = augment.byol_color_augment(image, seed, blur_prob=spec.blur_prob,
                                     solarize_prob=spec.solarize_prob, **kwargs)
    return augment.normalize(out)

  ds = tf.data.Dataset.range(n).map(fn, num_parallel_calls=2).batch(500)
  return np.concatenate([b.numpy() for b in ds])


def _device_draws(img_u8, view, n):
  out = []
  for start in range(0, n, 500):
    images = jnp.broadcast_to(img_u8, (500,) + img_u8.shape)
    out.append(np.asarray(_augment_at(images, 0, jnp.arange(start, start + 500), view)))
  return np.concatenate(out)


def _mean_std(draws):
  """Per channel: the mean and std over draws and pixels, and their variances.

  The draw is the unit (draws are independent; pixels within one are not):
  with m_d, q_d a draw's channel mean and mean square, mean = avg m_d and
  std = sqrt(avg q_d - mean^2). The central limit theorem gives their
  standard errors: var(avg m_d) = var(m_d) / n, and by the delta method
  var(std) = g' Cov(m, q) g / n with g = (-mean / std, 1 / (2 std)).
  Returns (mean [3], std [3], var_mean [3], var_std [3]).
  """
  d = draws.astype(np.float64)
  n = len(d)
  m, q = d.mean(axis=(1, 2)), (d ** 2).mean(axis=(1, 2))
  mean = m.mean(0)
  std = np.sqrt(q.mean(0) - mean ** 2)
  var_std = []
  for c in range(3):
    cov = np.cov(np.stack([m[:, c], q[:, c]]))
    g = np.array([-mean[c] / std[c], 1 / (2 * std[c])])
    var_std.append(g @ cov @ g / n)
  return mean, std, m.var(0) / n, np.array(var_std)


def _z_scores(a, b):
  """|difference| / standard error of the per-channel mean and std of two
  independent samples of draws (root sum of squares of their errors)."""
  ma, sa, vma, vsa = _mean_std(a)
  mb, sb, vmb, vsb = _mean_std(b)
  return np.abs(ma - mb) / np.sqrt(vma + vmb), np.abs(sa - sb) / np.sqrt(vsa + vsb)


@pytest.fixture(scope='module')
def recipe_draws():
  img = _photo(40)
  host = [_host_draws(img.astype(np.float32) / 255., v, N_RECIPE) for v in (0, 1)]
  device = [_device_draws(img, v, N_RECIPE) for v in (0, 1)]
  return img, host, device


@pytest.mark.parametrize('view', [0, 1])
def test_recipe_statistics_match_host(recipe_draws, view):
  img, host, device = recipe_draws
  h, d = host[view], device[view]
  assert h.shape == d.shape == (N_RECIPE,) + img.shape
  # Per channel, the mean and the std over draws and pixels agree within 5
  # standard errors (see _mean_std: a false alarm has odds ~1e-6 per figure).
  z_mean, z_std = _z_scores(h, d)
  assert z_mean.max() < 5 and z_std.max() < 5, (z_mean, z_std)
  # Per pixel (this catches the blur's border handling): the mean image over
  # draws agrees within 6 standard errors at each of the 4,800 values.
  se = np.sqrt(h.var(0) / N_RECIPE + d.var(0) / N_RECIPE)
  z_pixel = np.abs(h.mean(0) - d.mean(0)) / se
  assert z_pixel.max() < 6, z_pixel.max()


def test_recipe_statistics_tell_views_apart(recipe_draws):
  # The bounds above are not vacuous: view 1's recipe (blur 0.1, solarize 0.2)
  # drawn on the device fails them against the host's view 0 (blur 1, no solarize).
  _, host, device = recipe_draws
  z_mean, z_std = _z_scores(host[0], device[1])
  assert max(z_mean.max(), z_std.max()) > 5, (z_mean, z_std)
