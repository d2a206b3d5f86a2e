r"""Writes demo scenes as a tiny COCO instance-segmentation dataset for Detectron2.

  python -m data_pipeline.export_coco --out_dir=/tmp/d2data \
      [--num_train=16 --num_val=8 --seed=0 --image_size=128 --jpeg_quality=95]

Layout (Detectron2's builtin "coco_2017_train" / "coco_2017_val", so
DETECTRON2_DATASETS=OUT_DIR serves launch/detectron2_eval.sh TASK=coco_1x):

  OUT_DIR/coco/train2017/demo_000000.jpg ...   train scenes 0 .. num_train-1
  OUT_DIR/coco/val2017/demo_1000000.jpg ...    held-out scenes from 1,000,000
  OUT_DIR/coco/annotations/instances_train2017.json, instances_val2017.json

It is a smoke-test dataset (does the recipe run end to end, on CPU, in a
minute), not a benchmark: AP on it means nothing.

Scenes, instances and classes are data_pipeline/demo_dataset.py's: every
visible object of the scene's instance map is one annotation, of its shape
kind. Detectron2's builtin COCO metadata fixes the category names and ids
(loading a json whose category list differs from COCO's 80 classes fails),
so the json lists COCO's 80 thing categories and the five shape kinds borrow
the first five ids:

  demo shape   COCO id and name
  ellipse      1 person
  rectangle    2 bicycle
  triangle     3 car
  polygon      4 motorcycle
  star         5 airplane

(the json's "info" repeats this table). Per annotation: "bbox" [x, y, w, h]
and "area" (the pixel count) of the instance's visible pixels, "iscrowd" 0,
and "segmentation" as polygons in pixel-edge coordinates: the instance's
pixels cut into axis-aligned rectangles (runs of each row, merged down the
rows while they keep the same columns). Their union is exactly the instance
map's pixels, holes included (an object partly or wholly surrounding a
smaller one in front of it has a hole, which one COCO polygon cannot
express); Detectron2's default INPUT.MASK_FORMAT "polygon" reads them. Image
ids are the scene index + 1 (COCO ids start at 1); annotation ids count from
1 within each file. Images are JPEG (lossy; the annotations come from the
exact instance map, not from the JPEG).
"""

import datetime
import json
import os
import sys
import time

from absl import flags
import numpy as np
from PIL import Image

from data_pipeline import cli
from data_pipeline import demo_dataset

