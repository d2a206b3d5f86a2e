"""Precomputes FH (and GT / user) label maps into sharded TFRecords + manifest.

The offline half of DetCon's masks (Sec. 3.2: Felzenszwalb-Huttenlocher at
one or several scales); `input_pipeline.py` reads what this writes. Record
format: records.py.

  # ImageNet (DetCon: scale = min_size = 1000) from a prepared TFDS dir:
  python -m data_pipeline.precompute_masks --source=tfds:imagenet2012:train \
      --data_dir=$TFDS_DIR --out_dir=$MASKS/imagenet --fh_scales=1000 --fh_min_sizes=1000
  # COCO panoptic with GT label maps, FH at DetCon's COCO scales:
  python -m data_pipeline.precompute_masks --source=tfds:coco/2017_panoptic:train \
      --data_dir=$TFDS_DIR --out_dir=$MASKS/coco \
      --fh_scales=500,1000,1500 --fh_min_sizes=500,1000,1500
  # A folder of images (recursive) with your own label maps:
  python -m data_pipeline.precompute_masks --source=folder:$IMAGES \
      --user_masks=$LABELS --out_dir=$MASKS/mine
  # The synthetic demo scenes (with GT):
  python -m data_pipeline.precompute_masks --source=demo --out_dir=$MASKS/demo

Sources (--source)
------------------
folder:DIR  every *.jpg/.jpeg/.png/.bmp/.webp under DIR (recursive, any case),
  sorted by path; the id is the path relative to DIR. Item j of n goes to
  shard j mod k, so every shard mixes all subfolders (e.g. ImageNet classes)
  and a re-run assigns the same items to the same shards.
tfds:NAME:SPLIT  a TFDS dataset already prepared under --data_dir; this tool
  never downloads. The original encoded bytes are read
  (tfds.decode.SkipDecoding). Shard i holds a contiguous index range of the
  split (TFDS shuffles examples when it prepares a dataset), read by each
  worker itself as `SPLIT[a:b]`, so memory stays bounded. The id is
  image/filename (or file_name, else TFDS's own example id).
demo  the synthetic scenes of data_pipeline/demo_dataset.py (--num_examples,
  --demo_seed, --image_size), contiguous ranges, with GT.

Label maps
----------
FH: `skimage.segmentation.felzenszwalb(image, scale, sigma, min_size)` for
each (--fh_scales[i], --fh_min_sizes[i]) pair, on the full-resolution RGB
uint8 image that the record stores, kept exactly as skimage returns it (ids
0..n-1, never wrapped: records.encode_label_map picks png16 or png_rgb24).
'gt' (--gt, on by default) when the source has instance/segment maps: demo's
scenes; a TFDS feature `panoptic_image` (coco/2017_panoptic: id = R + 256 G +
65536 B, 0 = VOID, relabelled to 0 = unlabelled and 1..N, one per segment in
increasing id order, things and stuff alike); or per-instance binary masks
`objects/segmentation` or `objects/mask` (e.g. lvis), painted largest first
so that small instances stay visible, ids 1..N in dataset order. TFDS's
coco/2017 holds boxes only (no masks): use coco/2017_panoptic for COCO GT.
imagenet2012 has none. 'user' (--user_masks=DIR): DIR/<id without
extension>.png, greyscale/palette/16-bit ids, or RGB read as R*65536 + G*256
+ B (records' png_rgb24 convention); it must match the image's size.

Decoding (PIL), and when the original bytes are kept
----------------------------------------------------
Grey, palette and 1-bit images are expanded to RGB; alpha is dropped (not
composited: tf.io.decode_image(channels=3) drops it the same way); CMYK and
YCbCr are converted by PIL; 16-bit images keep the high byte (>> 8). EXIF
orientation is not applied (nor by the reader). The original bytes are kept
for 8-bit RGB/grey/palette JPEG, PNG, BMP and GIF when TensorFlow decodes them
to the pixels the masks are computed on:
  * PNG/BMP/GIF: tf.io.decode_image's output must equal PIL's, pixel for pixel.
  * JPEG: the reader's tf.io.decode_image uses libjpeg's fast integer IDCT,
    PIL the accurate one; they differ by about one grey level. The masks are
    computed on TensorFlow's decode, i.e. on exactly what training sees (a
    mean difference above 4 from PIL's means an odd file: it is transcoded).
Anything else (WebP, CMYK, 16-bit, alpha, TF decode failure or mismatch) is
stored as a lossless PNG of PIL's RGB decode, image/transcoded = 1. Demo
scenes are arrays: PNG, transcoded = 1, original_format 'raw'.

Bad inputs (empty, truncated or corrupt, not an image, smaller side below
--min_image_size, more than --max_pixels, missing or misaligned user mask)
are skipped, counted and listed in manifest.json with id, path and reason; the
job goes on. A run in which every input failed exits with status 1 (the
manifest, with the failures, is still written); usage errors exit with 2.

On disk, parallelism and resume
-------------------------------
  OUT/params.json                              written first: what determines the output
  OUT/<split>-<i:05d>-of-<k:05d>.tfrecord      one per shard
  OUT/<split>-<i:05d>-of-<k:05d>.tfrecord.json sidecar: counts, failures, mask names
  OUT/manifest.json                            written last, from the sidecars
One task per shard on a pool of --num_workers 'spawn' processes (TensorFlow
and fork do not mix); each imports TensorFlow once. --num_workers=1 runs in
this process. A worker writes `<shard>.tmp-<pid>`, renames it to the shard's
name, then writes the sidecar (also tmp + rename): a shard is complete iff
its sidecar exists. Re-running the same command skips complete shards,
deletes stale temporary files and redoes the rest; re-running with different
parameters (or a changed source folder) into the same --out_dir is refused.
Two runs must not write into one --out_dir at the same time.

Apache Beam (--runner)
----------------------
With --runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner|PortableRunner
the same job runs as a Beam pipeline (data_pipeline/beam_precompute.py; pip
install -r requirements-beam.txt): the same checks, shard tasks, shards and
sidecars, one shard per element, manifest.json written by the pipeline's last
step. The flags above keep their meaning (--num_workers and --progress_every_s
are the local mode's); any other flag is a Beam pipeline option, e.g.
  --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import importlib.metadata
import io
import json
import math
import multiprocessing
import os
import platform
import queue as queue_lib
import re
import sys
import time
import warnings

from absl import flags
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from data_pipeline import records

# A private flag set: the module can be imported next to other tools' flags
# (tests, benchmarks) and main() can be called more than once in a process.
FLAGS = flags.FlagValues()

flags.DEFINE_string('source', None, 'folder:DIR | tfds:NAME:SPLIT | demo.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, 'TFDS data dir holding the prepared dataset'
                    ' (tfds sources; never downloaded).', flag_values=FLAGS)
flags.DEFINE_string('out_dir', None, 'Output folder (created; resumable).', flag_values=FLAGS)
flags.DEFINE_list('fh_scales', ['1000'], 'FH scales, paired with --fh_min_sizes.',
                  flag_values=FLAGS)
flags.DEFINE_list('fh_min_sizes', ['1000'], 'FH min_size per scale (same length).',
                  flag_values=FLAGS)
flags.DEFINE_float('fh_sigma', 0.8, 'FH Gaussian pre-smoothing sigma.', flag_values=FLAGS)
flags.DEFINE_integer('num_workers', None, 'Worker processes (default: the CPUs this'
                     ' process may use); 1 runs in this process.', flag_values=FLAGS)
flags.DEFINE_integer('examples_per_shard', 1024, 'Inputs per shard (about).',
                     flag_values=FLAGS)
flags.DEFINE_integer('num_shards', None, 'Number of shards; overrides'
                     ' --examples_per_shard.', flag_values=FLAGS)
flags.DEFINE_string('user_masks', None, 'Folder of PNG label maps, same relative'
                    ' path stem as the images; stored as map "user".', flag_values=FLAGS)
flags.DEFINE_bool('gt', True, 'Store GT instance maps when the source has them.',
                  flag_values=FLAGS)
flags.DEFINE_float('max_pixels', 50e6, 'Larger images are failures.', flag_values=FLAGS)
flags.DEFINE_integer('min_image_size', 32, 'Images whose smaller side is below this'
                     ' are failures (too small for a crop).', flag_values=FLAGS)
flags.DEFINE_string('split_name', 'train', 'Split name in the shard file names and'
                    ' the manifest.', flag_values=FLAGS)
flags.DEFINE_integer('num_examples', None, 'demo: number of scenes (default:'
                     ' demo_dataset.DEFAULT_NUM_EXAMPLES).', flag_values=FLAGS)
flags.DEFINE_integer('demo_seed', 0, 'demo: scene seed.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', 128, 'demo: scene size in pixels.', flag_values=FLAGS)
flags.DEFINE_integer('limit', None, 'Use only the first N inputs (smoke runs).',
                     flag_values=FLAGS)
flags.DEFINE_float('progress_every_s', 5.0, 'Seconds between progress lines.',
                   flag_values=FLAGS)
flags.DEFINE_string('runner', None, 'Run as an Apache Beam pipeline on this runner'
                    ' (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner,'
                    ' PortableRunner); the flags this tool does not know are passed'
                    ' to Beam as pipeline options. Default: local worker processes.'
                    ' See data_pipeline/beam_precompute.py.', flag_values=FLAGS)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# PIL format -> record format, for files whose bytes may be kept.
_KEEPABLE = {'JPEG': 'jpeg', 'MPO': 'jpeg', 'PNG': 'png', 'BMP': 'bmp', 'GIF': 'gif'}
_JPEG_MAX_MEAN_DIFF = 4.0
_PNG_LEVEL = 6
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La', 'RGBX')
_16BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class PrecomputeError(Exception):
  """The command cannot run as given; the message says what to change."""


class ImageFailure(Exception):
  """One input cannot be stored; the message is its reason in the manifest."""


# ------------------------------------------------------------------ decoding ---

@dataclasses.dataclass
class Decoded:
  """An input ready to be stored: `rgb` is what the masks are computed on."""
  rgb: np.ndarray          # uint8 [H, W, 3]
  encoded: bytes           # image/encoded
  image_format: str        # image/format
  original_format: str
  transcoded: bool


def check_size(height, width, max_pixels, min_image_size):
  """Raises ImageFailure for images too large to process or too small to crop."""
  if height * width > max_pixels:
    raise ImageFailure(f'too large: {width}x{height} = {height * width:,} pixels >'
                       f' --max_pixels={int(max_pixels):,}')
  if min(height, width) < min_image_size:
    raise ImageFailure(f'too small for a crop: {width}x{height}, smaller side'
                       f' {min(height, width)} < --min_image_size={min_image_size}')


def rgb_from_pil(img):
  """PIL image (loaded) -> uint8 [H, W, 3] following the module docstring's rules."""
  mode = img.mode
  if mode == 'RGB':
    rgb = np.asarray(img)
  elif mode in _16BIT_MODES:
    # 'I' is how PIL may hold 16-bit greys; anything wider is clipped first.
    grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
  elif mode in _ALPHA_MODES:
    rgb = np.asarray(img.convert('RGBA'))[..., :3]
  elif mode in ('L', 'P', '1', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # Palette-with-transparency chatter.
      rgb = np.asarray(img.convert('RGB'))
  else:
    raise ImageFailure(f'unsupported pixel mode {mode!r}')
  return np.ascontiguousarray(rgb, dtype=np.uint8)


def _bit_depth(data, pil_format):
  # PIL reports 16-bit RGB PNGs as mode 'RGB'; the IHDR chunk says 16.
  if pil_format == 'PNG' and data[12:16] == b'IHDR':
    return data[24]
  return 8


def _tf_decode(data):
  """The reader's decode (input_pipeline: tf.io.decode_image), or None if it fails."""
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  try:
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  except (tf.errors.OpError, ValueError):
    return None


def png_bytes(rgb):
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='PNG', compress_level=_PNG_LEVEL)
  return buf.getvalue()


