"""Input-pipeline throughput: examples/s for two 224x224 views + masks.

Builds a temporary mask dataset in the real record format from skimage.data
photos resized to ImageNet-like sizes (~375x500 JPEG, quality 90) with an FH
map (skimage felzenszwalb, scale = min_size = 1000), then times the real
pipeline (input_pipeline.make_pretrain_dataset) after a warm-up.

  python -m benchmarks.pipeline_throughput [--num_images=256 --batch_size=64
      --steps=12 --out=benchmarks/results/pipeline_throughput.md]
"""

import os
import platform
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common
from data_pipeline import tf_setup

tf = tf_setup.hide_accelerators()

from data_pipeline import input_pipeline  # noqa: E402
from data_pipeline import records  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer('num_images', 256, 'Records in the temporary dataset.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 12, 'Timed batches per configuration.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first.')
_SIZE = flags.DEFINE_integer('image_size', 224, 'View size.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/pipeline_throughput.md',
                           'Markdown table written here.')


def build_dataset(out_dir, num_images, num_shards=8):
  """Writes `num_images` ~ImageNet-sized JPEG records with one FH map each."""
  import io
  from PIL import Image
  import skimage.segmentation

  photos = common.photos()
  fh = records.fh_mask_name(1000, 1000, 0.8)
  base = []
  for i, (photo, shape) in enumerate(zip(photos * 2, common.SHAPES * 2)):
    if len(base) >= 8:
      break
    img = np.asarray(Image.fromarray(photo).resize(shape[::-1], Image.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=90)
    data = buf.getvalue()
    decoded = tf.io.decode_jpeg(data, channels=3).numpy()  # Masks match TF's decode.
    labels = skimage.segmentation.felzenszwalb(decoded, scale=1000, sigma=0.8,
                                               min_size=1000)
    base.append((data, decoded.shape, labels))
  mean_bytes = np.mean([len(b[0]) for b in base])
  writers = [tf.io.TFRecordWriter(os.path.join(
      out_dir, f'train-{i:05d}-of-{num_shards:05d}.tfrecord')) for i in range(num_shards)]
  counts = [0] * num_shards
  for i in range(num_images):
    data, shape, labels = base[i % len(base)]
    writers[i % num_shards].write(records.make_example(
        encoded=data, image_format='jpeg', original_format='jpeg', transcoded=False,
        height=shape[0], width=shape[1], image_id=f'img{i:06d}',
        label_maps={fh: labels}))
    counts[i % num_shards] += 1
  for w in writers:
    w.close()
  import json
  manifest = {'format_version': 1, 'split': 'train', 'source': 'skimage.data',
              'num_examples': num_images, 'mask_names': [fh],
              'fh': [{'scale': 1000, 'min_size': 1000, 'sigma': 0.8, 'name': fh}],
              'shards': [{'file': f'train-{i:05d}-of-{num_shards:05d}.tfrecord',
                          'num_examples': c} for i, c in enumerate(counts)]}
  with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  return len(base), mean_bytes, [b[1] for b in base]


def time_pipeline(ds, warmup, steps, batch):
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch / (time.perf_counter() - t)


def main(argv):
  del argv
  cores = os.cpu_count()
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as d:
    n_base, mean_bytes, shapes = build_dataset(d, _NUM_IMAGES.value)
    base_cfg = dict(dir=d, image_size=_SIZE.value, mask='fh', fh_scale=1000,
                    shuffle_buffer=1000)
    no_color = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                    solarize_prob=(0., 0.))
    configs = [
        ('two views + FH mask, BYOL colour (default)', {}),
        ('two views + grid mask, BYOL colour', dict(mask='grid')),
        ('two views + FH mask, no colour ops', no_color),
        ('color_only + crop views (LC-loss), FH', dict(view_modes=('color_only', 'crop'))),
    ]
    rows = []
    kw = dict(global_batch_size=_BATCH.value, seed=0, num_local_devices=1)
    # Baseline: read + parse + decode the JPEG and the mask, no views.
    files = tf.io.gfile.glob(os.path.join(d, '*.tfrecord'))
    fh = records.fh_mask_name(1000, 1000, 0.8)

    def decode(r):  # Outputs depend on both decodes, so neither is pruned.
      ex = records.parse_record_tf(r, [fh])
      return ex['image'][:1, :1, 0], ex['masks'][fh][:1, :1]

    dec = tf.data.TFRecordDataset(files).repeat().map(
        decode, num_parallel_calls=tf.data.AUTOTUNE).batch(_BATCH.value)
    rows.append(('decode only (JPEG + PNG16 mask)',
                 time_pipeline(dec, _WARMUP.value, _STEPS.value, _BATCH.value)))
    for name, over in configs:
      ds = input_pipeline.make_pretrain_dataset({**base_cfg, **over}, **kw)
      rows.append((name, time_pipeline(ds, _WARMUP.value, _STEPS.value, _BATCH.value)))
  lines = [
      '# Input pipeline throughput', '',
      f'Machine: {platform.processor() or platform.machine()}, {cores} CPU cores'
      f' (os.cpu_count), TensorFlow {tf.__version__}. Dataset: {_NUM_IMAGES.value}'
      f' records from {n_base} skimage.data photos resized to'
      f' {sorted(set(shapes))} (JPEG q90, mean {mean_bytes / 1024:.0f} KiB) + one FH'
      f' map (scale 1000). Views {_SIZE.value}x{_SIZE.value}, batch {_BATCH.value},'
      f' {_STEPS.value} timed batches after {_WARMUP.value} warm-up. 1-min load'
      f' average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other'
      ' processes on the machine lower the figures).', '',
      '| configuration | examples/s | examples/s per core |',
      '|---|---:|---:|']
  for name, eps in rows:
    lines.append(f'| {name} | {eps:.1f} | {eps / cores:.1f} |')
  text = '\n'.join(lines) + '\n'
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
