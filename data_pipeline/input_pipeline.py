"""The two-view (or multi-view) pretraining input pipeline (tf.data).

Reads the mask dataset written by `data_pipeline.precompute_masks`
(`<dir>/manifest.json` + `<split>-<i:05d>-of-<n:05d>.tfrecord`, format in
records.py), decodes each record once and makes its views (DetCon, Sec. 3.1:
"we transform each mask ... using the same cropping and resizing as used for
the underlying RGB image"): per view an Inception crop window applied to the
image and its label map, a flip shared by both, bicubic (image) / nearest
(labels) resize, and, with data.color_on='host', BYOL's colour recipe
(augment.py). With data.color_on='device' (every config in configs/) the
host does no colour: views leave it as uint8 and the training step applies
the recipe on the device (dense_ssl/ops/color.py). The image is
decoded once per record (parse_and_decode) and every view crops it; the
labels' nearest resize is a pair of index gathers (exactly tf.image.resize's
nearest, several times cheaper) in the mask's dtype. What remains per
example is mostly the two decodes (the JPEG and the label map's PNG cost
about the same) and the bicubic resizes (benchmarks/pipeline_throughput.py).

Batches (WORKSPACE.md, section 4), leading dims [num_local_devices, per_device_batch]:
  view{k}/image [D, B, S, S, 3]: uint8 (color_on='device') or float32
  ImageNet-normalised (color_on='host'); view{k}/mask [D, B, S, S] in the smallest integer type that holds the
  ids (mask_dtype: uint8, uint16 or int32); view{k}/box float32 [D, B, 4]
  (y0, x0, y1, x1); view{k}/flip int32 [D, B].
With data.mask='discovered' (Odin) the views carry no view{k}/mask, and the
batch also holds whole/image [D, B, S_d, S_d, 3] (S_d:
view_config.discovery_view_size): the whole image resized as a
'color_only' view is (the same pixels), never cropped, flipped or
coloured; uint8, or with color_on='host' float32 ImageNet-normalised. Its
box is (0, 0, 1, 1) by construction and not shipped. The training step
discovers the views' masks from it (dense_ssl/discovery.py).
With probe_targets=True (make_pretrain_dataset), also what the dataset
offers (probe_targets(manifest)): `label` int32 [D, B], the image label, and
for every global view (not the local crops) view{k}/class [D, B, S, S], the
per-pixel class map (0 = background) in id_dtype(num_map_classes) (uint8
for up to 256 classes), cropped, flipped and resized exactly as that view's mask.

Views and masks
---------------
'crop' views: Inception crop (augment.inception_crop_window), flip p=0.5, then
colour. 'color_only' views (LC-loss's I_c): the whole image resized to S x S,
box (0, 0, 1, 1), flip 0, colour only. `shared_flip` (ReSim) draws one flip
for all 'crop' views. ReSim flips the original before cropping; flipping the
window's content after cropping is the same image when the window is mirrored,
and windows are drawn symmetrically, so we keep one convention: `box` is always
in unflipped original coordinates and `flip` means "mirrored after cropping".
Masks: data.mask names a kind (data_pipeline/mask_kinds/): its `choices` are
the stored maps a record's views draw from ('gt', 'user', or 'fh' at
data.fh_scale; with fh_scale=-1 one stored FH map per example, drawn
statelessly and shared by its views), and its `labels_fn` gives the labels
(the stored map, or one made on the fly: 'grid', DetCon's n x n heuristic,
laid over the ORIGINAL image and cropped with the view, as every mask is
"transform[ed] ... using the same cropping and resizing as used for the
underlying RGB image", Sec. 3.1). Ids pass through unchanged (never wrapped).
A kind that ships no view masks ('discovered': `ships_view_masks` False)
reads no map from the records, and one that `ships_whole_view` adds
whole/image (make_whole_view), which draws no random numbers: the views'
streams are the same with or without it.

Determinism and exact resume
----------------------------
Each JAX process reads only its own files, `shards[process_index::process_count]`,
and its stream is an endless sequence of epochs over them. Epoch e
  * reads its files in an order drawn from seed (seed, process, e),
  * shuffles records with a tf.data shuffle buffer seeded from the same seed
    (`data.shuffle_buffer` records of encoded bytes; a buffer smaller than the
    epoch gives a local shuffle, as usual),
  * numbers the shuffled records 0, 1, ... (their position), and
  * augments the record at position p with stateless ops seeded by
    (seed, process, e, p).
So the stream is a pure function of (files, seed, process_index,
process_count); batches are consecutive runs of `global_batch_size /
process_count` elements of it and may straddle epochs (drop-remainder applies
only to the endless stream). Step k consumes elements [k b, (k + 1) b). Resuming
at `start_step=N` computes (epoch, offset) = divmod(N b, epoch size), starts at
that epoch and skips `offset` shuffled records before decoding, never
re-reading earlier epochs. The skipped records are read as bytes (the shuffle
buffer must see them to reproduce the order) but not decoded or augmented.
Shuffle-buffer refills at epoch boundaries cost a short stall.

tf.data's shuffle combines its op seed with TF's global seed; nothing in this
code base sets one (`tf.random.set_seed`), and doing so would change the order
(still deterministically).

Config keys read (config.data; their defaults are configs/common.py
base_config's, and a missing key is an error naming it): dir, split,
image_size, mask and its kind's keys (fh_scale, grid_size,
discovery_view_size), crop_area,
crop_aspect, view_modes, shared_flip, color_on, color_jitter_prob,
brightness, contrast, saturation, hue, grayscale_prob, blur_prob,
blur_sigma, solarize_prob, shuffle_buffer, file_parallel_reads,
num_local_crops, local_crop_size, local_crop_area, local_blur_prob,
local_solarize_prob. Optional by design (view_config.optional): view_sizes
and view_crop_areas (absent: image_size and crop_area for every view),
num_parallel (absent: AUTOTUNE).

Multi-crop: data.num_local_crops = N adds N local views after the global
ones (view{G+1} ... view{G+N}; view_config.view_specs), each an Inception
crop of area local_crop_area resized to local_crop_size, with its own flip
and geometry (box, flip) like any view. They draw from their own stream
(the example's seed folded with _LOCAL_STREAM), so adding local crops
changes no global view.
A third or later global view is a config change too: extend view_modes,
view_sizes, view_crop_areas, blur_prob and solarize_prob.

Damaged datasets: a manifest marked "partial" (an interrupted precompute) is
refused; a shard whose size differs from the manifest's is refused when the
dataset is built; a record that cannot be read while iterating
(make_pretrain_iterator: TF's DataLossError, "truncated record" / "corrupted
record") becomes a DataLossError that names the damaged shard file and the
command that repairs it (the precompute re-run on that folder, with --verify).
"""