def decode_image(data, *, max_pixels, min_image_size):
  """Encoded bytes -> Decoded, or raises ImageFailure (see the module docstring)."""
  if not data:
    raise ImageFailure('empty file (0 bytes)')
  try:
    img = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise ImageFailure('not an image: PIL cannot identify the file format') from None
  except Image.DecompressionBombError as e:
    raise ImageFailure(f'too large: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'cannot open image: {type(e).__name__}: {e}') from None
  fmt = img.format or 'unknown'
  width, height = img.size
  check_size(height, width, max_pixels, min_image_size)  # Before decoding pixels.
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      img.load()
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'corrupt or truncated {fmt} file: {type(e).__name__}: {e}') from None
  mode = img.mode
  rgb = rgb_from_pil(img)
  original_format = _KEEPABLE.get(fmt, fmt.lower())
  if (fmt in _KEEPABLE and mode in ('RGB', 'L', 'P', '1')
      and _bit_depth(data, fmt) <= 8):
    tf_rgb = _tf_decode(data)
    if tf_rgb is not None and tf_rgb.shape == rgb.shape:
      if original_format == 'jpeg':
        diff = np.abs(tf_rgb.astype(np.int16) - rgb.astype(np.int16)).mean()
        if diff <= _JPEG_MAX_MEAN_DIFF:
          return Decoded(tf_rgb, data, 'jpeg', 'jpeg', False)
      elif np.array_equal(tf_rgb, rgb):
        return Decoded(rgb, data, original_format, original_format, False)
  return Decoded(rgb, png_bytes(rgb), 'png', original_format, True)


