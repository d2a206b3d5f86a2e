"""BYOL's colour recipe on the accelerator: pure JAX (dm-pix), vmapped per example.

The device-side twin of `data_pipeline/augment.py`'s `byol_color_augment` +
`normalize` (the reference behaviour, run on the host in tf.data), meant to be
called at the top of the per-device training step on the cropped, flipped,
resized uint8 views (as the BYOL and DetCon releases do):

  keys = example_keys(config.seed, step, global_index, view)       # [B]
  image = color_augment(view_uint8, keys, view, config.data)       # [B, S, S, 3]

The recipe (Grill et al. 2020, Table 6), per view k, with the settings of
`config.data` (the keys and defaults the host pipeline reads):
  1. colour jitter with probability `color_jitter_prob` (0.8): brightness,
     contrast, saturation, hue (0.4, 0.4, 0.2, 0.1) in a uniformly random
     order, clipped to [0, 1] after each. Brightness, contrast and saturation
     are multiplicative factors ~ U[max(0, 1 - s), 1 + s] (torchvision's
     ColorJitter, whose parameters BYOL quotes); hue is a shift ~ U[-h, h] of
     the hue circle (as a fraction of a turn).
  2. grayscale (ITU-R 601 luma, replicated to 3 channels) with probability
     `grayscale_prob` (0.2);
  3. Gaussian blur with probability `blur_prob[k]` ((1.0, 0.1); multi-crop
     local crops: `local_blur_prob`, 0.5), sigma ~
     U(`blur_sigma`) ((0.1, 2.0)) pixels, a kernel of 2 * (S // 20) + 1 taps
     (about 10% of the view: 23 at 224, 9 at 96), reflect padding;
  4. solarize (x -> 1 - x where x >= 0.5) with probability
     `solarize_prob[k]` ((0.0, 0.2); local crops: `local_solarize_prob`, 0);
  5. clip to [0, 1], then ImageNet mean/std normalisation.
'color_only' views (`data.view_modes`, LC-loss's I_c) get the same recipe: the
mode changes only the geometry, which is done before this module.

Every op keeps float32 in [0, 1] until the normalisation (step 5), and each
matches the host op to ~1e-6 at equal parameters (tests/test_color.py). What
differs from the host recipe:
  * the random numbers: the draws come from JAX's threefry keyed by
    (seed, step, global example index, view) (`example_keys`), not from the
    host's tf.random stateless seeds keyed by (seed, process, epoch, position);
    so a device-augmented batch is a different, equally distributed sample.
    It does not depend on how the batch is split over devices or processes,
    and a resumed run replays it exactly (the step is restored);
  * the input: the host recipe runs on the float bicubic resize; this one on
    the uint8 view shipped to the device (a 1/255 quantisation first);
  * cost: every branch is computed for every example and the results
    selected (each probability is a jnp.where; the jitter's per-example op
    order is a lax.switch, which vmap turns into a select of all four ops),
    so the cost does not depend on the draws; the host skips what it does
    not draw.

The output is wrapped in `jax.lax.stop_gradient`: colour is input to the
network, not part of the computation that is differentiated.

Which dm-pix ops are used, and what was written here instead (see each op):
dm-pix's adjust_contrast, adjust_saturation, adjust_hue, rgb_to_grayscale and
solarize are the host's tf.image / augment.py ops and are used as they are.
Written here: brightness (dm-pix's is additive, torchvision's and the host's
multiplicative); the blur's reflect padding (dm-pix's 'SAME' pads with zeros,
which darkens the border) and, by default, the blur itself as fused shifted
taps with dm-pix's kernel (dm-pix's depthwise convolution, still available as
blur_impl='dm_pix', makes the whole recipe ~4x slower on CPU, because with a
per-example sigma under vmap it becomes a grouped convolution);
the normalisation and the random draws.
"""

import dataclasses
from typing import Any, Tuple

import dm_pix as pix
import jax
import jax.numpy as jnp

from data_pipeline import view_config

IMAGENET_MEAN, IMAGENET_STD = view_config.IMAGENET_MEAN, view_config.IMAGENET_STD

# Folded into every colour key first, so colour draws never coincide with
# other streams derived from the same config seed (parameter init, ...).
_COLOR_STREAM = 0xC0104


# ------------------------------------------------------------------ config ---

@dataclasses.dataclass(frozen=True)
class ColorSpec:
  """The colour recipe of one view (static: Python numbers)."""
  color_jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  hue: float = 0.1
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  blur_sigma: Tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0


