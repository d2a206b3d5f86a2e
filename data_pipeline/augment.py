"""View augmentations: Inception-style crop, flip, BYOL's colour recipe (TF, stateless).

Pure functions of (inputs, seed): every random draw is a `tf.random.stateless_*`
op keyed by a [2] int seed, so a view is a deterministic function of its record
and its seed (needed for exact resume, see input_pipeline.py).

Geometry convention (WORKSPACE.md, section 4): a view records `box` = (y0, x0, y1, x1), its
crop window in normalised original-image coordinates, and `flip` = 1 if it was
mirrored left-right after cropping. The centre of view pixel (r, c) of an S x S
view has v = ((r + .5) / S, (c + .5) / S); if flip, v_x <- 1 - v_x; then
y = y0 + v_y (y1 - y0), x = x0 + v_x (x1 - x0). Resizing with half-pixel
centres (tf.image.resize) makes this exact for the image and the label map.

Colour recipe (BYOL, Grill et al. 2020, Table 6; FACTS.md §4 "Views and BYOL's
colour recipe"):
jitter with p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in
random order, clipped to [0, 1] after each), grayscale p=0.2, Gaussian blur
(sigma ~ U[0.1, 2], kernel ~10% of the view size) and solarize (threshold 0.5)
with per-view probabilities. Brightness and contrast are multiplicative factors
in [1 - 0.4, 1 + 0.4] as in torchvision's ColorJitter, whose parameters BYOL
quotes. The blur pads by reflection (BYOL's code pads with zeros, which darkens
the border; the difference is immaterial to the recipe).
"""

import math

import numpy as np

from data_pipeline import tf_setup
from data_pipeline import view_config

tf = tf_setup.hide_accelerators()

IMAGENET_MEAN, IMAGENET_STD = view_config.IMAGENET_MEAN, view_config.IMAGENET_STD


def split_seed(seed, num):
  """Splits a [2] stateless seed into `num` independent [2] seeds (a list)."""
  seeds = tf.random.experimental.stateless_split(seed, num)
  return [seeds[i] for i in range(num)]


def _uniform(seed, shape=(), minval=0., maxval=1.):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


# ---------------------------------------------------------------- geometry ---

