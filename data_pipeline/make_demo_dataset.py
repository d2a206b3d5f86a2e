r"""Writes the demo scenes as a plain folder of images and GT label maps.

  python -m data_pipeline.make_demo_dataset --out_dir=out/demo/folder \
      [--num_examples=2000 --seed=0 --image_size=128 --format=png --first_index=0]

Layout: OUT/images/demo_000000.png (RGB; .jpg with --format=jpeg),
OUT/gt/demo_000000.png (16-bit PNG label map, 0 = background, 1..N objects)
and OUT/class/demo_000000.png (16-bit PNG class map: 0 background, then
demo_dataset.CLASS_NAMES: 1 ellipse, 2 rectangle, 3 triangle, 4 polygon,
5 star). The number is the scene index: --first_index=1000000 writes the
held-out scenes that precompute_masks --source=demo --split_name=val reads.
The mask precompute reads the scenes directly with --source=demo; this folder
is for other tools, and for exercising the folder path:
--source=folder:OUT/images --user_masks=OUT/gt.
Existing files are kept, so re-running completes an interrupted run.
"""

import os
import sys
import time

from absl import flags
import numpy as np
from PIL import Image

from data_pipeline import cli
from data_pipeline import demo_dataset

# A private flag set: other tools define --num_examples, --seed, --image_size
# on the global one, and main() can be called more than once (tests).
PROG = 'data_pipeline.make_demo_dataset'
FLAGS = flags.FlagValues()
flags.DEFINE_string('out_dir', None, 'Output folder (created).', flag_values=FLAGS)
flags.DEFINE_integer('num_examples', demo_dataset.DEFAULT_NUM_EXAMPLES,
                     'Number of scenes.', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Scene seed.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', demo_dataset.DEFAULT_SIZE, 'Scene side in pixels.',
                     flag_values=FLAGS)
flags.DEFINE_integer('first_index', 0, 'Index of the first scene (held-out scenes:'
                     ' demo_dataset.SPLIT_FIRST_INDEX, e.g. 1000000 for val).',
                     flag_values=FLAGS)
flags.DEFINE_enum('format', 'png', ['png', 'jpeg'], 'Image file format (the GT maps'
                  ' are always 16-bit PNG; jpeg is lossy).', flag_values=FLAGS)

_EXTENSIONS = {'png': '.png', 'jpeg': '.jpg'}


def _save_atomic(path, array, fmt, **kwargs):
  # Write then rename: an interrupted run never leaves a truncated file that
  # the skip-existing check would keep.
  tmp = path + '.tmp'
  Image.fromarray(array).save(tmp, format=fmt, **kwargs)
  os.replace(tmp, path)


def write_folder(out_dir, num_examples, seed=0, size=demo_dataset.DEFAULT_SIZE,
                 image_format='png', first_index=0):
  """Writes scenes first_index .. first_index + num_examples - 1 not there yet.

  Args:
    out_dir: folder; gets images/ and gt/ subfolders.
    num_examples: number of scenes.
    seed: scene seed (demo_dataset.generate_scene).
    size: image side.
    image_format: 'png' or 'jpeg'.
    first_index: the first scene's index.

  Returns:
    (written, kept): scenes written now, scenes already there.
  """
  ext = _EXTENSIONS[image_format]
  for sub in ('images', 'gt', 'class'):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  written = kept = 0
  for i in range(first_index, first_index + num_examples):
    stem = f'demo_{i:06d}'
    image_path = os.path.join(out_dir, 'images', stem + ext)
    gt_path = os.path.join(out_dir, 'gt', stem + '.png')
    class_path = os.path.join(out_dir, 'class', stem + '.png')
    if all(os.path.exists(p) for p in (image_path, gt_path, class_path)):
      kept += 1
      continue
    image, gt, cls = demo_dataset.generate_labelled_scene(i, seed, size)
    kwargs = {'quality': 95} if image_format == 'jpeg' else {}
    _save_atomic(image_path, image, image_format.upper(), **kwargs)
    _save_atomic(gt_path, gt.astype(np.uint16), 'PNG')  # <= 8 ids; 16-bit by contract.
    _save_atomic(class_path, cls.astype(np.uint16), 'PNG')
    written += 1
  return written, kept


def main(argv=None):
  """The command line; returns the exit status (0 ok, 1 values refused, 2 flag errors)."""
  rest, status = cli.parse(FLAGS, argv, PROG, __doc__)
  if rest is None:
    return status
  problem = None
  if len(rest) > 1:
    problem = f'unexpected arguments {rest[1:]}'
  elif not FLAGS.out_dir:
    problem = '--out_dir is required'
  if problem:
    cli.error(PROG, cli.usage_message(problem))
    return cli.USAGE
  if FLAGS.first_index < 0:
    cli.error(PROG, f'--first_index={FLAGS.first_index} must be >= 0')
    return cli.FAILURE
  start = time.time()
  written, kept = write_folder(FLAGS.out_dir, FLAGS.num_examples, FLAGS.seed,
                               FLAGS.image_size, FLAGS.format, FLAGS.first_index)
  print(f'demo scenes (seed {FLAGS.seed}, {FLAGS.image_size}px) in {FLAGS.out_dir}:'
        f' {written} written, {kept} already there, in {time.time() - start:.1f}s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
