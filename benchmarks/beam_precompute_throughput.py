"""Mask-precompute throughput: the Beam DirectRunner vs precompute_masks' local mode.

Same inputs as benchmarks/fh_throughput.py (a temporary folder of ~500x375
JPEGs made from skimage.data photos, FH scale = min_size = 1000), timed as
  * `python -m data_pipeline.precompute_masks --num_workers=W` (local mode);
  * the same command with `--runner=DirectRunner --direct_num_workers=W
    --direct_running_mode=multi_processing` (Beam mode);
for each W in --workers, a fresh process per run, as a user runs it. The
shards of every run are checked to be byte-identical to the first run's.

  python -m benchmarks.beam_precompute_throughput [--num_images=96 --workers=1,2
      --num_shards=8 --scale=1000 --out=benchmarks/results/beam_precompute.md]
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

from benchmarks import common
from benchmarks import fh_throughput

# The flags of fh_throughput (imported: --num_images, --workers, --num_shards,
# --scale, --out), with this benchmark's defaults.
_NUM_IMAGES, _WORKERS = fh_throughput._NUM_IMAGES, fh_throughput._WORKERS  # pylint: disable=protected-access
_NUM_SHARDS, _FH, _OUT = (fh_throughput._NUM_SHARDS, fh_throughput._SCALE,  # pylint: disable=protected-access
                          fh_throughput._OUT)  # pylint: disable=protected-access
flags.FLAGS.set_default('num_images', 96)
flags.FLAGS.set_default('out', 'benchmarks/results/beam_precompute.md')


def time_run(folder, out_dir, workers, beam):
  """(end-to-end images/s, steady-state images/s, manifest, shard bytes) of one run."""
  cmd = [sys.executable, '-m', 'data_pipeline.precompute_masks',
         f'--source=folder:{folder}', f'--out_dir={out_dir}',
         f'--fh_scales={_FH.value}', f'--fh_min_sizes={_FH.value}',
         f'--num_shards={_NUM_SHARDS.value}', '--progress_every_s=60']
  if beam:
    cmd += ['--runner=DirectRunner', f'--direct_num_workers={workers}',
            '--direct_running_mode=multi_processing']
  else:
    cmd += [f'--num_workers={workers}']
  t = time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - t
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    manifest = json.load(f)
  n = manifest['num_examples']
  busy = manifest['timing']['shard_seconds']  # Summed over shards = over workers.
  shards = {}
  for s in manifest['shards']:
    with open(os.path.join(out_dir, s['file']), 'rb') as f:
      shards[s['file']] = f.read()
  return n / wall, n / (busy / workers), wall, manifest, shards


def main(argv):
  del argv
  load_before = os.getloadavg()[0]
  rows, ref = [], None
  rates = {}
  with tempfile.TemporaryDirectory() as d:
    folder = os.path.join(d, 'images')
    os.makedirs(folder)
    n_photos = fh_throughput.write_images(folder, _NUM_IMAGES.value)
    for w in map(int, _WORKERS.value):
      for beam in (False, True):
        name = 'Beam DirectRunner (multi_processing)' if beam else 'local mode'
        e2e, steady, wall, manifest, shards = time_run(
            folder, os.path.join(d, f'out-{"beam" if beam else "local"}-{w}'), w, beam)
        assert manifest['num_failures'] == 0, manifest['failures'][:3]
        ref = ref or shards
        assert shards == ref, f'{name}, {w} workers: shards differ from the first run'
        rates[beam, w] = e2e
        rows.append((name, w, wall, e2e, steady))
        print(f'{name}, {w} workers: {e2e:.2f} images/s end to end', flush=True)
  lines = [
      '# Mask precompute: Beam DirectRunner vs local mode', '',
      f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU'
      f' cores (os.cpu_count), Python {platform.python_version()}.'
      f' {_NUM_IMAGES.value} JPEGs (q90) made from {n_photos} skimage.data photos,'
      f' ~500x375 (benchmarks/fh_throughput.py); FH scale = min_size = {_FH.value},'
      f' sigma 0.8; --num_shards={_NUM_SHARDS.value}; one fresh process per run;'
      f' every run wrote byte-identical shards. 1-min load average'
      f' {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other processes on'
      ' the machine lower the figures).', '',
      'End to end = images / wall clock of the command (Python, TensorFlow and, for'
      ' Beam, the SDK worker processes\' start-up included). Steady state = images /'
      ' worker busy time (shard sidecars\' seconds / workers).', '',
      '| mode | workers | wall (s) | images/s end to end | images/s steady |',
      '|---|---:|---:|---:|---:|']
  for name, w, wall, e2e, steady in rows:
    lines.append(f'| {name} | {w} | {wall:.1f} | {e2e:.2f} | {steady:.2f} |')
  lines.append('')
  for w in map(int, _WORKERS.value):
    lines.append(f'Beam / local at {w} worker{"s" if w > 1 else ""}:'
                 f' {rates[True, w] / rates[False, w]:.2f}x end to end.')
  text = '\n'.join(lines) + '\n'
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
