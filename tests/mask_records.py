"""Writes tiny mask datasets in the real on-disk format (tests only).

The format is the one data_pipeline/precompute_masks.py writes (WORKSPACE.md
"Mask datasets"; records.py): `<split>-<i:05d>-of-<n:05d>.tfrecord` shards of
records.make_example records plus manifest.json.
"""

import io
import json
import os

import numpy as np
from PIL import Image

from data_pipeline import demo_dataset
from data_pipeline import records
from data_pipeline import tf_setup


def encode_image(image, fmt='png', quality=95):
  """uint8 [H, W, 3] -> encoded bytes (png is lossless, for exact tests)."""
  buf = io.BytesIO()
  if fmt == 'png':
    Image.fromarray(image).save(buf, format='PNG')
  else:
    Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def write_mask_dataset(out_dir, examples, *, num_shards, split='train',
                       fh=(), image_format='png', write_manifest=True,
                       label_names=None, class_names=None):
  """Writes `examples` round-robin into `num_shards` shards + manifest.json.

  Args:
    out_dir: folder to create.
    examples: list of dict(id=str, image=uint8 [H, W, 3], masks={name: int [H, W]},
      optional label=int: the image label).
    fh: [(scale, min_size, sigma)] FH maps the examples store (for the manifest).
    label_names: the image labels' names (manifest label_names, num_labels).
    class_names: the names of the `class` map's ids (manifest class_names).
  Returns:
    the manifest dict.
  """
  tf = tf_setup.hide_accelerators()
  os.makedirs(out_dir, exist_ok=True)
  per_shard = [examples[i::num_shards] for i in range(num_shards)]
  shards = []
  for i, exs in enumerate(per_shard):
    name = f'{split}-{i:05d}-of-{num_shards:05d}.tfrecord'
    with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as w:
      for ex in exs:
        h, w_ = ex['image'].shape[:2]
        w.write(records.make_example(
            encoded=encode_image(ex['image'], image_format),
            image_format='png' if image_format == 'png' else 'jpeg',
            original_format='png' if image_format == 'png' else 'jpeg',
            transcoded=False, height=h, width=w_, image_id=ex['id'],
            label_maps=ex['masks'], label=ex.get('label')))
    shards.append({'file': name, 'num_examples': len(exs)})
  mask_names = list(examples[0]['masks']) if examples else []
  manifest = {
      'format_version': records.FORMAT_VERSION, 'split': split,
      'source': 'tests', 'num_examples': len(examples), 'mask_names': mask_names,
      'fh': [{'scale': s, 'min_size': m, 'sigma': g,
              'name': records.fh_mask_name(s, m, g)} for s, m, g in fh],
      'shards': shards, 'failures': [], 'num_failures': 0,
  }
  if label_names is not None:
    manifest.update(label_names=list(label_names), num_labels=len(label_names))
  if class_names is not None:
    manifest['class_names'] = list(class_names)
  if write_manifest:
    with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
      json.dump(manifest, f, indent=1)
  return manifest


def write_blocky_dataset(out_dir, *, num_examples, size, num_shards, seed=0, labelled=False,
                         split='train'):
  """Tiny images whose GT map is a 4 x 4 grid of ids 0..3 (trainer tests).

  The image brightness follows the ids, so the masks mean something; `size`
  must be a multiple of 4. For the online probes (labelled=True), the ids
  are also the `class` map (4 brightness classes) and the most frequent id
  the image label.
  """
  r = np.random.default_rng(seed)
  examples = []
  for i in range(num_examples):
    cell = size // 4
    gt = np.repeat(np.repeat(r.integers(0, 4, (4, 4)), cell, 0), cell, 1)
    image = (r.integers(0, 256, (size, size, 3)) // 2 + 60 * gt[..., None])
    ex = dict(id=f'ex{i}', image=image.astype(np.uint8), masks={'gt': gt.astype(np.int32)})
    if labelled:
      ex['masks']['class'] = gt.astype(np.int32)
      ex['label'] = int(np.bincount(gt.ravel(), minlength=4).argmax())
    examples.append(ex)
  names = BRIGHTNESS if labelled else None
  return write_mask_dataset(out_dir, examples, num_shards=num_shards, label_names=names,
                            class_names=names, split=split)


BRIGHTNESS = ('dark', 'dim', 'bright', 'brightest')   # The blocky dataset's classes.


def demo_class_examples(num_examples, *, size=64, first_index=0, seed=0):
  """Demo scenes with `gt` and the per-pixel class map `class` (probe tests).

  Class ids as data_pipeline/demo_dataset.py defines them: 0 background,
  1 + the object's shape kind (1 ellipse .. 5 star).
  """
  examples = []
  for i in range(first_index, first_index + num_examples):
    image, gt, kinds = demo_dataset.generate_scene_with_classes(i, seed, size)
    lut = np.concatenate([[0], np.asarray(kinds) + 1]).astype(np.int32)
    examples.append(dict(id=demo_dataset.scene_id(i), image=image,
                         masks={'gt': gt.astype(np.int32), 'class': lut[gt]}))
  return examples


def write_demo_class_dataset(out_dir, *, num_examples, size=64, split='train',
                             first_index=0, num_shards=2, seed=0):
  """Writes demo scenes with `gt` and `class` maps as one split of a dataset.

  The manifest's source starts with 'demo' like the precompute's, so tools
  name the demo classes.
  """
  manifest = write_mask_dataset(
      out_dir, demo_class_examples(num_examples, size=size, first_index=first_index,
                                   seed=seed),
      num_shards=num_shards, split=split, write_manifest=False)
  manifest['source'] = f'demo(seed={seed}, size={size})'
  manifest['class_names'] = list(demo_dataset.CLASS_NAMES)
  with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest
