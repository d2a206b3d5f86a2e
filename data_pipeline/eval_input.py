"""Images and per-pixel class maps of one split, for evaluation (no augmentation).

The frozen-feature dense probe (dense_ssl/evaluate.py) reads a split of a
mask dataset (the record format of data_pipeline/records.py) in a fixed
order: the split's shards in their listed order, records in file order. Each
image is centre-cropped to a square (`crop='center'`, the default; 'none'
keeps the whole image and stretches it), resized to `image_size` (bilinear,
antialiased when shrinking) and ImageNet-normalised like the training views;
its class map `mask/class/...` gets the same crop and a nearest-neighbour
resize, so ids are never blended.

Where a split lives (first match wins), for `split` = e.g. 'val':
  1. DATA_DIR/manifest.json, or any DATA_DIR/*manifest*.json, whose "split"
     is `split`: its shards (sizes checked like the training pipeline);
  2. DATA_DIR/<split>/manifest.json (a split written to its own folder);
  3. shard files DATA_DIR/<split>-NNNNN-of-NNNNN.tfrecord without a manifest.

  for batch in iterate_split(data_dir, 'val', image_size=128, batch_size=32):
    batch['image']  # float32 [b, 128, 128, 3], normalised
    batch['label']  # int32 [b, 128, 128], the class ids
"""

import json
import os
import re

from data_pipeline import records
from data_pipeline import tf_setup

tf = tf_setup.hide_accelerators()

from data_pipeline import augment  # noqa: E402  (after TF is set up)
from data_pipeline import input_pipeline  # noqa: E402

# The per-pixel class map (0 = background / VOID, 1..C = classes): records.py's
# CLASS_MASK ('class'; the literal if an older records.py lacks it).
CLASS_MASK = getattr(records, 'CLASS_MASK', 'class')
CROPS = ('center', 'none')
_SHARD = re.compile(r'^(?P<split>.+)-\d{5}-of-\d{5}\.tfrecord$')
# Commands that write demo data with its class map (the demo and TFDS
# coco/2017_panoptic sources store `class` next to `gt`), and a held-out split
# (demo val scenes start at index 1,000,000: never in train).
CLASS_MAP_COMMAND = 'python -m data_pipeline.precompute_masks --source=demo --out_dir=DIR'
SPLIT_COMMAND = ('python -m data_pipeline.precompute_masks --source=demo '
                 '--split_name={split} --num_examples=500 --out_dir=DIR_{split}')


class EvalDataError(ValueError):
  """The data cannot serve the evaluation; the message says what to run."""


def _read_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _manifests(data_dir):
  """[(path, manifest)] of the manifests directly in data_dir."""
  out = []
  for path in sorted(tf.io.gfile.glob(os.path.join(data_dir, '*manifest*.json'))):
    try:
      m = _read_json(path)
    except (ValueError, tf.errors.OpError):
      continue
    if isinstance(m, dict) and 'shards' in m:
      out.append((path, m))
  return out


def available_splits(data_dir):
  """Split names found in data_dir (manifests, sub-folders, shard names)."""
  names = {m.get('split') for _, m in _manifests(data_dir) if m.get('split')}
  if tf.io.gfile.isdir(data_dir):
    for entry in tf.io.gfile.listdir(data_dir):
      entry = entry.rstrip('/')
      match = _SHARD.match(entry)
      if match:
        names.add(match['split'])
      elif tf.io.gfile.exists(os.path.join(data_dir, entry, 'manifest.json')):
        names.add(entry)
  return sorted(names)


def split_files(data_dir, split):
  """The shard files of `split` in data_dir and its manifest (None if none).

  Raises EvalDataError naming the splits that exist when there is no such
  split, and the precompute's own errors for a partial or damaged dataset.
  """
  if not tf.io.gfile.isdir(data_dir):
    raise EvalDataError(f'--data_dir={data_dir}: no such directory; write a mask '
                        f'dataset with `{CLASS_MAP_COMMAND}`.')
  candidates = [(os.path.dirname(p), m) for p, m in _manifests(data_dir)
                if m.get('split', 'train') == split]
  sub = os.path.join(data_dir, split)
  if not candidates and tf.io.gfile.exists(os.path.join(sub, 'manifest.json')):
    candidates = [(sub, _read_json(os.path.join(sub, 'manifest.json')))]
  if candidates:
    folder, manifest = candidates[0]
    try:
      records.check_format_version(manifest.get('format_version'),
                                   os.path.join(folder, 'manifest.json'))
    except ValueError as e:
      raise EvalDataError(str(e)) from None
    if manifest.get('partial'):
      input_pipeline.read_manifest(folder)  # Raises its "finish it" error.
    files = [p for p, _ in input_pipeline.process_shards(manifest, folder, 0, 1)]
    return files, manifest
  files = sorted(f for f in tf.io.gfile.glob(os.path.join(data_dir, f'{split}-*.tfrecord'))
                 if _SHARD.match(os.path.basename(f)))
  if files:
    return files, None
  found = available_splits(data_dir)
  raise EvalDataError(
      f'split {split!r} not found in {data_dir} (it has: {found or "no splits"}); '
      f'a split written to its own folder is read with --eval_data_dir=FOLDER; '
      f'write a held-out demo split with `{SPLIT_COMMAND.format(split=split)}`.')