def decoded_from_pixels(rgb, *, max_pixels, min_image_size):
  """An in-memory uint8 [H, W, 3] image (demo scenes) -> Decoded (PNG)."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ImageFailure(f'expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}')
  check_size(rgb.shape[0], rgb.shape[1], max_pixels, min_image_size)
  rgb = np.ascontiguousarray(rgb)
  return Decoded(rgb, png_bytes(rgb), 'png', 'raw', True)


# ---------------------------------------------------------------- label maps ---

def fh_label_maps(rgb, fh, sigma):
  """{name: felzenszwalb labels} for each (scale, min_size, name) in `fh`."""
  import skimage.segmentation
  return {name: skimage.segmentation.felzenszwalb(rgb, scale=scale, sigma=sigma,
                                                  min_size=min_size)
          for scale, min_size, name in fh}


def label_map_from_pil(img):
  """A PIL label-map image -> int [H, W] ids, or raises ValueError for its mode."""
  mode = img.mode
  if mode in ('L', 'P', '1') or mode in _16BIT_MODES:
    return np.asarray(img).astype(np.int64)
  if mode == 'RGB':
    a = np.asarray(img).astype(np.int64)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
  raise ValueError(f'pixel mode {mode!r}; use a greyscale, palette, 16-bit or RGB'
                   ' PNG of integer ids')


def read_user_mask(path, height, width):
  """Loads a user label map and checks that it is aligned with the image."""
  if not os.path.isfile(path):
    raise ImageFailure(f'no user mask {path}')
  try:
    with Image.open(path) as img:
      img.load()
      labels = label_map_from_pil(img)
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'user mask {path} cannot be read: {e}') from None
  if labels.shape != (height, width):
    raise ImageFailure(f'user mask {path} is {labels.shape[1]}x{labels.shape[0]} but'
                       f' the image is {width}x{height}')
  if labels.size and labels.min() < 0:
    raise ImageFailure(f'user mask {path} has negative ids')
  return labels


def panoptic_to_instances(png):
  """COCO panoptic PNG bytes -> int32 [H, W]: 0 = VOID, 1..N one per segment."""
  with Image.open(io.BytesIO(png)) as img:
    rgb = np.asarray(img.convert('RGB')).astype(np.int64)
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  uniq, inverse = np.unique(ids, return_inverse=True)
  labels = inverse.reshape(ids.shape) + (0 if uniq[0] == 0 else 1)
  return labels.astype(np.int32)


def paint_instances(masks):
  """Binary instance masks [N][H, W] -> int32 [H, W], 0 = none, i + 1 = masks[i].

  Painted largest first, so that a small instance on top of a large one stays.
  """
  masks = [np.asarray(m).reshape(np.shape(m)[:2]) > 0 for m in masks]
  if not masks:
    return None
  labels = np.zeros(masks[0].shape, np.int32)
  for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
    labels[masks[i]] = i + 1
  return labels


def _png_masks_to_instances(pngs):
  masks = []
  for png in pngs:
    with Image.open(io.BytesIO(png)) as img:
      masks.append(np.asarray(img.convert('L')))
  return paint_instances(masks)


# ------------------------------------------------------------------- sources ---

@dataclasses.dataclass
class Item:
  """One input as a worker sees it: `load()` returns bytes or an RGB array."""
  id: str
  path: str
  load: object
  gt: object = None  # None, or a callable returning int [H, W].


@dataclasses.dataclass(frozen=True)
class Source:
  """What the main process learned about --source (picklable; sent to workers)."""
  kind: str                    # folder | tfds | demo
  description: str
  num_items: int
  has_gt: bool
  root: str = ''               # folder
  builder_dir: str = ''        # tfds: the prepared, versioned dataset folder
  tfds_name: str = ''
  tfds_split: str = ''
  gt_kind: str = ''            # tfds: '' | panoptic | objects/<key>
  demo_seed: int = 0
  image_size: int = 0
  fingerprint: str = ''


def list_folder(root):
  """Sorted relative paths (with '/') of the images under `root`."""
  out = []
  for d, dirs, files in os.walk(root):
    dirs.sort()
    for f in files:
      if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
        out.append(os.path.relpath(os.path.join(d, f), root).replace(os.sep, '/'))
  return sorted(out)


def open_source(spec, *, data_dir=None, num_examples=None, demo_seed=0,
                image_size=128, limit=None):
  """Parses --source and enumerates it. Returns (Source, folder ids or None)."""
  kind, _, rest = (spec or '').partition(':')
  ids = None
  if kind == 'folder':
    root = os.path.abspath(rest)
    if not rest or not os.path.isdir(root):
      raise PrecomputeError(f'--source=folder:{rest}: {root!r} is not a directory')
    ids = list_folder(root)
    if limit:
      ids = ids[:limit]
    if not ids:
      raise PrecomputeError(f'--source=folder:{rest}: no images found (extensions'
                            f' {", ".join(IMAGE_EXTENSIONS)}, any case, recursive)')
    digest = hashlib.sha256('\n'.join(ids).encode('utf-8', 'surrogateescape'))
    src = Source('folder', f'folder:{root}', len(ids), False, root=root,
                 fingerprint=digest.hexdigest())
  elif kind == 'tfds':
    src = _open_tfds(rest, data_dir, limit)
  elif kind == 'demo' and not rest:
    from data_pipeline import demo_dataset  # Lazy: only the demo needs it.
    n = demo_dataset.DEFAULT_NUM_EXAMPLES if num_examples is None else num_examples
    n = min(n, limit) if limit else n
    if n <= 0:
      raise PrecomputeError(f'--num_examples={n}: the demo needs at least one scene')
    src = Source('demo', f'demo(seed={demo_seed}, size={image_size})', n, True,
                 demo_seed=demo_seed, image_size=image_size)
  else:
    raise PrecomputeError(f'--source={spec!r}: use folder:DIR, tfds:NAME:SPLIT'
                          ' (e.g. tfds:imagenet2012:train, tfds:coco/2017_panoptic:train)'
                          ' or demo')
  return src, ids


def _tfds_gt_kind(features):
  if 'panoptic_image' in features.keys():
    return 'panoptic'
  if 'objects' in features.keys():
    inner = getattr(features['objects'], 'feature', None)
    for key in ('segmentation', 'mask'):
      try:
        if type(inner[key]).__name__ == 'Image':
          return f'objects/{key}'
      except (KeyError, TypeError):
        pass
  return ''


def _open_tfds(rest, data_dir, limit):
  name, _, split = rest.rpartition(':')
  if not name or not split:
    raise PrecomputeError(f'--source=tfds:{rest}: use tfds:NAME:SPLIT, e.g.'
                          ' tfds:imagenet2012:train or tfds:coco/2017_panoptic:train')
  if not data_dir:
    raise PrecomputeError(f'--source=tfds:{rest} needs --data_dir: the folder holding'
                          ' the prepared TFDS dataset (this tool never downloads)')
  from data_pipeline import tf_setup
  tf_setup.hide_accelerators()
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PrecomputeError(f'--source=tfds:{rest}: TFDS has no dataset {name!r}'
                          f' ({first})') from None
  if not builder.is_prepared():
    raise PrecomputeError(
        f'TFDS dataset {name!r} is not prepared under --data_dir={data_dir} (looked for'
        f' {builder.data_dir}). This tool never downloads: prepare it first, e.g.'
        f' `tfds build {name} --data_dir={data_dir}` (ImageNet: put the archives in'
        f' {os.path.join(data_dir, "downloads", "manual")} first).')
  splits = builder.info.splits
  if split not in splits:
    raise PrecomputeError(f'--source=tfds:{rest}: split {split!r} not in {name}; it'
                          f' has {sorted(splits.keys())}')
  features = builder.info.features
  if 'image' not in features.keys():
    raise PrecomputeError(f'TFDS dataset {name} has no "image" feature (it has'
                          f' {sorted(features.keys())})')
  n = splits[split].num_examples
  n = min(n, limit) if limit else n
  if n <= 0:
    raise PrecomputeError(f'--source=tfds:{rest}: split {split!r} is empty')
  gt_kind = _tfds_gt_kind(features)
  builder_dir = os.fspath(builder.data_dir)
  return Source('tfds', f'tfds:{name}:{split} ({builder_dir})', n, bool(gt_kind),
                builder_dir=builder_dir, tfds_name=name, tfds_split=split,
                gt_kind=gt_kind,
                fingerprint=f'{name}:{builder.info.version}:{split}:{n}')


def shard_positions(source, num_shards, index):
  """The item positions of shard `index` (module docstring: folder interleaves)."""
  n = source.num_items
  if source.kind == 'folder':
    return range(index, n, num_shards)
  return range(index * n // num_shards, (index + 1) * n // num_shards)


def iterate_items(source, positions, folder_ids=None):
  """Yields the Items of one shard (runs in the worker)."""
  if source.kind == 'folder':
    for rel in folder_ids:
      path = os.path.join(source.root, rel)
      yield Item(rel, path, lambda path=path: _read_file(path))
  elif source.kind == 'demo':
    if not positions:
      return
    from data_pipeline import demo_dataset
    scenes = demo_dataset.iterate_scenes(len(positions), seed=source.demo_seed,
                                         size=source.image_size, start=positions.start)
    for pos, (image_id, image, gt) in zip(positions, scenes):
      yield Item(str(image_id), f'demo[{pos}]', lambda image=image: image,
                 gt=lambda gt=gt: np.asarray(gt))
  else:
    yield from _iterate_tfds(source, positions)


def _read_file(path):
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise ImageFailure(f'cannot read file: {e}') from None


def _text(v):
  return v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)


def _iterate_tfds(source, positions):
  if not positions:
    return
  from data_pipeline import tf_setup
  tf_setup.hide_accelerators()
  import tensorflow_datasets as tfds
  # Read-only from the prepared files: workers need no dataset code.
  builder = tfds.builder_from_directory(source.builder_dir)
  skip = tfds.decode.SkipDecoding()
  decoders = {'image': skip}
  if source.gt_kind == 'panoptic':
    decoders['panoptic_image'] = skip
  elif source.gt_kind.startswith('objects/'):
    decoders['objects'] = {source.gt_kind.split('/', 1)[1]: skip}
  ds = builder.as_dataset(
      split=f'{source.tfds_split}[{positions.start}:{positions.stop}]',
      decoders=decoders, shuffle_files=False,
      read_config=tfds.ReadConfig(add_tfds_id=True))
  for pos, ex in zip(positions, tfds.as_numpy(ds)):
    image_id = next((_text(ex[k]) for k in ('image/filename', 'file_name', 'filename')
                     if k in ex), _text(ex['tfds_id']))
    gt = None
    if source.gt_kind == 'panoptic':
      gt = lambda png=ex['panoptic_image']: panoptic_to_instances(png)
    elif source.gt_kind.startswith('objects/'):
      pngs = list(ex['objects'][source.gt_kind.split('/', 1)[1]])
      gt = lambda pngs=pngs: _png_masks_to_instances(pngs)
    yield Item(image_id, f'tfds:{source.tfds_name}:{source.tfds_split}[{pos}]',
               lambda data=ex['image']: data, gt=gt)


# ----------------------------------------------------------------- one shard ---

@dataclasses.dataclass(frozen=True)
class ShardTask:
  """Everything a worker needs to write one shard."""
  index: int
  file: str
  out_dir: str
  source: Source
  num_shards: int
  folder_ids: tuple
  fh: tuple                     # ((scale, min_size, name), ...)
  fh_sigma: float
  gt: bool
  user_masks: str
  max_pixels: float
  min_image_size: int
  mask_names: tuple


def make_record(item, task):
  """One Item -> (serialized record, Decoded); raises ImageFailure."""
  data = item.load()
  kw = dict(max_pixels=task.max_pixels, min_image_size=task.min_image_size)
  if isinstance(data, np.ndarray):
    dec = decoded_from_pixels(data, **kw)
  else:
    dec = decode_image(data, **kw)
  height, width = dec.rgb.shape[:2]
  # The cheap maps first: a missing one fails the input before FH runs.
  extra = {}
  if task.gt and item.gt is not None:
    try:
      gt = item.gt()
    except Exception as e:  # pylint: disable=broad-except
      raise ImageFailure(f'GT map cannot be read: {type(e).__name__}: {e}') from None
    if gt is None or np.shape(gt) != (height, width):
      raise ImageFailure(f'GT map has shape {None if gt is None else np.shape(gt)}'
                         f' but the image is {(height, width)}')
    extra[records.GT_MASK] = np.asarray(gt)
  if task.user_masks:
    path = os.path.join(task.user_masks, os.path.splitext(item.id)[0] + '.png')
    extra[records.USER_MASK] = read_user_mask(path, height, width)
  label_maps = fh_label_maps(dec.rgb, task.fh, task.fh_sigma)
  label_maps.update(extra)
  try:
    rec = records.make_example(
        encoded=dec.encoded, image_format=dec.image_format,
        original_format=dec.original_format, transcoded=dec.transcoded,
        height=height, width=width, image_id=item.id, label_maps=label_maps)
  except ValueError as e:  # Ids that cannot be stored losslessly.
    raise ImageFailure(str(e)) from None
  return rec, dec


def versions():
  """Library versions that determine the output."""
  out = {'python': platform.python_version()}
  for key, dist in (('skimage', 'scikit-image'), ('numpy', 'numpy'), ('PIL', 'pillow'),
                    ('tensorflow', 'tensorflow-cpu'), ('tensorflow', 'tensorflow'),
                    ('tensorflow_datasets', 'tensorflow-datasets')):
    if key not in out:
      try:
        out[key] = importlib.metadata.version(dist)
      except importlib.metadata.PackageNotFoundError:
        pass
  return out


def _write_json_atomic(path, obj):
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def process_shard(task, report):
  """Writes one shard and its sidecar; `report(ok)` is called once per input.

  Returns the sidecar dict.
  """
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  t0 = time.perf_counter()
  # PIL's own decompression-bomb limit must not undercut --max_pixels.
  if Image.MAX_IMAGE_PIXELS is not None:
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, int(task.max_pixels))
  final = os.path.join(task.out_dir, task.file)
  tmp = f'{final}.tmp-{os.getpid()}'
  positions = shard_positions(task.source, task.num_shards, task.index)
  failures, formats = [], collections.Counter()
  num, transcoded = 0, 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for item in iterate_items(task.source, positions, task.folder_ids):
      try:
        rec, dec = make_record(item, task)
      except ImageFailure as e:
        failures.append({'id': item.id, 'path': item.path, 'reason': str(e)})
        report(False)
        continue
      except Exception as e:  # pylint: disable=broad-except
        # One bad input must not stop the job; it is listed like the others.
        failures.append({'id': item.id, 'path': item.path,
                         'reason': f'unexpected error: {type(e).__name__}: {e}'})
        report(False)
        continue
      # Protobuf writes map entries (the features) in a per-process order;
      # the deterministic form makes shards byte-identical across runs.
      writer.write(tf.train.Example.FromString(rec).SerializeToString(deterministic=True))
      num += 1
      transcoded += dec.transcoded
      formats[dec.original_format] += 1
      report(True)
  os.replace(tmp, final)
  sidecar = {
      'file': task.file, 'shard_index': task.index, 'num_examples': num,
      'num_failures': len(failures), 'failures': failures,
      'mask_names': list(task.mask_names), 'num_transcoded': transcoded,
      'original_formats': dict(sorted(formats.items())),
      'seconds': round(time.perf_counter() - t0, 3), 'versions': versions(),
  }
  _write_json_atomic(final + '.json', sidecar)  # Marks the shard complete.
  return sidecar


# Worker-process state (spawned pool).
_PROGRESS_QUEUE = None


def _init_worker(progress_queue):
  global _PROGRESS_QUEUE
  _PROGRESS_QUEUE = progress_queue
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()  # Once per worker, not per shard.
  try:
    # Parallelism is across processes; TF's own thread pools would compete.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:
    pass


def _run_task_in_worker(task):
  return process_shard(task, lambda ok: _PROGRESS_QUEUE.put(ok))


# -------------------------------------------------------------------- driver ---

@dataclasses.dataclass
class Params:
  """The command's parameters (one field per flag)."""
  source: str
  out_dir: str
  data_dir: str = None
  fh_scales: tuple = ('1000',)
  fh_min_sizes: tuple = ('1000',)
  fh_sigma: float = 0.8
  num_workers: int = None
  examples_per_shard: int = 1024
  num_shards: int = None
  user_masks: str = None
  gt: bool = True
  max_pixels: float = 50e6
  min_image_size: int = 32
  split_name: str = 'train'
  num_examples: int = None
  demo_seed: int = 0
  image_size: int = 128
  limit: int = None
  progress_every_s: float = 5.0