import json
import os
import re
import shlex

from data_pipeline import augment
from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline import tf_setup
from data_pipeline import view_config

tf = tf_setup.hide_accelerators()

_read = view_config.read
_LOCAL_STREAM = 0x10CA1  # Folded into an example's seed for its local crops.


# ------------------------------------------------------- manifest and shards ---

def read_manifest(data_dir, *, key='config key data.dir', allow_partial=False):
  """Loads <data_dir>/manifest.json, with errors that say what to run.

  The one reader of a mask dataset's manifest (the trainer, the tools,
  mask_quality); `key` names where data_dir came from in the errors;
  allow_partial: accept the manifest of an interrupted precompute (its
  complete shards are listed). The precompute reads its own output's
  manifest through masks/plan.py (to resume it).
  """
  if not data_dir:
    raise ValueError(f'{key} is empty: set it to a mask dataset'
                     ' directory written by data_pipeline.precompute_masks')
  path = os.path.join(data_dir, 'manifest.json')
  # tf.io.gfile: local paths and gs:// (TPU pods read masks from GCS).
  if not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(f'mask dataset directory {data_dir!r} ({key}) does not'
                            ' exist; write it with'
                            ' `python -m data_pipeline.precompute_masks`')
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{data_dir!r} ({key}) has no manifest.json: it is not a'
                            ' complete mask dataset; (re)run'
                            ' data_pipeline.precompute_masks')
  with tf.io.gfile.GFile(path) as f:
    manifest = json.load(f)
  records.check_format_version(manifest.get('format_version'), path)
  if manifest.get('partial') and not allow_partial:
    missing = manifest.get('missing_shards') or []
    raise ValueError(
        f'{path} is partial: the precompute that writes {data_dir!r} ({key})'
        f' was interrupted ({len(missing)} shards missing, e.g.'
        f' {missing[:1]}); finish it by running the same command again:'
        f' {repair_command(manifest, data_dir, verify=False)}')
  return manifest


