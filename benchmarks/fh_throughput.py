"""Mask-precompute throughput: skimage's FH alone vs precompute_masks.

Writes a temporary folder of ~ImageNet-sized JPEGs (skimage.data photos,
randomly cropped and resized to 500x375 / 375x500 / ..., quality 90) and
times, at FH scale = min_size = 1000 (DetCon's ImageNet setting):
  1. skimage.segmentation.felzenszwalb alone, one core, on the decoded images;
  2. `python -m data_pipeline.precompute_masks --source=folder:...` with 1 and
     with 2 worker processes (a fresh process per run, as a user runs it).
The tool's rate is given end to end (wall clock of the command, with Python
and TensorFlow start-up) and in steady state (inputs / worker busy time, from
the shard sidecars' seconds).

  python -m benchmarks.fh_throughput [--num_images=192 --workers=1,2
      --out=benchmarks/results/fh_throughput.md]
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from benchmarks import common

_NUM_IMAGES = flags.DEFINE_integer('num_images', 192, 'JPEGs in the temporary folder.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts to time.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 8, 'Shards (tasks) per tool run.')
_SCALE = flags.DEFINE_integer('scale', 1000, 'FH scale (= min_size).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/fh_throughput.md',
                           'Markdown table written here.')


def write_images(folder, num_images, seed=0):
  """num_images distinct JPEGs: random 70-100% crops of the photos, resized."""
  rng = np.random.default_rng(seed)
  photos = common.photos()
  for i in range(num_images):
    photo = photos[i % len(photos)]
    h, w = common.SHAPES[i % len(common.SHAPES)]
    f = rng.uniform(0.7, 1.0)
    ch, cw = int(photo.shape[0] * f), int(photo.shape[1] * f)
    y, x = rng.integers(0, photo.shape[0] - ch + 1), rng.integers(0, photo.shape[1] - cw + 1)
    crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h), Image.BICUBIC)
    crop.save(os.path.join(folder, f'img{i:05d}.jpg'), quality=90)
  return len(photos)


def time_skimage(folder):
  """images/s of felzenszwalb alone (decode not timed), this process, one core."""
  import skimage.segmentation
  files = sorted(os.listdir(folder))
  images = [np.asarray(Image.open(os.path.join(folder, f)).convert('RGB')) for f in files]
  skimage.segmentation.felzenszwalb(images[0], scale=_SCALE.value, sigma=0.8,
                                    min_size=_SCALE.value)  # Warm-up.
  t = time.perf_counter()
  for img in images:
    skimage.segmentation.felzenszwalb(img, scale=_SCALE.value, sigma=0.8,
                                      min_size=_SCALE.value)
  return len(images) / (time.perf_counter() - t), images[0].shape


def time_tool(folder, out_dir, workers):
  """(end-to-end images/s, steady-state images/s, manifest) of one CLI run."""
  cmd = [sys.executable, '-m', 'data_pipeline.precompute_masks',
         f'--source=folder:{folder}', f'--out_dir={out_dir}',
         f'--fh_scales={_SCALE.value}', f'--fh_min_sizes={_SCALE.value}',
         f'--num_workers={workers}', f'--num_shards={_NUM_SHARDS.value}',
         '--progress_every_s=30']
  t = time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
  wall = time.perf_counter() - t
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    manifest = json.load(f)
  n = manifest['num_examples']
  busy = manifest['timing']['shard_seconds']  # Summed over shards = over workers.
  return n / wall, n / (busy / workers), manifest


def main(argv):
  del argv
  load_before = os.getloadavg()[0]
  rows = []
  with tempfile.TemporaryDirectory() as d:
    folder = os.path.join(d, 'images')
    os.makedirs(folder)
    n_photos = write_images(folder, _NUM_IMAGES.value)
    base, shape = time_skimage(folder)
    rows.append(('skimage felzenszwalb alone', 1, base, base, None))
    tool = {}
    for w in map(int, _WORKERS.value):
      e2e, steady, manifest = time_tool(folder, os.path.join(d, f'out{w}'), w)
      assert manifest['num_failures'] == 0, manifest['failures'][:3]
      tool[w] = (e2e, steady)
      rows.append((f'precompute_masks, {w} worker{"s" if w > 1 else ""}', w, e2e,
                   steady, manifest['timing']['startup_s']))
  lines = [
      '# FH mask precompute throughput', '',
      f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU'
      f' cores (os.cpu_count), Python {platform.python_version()}.'
      f' {_NUM_IMAGES.value} JPEGs (q90) made from {n_photos} skimage.data photos,'
      f' ~500x375 (e.g. {shape[1]}x{shape[0]}); FH scale = min_size ='
      f' {_SCALE.value}, sigma 0.8; tool runs: --num_shards={_NUM_SHARDS.value}, one'
      f' fresh process each. 1-min load average {load_before:.1f} before /'
      f' {os.getloadavg()[0]:.1f} after (other processes on the machine lower the'
      ' figures).', '',
      'End to end = images / wall clock of the command (start-up included: Python,'
      ' TensorFlow import in each worker, pool). Steady state = images / worker busy'
      ' time (shard sidecars). Per worker = rate / workers; % = per-worker rate /'
      ' skimage alone.', '',
      '| configuration | workers | images/s end to end | images/s steady |'
      ' images/s/core (steady) | % of skimage per worker (e2e / steady) |'
      ' first image after (s) |',
      '|---|---:|---:|---:|---:|---:|---:|']
  for name, w, e2e, steady, startup in rows:
    lines.append(f'| {name} | {w} | {e2e:.2f} | {steady:.2f} | {steady / w:.2f} |'
                 f' {100 * e2e / w / base:.0f}% / {100 * steady / w / base:.0f}% |'
                 f' {"" if startup is None else f"{startup:.1f}"} |')
  if 1 in tool and 2 in tool:
    lines += ['', f'Scaling 1 -> 2 workers: {tool[2][0] / tool[1][0]:.2f}x end to end,'
              f' {tool[2][1] / tool[1][1]:.2f}x steady state.']
  text = '\n'.join(lines) + '\n'
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
