"""Tests of the pure TF augmentation ops against numpy references."""

import math

import numpy as np
import pytest

from data_pipeline import augment

tf = augment.tf


def seed(i):
  return tf.constant([i, 17], tf.int64)


def test_inception_crop_window_distribution():
  h, w = 120, 200
  areas, ratios = [], []
  for i in range(200):
    y0, x0, ch, cw = (int(v) for v in augment.inception_crop_window(seed(i), h, w))
    assert 0 <= y0 and 0 <= x0 and y0 + ch <= h and x0 + cw <= w and ch > 0 and cw > 0
    areas.append(ch * cw / (h * w))
    ratios.append(cw / ch)
  areas, ratios = np.array(areas), np.array(ratios)
  # Rounding to whole pixels widens the ranges a little.
  assert areas.min() >= 0.07 and areas.max() <= 1.0
  assert ratios.min() >= 0.75 * 0.9 and ratios.max() <= 4 / 3 * 1.1
  assert areas.min() < 0.2 and areas.max() > 0.7  # Spread over the range.
  same = augment.inception_crop_window(seed(3), h, w)
  again = augment.inception_crop_window(seed(3), h, w)
  assert [int(a) for a in same] == [int(b) for b in again]


@pytest.mark.parametrize('h,w,expected', [
    (100, 400, (0, 133, 100, 133)),   # Too wide: width narrowed to 4/3 * h.
    (400, 100, (133, 0, 133, 100)),   # Too tall: height narrowed to w / (3/4).
    (100, 110, (0, 0, 100, 110)),     # Allowed aspect: the whole image.
])
def test_inception_crop_falls_back_to_central_crop(h, w, expected):
  # An impossible area range: no attempt fits, so the central crop is used.
  win = augment.inception_crop_window(seed(0), h, w, area_range=(1.5, 2.0))
  assert tuple(int(v) for v in win) == expected


def test_window_to_box():
  box = augment.window_to_box(10, 20, 30, 40, 100, 200).numpy()
  np.testing.assert_allclose(box, [0.1, 0.1, 0.4, 0.3])


def test_crop_and_resize_labels_nearest():
  labels = tf.constant(np.arange(12 * 16).reshape(12, 16), tf.int32)
  out = augment.crop_and_resize_labels(labels, (2, 4, 6, 8), 3).numpy()
  # Half-pixel centres: output r samples crop row floor((r + .5) * 6 / 3).
  rows = 2 + np.floor((np.arange(3) + 0.5) * 2).astype(int)
  cols = 4 + np.floor((np.arange(3) + 0.5) * 8 / 3).astype(int)
  np.testing.assert_array_equal(out, rows[:, None] * 16 + cols[None, :])


@pytest.mark.parametrize('flip', [False, True])
def test_crop_and_resize_labels_equals_tf_nearest_resize(flip):
  """The index-gather resize gives exactly tf.image.resize's nearest ids (then the flip)."""
  h, w = 75, 101
  labels = tf.constant(np.arange(h * w).reshape(h, w), tf.int32)
  rng = np.random.default_rng(0)
  for i in range(40):
    size = int(rng.choice([5, 16, 24, 96, 224]))   # Down- and upsampling.
    if i < 30:
      win = tuple(int(v) for v in augment.inception_crop_window(
          seed(i), h, w, area_range=(0.01, 1.0) if i % 2 else (0.05, 0.14)))
    else:  # Edge cases: the whole map, one row / column.
      win = [(0, 0, h, w), (h - 1, 0, 1, w), (0, w - 1, h, 1), (3, 7, 1, 1),
             (0, 0, h, w), (10, 8, 7, 93), (74, 100, 1, 1), (0, 0, 2, 2),
             (1, 1, 73, 99), (5, 5, 60, 3)][i - 30]
    y0, x0, ch, cw = win
    ref = tf.image.resize(labels[y0:y0 + ch, x0:x0 + cw, None], [size, size],
                          method='nearest')[..., 0].numpy()
    if flip:
      ref = ref[:, ::-1]
    out = augment.crop_and_resize_labels(labels, win, size, tf.constant(flip)).numpy()
    np.testing.assert_array_equal(out, ref, err_msg=f'window {win}, size {size}')
  # dtype: cast after the row gather; the ids are unchanged when they fit.
  small = tf.constant(np.arange(h * w).reshape(h, w) % 251, tf.int32)
  out = augment.crop_and_resize_labels(small, (4, 9, 50, 60), 24, tf.constant(flip),
                                       dtype=tf.uint8)
  ref = augment.crop_and_resize_labels(small, (4, 9, 50, 60), 24, tf.constant(flip))
  assert out.dtype == tf.uint8
  np.testing.assert_array_equal(out.numpy(), ref.numpy())


def test_crop_and_resize_image_uint8_is_the_rounded_float_resize():
  img = tf.constant(np.random.default_rng(4).integers(0, 256, (60, 80, 3), np.uint8))
  for i in range(10):
    win = augment.inception_crop_window(seed(i), 60, 80)
    for size in (24, 96):
      ref = np.round(augment.crop_and_resize_image(img, win, size).numpy() * 255.)
      out = augment.crop_and_resize_image_uint8(img, win, size)
      assert out.dtype == tf.uint8 and out.shape == (size, size, 3)
      # Equal up to float32 rounding exactly at a half-integer (not seen in practice).
      d = np.abs(out.numpy().astype(int) - ref.astype(int))
      assert d.max() <= 1 and np.mean(d > 0) < 1e-3