def repair_command(manifest, data_dir, verify=True):
  """The precompute command that (re)completes the dataset in `data_dir`."""
  command = manifest.get('command')
  if not command:
    return (f'the data_pipeline.precompute_masks command that wrote it (its flags are'
            f' in {data_dir}/manifest.json "parameters") with --out_dir={data_dir}'
            + (' --verify' if verify else ''))
  parts = [f'--out_dir={data_dir}' if a.startswith('--out_dir=') else a
           for a in shlex.split(command)]
  return shlex.join(parts + ['--verify'] * verify)


def _shard_size(path):
  try:
    return tf.io.gfile.stat(path).length
  except tf.errors.OpError:
    return None


def _damage(path, expected_bytes, expected_records):
  """A short description of what is wrong with the shard at `path`, or None."""
  size = _shard_size(path)
  if expected_bytes is not None and size != expected_bytes:
    return f'{size} bytes, manifest.json says {expected_bytes}: truncated or changed'
  n = 0
  try:
    for _ in tf.data.TFRecordDataset(path):
      n += 1
  except tf.errors.OpError as e:
    what = re.search(r'(truncated|corrupted) record at \d+', e.message or '')
    return what[0] if what else (e.message or type(e).__name__).strip().splitlines()[0]
  if expected_records is not None and n != expected_records:
    return f'{n} records, manifest.json says {expected_records}'
  return None


def damaged_shard_error(data_dir, process_index=0, process_count=1, error=None):
  """A DataLossError naming the damaged shard(s) of this process and the repair.

  Checks the shards' sizes against the manifest, then reads them (only on this
  error path). `error`: the original read error, quoted when no shard is found.
  """
  manifest = read_manifest(data_dir)
  mine = (manifest.get('shards') or [])[process_index::process_count]
  damaged = []
  for s in mine:
    path = os.path.join(data_dir, s['file'])
    what = _damage(path, s.get('num_bytes'), s.get('num_examples'))
    if what:
      damaged.append(f'{path} ({what})')
  fix = repair_command(manifest, data_dir)
  original = ('' if error is None
              else (getattr(error, 'message', None) or str(error)).strip().splitlines()[0])
  if damaged:
    text = (f'mask dataset {data_dir!r} (config key data.dir): damaged shard'
            f'{"s" if len(damaged) > 1 else ""} {", ".join(damaged)}. Repair it by'
            ' re-running the precompute on that folder (it recomputes only damaged'
            f' shards): {fix}')
  else:
    text = (f'mask dataset {data_dir!r} (config key data.dir): a record cannot be read'
            f' ({original}), but every shard of this process reads back whole now;'
            f' check the storage, then re-run the precompute with --verify: {fix}')
  return tf.errors.DataLossError(None, None, text)


def mask_choices(manifest, data_config):
  """Stored map names the configured mask kind draws from ([] when made on the fly).

  One name, or for data.mask='fh' with data.fh_scale=-1 every stored FH map
  (one is picked per example, uniformly); mask_kinds' `choices`.
  """
  return mask_kinds.get(data_config).choices(manifest, data_config)


def process_shards(manifest, data_dir, process_index, process_count):
  """This process's shard files and their record counts: shards[i::n]."""
  shards = manifest.get('shards') or []
  if not shards:
    raise ValueError(f'{data_dir}/manifest.json lists no shards')
  if len(shards) < process_count:
    raise ValueError(f'the mask dataset {data_dir!r} has {len(shards)} shard files'
                     f' but there are {process_count} JAX processes; each process'
                     ' reads its own files, so rewrite it with at least'
                     f' {process_count} shards (precompute_masks --num_shards)')
  mine = shards[process_index::process_count]
  out = []
  for s in mine:
    path = os.path.join(data_dir, s['file'])
    size = _shard_size(path)
    if size is None:
      raise FileNotFoundError(f'shard {path} listed in {data_dir}/manifest.json is'
                              ' missing; rerun precompute_masks')
    if s.get('num_bytes') is not None and size != s['num_bytes']:
      raise tf.errors.DataLossError(
          None, None,
          f'mask dataset {data_dir!r} (config key data.dir): damaged shard {path}'
          f' ({size} bytes, manifest.json says {s["num_bytes"]}: truncated or'
          ' changed). Repair it by re-running the precompute on that folder (it'
          f' recomputes only damaged shards): {repair_command(manifest, data_dir)}')
    n = s.get('num_examples')
    if n is None:  # Older manifests: count the records (bytes only).
      n = int(tf.data.TFRecordDataset(path).reduce(0, lambda c, _: c + 1))
    out.append((path, int(n)))
  if sum(n for _, n in out) == 0:
    raise ValueError(f'process {process_index}/{process_count} has no records in'
                     f' {data_dir!r}')
  return out