# COCO 2017's 80 thing categories: (id, name, supercategory), as in the
# "categories" of instances_*2017.json.
COCO_THING_CATEGORIES = (
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'), (3, 'car', 'vehicle'),
    (4, 'motorcycle', 'vehicle'), (5, 'airplane', 'vehicle'),
    (6, 'bus', 'vehicle'), (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'),
    (9, 'boat', 'vehicle'), (10, 'traffic light', 'outdoor'),
    (11, 'fire hydrant', 'outdoor'), (13, 'stop sign', 'outdoor'),
    (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'),
    (16, 'bird', 'animal'), (17, 'cat', 'animal'), (18, 'dog', 'animal'),
    (19, 'horse', 'animal'), (20, 'sheep', 'animal'), (21, 'cow', 'animal'),
    (22, 'elephant', 'animal'), (23, 'bear', 'animal'), (24, 'zebra', 'animal'),
    (25, 'giraffe', 'animal'), (27, 'backpack', 'accessory'),
    (28, 'umbrella', 'accessory'), (31, 'handbag', 'accessory'),
    (32, 'tie', 'accessory'), (33, 'suitcase', 'accessory'),
    (34, 'frisbee', 'sports'), (35, 'skis', 'sports'),
    (36, 'snowboard', 'sports'), (37, 'sports ball', 'sports'),
    (38, 'kite', 'sports'), (39, 'baseball bat', 'sports'),
    (40, 'baseball glove', 'sports'), (41, 'skateboard', 'sports'),
    (42, 'surfboard', 'sports'), (43, 'tennis racket', 'sports'),
    (44, 'bottle', 'kitchen'), (46, 'wine glass', 'kitchen'),
    (47, 'cup', 'kitchen'), (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'),
    (50, 'spoon', 'kitchen'), (51, 'bowl', 'kitchen'), (52, 'banana', 'food'),
    (53, 'apple', 'food'), (54, 'sandwich', 'food'), (55, 'orange', 'food'),
    (56, 'broccoli', 'food'), (57, 'carrot', 'food'), (58, 'hot dog', 'food'),
    (59, 'pizza', 'food'), (60, 'donut', 'food'), (61, 'cake', 'food'),
    (62, 'chair', 'furniture'), (63, 'couch', 'furniture'),
    (64, 'potted plant', 'furniture'), (65, 'bed', 'furniture'),
    (67, 'dining table', 'furniture'), (70, 'toilet', 'furniture'),
    (72, 'tv', 'electronic'), (73, 'laptop', 'electronic'),
    (74, 'mouse', 'electronic'), (75, 'remote', 'electronic'),
    (76, 'keyboard', 'electronic'), (77, 'cell phone', 'electronic'),
    (78, 'microwave', 'appliance'), (79, 'oven', 'appliance'),
    (80, 'toaster', 'appliance'), (81, 'sink', 'appliance'),
    (82, 'refrigerator', 'appliance'), (84, 'book', 'indoor'),
    (85, 'clock', 'indoor'), (86, 'vase', 'indoor'), (87, 'scissors', 'indoor'),
    (88, 'teddy bear', 'indoor'), (89, 'hair drier', 'indoor'),
    (90, 'toothbrush', 'indoor'))


def category_id(shape_kind):
  """COCO category id of demo_dataset.SHAPES[shape_kind]: 1..5."""
  return int(shape_kind) + 1


SPLITS = ('train2017', 'val2017')
# The demo split each COCO split draws its scenes from.
_DEMO_SPLIT = {'train2017': 'train', 'val2017': 'val'}

PROG = 'data_pipeline.export_coco'
FLAGS = flags.FlagValues()
flags.DEFINE_string('out_dir', None, 'Dataset root (DETECTRON2_DATASETS); gets coco/.',
                    flag_values=FLAGS)
flags.DEFINE_integer('num_train', 16, 'Scenes in train2017 (demo train scenes from 0).',
                     flag_values=FLAGS)
flags.DEFINE_integer('num_val', 8, 'Scenes in val2017 (held-out demo scenes from '
                     '1,000,000).', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Scene seed.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', demo_dataset.DEFAULT_SIZE, 'Scene side in pixels '
                     f'(>= {demo_dataset.MIN_SIZE}).', flag_values=FLAGS)
flags.DEFINE_integer('jpeg_quality', 95, 'JPEG quality of the images.',
                     flag_values=FLAGS)


def mask_rectangles(mask):
  """An exact cover of a boolean mask by disjoint axis-aligned rectangles.

  Each row's runs of True, merged with the run directly above while the
  columns are the same. Returns [(x0, y0, x1, y1)] in pixel-edge coordinates
  (pixel (y, x) is the unit square [x, x + 1] x [y, y + 1]), top to bottom.
  """
  mask = np.asarray(mask, bool)
  done, open_ = [], {}  # open_: (x0, x1) -> y0 of a rectangle reaching this row.
  for y in range(mask.shape[0] + 1):
    runs = set()
    if y < mask.shape[0]:
      padded = np.concatenate([[False], mask[y], [False]]).astype(np.int8)
      edges = np.flatnonzero(np.diff(padded))
      runs = set(zip(edges[0::2].tolist(), edges[1::2].tolist()))
    for key in list(open_):
      if key not in runs:
        done.append((key[0], open_.pop(key), key[1], y))
    for key in runs:
      open_.setdefault(key, y)
  return sorted(done, key=lambda r: (r[1], r[0]))


def rectangle_polygon(rect):
  """(x0, y0, x1, y1) -> COCO polygon [x0, y0, x1, y0, x1, y1, x0, y1]."""
  x0, y0, x1, y1 = rect
  return [x0, y0, x1, y0, x1, y1, x0, y1]


def instance_annotations(gt, classes):
  """COCO annotations (without ids) of every instance of a demo scene.

  Args:
    gt: int [H, W] instance map: 0 background, 1..N objects.
    classes: int [N], object i + 1's shape kind (demo_dataset.SHAPES index).
  Returns:
    [dict(category_id, bbox, area, iscrowd, segmentation)], instance 1..N.
  """
  gt = np.asarray(gt)
  out = []
  for instance in range(1, int(gt.max()) + 1):
    mask = gt == instance
    ys, xs = np.nonzero(mask)
    if not len(ys):  # The demo never has empty ids; refuse rather than skip.
      raise ValueError(f'instance {instance} of the map has no pixels')
    x0, y0 = int(xs.min()), int(ys.min())
    out.append({
        'category_id': category_id(classes[instance - 1]),
        'bbox': [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        'area': int(mask.sum()),
        'iscrowd': 0,
        'segmentation': [rectangle_polygon(r) for r in mask_rectangles(mask)],
    })
  return out


def categories():
  """The json's "categories": COCO's 80 thing classes."""
  return [{'id': i, 'name': n, 'supercategory': s}
          for i, n, s in COCO_THING_CATEGORIES]


def _info(split, seed, size):
  borrowed = ', '.join(
      f'{name} -> {category_id(k)} {COCO_THING_CATEGORIES[k][1]}'
      for k, name in enumerate(demo_dataset.SHAPES))
  return {'description': f'dense_ssl demo scenes as COCO {split} (seed {seed}, '
                         f'{size}px; data_pipeline/export_coco.py). Shape kinds '
                         f'borrow COCO categories: {borrowed}.',
          'version': '1.0', 'year': datetime.date.today().year,
          'date_created': datetime.date.today().isoformat()}


def _write_atomic(path, write):
  tmp = path + '.tmp'
  write(tmp)
  os.replace(tmp, path)


def write_split(out_dir, split, num_scenes, seed=0, size=demo_dataset.DEFAULT_SIZE,
                jpeg_quality=95):
  """Writes OUT/coco/<split>/*.jpg and OUT/coco/annotations/instances_<split>.json.

  Returns (number of images, number of instances).
  """
  image_dir = os.path.join(out_dir, 'coco', split)
  ann_dir = os.path.join(out_dir, 'coco', 'annotations')
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(ann_dir, exist_ok=True)
  first = demo_dataset.SPLIT_FIRST_INDEX[_DEMO_SPLIT[split]]
  images, annotations = [], []
  for index in range(first, first + num_scenes):
    image, gt, classes = demo_dataset.generate_scene_with_classes(index, seed, size)
    file_name = f'demo_{index:06d}.jpg'
    _write_atomic(os.path.join(image_dir, file_name),
                  lambda p, im=image: Image.fromarray(im).save(
                      p, format='JPEG', quality=jpeg_quality))
    image_id = index + 1
    images.append({'id': image_id, 'file_name': file_name,
                   'height': int(gt.shape[0]), 'width': int(gt.shape[1])})
    for ann in instance_annotations(gt, classes):
      annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))
  dataset = {'info': _info(split, seed, size), 'licenses': [], 'images': images,
             'annotations': annotations, 'categories': categories()}

  def dump(path):
    with open(path, 'w') as f:
      json.dump(dataset, f, separators=(',', ':'))
  _write_atomic(os.path.join(ann_dir, f'instances_{split}.json'), dump)
  return len(images), len(annotations)


def main(argv=None):
  """The command line; returns the exit status (0 ok, 1 values refused, 2 flag errors)."""
  rest, status = cli.parse(FLAGS, argv, PROG, __doc__)
  if rest is None:
    return status
  usage = []
  if len(rest) > 1:
    usage.append(f'unexpected arguments {rest[1:]}')
  if not FLAGS.out_dir:
    usage.append('--out_dir is required')
  if usage:
    cli.error(PROG, cli.usage_message('; '.join(usage)))
    return cli.USAGE
  problems = []
  for name in ('num_train', 'num_val'):
    if FLAGS[name].value < 1:
      problems.append(f'--{name}={FLAGS[name].value} must be >= 1')
  if FLAGS.image_size < demo_dataset.MIN_SIZE:
    problems.append(f'--image_size={FLAGS.image_size} must be >= '
                    f'{demo_dataset.MIN_SIZE}')
  if not 1 <= FLAGS.jpeg_quality <= 100:
    problems.append(f'--jpeg_quality={FLAGS.jpeg_quality} must be in 1..100')
  if problems:
    cli.error(PROG, '; '.join(problems))
    return cli.FAILURE
  start = time.time()
  for split, n in (('train2017', FLAGS.num_train), ('val2017', FLAGS.num_val)):
    images, instances = write_split(FLAGS.out_dir, split, n, FLAGS.seed,
                                    FLAGS.image_size, FLAGS.jpeg_quality)
    print(f'{os.path.join(FLAGS.out_dir, "coco", split)}: {images} images, '
          f'{instances} instances -> coco/annotations/instances_{split}.json')
  print(f'done in {time.time() - start:.1f}s; for Detectron2: '
        f'DETECTRON2_DATASETS={FLAGS.out_dir} (TASK=coco_1x)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