def view_color_spec(data_config: Any, view_index: int) -> ColorSpec:
  """The ColorSpec of view `view_index` from `config.data`.

  Through data_pipeline/view_config.py, the reader the host pipeline uses:
  the same keys, defaults and per-view checks (blur_prob and solarize_prob
  need one entry per entry of data.view_modes).
  """
  specs = view_config.view_specs(data_config)
  if not 0 <= view_index < len(specs):
    raise ValueError(f'view_index={view_index}: config.data has {len(specs)} views'
                     ' (data.view_modes and data.num_local_crops)')
  kw = view_config.color_kwargs(data_config)
  return ColorSpec(
      color_jitter_prob=kw['color_jitter_prob'], brightness=kw['brightness'],
      contrast=kw['contrast'], saturation=kw['saturation'], hue=kw['hue'],
      grayscale_prob=kw['grayscale_prob'], blur_prob=specs[view_index].blur_prob,
      blur_sigma=tuple(float(x) for x in kw['blur_sigma']),
      solarize_prob=specs[view_index].solarize_prob)


# --------------------------------------------------------------------- ops ---
# One image: float32 [S, S, 3] in [0, 1] (also [..., S, S, 3] where noted),
# scalar parameters. None of these clips; the recipe clips after each step.

def adjust_brightness(image, factor):
  """Multiplies [..., 3] by `factor` (torchvision's / the host's brightness).

  Written here: dm-pix's adjust_brightness is additive (tf.image's), while
  torchvision's ColorJitter, whose 0.4 BYOL quotes, and augment.py multiply.
  """
  return image * jnp.asarray(factor, image.dtype)


def adjust_contrast(image, factor):
  """dm-pix = tf.image.adjust_contrast: factor * (x - mean) + mean, per channel.

  The mean is over the image's pixels, per channel ([S, S, 3] or [B, S, S, 3]).
  """
  return pix.adjust_contrast(image, factor)


def adjust_saturation(image, factor):
  """dm-pix = tf.image.adjust_saturation: HSV saturation * factor, clipped to [0, 1]."""
  return pix.adjust_saturation(image, factor)


def adjust_hue(image, delta):
  """dm-pix = tf.image.adjust_hue: HSV hue + delta (a fraction of a turn), mod 1.

  (dm-pix and TF's CPU kernel differ only for pixels with every channel
  outside [0, 1]; the recipe clips after each op, so never here.)
  """
  return pix.adjust_hue(image, delta)


def to_grayscale(image):
  """dm-pix = tf.image.rgb_to_grayscale (rec601 luma), replicated to 3 channels."""
  return pix.rgb_to_grayscale(image, keep_dims=True)


def gaussian_kernel_size(image_size: int) -> int:
  """BYOL's blur kernel: about 10% of the view size, made odd (23 for 224).

  The host's rule (augment.gaussian_kernel_size).
  """
  return 2 * (image_size // 20) + 1


def gaussian_kernel(sigma, kernel_size: int):
  """float32 [kernel_size] Gaussian taps exp(-x^2 / (2 sigma^2)), x = -r..r, sum 1.

  dm-pix's and the host's kernel (r = kernel_size // 2).
  """
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-x ** 2 / (2. * jnp.asarray(sigma, jnp.float32) ** 2))
  return k / jnp.sum(k)


