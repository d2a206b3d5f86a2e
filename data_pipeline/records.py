"""The mask-dataset record format: one tf.train.Example per image.

Written by `data_pipeline.precompute_masks`, read by `data_pipeline.input_pipeline`.
This file is the single definition of the format; WORKSPACE.md documents it.

Feature keys (all scalars unless noted):

  image/encoded      bytes   The original file bytes, unchanged, when TensorFlow
                             decodes them to the same RGB pixels the masks were
                             computed on (8-bit JPEG/PNG/BMP/GIF in RGB, grey or
                             palette). Otherwise (WebP, CMYK or 16-bit or RGBA
                             images, ...) a lossless 8-bit RGB PNG of the decode.
  image/format       bytes   Format of `image/encoded`: jpeg | png | bmp | gif.
  image/transcoded   int64   1 when `image/encoded` is a PNG re-encoding, else 0.
  image/original_format bytes  Format of the source file (e.g. webp, jpeg).
  image/height       int64   Full-resolution height (= every label map's height).
  image/width        int64   Full-resolution width.
  image/id           bytes   Stable id: the path relative to the source folder,
                             or the TFDS example id.
  image/label        int64   Optional: the image-level class label, 0..n-1, when
                             the source has one (a TFDS `label` ClassLabel; a
                             folder in class-subfolder layout). The manifest then
                             holds `label_names` (index = label) and `num_labels`;
                             every record of such a dataset has a label.
  mask/names         bytes[] Names of the label maps stored for this image, e.g.
                             fh_s1000_m1000_sig0.8, gt, class, user.
  mask/<name>/encoded bytes  The label map, lossless, in the narrowest PNG that
                             holds its largest id: an 8-bit greyscale PNG for
                             ids < 256 ("png8"; since format version 2: it
                             decodes in about half the time of 16 bits), a
                             16-bit greyscale PNG for ids < 65,536 ("png16"),
                             else an 8-bit RGB PNG holding id = R*65536 +
                             G*256 + B ("png_rgb24"). Ids are never wrapped or
                             clipped.
  mask/<name>/encoding bytes png8 | png16 | png_rgb24
  mask/<name>/num_segments int64  Number of distinct ids in the map.

Label maps have the image's full resolution and are pixel-aligned with the
decoded image. Ids are non-negative; FH maps number segments 0..n-1 as
skimage returns them; GT maps use 0 for background/unlabelled pixels and 1..N
for instances.

The `class` map (CLASS_MASK; stored next to `gt` when the source has
semantic labels) gives each pixel the semantic class of its `gt` instance, on
the same pixels (the same occlusion): 0 = background / unlabelled / VOID,
c >= 1 a class. Every pixel of one `gt` instance has one class; pixels with gt
0 have class 0. Class ids by source:
  demo                 data_pipeline/demo_dataset.CLASS_NAMES: 0 background,
                       1 ellipse, 2 rectangle, 3 triangle, 4 polygon, 5 star
                       (the shape kind; never the random tint or texture).
  tfds coco/2017_panoptic  1 + the segment's `panoptic_objects/label`, the
                       index into TFDS's ClassLabel of the 133 panoptic
                       categories (in the order of the annotation file's
                       "categories": 80 things then 53 stuff; names in
                       features['panoptic_objects']['label'].names), so
                       1..133; 0 = VOID (panoptic id 0, or a segment that
                       panoptic_objects does not list). Crowd segments keep
                       their category.
"""

import io

import numpy as np
from PIL import Image

from data_pipeline import tf_setup

# 2: label maps with ids < 256 are stored as png8 (version 1 wrote png16 for
# them). Readers decode every version up to FORMAT_VERSION.
# The version changes only when a reader of the previous version would fail
# on or misread the new records. A new optional feature that older readers
# simply do not parse (the `class` map, image/label) keeps the version: the
# manifest says whether a dataset has it (mask_names, num_labels), and readers
# treat a dataset without it as not having it.
FORMAT_VERSION = 2



