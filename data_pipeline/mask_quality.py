r"""Mask quality of a mask dataset: DetCon's Average Best Overlap (ABO) per mask set.

  python -m data_pipeline.mask_quality --data_dir=$MASKS/demo \
      [--grids=1,2,5] [--split=train] [--limit=N] [--out=FILE.json]

For every mask set of a dataset written by data_pipeline.precompute_masks that
holds GT instances (map `gt`), measures how well the masks cover the objects,
as DetCon's Fig. 7 does (Sec. 4.3): each stored FH map, `user`, the n x n
grids the training pipeline makes on the fly (data.mask='grid',
data.grid_size=n; one row per n in --grids; 1 x 1 = SimCLR's single global
mask) and `gt` itself (1.0 by definition: the oracle's point). Definitions:
data_pipeline/masks/quality.py. In short, `abo` is the mean over all GT
instances (ids > 0) of the dataset of each instance's best IoU with any mask
of its image (every instance weighs the same); `abo_per_image` is the mean
over images of each image's mean (every image weighs the same); images
without GT instances are skipped by both and counted; `masks_per_image` is
the mean number of masks (distinct ids) per image.

Prints a table and writes JSON (default DATA_DIR/mask_quality.json):
  data_dir, split, gt_map, num_images, num_images_with_instances,
  num_images_without_instances, num_instances, grids, limit, definition,
  rows: [{name, kind: grid|fh|user|gt, abo, abo_per_image, masks_per_image,
          (grid_size | fh scale, min_size, sigma)}],
  seconds, images_per_s.
The stored maps' numbers equal manifest.json's "abo" (the precompute measures
them per shard; here the shards are summed in the same order).

Exit status: 0 ok, 2 usage errors (no manifest, no GT stored, wrong split).
"""

import json
import os
import sys
import time

from absl import flags

from data_pipeline import cli
from data_pipeline import input_pipeline
from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline import tf_setup
from data_pipeline.masks import quality

PROG = 'data_pipeline.mask_quality'
FLAGS = flags.FlagValues()
flags.DEFINE_string('data_dir', None, 'Mask dataset folder (manifest.json + shards).',
                    flag_values=FLAGS)
flags.DEFINE_list('grids', ['1', '2', '5'], 'n of the n x n grid mask sets to measure'
                  ' (empty: none).', flag_values=FLAGS)
flags.DEFINE_string('split', None, 'Split to read (default: the manifest\'s; a'
                    ' folder holds one split).', flag_values=FLAGS)
flags.DEFINE_integer('limit', None, 'Only the first N records (in shard order).',
                     flag_values=FLAGS)
flags.DEFINE_string('out', None, 'JSON output (default DATA_DIR/mask_quality.json).',
                    flag_values=FLAGS)

DEFINITION = ('abo: mean over all GT instances (ids > 0) of the dataset of the best'
              ' IoU with any mask (distinct id) of the image; abo_per_image: mean'
              ' over images of the per-image mean; images without GT instances are'
              ' skipped (counted); masks_per_image: mean distinct ids per image'
              ' (data_pipeline/masks/quality.py)')


class UsageError(Exception):
  pass


def read_manifest(data_dir):
  """input_pipeline's reader; a partial dataset is measured on its complete shards."""
  try:
    return input_pipeline.read_manifest(data_dir, key='--data_dir', allow_partial=True)
  except (ValueError, OSError) as e:
    raise UsageError(str(e)) from None


def mask_sets(manifest, grids):
  """[(name, kind, extra fields)] to measure, each kind's `quality_rows`: the kinds
  made on the fly (grids), the stored maps in record order (FH, user), GT last."""
  names = list(manifest.get('mask_names', []))
  made, stored, reference = [], [], []
  for kind in mask_kinds.REGISTRY.values():
    rows = [(name, kind.name, extra) for name, extra in kind.quality_rows(manifest, grids)]
    if getattr(kind, 'is_reference', False):
      reference += rows
    elif kind.stored:
      stored += rows
    else:
      made += rows
  stored.sort(key=lambda row: names.index(row[0]))
  return made + stored + reference


def label_maps(serialized, names):
  """{name: int32 [H, W]} of the stored maps `names` of one record."""
  tf = tf_setup.import_tensorflow()
  f = tf.train.Example.FromString(serialized).features.feature
  out = {}
  for n in names:
    enc_key = records.mask_key(n, 'encoded')
    if enc_key not in f:
      image_id = f[records.IMAGE_ID].bytes_list.value[0].decode('utf-8', 'replace')
      raise UsageError(f'record {image_id} has no map {n!r}')
    encoding = f[records.mask_key(n, 'encoding')].bytes_list.value[0].decode()
    out[n] = records.decode_label_map(f[enc_key].bytes_list.value[0], encoding)
  return out