def gaussian_blur(image, sigma, kernel_size: int, impl: str = 'taps'):
  """Separable Gaussian blur of float32 [S, S', 3] with reflect padding.

  The kernel is gaussian_kernel(sigma, kernel_size) (the host's and dm-pix's).
  Each axis is padded by r = kernel_size // 2 by reflection (numpy 'reflect',
  no edge repeat: augment._blur_matrix's rule). dm-pix's own padding='SAME'
  pads with zeros, which darkens the border, unlike the host recipe.

  impl='taps' (default, written here): each 1-D pass is a weighted sum of the
  2 r + 1 shifted slices of the padded view, which XLA fuses into one
  elementwise loop. impl='dm_pix': dm-pix's gaussian_blur with
  padding='VALID' on the reflect-padded view (a depthwise convolution). Both
  give the same result (within 1e-6, tests/test_color.py); 'taps' is the
  default because the recipe blurs every example with its own sigma, and
  under vmap JAX turns dm-pix's depthwise convolution with a per-example
  kernel into one convolution with B x 3 feature groups, which on CPU is
  ~5x slower than the fused taps at 224 px (the whole recipe ~4x:
  benchmarks/color_recipe.py); accelerators are still to be measured.

  Args:
    image: float32 [S, S', 3].
    sigma: float scalar (pixels), may be traced.
    kernel_size: static odd int; kernel_size // 2 < min(S, S').
    impl: 'taps' or 'dm_pix'.
  Returns:
    float32 [S, S', 3].
  """
  radius = kernel_size // 2
  if radius == 0:
    return image
  h, w = image.shape[0], image.shape[1]
  if radius >= min(h, w):
    raise ValueError(f'blur radius {radius} must be smaller than the view size '
                     f'{(h, w)}')
  if impl == 'dm_pix':
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)),
                     mode='reflect')
    return pix.gaussian_blur(padded, sigma, 2 * radius + 1, padding='VALID')
  if impl != 'taps':
    raise ValueError(f"impl={impl!r}: use 'taps' or 'dm_pix'")
  k = gaussian_kernel(sigma, kernel_size).astype(image.dtype)
  taps = range(2 * radius + 1)
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode='reflect')
  image = sum(k[t] * padded[t:t + h] for t in taps)
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode='reflect')
  return sum(k[t] * padded[:, t:t + w] for t in taps)


def solarize(image, threshold=0.5):
  """dm-pix = augment.solarize: x where x < threshold, else 1 - x."""
  return pix.solarize(image, threshold)


def normalize(image):
  """ImageNet mean/std normalisation of float32 [..., 3] in [0, 1]."""
  mean = jnp.asarray(IMAGENET_MEAN, image.dtype)
  std = jnp.asarray(IMAGENET_STD, image.dtype)
  return (image - mean) / std


# ------------------------------------------------------------------ recipe ---

def _uniform(key, minval=0., maxval=1.):
  return jax.random.uniform(key, (), jnp.float32, minval, maxval)