def params_from_flags():
  return Params(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Params)})


def _number(text, flag, cast):
  try:
    v = float(text)
    if cast is int and not v.is_integer():
      raise ValueError
    return int(v) if cast is int or v.is_integer() else v
  except ValueError:
    kind = 'an integer' if cast is int else 'a number'
    raise PrecomputeError(f'--{flag}: {text!r} is not {kind}') from None


def parse_fh(params):
  """((scale, min_size, name), ...) from the paired --fh_scales / --fh_min_sizes."""
  scales = [s for s in params.fh_scales or () if str(s).strip()]
  sizes = [s for s in params.fh_min_sizes or () if str(s).strip()]
  if len(scales) != len(sizes):
    raise PrecomputeError(
        f'--fh_scales has {len(scales)} values ({",".join(map(str, scales))}) but'
        f' --fh_min_sizes has {len(sizes)} ({",".join(map(str, sizes))}); give one'
        ' min_size per scale, e.g. --fh_scales=500,1000 --fh_min_sizes=500,1000')
  out = []
  for s, m in zip(scales, sizes):
    scale, min_size = _number(s, 'fh_scales', float), _number(m, 'fh_min_sizes', int)
    if scale <= 0 or min_size < 0 or params.fh_sigma < 0:
      raise PrecomputeError(f'FH needs scale > 0, min_size >= 0, sigma >= 0; got'
                            f' scale={scale}, min_size={min_size},'
                            f' sigma={params.fh_sigma}')
    out.append((scale, min_size, records.fh_mask_name(scale, min_size, params.fh_sigma)))
  names = [n for _, _, n in out]
  if len(set(names)) != len(names):
    raise PrecomputeError(f'--fh_scales/--fh_min_sizes repeat a pair: {names}')
  return tuple(out)


