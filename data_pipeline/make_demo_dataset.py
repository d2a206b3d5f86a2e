r"""Writes the demo scenes as a plain folder of PNG images and GT label maps.

  python -m data_pipeline.make_demo_dataset --out_dir=out/demo/folder \
      [--num_examples=2000 --seed=0 --image_size=128]

Layout: OUT/images/demo_000000.png (RGB) and OUT/gt/demo_000000.png (16-bit
label map, 0 = background, 1..N objects). The mask precompute reads the scenes
directly with --source=demo; this folder is for other tools, and for
exercising the folder path: --source=folder:OUT/images --user_masks=OUT/gt.
Existing files are kept (re-running completes an interrupted run).
"""

import os
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from data_pipeline import demo_dataset

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output folder.', required=True)
_NUM = flags.DEFINE_integer('num_examples', demo_dataset.DEFAULT_NUM_EXAMPLES,
                            'Number of scenes.')
_SEED = flags.DEFINE_integer('seed', 0, 'Scene seed.')
_SIZE = flags.DEFINE_integer('image_size', demo_dataset.DEFAULT_SIZE, 'Scene side.')


def write_png_atomic(path, array):
  tmp = path + '.tmp.png'
  Image.fromarray(array).save(tmp, format='PNG')
  os.replace(tmp, path)


def write_folder(out_dir, num_examples, seed=0, size=demo_dataset.DEFAULT_SIZE):
  """Writes the scenes; returns (written, kept) counts."""
  for sub in ('images', 'gt'):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  written = kept = 0
  for i in range(num_examples):
    name = f'demo_{i:06d}.png'
    image_path = os.path.join(out_dir, 'images', name)
    gt_path = os.path.join(out_dir, 'gt', name)
    if os.path.exists(image_path) and os.path.exists(gt_path):
      kept += 1
      continue
    image, gt = demo_dataset.generate_scene(i, seed, size)
    write_png_atomic(image_path, image)
    write_png_atomic(gt_path, gt.astype(np.uint16))
    written += 1
  return written, kept


def main(argv):
  del argv
  t = time.time()
  written, kept = write_folder(_OUT_DIR.value, _NUM.value, _SEED.value, _SIZE.value)
  print(f'demo scenes in {_OUT_DIR.value}: {written} written, {kept} already there '
        f'({time.time() - t:.1f}s)')


if __name__ == '__main__':
  app.run(main)