def color_jitter(image, key, *, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1):
  """The host's colour jitter: the four ops in a uniformly random order.

  Factors as augment.color_jitter: brightness, contrast, saturation ~
  U[max(0, 1 - s), 1 + s], hue ~ U[-h, h]; clipped to [0, 1] after each op.

  Args:
    image: float32 [S, S, 3] in [0, 1].
    key: a PRNG key.
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  b = _uniform(k_b, max(0., 1. - brightness), 1. + brightness)
  c = _uniform(k_c, max(0., 1. - contrast), 1. + contrast)
  s = _uniform(k_s, max(0., 1. - saturation), 1. + saturation)
  h = _uniform(k_h, -hue, hue)
  ops = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
         lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h)]
  order = jax.random.permutation(k_order, 4)

  def position(i, x):
    # Under vmap lax.switch evaluates all four ops and selects per example.
    return jnp.clip(jax.lax.switch(order[i], ops, x), 0., 1.)

  # A loop, not four unrolled positions: the program holds each op once
  # instead of four times (the hue conversion is the costly one), which
  # about halves the colour recipe's share of a step's compile (a test-preset
  # step: 10.4 -> 8.1 s; 5.7 s without device colour); same ops, same order.
  return jax.lax.fori_loop(0, 4, position, image)


def byol_color_single(image, key, spec: ColorSpec, blur_impl: str = 'taps'):
  """BYOL's colour recipe of one view, unnormalised (augment.byol_color_augment).

  Args:
    image: float32 [S, S, 3] in [0, 1] (S static).
    key: a PRNG key (this example and view's, from example_keys).
    spec: the view's ColorSpec.
    blur_impl: gaussian_blur's impl ('taps' or 'dm_pix').
  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  size = image.shape[0]
  k_jp, k_j, k_gp, k_bp, k_bs, k_sp = jax.random.split(key, 6)

  def maybe(k, p, fn, x):
    if p <= 0:  # Static: keep the op out of the program (as the host).
      return x
    # A select, not lax.cond: the recipe always runs under vmap, where a cond
    # on a per-example predicate becomes this select anyway; and in JAX
    # 0.10.2 lax.cond around the grayscale op, under vmap inside shard_map
    # (the training step), fails to trace ("pvary is a invariant->variant
    # collective").
    return jnp.where(_uniform(k) < p, fn(x), x)

  image = maybe(k_jp, spec.color_jitter_prob,
                lambda x: color_jitter(x, k_j, brightness=spec.brightness,
                                       contrast=spec.contrast,
                                       saturation=spec.saturation, hue=spec.hue),
                image)
  image = maybe(k_gp, spec.grayscale_prob, to_grayscale, image)
  sigma = _uniform(k_bs, *spec.blur_sigma)
  image = maybe(k_bp, spec.blur_prob,
                lambda x: gaussian_blur(x, sigma, gaussian_kernel_size(size),
                                        blur_impl), image)
  image = maybe(k_sp, spec.solarize_prob, solarize, image)
  return jnp.clip(image, 0., 1.)


def color_augment(images, keys, view_index: int, data_config: Any,
                  blur_impl: str = 'taps'):
  """BYOL's colour recipe + ImageNet normalisation of a batch of views.

  Args:
    images: uint8 [B, S, S, 3] views (cropped, flipped, resized); float
      inputs are taken as already in [0, 1].
    keys: [B] PRNG keys (typed, from example_keys) or raw uint32 [B, 2].
    view_index: static int, which view (indexes the per-view settings).
    data_config: config.data (ConfigDict or dict), read statically.
    blur_impl: gaussian_blur's impl ('taps' or 'dm_pix'; same result).
  Returns:
    float32 [B, S, S, 3], ImageNet-normalised, under stop_gradient.
  """
  spec = view_color_spec(data_config, view_index)
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = images.astype(jnp.float32) / 255.
  else:
    images = images.astype(jnp.float32)
  out = jax.vmap(lambda x, k: byol_color_single(x, k, spec, blur_impl))(
      images, keys)
  return jax.lax.stop_gradient(normalize(out))


# -------------------------------------------------------------- randomness ---

def example_keys(seed, step, global_example_index, view):
  """Colour keys of a batch of examples: a pure function of their coordinates.

  key = fold_in(fold_in(fold_in(fold_in(key(seed), STREAM), step), view), index):
  an example's draws depend only on (seed, step, its global index, view), not
  on the device or process that augments it, so 1 and N devices give the same
  batch and a resumed run (the step is restored) replays the same draws.

  Args:
    seed: int (config.seed), in [0, 2^31).
    step: int32 scalar (the train state's step), may be traced.
    global_example_index: int32 [B], each example's position in the global
      batch of this step (any index unique within the step will do; see
      device_example_indices).
    view: int, the view index.
  Returns:
    [B] typed PRNG keys.
  """
  base = jax.random.fold_in(jax.random.key(seed), _COLOR_STREAM)
  base = jax.random.fold_in(base, step)
  base = jax.random.fold_in(base, view)
  index = jnp.asarray(global_example_index, jnp.int32)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


def device_example_indices(per_device_batch: int, axis_name: str = 'batch'):
  """Global indices [B] of this device's examples, inside shard_map over axis_name.

  Device d of the mesh axis holds global examples d * B ... (d + 1) * B - 1 of
  a batch sharded P(axis_name) (train.global_batch lays batches out so).
  """
  d = jax.lax.axis_index(axis_name)
  return d * per_device_batch + jnp.arange(per_device_batch, dtype=jnp.int32)


def augment_views(batch, *, seed, step, data_config, axis_name='batch'):
  """The top of the per-device training step: colour every uint8 view, int32 masks.

  batch: one device's batch as input_pipeline ships it with
  data.color_on='device': view{k}/image uint8 [B, S, S, 3] (cropped, flipped,
  resized; no colour), view{k}/mask in its smallest integer type. Each view
  k (0-based) gets color_augment with keys from (seed, step, the example's
  global index, k); float images (data.color_on='host': colour already
  applied and normalised on the host) pass through. Masks become int32.
  axis_name: the mapped axis (inside shard_map: global index = device offset
  + position), or None outside it (a whole global batch: index = position;
  dense_ssl/visualize.py). Returns a new dict.
  """
  out = dict(batch)
  k = 0
  while f'view{k + 1}/image' in batch:
    key = f'view{k + 1}/image'
    images = batch[key]
    if jnp.issubdtype(images.dtype, jnp.integer):
      index = (device_example_indices(images.shape[0], axis_name) if axis_name
               else jnp.arange(images.shape[0], dtype=jnp.int32))
      keys = example_keys(seed, step, index, k)
      out[key] = color_augment(images, keys, k, data_config)
    mask = f'view{k + 1}/mask'
    if mask in batch:
      out[mask] = batch[mask].astype(jnp.int32)
    k += 1
  return out