def stored_maps(files, manifest):
  """The label-map names the split stores (the manifest's, else the first record's)."""
  if manifest is not None and manifest.get('mask_names') is not None:
    return list(manifest['mask_names'])
  for rec in tf.data.TFRecordDataset(files[:1]).take(1):
    return list(records.parse_example_numpy(rec.numpy())['masks'])
  return []


def check_class_map(data_dir, split, files, manifest, class_map=CLASS_MASK):
  """Raises EvalDataError unless the split stores the per-pixel class map."""
  names = stored_maps(files, manifest)
  if class_map not in names:
    raise EvalDataError(
        f'{data_dir} (split {split!r}) has no per-pixel class map {class_map!r} '
        f'(its records store {names}); the probe needs one: write the data again '
        f'into a new folder with `{CLASS_MAP_COMMAND}` (demo and '
        f'tfds:coco/2017_panoptic store it), or store your class maps as {class_map!r}.')


def preprocess(image, label, image_size, crop='center'):
  """uint8 [H, W, 3], int32 [H, W] -> float32 [S, S, 3] normalised, int32 [S, S].

  crop='center': the largest central square of both; 'none': the whole image
  (stretched). Image: bilinear, antialiased when shrinking; label: nearest.
  """
  if crop not in CROPS:
    raise ValueError(f'crop={crop!r}: choose one of {CROPS}')
  if crop == 'center':
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = tf.minimum(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    image = image[y0:y0 + s, x0:x0 + s]
    label = label[y0:y0 + s, x0:x0 + s]
  size = (image_size, image_size)
  image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, size,
                          method='bilinear', antialias=True)
  image = augment.normalize(tf.clip_by_value(image, 0.0, 1.0))
  label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
  return image, tf.cast(label, tf.int32)


def make_dataset(files, *, image_size, batch_size, crop='center', class_map=CLASS_MASK,
                 max_examples=None):
  """A tf.data.Dataset of dict(image, label, id) batches, in file order."""
  ds = tf.data.TFRecordDataset(files)
  if max_examples is not None:
    ds = ds.take(max_examples)

  def fn(serialized):
    ex = records.parse_record_tf(serialized, [class_map])
    image, label = preprocess(ex['image'], ex['masks'][class_map], image_size, crop)
    return dict(image=image, label=label, id=ex['id'])

  # Deterministic: map keeps the order even when parallel.
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(2)


def iterate_split(data_dir, split, *, image_size, batch_size, crop='center',
                  class_map=CLASS_MASK, max_examples=None):
  """Yields numpy dict(image float32 [b, S, S, 3], label int32 [b, S, S], id).

  Checks first that the split exists and stores `class_map` (EvalDataError).
  The last batch may be smaller than batch_size.
  """
  files, manifest = split_files(data_dir, split)
  check_class_map(data_dir, split, files, manifest, class_map)
  ds = make_dataset(files, image_size=image_size, batch_size=batch_size, crop=crop,
                    class_map=class_map, max_examples=max_examples)
  yield from ds.as_numpy_iterator()


def iterate_image_labels(data_dir, split, *, image_size, batch_size, crop='center',
                         max_examples=None):
  """Yields numpy dict(image float32 [b, S, S, 3], label int32 [b]): the records'
  image-level labels (records.IMAGE_LABEL), the images preprocessed as by
  iterate_split. For kNN on pooled features (dense_ssl/online_eval.py).

  Raises EvalDataError when the split's manifest lists no label_names.
  """
  files, manifest = split_files(data_dir, split)
  if not (manifest or {}).get('label_names'):
    raise EvalDataError(f'{data_dir} (split {split!r}) stores no image labels (its '
                        'manifest has no label_names): kNN needs a labelled source, e.g. '
                        'a TFDS dataset with a label feature or a folder of class folders')
  ds = tf.data.TFRecordDataset(files)
  if max_examples is not None:
    ds = ds.take(max_examples)

  def fn(serialized):
    ex = records.parse_record_tf(serialized, [])
    label = tf.io.parse_single_example(serialized, {
        records.IMAGE_LABEL: tf.io.FixedLenFeature([], tf.int64)})[records.IMAGE_LABEL]
    no_map = tf.zeros(tf.shape(ex['image'])[:2], tf.int32)
    image, _ = preprocess(ex['image'], no_map, image_size, crop)
    return dict(image=image, label=tf.cast(label, tf.int32))

  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  yield from ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def class_names(data_dir, split):
  """Class names from the split's manifest when it lists them, else None.

  Looks for a list under "class_names" (or "classes"), index = class id.
  """
  try:
    _, manifest = split_files(data_dir, split)
  except (EvalDataError, OSError, ValueError):
    return None
  for key in ('class_names', 'classes'):
    names = (manifest or {}).get(key)
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
      return names
  return None