# ------------------------------------------------------------------ decoding ---

PROBE_TARGETS = ('label', 'class')


def num_label_classes(manifest):
  """Number of image-label classes the dataset stores (manifest num_labels), else None."""
  n = manifest.get('num_labels')
  return int(n) if n else None


def num_map_classes(manifest):
  """Number of ids of the stored class map, background 0 included, else None.

  The length of the manifest's class_names (index = id). None when no class
  map is stored, or when its manifest has no class_names (a coco/2017_panoptic
  dataset written before they were recorded: re-running its precompute
  command on the folder rewrites manifest.json with them, computing nothing).
  """
  if records.CLASS_MASK not in (manifest.get('mask_names') or ()):
    return None
  return len(manifest['class_names']) if manifest.get('class_names') else None


def probe_targets(manifest):
  """The probe targets the dataset offers, a sub-tuple of ('label', 'class').

  'label' when its records store image labels (num_label_classes), 'class'
  when they store the class map and the manifest names its classes
  (num_map_classes). Datasets written without them offer neither.
  """
  offered = {'label': num_label_classes(manifest), 'class': num_map_classes(manifest)}
  return tuple(t for t in PROBE_TARGETS if offered[t])


# make_pretrain_dataset's keyword `probe_targets` shadows the function there.
_offered_targets = probe_targets


def id_dtype(num_ids):
  """The smallest view dtype for ids 0..num_ids-1: uint8, uint16, else int32.

  The masks' (mask_dtype) and the class maps' (id_dtype(num_map_classes(manifest))).
  """
  if num_ids <= 256:
    return tf.uint8
  return tf.uint16 if num_ids <= 65536 else tf.int32


def parse_probe_targets(serialized, targets):
  """The stored probe targets of a record: dict(label=int32 [], class=int32 [H, W])
  for each name in `targets` (probe_targets(manifest))."""
  spec = {}
  if 'label' in targets:
    spec[records.IMAGE_LABEL] = tf.io.FixedLenFeature([], tf.int64)
  if 'class' in targets:
    for field in ('encoded', 'encoding'):
      spec[records.mask_key(records.CLASS_MASK, field)] = tf.io.FixedLenFeature([], tf.string)
    spec[records.IMAGE_HEIGHT] = tf.io.FixedLenFeature([], tf.int64)
    spec[records.IMAGE_WIDTH] = tf.io.FixedLenFeature([], tf.int64)
  f = tf.io.parse_single_example(serialized, spec)
  out = {}
  if 'label' in targets:
    out['label'] = tf.cast(f[records.IMAGE_LABEL], tf.int32)
  if 'class' in targets:
    m = records.decode_label_map_tf(f[records.mask_key(records.CLASS_MASK, 'encoded')],
                                    f[records.mask_key(records.CLASS_MASK, 'encoding')])
    out['class'] = tf.reshape(m, tf.cast(tf.stack([f[records.IMAGE_HEIGHT],
                                                   f[records.IMAGE_WIDTH]]), tf.int32))
  return out