def inception_crop_window(seed, height, width, area_range=(0.08, 1.0),
                          aspect_range=(3. / 4., 4. / 3.), max_attempts=10):
  """Samples an Inception-style random-resized-crop window (Szegedy et al. 2015).

  Up to `max_attempts` draws of area ~ U(area_range) * H * W and aspect ratio
  w/h log-uniform in `aspect_range`; the first window that fits in the image
  is used, at a uniformly random position. If none fits, the central crop
  with the aspect ratio clamped to `aspect_range` (the Inception/torchvision
  fallback). All attempts are drawn at once (static shapes).

  Args:
    seed: [2] int stateless seed.
    height, width: int32 scalars, image size in pixels.
  Returns:
    (y0, x0, h, w) int32 scalars: the window in pixels, inside the image.
  """
  s_area, s_aspect, s_pos = split_seed(seed, 3)
  hf = tf.cast(height, tf.float32)
  wf = tf.cast(width, tf.float32)
  area = hf * wf * _uniform(s_area, [max_attempts], *area_range)
  log_r = _uniform(s_aspect, [max_attempts], math.log(aspect_range[0]),
                   math.log(aspect_range[1]))
  ratio = tf.exp(log_r)
  w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
  fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  # Central-crop fallback: the whole image, narrowed to the allowed aspect.
  in_ratio = wf / hf
  fw = tf.where(in_ratio < aspect_range[0], width,
                tf.where(in_ratio > aspect_range[1],
                         tf.cast(tf.round(hf * aspect_range[1]), tf.int32), width))
  fh = tf.where(in_ratio < aspect_range[0],
                tf.cast(tf.round(wf / aspect_range[0]), tf.int32), height)
  fw = tf.clip_by_value(fw, 1, width)
  fh = tf.clip_by_value(fh, 1, height)

  any_fits = tf.reduce_any(fits)
  ch = tf.where(any_fits, h[first], fh)
  cw = tf.where(any_fits, w[first], fw)
  u = _uniform(s_pos, [2])
  y0_rand = tf.minimum(tf.cast(u[0] * tf.cast(height - ch + 1, tf.float32), tf.int32),
                       height - ch)
  x0_rand = tf.minimum(tf.cast(u[1] * tf.cast(width - cw + 1, tf.float32), tf.int32),
                       width - cw)
  y0 = tf.where(any_fits, y0_rand, (height - ch) // 2)
  x0 = tf.where(any_fits, x0_rand, (width - cw) // 2)
  return y0, x0, ch, cw


def window_to_box(y0, x0, h, w, height, width):
  """Pixel window -> float32 [4] box (y0, x0, y1, x1) in normalised coordinates."""
  hf = tf.cast(height, tf.float32)
  wf = tf.cast(width, tf.float32)
  y0 = tf.cast(y0, tf.float32)
  x0 = tf.cast(x0, tf.float32)
  return tf.stack([y0 / hf, x0 / wf, (y0 + tf.cast(h, tf.float32)) / hf,
                   (x0 + tf.cast(w, tf.float32)) / wf])


def _crop(image, window):
  y0, x0, h, w = window
  return tf.slice(image, tf.stack([y0, x0, 0]), tf.stack([h, w, 3]))


def _resize_bicubic_0_255(image, window, size):
  """Bicubic resize of the window of uint8 [H, W, 3]: float32 [size, size, 3] in ~[0, 255].

  The crop is cast to float32 before the resize: TF's ResizeBicubic kernel
  is ~1.7x slower reading uint8 than float32 (it converts every tap). The
  scale to [0, 1] is applied to the small output, not the crop: the resize
  is linear, so this equals resizing the scaled crop up to float32 rounding
  (a few 1e-5 in 0..255 units).
  """
  crop = tf.cast(_crop(image, window), tf.float32)
  return tf.image.resize(crop, [size, size], method='bicubic', antialias=False)


def crop_and_resize_image(image, window, size):
  """Crops uint8 [H, W, 3] to the window, then bicubic-resizes to [size, size, 3].

  Returns float32 in [0, 1]. Antialiasing off (as BYOL); cropping before
  resizing touches only the window's pixels.
  """
  out = _resize_bicubic_0_255(image, window, size) / 255.
  return tf.clip_by_value(out, 0., 1.)


def crop_and_resize_image_uint8(image, window, size):
  """crop_and_resize_image rounded to uint8 [size, size, 3] (the views shipped to the device).

  round(clip(resize(crop), 0, 255)): the same pixels as
  round(255 * crop_and_resize_image(...)) (the resize is linear), except
  where float32 rounding puts a value within ~1e-5 of a half-integer, which
  changes it by 1 (none of 19 M values in benchmarks/pipeline_throughput.py),
  with two fewer passes over the pixels.
  """
  out = _resize_bicubic_0_255(image, window, size)
  return tf.cast(tf.round(tf.clip_by_value(out, 0., 255.)), tf.uint8)


def nearest_indices(start, length, size):
  """Source indices of a nearest-neighbour resize of [start, start + length) to `size`.

  Exactly tf.image.resize(method='nearest')'s (half-pixel centres): output i
  reads min(floor((i + 0.5) * (length / size)), length - 1), in float32 as
  TF's ResizeNearestNeighbor kernel computes it.
  """
  scale = tf.cast(length, tf.float32) / float(size)
  i = tf.cast(tf.floor((tf.range(size, dtype=tf.float32) + 0.5) * scale), tf.int32)
  return start + tf.minimum(i, length - 1)


def crop_and_resize_labels(labels, window, size, flip=None, dtype=None):
  """Crops [H, W] label ids to the window; nearest-resizes to [size, size].

  The same ids as tf.image.resize(crop, method='nearest') (then mirrored
  left-right when the bool scalar `flip` is set), as two gathers of computed
  indices: rows, then the window's columns, as rows of the transpose
  (gathering whole rows is a copy per row; TF's nearest resize and a column
  gather cost a lookup per pixel: ~3x slower). The flip reverses the column
  indices, for free. `dtype`: the ids are cast to it right after the row
  gather, so the slice and transposes move fewer bytes; every id must fit
  (input_pipeline.mask_dtype holds them by construction). Default: the
  dtype of `labels`.
  """
  y0, x0, h, w = window
  rows = nearest_indices(y0, h, size)
  cols = nearest_indices(0, w, size)
  if flip is not None:
    cols = tf.where(flip, tf.reverse(cols, [0]), cols)
  out = tf.gather(labels, rows)                            # [size, W]
  if dtype is not None:
    out = tf.cast(out, dtype)
  out = tf.slice(out, tf.stack([0, x0]), tf.stack([size, w]))
  return tf.transpose(tf.gather(tf.transpose(out), cols))  # [size, size]


def flip_left_right(x, flip):
  """Mirrors [S, S, ...] along the width axis when the bool scalar `flip` is set.

  tf.cond, so the reverse runs only when flipping (tf.where would reverse
  every view and select element-wise: ~20x slower on uint8 views).
  """
  return tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)


def grid_label_map(height, width, grid_size):
  """DetCon's spatial heuristic (Sec. 3.2): an n x n grid over the image.

  Returns int32 [H, W] with id = row * n + col, rows/cols of the original image.
  """
  n = grid_size
  rows = tf.range(height) * n // height
  cols = tf.range(width) * n // width
  return rows[:, None] * n + cols[None, :]


# ------------------------------------------------------------------ colour ---

def adjust_brightness(image, factor):
  return image * factor


def adjust_contrast(image, factor):
  return tf.image.adjust_contrast(image, factor)


def adjust_saturation(image, factor):
  return tf.image.adjust_saturation(image, factor)


def adjust_hue(image, delta):
  return tf.image.adjust_hue(image, delta)


def color_jitter(image, seed, *, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1):
  """BYOL/torchvision colour jitter, the four ops in a random order.

  Args:
    image: float32 [S, S, 3] in [0, 1].
    seed: [2] stateless seed.
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  s_order, s_b, s_c, s_s, s_h = split_seed(seed, 5)
  b = _uniform(s_b, (), max(0., 1. - brightness), 1. + brightness)
  c = _uniform(s_c, (), max(0., 1. - contrast), 1. + contrast)
  s = _uniform(s_s, (), max(0., 1. - saturation), 1. + saturation)
  h = _uniform(s_h, (), -hue, hue)
  ops = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
         lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h)]
  order = tf.argsort(_uniform(s_order, [4]))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda f=f: f(image) for f in ops])
    image = tf.clip_by_value(image, 0., 1.)
  return image


def to_grayscale(image):
  """float32 [S, S, 3] -> luma replicated over 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def gaussian_kernel_size(image_size):
  """BYOL's blur kernel: about 10% of the view size, made odd (23 for 224)."""
  return 2 * (image_size // 20) + 1


def gaussian_blur(image, sigma, kernel_size):
  """Separable Gaussian blur of float32 [S, S', 3] (reflect padding).

  Each 1-D pass is a product with a banded [S, S] matrix that has the
  reflection folded in: on CPU this is ~5x faster than depthwise_conv2d.
  """
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  k = tf.exp(-0.5 * tf.square(x / sigma))
  k = k / tf.reduce_sum(k)
  rows = _blur_matrix(k, image.shape[0], radius)
  cols = _blur_matrix(k, image.shape[1], radius)
  out = tf.einsum('ij,jkc->ikc', rows, image)
  return tf.einsum('lk,ikc->ilc', cols, out)


def _blur_matrix(k, size, radius):
  """[size, size] matrix of a 1-D convolution with `k` under reflect padding."""
  if radius >= size:
    raise ValueError(f'blur radius {radius} must be smaller than the view size {size}')
  idx = np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None, :]
  idx = np.where(idx < 0, -idx, idx)
  idx = np.where(idx > size - 1, 2 * (size - 1) - idx, idx)
  rows = np.repeat(np.arange(size), 2 * radius + 1)
  # Reflected taps landing on the same pixel add up (scatter_nd sums).
  return tf.scatter_nd(np.stack([rows, idx.ravel()], 1), tf.tile(k, [size]),
                       [size, size])


def solarize(image, threshold=0.5):
  return tf.where(image < threshold, image, 1. - image)


def normalize(image):
  """ImageNet mean/std normalisation of float32 [..., 3] in [0, 1]."""
  return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def byol_color_augment(image, seed, *, color_jitter_prob=0.8, brightness=0.4,
                       contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2,
                       blur_prob=1.0, blur_sigma=(0.1, 2.0), solarize_prob=0.0):
  """BYOL's colour augmentation of one view (Grill et al. 2020, Sec. 3.3 / App. B).

  Args:
    image: float32 [S, S, 3] in [0, 1] (S static).
    seed: [2] stateless seed.
  Returns:
    float32 [S, S, 3] in [0, 1], not normalised.
  """
  size = image.shape[0]
  s_jp, s_j, s_gp, s_bp, s_bs, s_sp = split_seed(seed, 6)

  def maybe(s, p, fn, x):
    if p <= 0:  # Static: keep the op out of the graph.
      return x
    return tf.cond(_uniform(s) < p, lambda: fn(x), lambda: x)

  image = maybe(s_jp, color_jitter_prob,
                lambda x: color_jitter(x, s_j, brightness=brightness,
                                       contrast=contrast, saturation=saturation,
                                       hue=hue), image)
  image = maybe(s_gp, grayscale_prob, to_grayscale, image)
  sigma = _uniform(s_bs, (), *blur_sigma)
  image = maybe(s_bp, blur_prob,
                lambda x: gaussian_blur(x, sigma, gaussian_kernel_size(size)), image)
  image = maybe(s_sp, solarize_prob, solarize, image)
  return tf.clip_by_value(image, 0., 1.)