def check_format_version(version, where):
  """Raises ValueError if `version` (a manifest's or params.json's
  format_version; None = 1) is newer than this code reads; `where` names the
  file."""
  version = 1 if version is None else int(version)
  if version > FORMAT_VERSION:
    raise ValueError(
        f'{where} has record format version {version}; this dense_ssl reads up to'
        f' version {FORMAT_VERSION}: update dense_ssl, or rewrite the masks with this'
        ' version\'s data_pipeline.precompute_masks')
  return version


IMAGE_ENCODED = 'image/encoded'
IMAGE_FORMAT = 'image/format'
IMAGE_TRANSCODED = 'image/transcoded'
IMAGE_ORIGINAL_FORMAT = 'image/original_format'
IMAGE_HEIGHT = 'image/height'
IMAGE_WIDTH = 'image/width'
IMAGE_ID = 'image/id'
IMAGE_LABEL = 'image/label'
MASK_NAMES = 'mask/names'

PNG8 = 'png8'
PNG16 = 'png16'
PNG_RGB24 = 'png_rgb24'
GT_MASK = 'gt'
CLASS_MASK = 'class'
USER_MASK = 'user'


def mask_key(name, field):
  """Feature key of one field ('encoded', 'encoding', 'num_segments') of a map."""
  return f'mask/{name}/{field}'


def fh_mask_name(scale, min_size, sigma):
  """Name of an FH label map, e.g. fh_mask_name(1000, 1000, 0.8) = 'fh_s1000_m1000_sig0.8'."""
  return f'fh_s{_num(scale)}_m{_num(min_size)}_sig{_num(sigma)}'


def _num(x):
  x = float(x)
  return str(int(x)) if x.is_integer() else repr(x)