def parse_and_decode(serialized, mask_names, seed):
  """Decodes the image and ONE label map of a record.

  With several candidate maps (fh_scale=-1) the map is picked uniformly with
  the stateless `seed`; only the picked one is decoded. With none (grid,
  discovered) the returned labels are None.
  Returns (image uint8 [H, W, 3], labels int32 [H, W] or None).

  The image is decoded once and every view crops it. tf.io.decode_and_crop_jpeg
  per view is not used: libjpeg must still entropy-decode every row above
  the window, so two global views cost ~1.8x one full decode (a local crop
  ~0.55x), and its pixels differ from decode-then-crop where chroma is
  upsampled at the window's edge (0.06% of pixels, by up to 18 levels;
  benchmarks/pipeline_throughput.py measures both).
  """
  spec = {
      records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
      records.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
      records.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
  }
  for n in mask_names:
    spec[records.mask_key(n, 'encoded')] = tf.io.FixedLenFeature([], tf.string)
    spec[records.mask_key(n, 'encoding')] = tf.io.FixedLenFeature([], tf.string)
  f = tf.io.parse_single_example(serialized, spec)
  h = tf.cast(f[records.IMAGE_HEIGHT], tf.int32)
  w = tf.cast(f[records.IMAGE_WIDTH], tf.int32)
  image = tf.io.decode_image(f[records.IMAGE_ENCODED], channels=3,
                             expand_animations=False)
  image = tf.reshape(image, tf.stack([h, w, 3]))
  if not mask_names:
    return image, None
  encoded = [f[records.mask_key(n, 'encoded')] for n in mask_names]
  encoding = [f[records.mask_key(n, 'encoding')] for n in mask_names]
  if len(mask_names) == 1:
    labels = records.decode_label_map_tf(encoded[0], encoding[0])
  else:
    i = tf.random.stateless_uniform([], seed, 0, len(mask_names), dtype=tf.int32)
    labels = records.decode_label_map_tf(tf.stack(encoded)[i], tf.stack(encoding)[i])
  return image, tf.reshape(labels, tf.stack([h, w]))


def make_view(image, labels, seed, spec, color, shared_flip=None, mask_dtype=tf.int32,
              class_map=None, class_dtype=tf.uint8):
  """One augmented view of a decoded example.

  Args:
    image: uint8 [H, W, 3]. labels: int32 [H, W], or None: the view ships no
      mask (data.mask='discovered').
    seed: [2] stateless seed of this view.
    spec: view_config.ViewSpec. color: augment.byol_color_augment kwargs, or None: no
      colour on the host (data.color_on='device'; dense_ssl/ops/color.py
      applies the recipe inside the training step).
    shared_flip: bool scalar to use instead of this view's own flip draw.
    mask_dtype: the mask's integer type (the smallest that holds its ids).
    class_map: None, or int32 [H, W], the class map (a probe target); it gets
      the mask's crop, flip and resize (the same call, one loop).
    class_dtype: the class map's type in the view (id_dtype).
  Returns:
    dict(image [S, S, 3] float32 normalised, or uint8 when color is None,
    mask [S, S] mask_dtype (not with labels None), box float32 [4], flip
    int32 [], and with class_map: class [S, S] class_dtype).
  """
  s_crop, s_flip, s_color = augment.split_seed(seed, 3)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  size = spec.size
  if spec.mode == 'crop':
    window = augment.inception_crop_window(s_crop, height, width, spec.crop_area,
                                           spec.crop_aspect)
    if shared_flip is None:
      flip = tf.random.stateless_uniform([], s_flip) < 0.5
    else:
      flip = shared_flip
  else:  # color_only: the whole image, resized (LC-loss's I_c).
    window = (tf.constant(0), tf.constant(0), height, width)
    flip = tf.constant(False)
  img = _resize_window(image, window, size, uint8=color is None)
  # Every label map of the view: the same window and flip (folded into the
  # resize's column indices), nearest.
  maps = {} if labels is None else {'mask': (labels, mask_dtype)}
  if class_map is not None:
    maps['class'] = (class_map, class_dtype)
  out = {key: tf.ensure_shape(augment.crop_and_resize_labels(
      m, window, size, flip if spec.mode == 'crop' else None, dtype), [size, size])
         for key, (m, dtype) in maps.items()}
  if spec.mode == 'crop':
    img = augment.flip_left_right(img, flip)
  img = tf.ensure_shape(img, [size, size, 3])
  if color is not None:
    img = augment.normalize(augment.byol_color_augment(
        img, s_color, blur_prob=spec.blur_prob, solarize_prob=spec.solarize_prob, **color))
  return dict(image=img, **out,
              box=augment.window_to_box(*window, height, width),
              flip=tf.cast(flip, tf.int32))