def test_crop_and_resize_image_range():
  img = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
  out = augment.crop_and_resize_image(img, (3, 5, 10, 12), 16).numpy()
  assert out.shape == (16, 16, 3) and out.min() >= 0 and out.max() <= 1


def test_flip_left_right():
  x = tf.constant(np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(augment.flip_left_right(x, tf.constant(True)),
                                [[2, 1, 0], [5, 4, 3]])
  np.testing.assert_array_equal(augment.flip_left_right(x, tf.constant(False)), x)


def test_grid_label_map():
  g = augment.grid_label_map(6, 9, 3).numpy()
  expected = (np.arange(6)[:, None] // 2) * 3 + np.arange(9)[None, :] // 3
  np.testing.assert_array_equal(g, expected)


def test_gaussian_blur_matches_numpy():
  assert augment.gaussian_kernel_size(224) == 23
  img = np.zeros((21, 21, 3), np.float32)
  img[10, 10] = 1.
  sigma, k = 1.5, 9
  out = augment.gaussian_blur(tf.constant(img), tf.constant(sigma), k).numpy()
  x = np.arange(-(k // 2), k // 2 + 1)
  g = np.exp(-0.5 * (x / sigma) ** 2)
  g /= g.sum()
  ref = np.zeros((21, 21))
  ref[6:15, 6:15] = np.outer(g, g)
  for c in range(3):
    np.testing.assert_allclose(out[..., c], ref, atol=1e-6)
  const = augment.gaussian_blur(tf.fill([16, 16, 3], 0.3), tf.constant(2.), 5).numpy()
  np.testing.assert_allclose(const, 0.3, atol=1e-6)  # Reflect padding: no dark border.


def test_solarize_grayscale_normalize():
  x = tf.constant([[[0.2, 0.5, 0.9]]])
  np.testing.assert_allclose(augment.solarize(x).numpy(), [[[0.2, 0.5, 0.1]]], atol=1e-7)
  g = augment.to_grayscale(tf.constant([[[1., 0., 0.]]])).numpy()
  np.testing.assert_allclose(g, [[[0.2989, 0.2989, 0.2989]]], atol=1e-3)
  n = augment.normalize(tf.constant(augment.IMAGENET_MEAN)).numpy()
  np.testing.assert_allclose(n, 0, atol=1e-7)


def test_color_ops_match_numpy():
  img = np.random.default_rng(1).uniform(0, 1, (8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(augment.adjust_brightness(tf.constant(img), 1.3).numpy(),
                             img * 1.3, atol=1e-6)
  mean = img.mean(axis=(0, 1))
  np.testing.assert_allclose(augment.adjust_contrast(tf.constant(img), 0.7).numpy(),
                             (img - mean) * 0.7 + mean, atol=1e-5)
  np.testing.assert_allclose(augment.adjust_saturation(tf.constant(img), 0.).numpy(),
                             np.repeat(img.max(-1, keepdims=True), 3, -1), atol=1e-5)


def test_color_jitter_deterministic_and_in_range():
  img = tf.constant(np.random.default_rng(2).uniform(0, 1, (16, 16, 3)), tf.float32)
  a = augment.color_jitter(img, seed(1)).numpy()
  b = augment.color_jitter(img, seed(1)).numpy()
  c = augment.color_jitter(img, seed(2)).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.min() >= 0 and a.max() <= 1
  assert not np.allclose(a, img.numpy())


def test_byol_color_augment():
  img = tf.constant(np.random.default_rng(3).uniform(0, 1, (16, 16, 3)), tf.float32)
  off = augment.byol_color_augment(img, seed(0), color_jitter_prob=0., grayscale_prob=0.,
                                   blur_prob=0., solarize_prob=0.)
  np.testing.assert_array_equal(off.numpy(), img.numpy())
  grey = augment.byol_color_augment(img, seed(0), color_jitter_prob=0.,
                                    grayscale_prob=1., blur_prob=0.).numpy()
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
  # Solarize with p=1 after nothing else: exactly the solarized image.
  sol = augment.byol_color_augment(img, seed(0), color_jitter_prob=0., grayscale_prob=0.,
                                   blur_prob=0., solarize_prob=1.).numpy()
  np.testing.assert_allclose(sol, augment.solarize(img).numpy())
  # Jitter p=0.8: roughly 80% of seeds change the image.
  changed = np.mean([not np.allclose(augment.byol_color_augment(
      img, seed(i), grayscale_prob=0., blur_prob=0.).numpy(), img.numpy())
                     for i in range(40)])
  assert 0.6 <= changed <= 0.95


def test_inception_crop_aspect_log_uniform():
  # The log aspect ratio is uniform: its mean is the centre of the log range.
  ratios = []
  for i in range(300):
    _, _, ch, cw = augment.inception_crop_window(seed(i), 1000, 1000,
                                                 area_range=(0.2, 0.3))
    ratios.append(math.log(int(cw) / int(ch)))
  assert abs(np.mean(ratios)) < 0.04