def measure(data_dir, grids=(1, 2, 5), split=None, limit=None):
  """The report dict (see the module docstring) of the dataset in `data_dir`."""
  tf = tf_setup.hide_accelerators()
  manifest = read_manifest(data_dir)
  stored = list(manifest.get('mask_names', []))
  if records.GT_MASK not in stored:
    raise UsageError(f'--data_dir={data_dir} stores no GT map ({stored}): ABO needs'
                     ' GT instances (a demo or coco/2017_panoptic precompute)')
  if split is not None and manifest.get('split') != split:
    raise UsageError(f'--split={split}, but {data_dir} holds split'
                     f' {manifest.get("split")!r} (one split per folder)')
  if manifest.get('partial'):
    print(f'note: {data_dir}/manifest.json is partial: measuring its complete shards',
          file=sys.stderr)
  if any(n < 1 for n in grids):
    raise UsageError(f'--grids={",".join(map(str, grids))}: sizes must be >= 1')
  sets = mask_sets(manifest, grids)
  stored_sets = [name for name, kind, _ in sets if mask_kinds.REGISTRY[kind].stored]
  totals = {name: quality.AboStats() for name, _, _ in sets}
  t0 = time.perf_counter()
  seen = 0
  for shard in manifest.get('shards') or []:
    if limit is not None and seen >= limit:
      break
    # Per shard, then merged in shard order: the precompute's own arithmetic.
    stats = {name: quality.AboStats() for name, _, _ in sets}
    path = os.path.join(data_dir, shard['file'])
    for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
      if limit is not None and seen >= limit:
        break
      maps = label_maps(serialized, stored_sets)
      gt = maps[records.GT_MASK]
      for name, kind, extra in sets:
        masks = mask_kinds.REGISTRY[kind].quality_labels(name, extra, maps, gt.shape)
        stats[name].add_image(gt, masks)
      seen += 1
    for name in totals:
      totals[name].merge(stats[name])
  seconds = time.perf_counter() - t0
  first = totals[records.GT_MASK].summary()
  rows = []
  for name, kind, extra in sets:
    s = totals[name].summary()
    rows.append({'name': name, 'kind': kind, 'abo': s['abo'],
                 'abo_per_image': s['abo_per_image'],
                 'masks_per_image': s['masks_per_image'], **extra})
  return {
      'data_dir': os.path.abspath(data_dir),
      'split': manifest.get('split'),
      'gt_map': records.GT_MASK,
      'num_images': first['num_images'],
      'num_images_with_instances': (first['num_images']
                                    - first['num_images_without_instances']),
      'num_images_without_instances': first['num_images_without_instances'],
      'num_instances': first['num_instances'],
      'grids': list(grids),
      'limit': limit,
      'definition': DEFINITION,
      'rows': rows,
      'seconds': round(seconds, 3),
      'images_per_s': round(seen / seconds, 1) if seconds > 0 else None,
  }


def format_table(report):
  """The report as a text table."""
  def num(v, fmt):
    return 'n/a' if v is None else format(v, fmt)

  lines = [f'{report["data_dir"]} (split {report["split"]}): {report["num_images"]}'
           f' images, {report["num_instances"]} GT instances'
           f' ({report["num_images_without_instances"]} images without instances'
           ' skipped)',
           f'{"mask set":<26} {"kind":<5} {"masks/image":>11} {"ABO":>7}'
           f' {"ABO/image":>9}']
  for r in report['rows']:
    lines.append(f'{r["name"]:<26} {r["kind"]:<5} {num(r["masks_per_image"], ".2f"):>11}'
                 f' {num(r["abo"], ".4f"):>7} {num(r["abo_per_image"], ".4f"):>9}')
  lines.append('ABO: mean over GT instances of the best IoU with any mask;'
               ' ABO/image: mean over images of the per-image mean.')
  lines.append(f'{report["num_images"]} images in {report["seconds"]:.2f}s'
               f' ({report["images_per_s"]} images/s)')
  return '\n'.join(lines)


def main(argv=None):
  """The command line; returns the exit status."""
  rest, status = cli.parse(FLAGS, argv, PROG, __doc__)
  if rest is None:
    return status
  problem = None
  if len(rest) > 1:
    problem = f'unexpected arguments {rest[1:]}'
  elif not FLAGS.data_dir:
    problem = '--data_dir is required'
  try:
    grids = [int(g) for g in FLAGS.grids if g.strip()]
  except ValueError:
    problem = problem or f'--grids={",".join(FLAGS.grids)}: give integers, e.g. --grids=1,2,5'
  if problem:
    cli.error(PROG, cli.usage_message(problem))
    return cli.USAGE
  try:
    report = measure(FLAGS.data_dir, grids, FLAGS.split, FLAGS.limit)
  except UsageError as e:   # The dataset cannot be measured: a user error.
    cli.error(PROG, e)
    return cli.FAILURE
  out = FLAGS.out or os.path.join(FLAGS.data_dir, 'mask_quality.json')
  tmp = f'{out}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, out)
  print(format_table(report))
  print(f'written: {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