def _resize_window(image, window, size, uint8):
  """The window of uint8 [H, W, 3] bicubic-resized to [size, size, 3]: uint8
  (shipped as is; the colour runs on the device), else float32 in [0, 1]."""
  if uint8:
    # Ship uint8: a quarter of float32's bytes.
    return augment.crop_and_resize_image_uint8(image, window, size)
  return augment.crop_and_resize_image(image, window, size)


def make_whole_view(image, size, color_on_host):
  """whole/image: the whole image resized to [size, size, 3], for mask discovery.

  Odin's discovery view: no crop, no flip, no colour; the same resize as a
  'color_only' view (the same pixels as one of this size before its colour).
  image: uint8 [H, W, 3]. Returns uint8, or with color_on_host float32
  ImageNet-normalised (the host's views are; this one is not coloured).
  """
  shape = tf.shape(image)
  window = (tf.constant(0), tf.constant(0), shape[0], shape[1])
  img = tf.ensure_shape(_resize_window(image, window, size, uint8=not color_on_host),
                        [size, size, 3])
  return augment.normalize(img) if color_on_host else img


COLOR_ON = view_config.COLOR_ON


def color_on(data_config):
  """Where the colour recipe runs: data.color_on."""
  where = _read(data_config, 'color_on')
  if where not in COLOR_ON:
    raise ValueError(f'config.data.color_on={where!r}: choose one of {COLOR_ON}')
  return where


def mask_dtype(manifest, data_config):
  """The smallest integer type that holds the view masks' ids (uint8 | uint16 | int32).

  The kind's `num_ids`: grids hold n^2 ids; stored maps hold ids up to the
  manifest's `max_label_id` (the largest id of any stored map); a manifest
  without it (written before it existed) gives int32. Ids are never wrapped.
  'discovered' ships no view masks: int32, unused by its batches.
  """
  n = mask_kinds.get(data_config).num_ids(manifest, data_config)
  return tf.int32 if n is None else id_dtype(n)


def shipped_mask_dtype(data_config):
  """(mask dtype, where it came from) of the views, without reading any record.

  The manifest at data.dir decides (mask_dtype) when it can be read; a kind
  made on the fly knows its own (grid: data.grid_size); a kind that ships
  no view masks ('discovered') says so, with int32; else uint16 is
  assumed: FH maps of ImageNet-size images hold more than 255 segments. For
  the tools that build a batch's shapes without the dataset (the compile
  check, the GPU benchmark).
  """
  kind = mask_kinds.get(data_config)
  if not kind.ships_view_masks:
    return tf.int32, f'none shipped (data.mask={kind.name!r})'
  data_dir = _read(data_config, 'dir')
  try:
    return mask_dtype(read_manifest(data_dir), data_config), \
        'the manifest at config.data.dir'
  except Exception:  # pylint: disable=broad-except  # Absent, unreadable, remote.
    if kind.num_ids_without_manifest:
      return mask_dtype({}, data_config), kind.num_ids_without_manifest
    return tf.uint16, 'assumed: no readable manifest at config.data.dir'


def make_views_fn(data_config, mask_names, masks_dtype=tf.int32, targets=(),
                  class_dtype=tf.uint8):
  """Returns fn(example_seed, serialized) -> flat dict of all views.

  `targets`: probe targets to ship too (probe_targets(manifest)): 'label' as
  `label`, 'class' as view{k}/class (class_dtype) of every global view.
  A kind that does not ship view masks gets none (mask_names must be
  empty); one that ships the whole view adds whole/image (make_whole_view).
  """
  specs = view_config.view_specs(data_config)
  host = color_on(data_config) == 'host'
  color = view_config.color_kwargs(data_config) if host else None
  shared = bool(_read(data_config, 'shared_flip'))
  kind = mask_kinds.get(data_config)
  # The stored map, or one the kind makes on the fly (grid: DetCon Sec. 3.2,
  # at full resolution, so that the view's crop transforms it like any mask).
  labels_fn = kind.labels_fn(data_config) if kind.ships_view_masks else None
  whole_size = view_config.discovery_view_size(data_config) if kind.ships_whole_view else None

  num_global = sum(not spec.local for spec in specs)

  def fn(seed, serialized):
    s_mask, s_flip, *s_views = augment.split_seed(seed, 2 + num_global)
    if num_global < len(specs):
      # Local crops draw from their own stream: adding them changes no global view.
      s_views += augment.split_seed(
          tf.random.experimental.stateless_fold_in(seed, _LOCAL_STREAM),
          len(specs) - num_global)
    image, labels = parse_and_decode(serialized, mask_names, s_mask)
    labels = None if labels_fn is None else labels_fn(image, labels)
    stored = parse_probe_targets(serialized, targets) if targets else {}
    flip = tf.random.stateless_uniform([], s_flip) < 0.5 if shared else None
    out = {'label': stored['label']} if 'label' in stored else {}
    for k, (spec, s) in enumerate(zip(specs, s_views)):
      view_flip = None if spec.local else flip   # Local crops flip on their own.
      class_map = None if spec.local else stored.get('class')
      for key, v in make_view(image, labels, s, spec, color, view_flip,
                              masks_dtype, class_map, class_dtype).items():
        out[f'view{k + 1}/{key}'] = v
    if whole_size is not None:
      out['whole/image'] = make_whole_view(image, whole_size, host)
    return out

  return fn