def encode_label_map(labels):
  """Losslessly PNG-encodes an integer label map [H, W].

  Returns (png_bytes, encoding). Raises ValueError for negative ids or ids that
  do not fit in 24 bits, rather than wrapping them.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f'label map must be [H, W], got shape {labels.shape}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'label map must hold integers, got {labels.dtype}')
  lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
  if lo < 0:
    raise ValueError(f'label map has negative id {lo}')
  buf = io.BytesIO()
  if hi < 1 << 8:
    Image.fromarray(labels.astype(np.uint8)).save(buf, format='PNG', compress_level=6)
    return buf.getvalue(), PNG8
  if hi < 1 << 16:
    Image.fromarray(labels.astype(np.uint16)).save(buf, format='PNG', compress_level=6)
    return buf.getvalue(), PNG16
  if hi < 1 << 24:
    v = labels.astype(np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode='RGB').save(buf, format='PNG', compress_level=6)
    return buf.getvalue(), PNG_RGB24
  raise ValueError(f'label map id {hi} does not fit in 24 bits')


def decode_label_map(data, encoding):
  """Inverse of `encode_label_map` (numpy); returns int32 [H, W]."""
  arr = np.asarray(Image.open(io.BytesIO(data)))
  if encoding in (PNG8, PNG16):
    return arr.astype(np.int32)
  if encoding == PNG_RGB24:
    a = arr.astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
  raise ValueError(f'unknown label map encoding {encoding!r}')


def make_example(*, encoded, image_format, original_format, transcoded, height,
                 width, image_id, label_maps, label=None):
  """Serialises one record. `label_maps` maps name -> int array [height, width];
  `label`: the image-level class label (int >= 0), or None: not stored."""
  tf = tf_setup.import_tensorflow()  # Lazy: only writers need TF protos.

  def b(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

  def i(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

  feats = {
      IMAGE_ENCODED: b([encoded]),
      IMAGE_FORMAT: b([image_format.encode()]),
      IMAGE_ORIGINAL_FORMAT: b([original_format.encode()]),
      IMAGE_TRANSCODED: i([int(transcoded)]),
      IMAGE_HEIGHT: i([height]),
      IMAGE_WIDTH: i([width]),
      IMAGE_ID: b([image_id.encode()]),
      MASK_NAMES: b([n.encode() for n in label_maps]),
  }
  if label is not None:
    if int(label) < 0:
      raise ValueError(f'image label {label} of {image_id} is negative')
    feats[IMAGE_LABEL] = i([int(label)])
  for name, labels in label_maps.items():
    if labels.shape != (height, width):
      raise ValueError(f'label map {name!r} of {image_id} has shape {labels.shape},'
                       f' image is {(height, width)}')
    data, encoding = encode_label_map(labels)
    feats[mask_key(name, 'encoded')] = b([data])
    feats[mask_key(name, 'encoding')] = b([encoding.encode()])
    feats[mask_key(name, 'num_segments')] = i([len(np.unique(labels))])
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def parse_example_numpy(serialized):
  """Parses a record into numpy (for tests and tools, not the input pipeline).

  Returns dict(id, height, width, format, transcoded, original_format,
  encoded, label (int, or None when the record has none), masks={name: int32 [H, W]}).
  """
  tf = tf_setup.import_tensorflow()

  ex = tf.train.Example.FromString(serialized)
  f = ex.features.feature
  names = [n.decode() for n in f[MASK_NAMES].bytes_list.value]
  masks = {}
  for n in names:
    enc = f[mask_key(n, 'encoding')].bytes_list.value[0].decode()
    masks[n] = decode_label_map(f[mask_key(n, 'encoded')].bytes_list.value[0], enc)
  return dict(
      id=f[IMAGE_ID].bytes_list.value[0].decode(),
      height=f[IMAGE_HEIGHT].int64_list.value[0],
      width=f[IMAGE_WIDTH].int64_list.value[0],
      format=f[IMAGE_FORMAT].bytes_list.value[0].decode(),
      original_format=f[IMAGE_ORIGINAL_FORMAT].bytes_list.value[0].decode(),
      transcoded=bool(f[IMAGE_TRANSCODED].int64_list.value[0]),
      encoded=f[IMAGE_ENCODED].bytes_list.value[0],
      label=f[IMAGE_LABEL].int64_list.value[0] if IMAGE_LABEL in f else None,
      masks=masks,
  )


def decode_label_map_tf(data, encoding):
  """TF-graph decode of one label map; returns int32 [H, W]."""
  tf = tf_setup.import_tensorflow()

  def png8():
    return tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint8)[..., 0], tf.int32)

  def png16():
    return tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16)[..., 0], tf.int32)

  def rgb24():
    a = tf.cast(tf.io.decode_png(data, channels=3, dtype=tf.uint8), tf.int32)
    return a[..., 0] * 65536 + a[..., 1] * 256 + a[..., 2]

  # An unknown encoding fails loudly instead of decoding as RGB.
  known = tf.debugging.Assert(
      tf.reduce_any(tf.equal(encoding, [PNG8, PNG16, PNG_RGB24])),
      ['unknown label map encoding (written by a newer dense_ssl?):', encoding])
  with tf.control_dependencies([known]):
    return tf.case([(tf.equal(encoding, PNG8), png8), (tf.equal(encoding, PNG16), png16)],
                   default=rgb24, exclusive=False)


def parse_record_tf(serialized, mask_names):
  """TF-graph parse of one record for the input pipeline.

  Args:
    serialized: scalar string tensor.
    mask_names: the stored map names to decode (static list of str).
  Returns:
    dict(image=uint8 [H, W, 3], masks={name: int32 [H, W]}, id=string,
    height=int32, width=int32).
  """
  tf = tf_setup.import_tensorflow()

  spec = {
      IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
      IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
      IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
      IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
  }
  for n in mask_names:
    spec[mask_key(n, 'encoded')] = tf.io.FixedLenFeature([], tf.string)
    spec[mask_key(n, 'encoding')] = tf.io.FixedLenFeature([], tf.string)
  f = tf.io.parse_single_example(serialized, spec)
  h = tf.cast(f[IMAGE_HEIGHT], tf.int32)
  w = tf.cast(f[IMAGE_WIDTH], tf.int32)
  image = tf.io.decode_image(f[IMAGE_ENCODED], channels=3, expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  masks = {}
  for n in mask_names:
    m = decode_label_map_tf(f[mask_key(n, 'encoded')], f[mask_key(n, 'encoding')])
    masks[n] = tf.reshape(m, [h, w])
  return dict(image=tf.reshape(image, [h, w, 3]), masks=masks, id=f[IMAGE_ID],
              height=h, width=w)
