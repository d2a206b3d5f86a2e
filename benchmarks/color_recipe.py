r"""BYOL's colour recipe: jitted JAX (dense_ssl/ops/color.py) vs the host tf.data one.

  python -m benchmarks.color_recipe                      # 32 views of 96 and 224 px
  python -m benchmarks.color_recipe --sizes=224 --rounds=11

Times the colour recipe + ImageNet normalisation alone (no decode, crop or
resize) on the same batch of --batch_size views (crops of scikit-image's
photos), for each view's settings of the default config (view 1: blur 1.0,
solarize 0; view 2: blur 0.1, solarize 0.2):
  * device: jax.jit(color.color_augment) on uint8 [B, S, S, 3], the step
    (so the draws) changing every round, blocked until ready; with the blur
    as fused taps (the default) and as dm-pix's depthwise convolution;
  * host: a tf.data map of augment.byol_color_augment + augment.normalize
    over the same views as float32 in [0, 1] (as the pipeline runs it,
    num_parallel_calls=AUTOTUNE), a fresh iterator over exactly B views per
    round so that nothing runs ahead between timings, seeds changing every
    round.
Everything is compiled / traced first; then rounds alternate device and host
timings so that load drifts hit both; the median round is reported as ms per
view. On a CPU-only machine "device" is the CPU: XLA and tf.data both use
every core. Prints a markdown table and writes it to --out.
"""

import os
import time

from absl import app
from absl import flags

from benchmarks import common

_SIZES = flags.DEFINE_list('sizes', ['96', '224'], 'View sizes (px).')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Views per batch.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Timed rounds (after one warm-up).')
_PAUSE = flags.DEFINE_float('pause', 0.2, 'Seconds of sleep before each timing.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/color_recipe.md', 'Table file.')


def _views(size, batch):
  """uint8 [batch, size, size, 3]: square crops of the bundled photos, resized."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photos = common.photos()
  rng = np.random.default_rng(0)
  out = []
  for i in range(batch):
    p = photos[i % len(photos)]
    side = int(min(p.shape[:2]) * rng.uniform(0.3, 1.0))
    y0 = rng.integers(0, p.shape[0] - side + 1)
    x0 = rng.integers(0, p.shape[1] - side + 1)
    crop = Image.fromarray(p[y0:y0 + side, x0:x0 + side])
    out.append(np.asarray(crop.resize((size, size), Image.BICUBIC)))
  return np.stack(out)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import augment  # pylint: disable=g-import-not-at-top
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  from data_pipeline import view_config  # pylint: disable=g-import-not-at-top
  from dense_ssl.ops import color  # pylint: disable=g-import-not-at-top
  tf = augment.tf

  batch = _BATCH.value
  cfg = configs_common.base_config('color_recipe').data  # The paper's recipe.
  specs = view_config.view_specs(cfg)
  kwargs = view_config.color_kwargs(cfg)
  load_before = os.getloadavg()[0]

  timers = {}  # (size, view, impl) -> fn(round) -> seconds
  for size in (int(s) for s in _SIZES.value):
    views = _views(size, batch)
    dev_images = jnp.asarray(views)
    for view, spec in enumerate(specs):
      for impl in ('taps', 'dm_pix'):
        fn = jax.jit(lambda im, step, v=view, impl=impl: color.color_augment(
            im, color.example_keys(0, step, jnp.arange(batch), v), v, cfg,
            blur_impl=impl))

        def dev_time(r, fn=fn, images=dev_images):
          t = time.perf_counter()
          fn(images, r).block_until_ready()
          return time.perf_counter() - t

        timers[size, view, impl] = dev_time

      host_images = tf.constant(views.astype(np.float32) / 255.)
      offset = tf.Variable(0, dtype=tf.int64)

      def recipe(i, spec=spec, host_images=host_images, offset=offset):
        seed = tf.stack([i + offset, tf.constant(7, tf.int64)])
        out = augment.byol_color_augment(host_images[i], seed, blur_prob=spec.blur_prob,
                                         solarize_prob=spec.solarize_prob, **kwargs)
        return augment.normalize(out)

      ds = tf.data.Dataset.range(batch).map(
          recipe, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)

      def host_time(r, ds=ds, offset=offset):
        offset.assign(r * batch)
        t = time.perf_counter()
        for b in ds:
          b.numpy()
        return time.perf_counter() - t

      timers[size, view, 'host'] = host_time

  for t in timers.values():  # compile / trace, warm up
    t(0)
  times = {k: [] for k in timers}
  for r in range(1, _ROUNDS.value + 1):
    for k, t in timers.items():  # alternating device and host timings
      time.sleep(_PAUSE.value)
      times[k].append(t(r))

  def ms(k):
    return 1000 * float(np.median(times[k])) / batch

  rows = []
  for size in (int(s) for s in _SIZES.value):
    for view, spec in enumerate(specs):
      dev, pix, host = (ms((size, view, i)) for i in ('taps', 'dm_pix', 'host'))
      rows.append(f'| {size} | {view + 1} (blur {spec.blur_prob:g}, solarize '
                  f'{spec.solarize_prob:g}) | {dev:.2f} | {pix:.2f} | {host:.2f} | '
                  f'{host / dev:.2f}x |')
  text = '\n'.join([
      '# Colour recipe: device (jitted JAX) vs host (tf.data)',
      '',
      f'{common.machine_line()} JAX {jax.__version__} on '
      f'{jax.devices()[0].platform} ({len(jax.devices())} device), TensorFlow '
      f'{tf.__version__}. Batch of {batch} views; BYOL colour recipe + ImageNet '
      f'normalisation only; median of {_ROUNDS.value} rounds, device and host '
      f'alternating. 1-min load average {load_before:.1f} before / '
      f'{os.getloadavg()[0]:.1f} after (other processes lower the figures).',
      '',
      '| view px | view (settings) | device, jit (ms/view) | device, dm-pix blur '
      '(ms/view) | host, tf.data (ms/view) | host / device |',
      '|---:|---|---:|---:|---:|---:|',
      *rows,
      '',
      'Device: every branch is computed for every view and selected (vmap), '
      'so its cost does not depend on the draws; the host skips the branches '
      'not drawn (tf.cond). "device" here is this CPU; accelerators are still to '
      'be measured.',
      ''])
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