def example_spec(data_config, masks_dtype=tf.uint16, probe_targets=(),
                 class_dtype=tf.uint8):
  """{batch key: (shape, numpy dtype)} of ONE example as the pipeline ships it.

  Traced from the same views function the pipeline maps over its records
  (no data is read): every view incl. local crops, the image dtype of
  data.color_on, the mask in `masks_dtype` (input_pipeline.mask_dtype of the
  dataset; none for a kind that ships no view masks), box and flip, and
  whole/image for a kind that ships it ('discovered'); with `probe_targets`
  (the tuple a probe_targets=True pipeline ships: probe_targets(manifest))
  also `label` and view{k}/class in `class_dtype`
  (id_dtype(num_map_classes(manifest))). The compile
  check (dense_ssl/compile_check.py) builds its abstract batch from it.
  """
  mask_names = ['spec'] if mask_kinds.get(data_config).stored else []
  views_fn = make_views_fn(data_config, mask_names, masks_dtype, tuple(probe_targets),
                           class_dtype)
  seed = tf.constant([0, 0], tf.int64)
  ds = tf.data.Dataset.from_tensors(tf.constant(b'')).map(
      tf.autograph.experimental.do_not_convert(lambda r: views_fn(seed, r)))
  return {k: (tuple(v.shape.as_list()), v.dtype.as_numpy_dtype)
          for k, v in ds.element_spec.items()}


# ------------------------------------------------------------------- dataset ---

def _base_seed(seed, process_index):
  s = tf.constant([seed & 0x7FFFFFFFFFFFFFFF, 0x5EED], tf.int64)
  return tf.random.experimental.stateless_fold_in(s, process_index)