def _default_workers():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _shard_name(split, i, k):
  return f'{split}-{i:05d}-of-{k:05d}.tfrecord'


def _check_out_dir(out_dir, run_params):
  """Creates out_dir with params.json, or checks that a re-run matches it."""
  path = os.path.join(out_dir, 'params.json')
  if os.path.isfile(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != run_params:
      diff = [f'{k}: {stored.get(k)!r} there, {run_params.get(k)!r} now'
              for k in sorted(set(stored) | set(run_params))
              if stored.get(k) != run_params.get(k)]
      raise PrecomputeError(
          f'--out_dir={out_dir} holds a run with different parameters ('
          + '; '.join(diff) + '). Re-run with the same parameters to resume it, or'
          ' use a new --out_dir (or delete this one) to start over.')
    return True
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise PrecomputeError(f'--out_dir={out_dir} is not empty and has no params.json'
                          ' from precompute_masks; use an empty or new folder')
  os.makedirs(out_dir, exist_ok=True)
  _write_json_atomic(path, run_params)
  return False


def _remove_stale(out_dir, split):
  pattern = re.compile(rf'^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.tfrecord'
                       r'(\.json)?\.tmp-\d+$')
  stale = [f for f in os.listdir(out_dir) if pattern.match(f)]
  for f in stale:
    os.remove(os.path.join(out_dir, f))
  return len(stale)


def _read_sidecar(out_dir, file):
  """The sidecar of a complete shard, else None."""
  path = os.path.join(out_dir, file)
  try:
    with open(path + '.json') as f:
      sidecar = json.load(f)
  except (OSError, ValueError):
    return None
  return sidecar if os.path.isfile(path) else None


def _duration(s):
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


class Progress:
  """Counts inputs done and prints count, rate and ETA every few seconds."""

  def __init__(self, total, every_s, log):
    self.total, self.every_s, self.log = total, every_s, log
    self.done = self.failed = 0
    self.start = time.perf_counter()
    self.first = None      # Seconds until the first input finished (start-up cost).
    self.last_print = self.start

  def add(self, ok):
    self.done += 1
    self.failed += not ok
    if self.first is None:
      self.first = time.perf_counter() - self.start

  def maybe_print(self, force=False):
    now = time.perf_counter()
    if not force and now - self.last_print < self.every_s:
      return
    self.last_print = now
    elapsed = now - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    pct = 100. * self.done / max(self.total, 1)
    self.log(f'  {self.done}/{self.total} inputs ({pct:.1f}%), {rate:.2f} images/s,'
             f' ETA {_duration(eta)}, {self.failed} failed')


def _run_tasks(tasks, num_workers, progress):
  """Runs the shard tasks in this process or a spawn pool; returns their sidecars."""
  if num_workers <= 1:
    out = []
    for task in tasks:
      def report(ok):
        progress.add(ok)
        progress.maybe_print()
      out.append(process_shard(task, report))
    return out
  ctx = multiprocessing.get_context('spawn')
  q = ctx.Queue()

  def drain():
    while True:
      try:
        progress.add(q.get_nowait())
      except queue_lib.Empty:
        return

  out = []
  with concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as pool:
    pending = {pool.submit(_run_task_in_worker, t): t for t in tasks}
    while pending:
      done, _ = concurrent.futures.wait(pending, timeout=0.25,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      drain()
      progress.maybe_print()
      for fut in done:
        task = pending.pop(fut)
        try:
          out.append(fut.result())
        except Exception as e:  # pylint: disable=broad-except
          for f in pending:
            f.cancel()
          raise PrecomputeError(
              f'shard {task.file} failed: {type(e).__name__}: {e}. Completed shards'
              ' are kept: re-run the same command to resume.') from e
    time.sleep(0.05)  # Let the queue's feeder threads flush the last reports.
    drain()
  return out


@dataclasses.dataclass
class Plan:
  """What a run will do, decided before any shard is computed (local and Beam)."""
  params: Params
  source: Source
  fh_entries: list
  mask_names: tuple
  num_shards: int
  out_dir: str
  tasks: list             # ShardTasks of the shards still to compute
  done: dict              # shard index -> sidecar, shards complete before this run
  resumed: bool
  stale: int              # stale temporary files removed
  todo: int               # inputs in `tasks`


def plan_job(params, log=print, out_dir=None):
  """Checks the parameters and --out_dir (params.json), lists the shard tasks.

  `out_dir` (default: --out_dir, made absolute) is where params.json and the
  sidecars are checked and where the tasks write.
  """
  if not params.source:
    raise PrecomputeError('--source is required: folder:DIR, tfds:NAME:SPLIT or demo')
  if not params.out_dir:
    raise PrecomputeError('--out_dir is required')
  fh = parse_fh(params)
  source, folder_ids = open_source(
      params.source, data_dir=params.data_dir, num_examples=params.num_examples,
      demo_seed=params.demo_seed, image_size=params.image_size, limit=params.limit)
  gt = bool(params.gt and source.has_gt)
  if params.gt and not source.has_gt and source.kind == 'tfds':
    log(f'note: {source.kind} source {params.source} has no GT maps; storing none')
  user_masks = os.path.abspath(params.user_masks) if params.user_masks else ''
  if user_masks and not os.path.isdir(user_masks):
    raise PrecomputeError(f'--user_masks={params.user_masks} is not a directory')
  mask_names = tuple([n for _, _, n in fh] + [records.GT_MASK] * gt
                     + [records.USER_MASK] * bool(user_masks))
  if not mask_names:
    raise PrecomputeError('nothing to store: no FH scales (--fh_scales), no GT in'
                          ' this source and no --user_masks')
  n = source.num_items
  if params.num_shards:
    k = params.num_shards
  elif params.examples_per_shard and params.examples_per_shard > 0:
    k = math.ceil(n / params.examples_per_shard)
  else:
    raise PrecomputeError('give --examples_per_shard > 0 or --num_shards > 0')
  if k <= 0:
    raise PrecomputeError(f'--num_shards={k}: must be > 0')
  fh_entries = [{'scale': s, 'min_size': m, 'sigma': params.fh_sigma, 'name': name}
                for s, m, name in fh]
  # Everything that determines the output; a re-run must match it to resume.
  run_params = json.loads(json.dumps({
      'format_version': records.FORMAT_VERSION, 'source': source.description,
      'split_name': params.split_name, 'fh': fh_entries, 'gt': gt,
      'user_masks': user_masks, 'max_pixels': int(params.max_pixels),
      'min_image_size': params.min_image_size, 'num_items': n, 'num_shards': k,
      'items_fingerprint': source.fingerprint,
  }))
  out_dir = os.path.abspath(params.out_dir if out_dir is None else out_dir)
  resumed = _check_out_dir(out_dir, run_params)
  stale = _remove_stale(out_dir, params.split_name)
  tasks, done = [], {}
  for i in range(k):
    file = _shard_name(params.split_name, i, k)
    sidecar = _read_sidecar(out_dir, file)
    if sidecar is not None:
      done[i] = sidecar
      continue
    ids = tuple(folder_ids[i::k]) if folder_ids is not None else ()
    tasks.append(ShardTask(
        index=i, file=file, out_dir=out_dir, source=source, num_shards=k,
        folder_ids=ids, fh=fh, fh_sigma=params.fh_sigma, gt=gt, user_masks=user_masks,
        max_pixels=params.max_pixels, min_image_size=params.min_image_size,
        mask_names=mask_names))
  todo = sum(len(shard_positions(source, k, t.index)) for t in tasks)
  log(f'precompute_masks: {source.description}: {n} inputs -> {k} shards in {out_dir};'
      f' maps {", ".join(mask_names)}')
  if resumed:
    log(f'resuming: {len(done)} of {k} shards already complete (skipped),'
        f' {len(tasks)} to compute; removed {stale} stale temporary files')
  return Plan(params=params, source=source, fh_entries=fh_entries,
              mask_names=mask_names, num_shards=k, out_dir=out_dir, tasks=tasks,
              done=done, resumed=resumed, stale=stale, todo=todo)


def build_manifest(plan, sidecars, *, parameters, timing, runner='local'):
  """manifest.json's content from the sidecars ({shard index: sidecar}, all shards)."""
  shards = [sidecars[i] for i in range(plan.num_shards)]
  failures = [f for s in shards for f in s['failures']]
  return {
      'format_version': records.FORMAT_VERSION,
      'split': plan.params.split_name,
      'source': plan.source.description,
      'runner': runner,
      'parameters': parameters,
      'num_examples': sum(s['num_examples'] for s in shards),
      'mask_names': list(plan.mask_names),
      'fh': plan.fh_entries,
      'shards': [{'file': s['file'], 'num_examples': s['num_examples'],
                  'num_failures': s['num_failures']} for s in shards],
      'failures': failures,
      'num_failures': len(failures),
      'num_transcoded': sum(s['num_transcoded'] for s in shards),
      'original_formats': dict(sum((collections.Counter(s['original_formats'])
                                    for s in shards), collections.Counter())),
      'versions': versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'timing': timing,
  }


def manifest_summary(manifest, out_dir, elapsed):
  """The last log line of a run."""
  return (f'wrote {manifest["num_examples"]} examples in {len(manifest["shards"])} shards'
          f' ({manifest["num_failures"]} failures, {manifest["num_transcoded"]}'
          f' transcoded) in {_duration(elapsed)}; manifest:'
          f' {os.path.join(out_dir, "manifest.json")}')


def precompute(params, log=print):
  """Runs the whole job (see the module docstring); returns the manifest dict."""
  t0 = time.perf_counter()
  plan = plan_job(params, log)
  tasks = plan.tasks
  workers = max(1, min(params.num_workers or _default_workers(), len(tasks)))
  if tasks:
    log(f'computing {len(tasks)} shards ({plan.todo} inputs) with {workers} worker'
        f'{"s" if workers > 1 else ""}')
  progress = Progress(plan.todo, params.progress_every_s, log)
  sidecars = dict(plan.done)
  for sidecar in _run_tasks(tasks, workers, progress):
    sidecars[sidecar['shard_index']] = sidecar
  if tasks:
    progress.maybe_print(force=True)
  elapsed = time.perf_counter() - t0
  manifest = build_manifest(
      plan, sidecars,
      parameters={**dataclasses.asdict(params), 'num_workers': workers},
      timing={
          'elapsed_s': round(elapsed, 3),
          'inputs_this_run': progress.done,
          'shards_this_run': len(tasks),
          'startup_s': None if progress.first is None else round(progress.first, 3),
          'shard_seconds': round(sum(s['seconds'] for s in sidecars.values()), 3),
          'num_workers': workers,
      })
  _write_json_atomic(os.path.join(plan.out_dir, 'manifest.json'), manifest)
  log(manifest_summary(manifest, plan.out_dir, elapsed))
  return manifest


def main(argv=None):
  """The command line; returns the exit status (0 ok, 1 all inputs failed, 2 usage)."""
  argv = list(sys.argv if argv is None else argv)
  if any(a in ('-h', '--help', '-help', '--helpfull') for a in argv[1:]):
    print(__doc__)
    print(FLAGS.get_help())
    return 0
  FLAGS.unparse_flags()
  try:
    # With --runner, the flags this tool does not know are Beam pipeline options.
    rest = FLAGS(argv, known_only=True)
    if not FLAGS.runner:
      FLAGS.unparse_flags()
      rest = FLAGS(argv)
  except flags.Error as e:
    print(f'precompute_masks: error: {e}', file=sys.stderr)
    return 2
  if not FLAGS.runner and len(rest) > 1:
    print(f'precompute_masks: error: unexpected arguments {rest[1:]}', file=sys.stderr)
    return 2
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Inherited by the workers.
  log = lambda s: print(s, flush=True)
  try:
    if FLAGS.runner:
      from data_pipeline import beam_precompute  # Lazy: apache_beam is optional.
      try:
        manifest = beam_precompute.run(params_from_flags(), FLAGS.runner, rest[1:],
                                       log=log)
      except beam_precompute.pm.PrecomputeError as e:  # Another class if run as __main__.
        raise PrecomputeError(str(e)) from None
    else:
      manifest = precompute(params_from_flags(), log=log)
  except PrecomputeError as e:
    print(f'precompute_masks: error: {e}', file=sys.stderr)
    return 2
  if manifest['num_examples'] == 0:
    reasons = collections.Counter(f['reason'].split(':')[0] for f in manifest['failures'])
    out_dir = FLAGS.out_dir if '://' in FLAGS.out_dir else os.path.abspath(FLAGS.out_dir)
    print(f'precompute_masks: error: every one of the {manifest["num_failures"]} inputs'
          f' failed ({dict(reasons.most_common(5))}); the reasons are listed in'
          f' {os.path.join(out_dir, "manifest.json")}',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