def make_pretrain_dataset(data_config, *, global_batch_size, seed, start_step=0,
                          process_index=0, process_count=1, num_local_devices=1,
                          with_metadata=False, probe_targets=False):
  """The tf.data.Dataset of this process's batches (see module docstring).

  Args:
    data_config: config.data (keys in the module docstring).
    global_batch_size: examples per step over all processes and devices.
    seed: int; the whole stream is a function of it.
    start_step: first step to produce (exact resume).
    process_index, process_count: this JAX process and how many there are.
    num_local_devices: devices of this process (leading batch dim).
    with_metadata: also yield meta/epoch, meta/position (int64 [D, B]) and
      meta/id (string [D, B]) (tests, tools).
    probe_targets: also yield what the dataset offers of `label` (int32
      [D, B]) and view{k}/class ([D, B, S, S], every global view); the tuple
      is input_pipeline.probe_targets(manifest). Off: the batch is unchanged.
  Returns:
    Endless dataset of dicts with leading dims [num_local_devices, B]:
    view{k}/image, mask, box, flip (module docstring); with
    data.mask='discovered' no view{k}/mask, and whole/image [D, B, S_d, S_d, 3]
    (the whole image resized to view_config.discovery_view_size, no crop,
    flip or colour; uint8, or float32 normalised with color_on='host').
  """
  if global_batch_size % (process_count * num_local_devices):
    raise ValueError(f'global batch size {global_batch_size} must be divisible by'
                     f' process_count * num_local_devices = {process_count} *'
                     f' {num_local_devices}; change config.batch_size')
  per_process = global_batch_size // process_count
  per_device = per_process // num_local_devices
  data_dir = _read(data_config, 'dir')
  manifest = read_manifest(data_dir)
  split = _read(data_config, 'split')
  if manifest.get('split', split) != split:
    raise ValueError(f'config key data.split={split!r}, but {data_dir}/manifest.json'
                     f' holds split {manifest["split"]!r}')
  mask_names = mask_choices(manifest, data_config)
  shards = process_shards(manifest, data_dir, process_index, process_count)
  files = tf.constant([p for p, _ in shards])
  epoch_size = sum(n for _, n in shards)
  first_epoch, offset = divmod(start_step * per_process, epoch_size)
  base = _base_seed(seed, process_index)
  buffer = int(_read(data_config, 'shuffle_buffer'))
  reads = min(len(shards), int(_read(data_config, 'file_parallel_reads')))

  def epoch_records(epoch):
    s_files, s_shuffle = augment.split_seed(
        tf.random.experimental.stateless_fold_in(base, epoch), 2)
    order = tf.argsort(tf.random.stateless_uniform([len(shards)], s_files))
    ds = tf.data.TFRecordDataset(tf.gather(files, order), num_parallel_reads=reads)
    shuffle_seed = tf.random.stateless_uniform([], s_shuffle, dtype=tf.int64,
                                               minval=None, maxval=None)
    ds = ds.shuffle(buffer, seed=shuffle_seed)
    ds = ds.enumerate()
    ds = ds.skip(tf.where(epoch == first_epoch, tf.constant(offset, tf.int64), 0))
    return ds.map(lambda pos, rec: dict(epoch=epoch, position=pos, record=rec))

  targets = _offered_targets(manifest) if probe_targets else ()
  views_fn = make_views_fn(data_config, mask_names, mask_dtype(manifest, data_config),
                           targets, id_dtype(num_map_classes(manifest) or 0))

  def process_example(ex):
    s = tf.random.experimental.stateless_fold_in(base, ex['epoch'])
    s = tf.random.experimental.stateless_fold_in(s, ex['position'])
    out = views_fn(s, ex['record'])
    if with_metadata:
      out['meta/epoch'] = ex['epoch']
      out['meta/position'] = ex['position']
      out['meta/id'] = tf.io.parse_single_example(
          ex['record'], {records.IMAGE_ID: tf.io.FixedLenFeature([], tf.string)}
      )[records.IMAGE_ID]
    return out

  def split_devices(batch):
    return {k: tf.reshape(v, tf.concat([[num_local_devices, per_device],
                                        tf.shape(v)[1:]], 0))
            for k, v in batch.items()}

  num_parallel = view_config.optional(data_config, 'num_parallel')  # Tools pin it.
  if num_parallel is None:
    num_parallel = tf.data.AUTOTUNE
  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.map(process_example, num_parallel_calls=num_parallel, deterministic=True)
  ds = ds.batch(per_process, drop_remainder=True)
  ds = ds.map(split_devices)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  opts = tf.data.Options()
  opts.deterministic = True
  # One thread per op: the parallelism is across examples (as big_vision).
  opts.threading.max_intra_op_parallelism = 1
  return ds.with_options(opts)


def make_pretrain_iterator(data_config, *, global_batch_size, seed, start_step,
                           process_index, process_count, num_local_devices,
                           probe_targets=False):
  """Python iterator of numpy batch dicts (WORKSPACE.md, section 4), starting at `start_step`.

  A shard that cannot be read while iterating raises a DataLossError naming the
  shard file and the command that repairs it (damaged_shard_error).
  """
  ds = make_pretrain_dataset(data_config, global_batch_size=global_batch_size,
                             seed=seed, start_step=start_step,
                             process_index=process_index,
                             process_count=process_count,
                             num_local_devices=num_local_devices,
                             probe_targets=probe_targets)
  return _naming_damaged_shards(ds.as_numpy_iterator(), _read(data_config, 'dir'),
                                process_index, process_count)


def _naming_damaged_shards(iterator, data_dir, process_index, process_count):
  try:
    yield from iterator
  except GeneratorExit:
    # An iterator closed unfinished (also at interpreter exit, when the module's
    # globals may already be gone: the clause below would then fail on `tf`).
    raise
  except tf.errors.DataLossError as e:
    raise damaged_shard_error(data_dir, process_index, process_count, e) from e
