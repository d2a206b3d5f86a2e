"""Input-pipeline throughput: the host pipeline against a plain tf.data two-view baseline.

Builds a temporary mask dataset in the real record format from skimage.data
photos resized to ImageNet-like sizes (~375x500 JPEG, quality 90) with an FH
map (skimage felzenszwalb, scale = min_size = 1000; the manifest carries
max_label_id as precompute_masks writes it, so masks ship in their smallest
integer type), then times, in ONE run and alternating between them in rounds
(a, b, c, d, ..., a, b, c, d, ...; a fresh iterator and a warm-up per timing):

  (a) a plain tf.data two-view baseline written here: read the TFRecord,
      parse, decode the JPEG once, two Inception crops
      (tf.image.sample_distorted_bounding_box, area (0.08, 1), aspect
      (3/4, 4/3)), each bicubic-resized to 224 px (antialias off), rounded to
      uint8 and randomly flipped; no masks, no colour; batched like the real
      pipeline. The crop is cast to float32 before the resize: TF's bicubic
      kernel is ~1.7x slower on uint8 input, so this is the faster (stricter)
      baseline; (a') feeds uint8, as often written;
  (b) the project's host pipeline as every config uses it
      (input_pipeline.make_pretrain_dataset, data.color_on='device'): two
      224 px views + FH mask, uint8 out;
  (c) (b) with 6 local crops of 96 px (data.num_local_crops=6);
  (d) (b) with data.color_on='host' (BYOL's colour recipe in tf.data, float32);
  (a'') (a) with (b)'s tf.data options (deterministic,
      max_intra_op_parallelism=1: one thread per op; unset, (b) costs much
      more CPU, row p9);

and, with --profile, rows that split (b)'s cost (decode only, the image half,
the mask decode, the label crop/resize before and after this change,
decode_and_crop_jpeg per view, make_pretrain_dataset's reader/seeding, and its
tf.data options). Every figure is a median over rounds; ratios are taken
within a round, against that round's (a): the machine may be shared. Both
wall-clock throughput and process CPU time (all threads) are reported; the CPU
ratio is the steadier one when other jobs compete for the cores (on a busy
machine (b)'s wall ratio falls below its CPU ratio: at a load of 7-10 on 2
cores we saw 0.39 wall vs 0.53 CPU; near idle the two agree).

  python -m benchmarks.pipeline_throughput [--num_images=256 --batch_size=64
      --rounds=5 --steps=12 --profile --out=benchmarks/results/pipeline_throughput.md]
"""

import io
import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common
from configs import common as configs_common
from data_pipeline import tf_setup

tf = tf_setup.hide_accelerators()

from data_pipeline import augment  # noqa: E402
from data_pipeline import input_pipeline  # noqa: E402
from data_pipeline import records  # noqa: E402
from data_pipeline import view_config  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer('num_images', 256, 'Records in the temporary dataset.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds over all configurations.')
_STEPS = flags.DEFINE_integer('steps', 12, 'Timed batches per configuration and round.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed batches first (fresh iterator each time).')
_SIZE = flags.DEFINE_integer('image_size', 224, 'Global view size.')
_LOCAL = flags.DEFINE_integer('local_crops', 6, 'Local crops of configuration (c).')
_PROFILE = flags.DEFINE_bool('profile', True, 'Also time the breakdown rows.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/pipeline_throughput.md',
                           'Markdown table written here.')

FH = records.fh_mask_name(1000, 1000, 0.8)
AREA = (0.08, 1.0)
ASPECT = (3. / 4., 4. / 3.)


def build_dataset(out_dir, num_images, num_shards=8):
  """Writes `num_images` ~ImageNet-sized JPEG records with one FH map each."""
  from PIL import Image
  import skimage.segmentation

  photos = common.photos()
  base = []
  for photo, shape in zip(photos * 2, common.SHAPES * 2):
    if len(base) >= 8:
      break
    img = np.asarray(Image.fromarray(photo).resize(shape[::-1], Image.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=90)
    data = buf.getvalue()
    decoded = tf.io.decode_jpeg(data, channels=3).numpy()  # Masks match TF's decode.
    labels = skimage.segmentation.felzenszwalb(decoded, scale=1000, sigma=0.8,
                                               min_size=1000)
    base.append((data, decoded.shape, labels))
  mean_bytes = np.mean([len(b[0]) for b in base])
  writers = [tf.io.TFRecordWriter(os.path.join(
      out_dir, f'train-{i:05d}-of-{num_shards:05d}.tfrecord')) for i in range(num_shards)]
  counts = [0] * num_shards
  for i in range(num_images):
    data, shape, labels = base[i % len(base)]
    writers[i % num_shards].write(records.make_example(
        encoded=data, image_format='jpeg', original_format='jpeg', transcoded=False,
        height=shape[0], width=shape[1], image_id=f'img{i:06d}',
        label_maps={FH: labels}))
    counts[i % num_shards] += 1
  for w in writers:
    w.close()
  max_id = int(max(b[2].max() for b in base))
  manifest = {'format_version': records.FORMAT_VERSION, 'split': 'train', 'source': 'skimage.data',
              'num_examples': num_images, 'mask_names': [FH], 'max_label_id': max_id,
              'fh': [{'scale': 1000, 'min_size': 1000, 'sigma': 0.8, 'name': FH}],
              'shards': [{'file': f'train-{i:05d}-of-{num_shards:05d}.tfrecord',
                          'num_examples': c} for i, c in enumerate(counts)]}
  with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  return len(base), mean_bytes, [b[1] for b in base], max_id


# ------------------------------------------------------------- the baseline ---

def _parse_image(serialized):
  f = tf.io.parse_single_example(
      serialized, {records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
  return f[records.IMAGE_ENCODED]


def baseline_fn(size, uint8_resize=False):
  """(a): decode once, two Inception crops, bicubic resize, uint8, random flip."""

  def view(image):
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), area_range=AREA,
        aspect_ratio_range=ASPECT, max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, extent)
    if not uint8_resize:
      crop = tf.cast(crop, tf.float32)
    out = tf.image.resize(crop, [size, size], method='bicubic', antialias=False)
    out = tf.cast(tf.clip_by_value(tf.round(out), 0., 255.), tf.uint8)
    return tf.image.random_flip_left_right(out)

  def fn(serialized):
    image = tf.io.decode_jpeg(_parse_image(serialized), channels=3)
    return {'view1/image': view(image), 'view2/image': view(image)}

  return fn


def plain_dataset(files, fn, batch, with_seed=False):
  """Reader -> map(fn, AUTOTUNE) -> batch -> [1, B, ...] -> prefetch: (a)'s structure."""
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=8).repeat()
  if with_seed:  # fn(seed, record), a stateless seed per element.
    ds = ds.enumerate().map(lambda i, r: fn(tf.stack([i, tf.constant(7, tf.int64)]), r),
                            num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(lambda b: {k: v[None] for k, v in b.items()})
  return ds.prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------ profile: (b)'s parts ---

def _window(image, seed, spec):
  s_crop, s_flip, _ = augment.split_seed(seed, 3)
  shape = tf.shape(image)
  window = augment.inception_crop_window(s_crop, shape[0], shape[1], spec.crop_area,
                                         spec.crop_aspect)
  return window, tf.random.stateless_uniform([], s_flip) < 0.5


def _old_labels(labels, window, size, flip):
  """The label crop/resize before this change: tf.image.resize nearest + tf.cond flip."""
  y0, x0, h, w = window
  crop = tf.slice(labels, tf.stack([y0, x0]), tf.stack([h, w]))
  out = tf.image.resize(crop[..., None], [size, size], method='nearest')[..., 0]
  return augment.flip_left_right(out, flip)


def parts_fn(spec, mask_dtype, *, decode_mask, views=True, labels=None,
             decode_and_crop=False):
  """(b)'s views assembled from its parts (input_pipeline.make_view, piece by piece).

  decode_mask: decode the FH PNG; labels: None (not cropped), 'new'
  (augment.crop_and_resize_labels) or 'old'; decode_and_crop: the image by
  tf.io.decode_and_crop_jpeg per view instead of one decode.
  """
  size = spec.size

  def fn(seed, serialized):
    s_mask, *s_views = augment.split_seed(seed, 3)
    if decode_and_crop:
      encoded = _parse_image(serialized)
      shape = tf.io.extract_jpeg_shape(encoded)
      out = {}
      for k, s in enumerate(s_views):
        s_crop, s_flip, _ = augment.split_seed(s, 3)
        y0, x0, h, w = augment.inception_crop_window(s_crop, shape[0], shape[1],
                                                     spec.crop_area, spec.crop_aspect)
        crop = tf.io.decode_and_crop_jpeg(encoded, tf.stack([y0, x0, h, w]), channels=3)
        img = augment.crop_and_resize_image_uint8(
            crop, (tf.constant(0), tf.constant(0), h, w), size)
        out[f'view{k + 1}/image'] = augment.flip_left_right(
            img, tf.random.stateless_uniform([], s_flip) < 0.5)
      return out
    image, lab = input_pipeline.parse_and_decode(
        serialized, [FH] if decode_mask else [], s_mask)
    out = {}
    if lab is not None and labels is None:
      out['mask_pixel'] = lab[:1, :1]  # Keeps the decode in the graph.
    if not views:
      out['image_pixel'] = image[:1, :1]
      return out
    for k, s in enumerate(s_views):
      window, flip = _window(image, s, spec)
      img = augment.crop_and_resize_image_uint8(image, window, size)
      out[f'view{k + 1}/image'] = augment.flip_left_right(img, flip)
      if labels == 'new':
        out[f'view{k + 1}/mask'] = augment.crop_and_resize_labels(lab, window, size, flip,
                                                                  mask_dtype)
      elif labels == 'old':
        out[f'view{k + 1}/mask'] = tf.cast(_old_labels(lab, window, size, flip), mask_dtype)
    return out

  return fn


def with_options(ds, **kw):
  opts = tf.data.Options()
  for k, v in kw.items():
    if k == 'max_intra_op_parallelism':
      opts.threading.max_intra_op_parallelism = v
    else:
      setattr(opts, k, v)
  return ds.with_options(opts)


# ------------------------------------------------------------------ timing ---

def time_once(ds, warmup, steps, batch):
  """(examples/s wall, examples per CPU-second of this process) of a fresh iterator."""
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  t, c = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(it)
  wall, cpu = time.perf_counter() - t, time.process_time() - c
  del it
  return steps * batch / wall, steps * batch / cpu


def time_rounds(variants, rounds, warmup, steps, batch):
  """Times every variant once per round, in order; ratios within each round to the first."""
  wall = {k: [] for k in variants}
  cpu = {k: [] for k in variants}
  loads = [os.getloadavg()[0]]
  ref = next(iter(variants))
  for r in range(rounds):
    for name, ds in variants.items():
      w, c = time_once(ds, warmup, steps, batch)
      wall[name].append(w)
      cpu[name].append(c)
    loads.append(os.getloadavg()[0])
    print(f'round {r + 1}/{rounds} (load {loads[-1]:.1f}): ' + ', '.join(
        f'{k.split(" ")[0]} {wall[k][-1]:.0f}' for k in variants), flush=True)
  med = statistics.median
  out = {}
  for k in variants:
    out[k] = dict(
        eps=med(wall[k]), cpu_eps=med(cpu[k]),
        ratio=med(w / a for w, a in zip(wall[k], wall[ref])),
        cpu_ratio=med(c / a for c, a in zip(cpu[k], cpu[ref])),
        ratios=[w / a for w, a in zip(wall[k], wall[ref])])
  return out, loads


def transfer_bytes(ds):
  """Host->device bytes per example of the views and masks, as shipped and as float32/int32."""
  shipped = wide = 0
  for k, spec in ds.element_spec.items():
    if k.endswith('/image') or k.endswith('/mask'):
      n = int(np.prod(spec.shape[2:]))
      shipped += n * spec.dtype.size
      wide += n * 4
  return shipped, wide


def equivalence(files, size, n_records=16, n_windows=8):
  """How much decode_and_crop_jpeg and the uint8 resize differ from their references."""
  crop_diff = crop_px = crop_max = 0
  round_diff = round_n = round_max = 0
  for i, r in enumerate(tf.data.TFRecordDataset(files).take(n_records)):
    encoded = _parse_image(r)
    image = tf.io.decode_jpeg(encoded, channels=3)
    h_img, w_img = image.shape[:2]
    for k in range(n_windows):
      window = augment.inception_crop_window(tf.constant([i, k], tf.int64), h_img, w_img)
      y0, x0, h, w = (int(v) for v in window)
      ref = image[y0:y0 + h, x0:x0 + w].numpy().astype(int)
      dac = tf.io.decode_and_crop_jpeg(encoded, [y0, x0, h, w], channels=3).numpy()
      d = np.abs(ref - dac.astype(int))
      crop_diff += int((d.max(-1) > 0).sum())
      crop_px += h * w
      crop_max = max(crop_max, int(d.max()))
      old = tf.cast(tf.round(augment.crop_and_resize_image(image, window, size) * 255.),
                    tf.uint8).numpy().astype(int)
      new = augment.crop_and_resize_image_uint8(image, window, size).numpy().astype(int)
      d = np.abs(old - new)
      round_diff += int((d > 0).sum())
      round_n += d.size
      round_max = max(round_max, int(d.max()))
  return (crop_diff, crop_px, crop_max), (round_diff, round_n, round_max)


def label_map_decode_ms(files, rounds=5, reps=20):
  """Eager decode of the records' FH maps as 16-bit and as 8-bit PNGs.

  What format version 2's png8 (maps with < 256 ids; these have <= 255)
  saves over version 1's png16; ms per decode, medians over alternating rounds.
  """
  from PIL import Image
  png16, png8 = [], []
  for r in tf.data.TFRecordDataset(files).take(8):
    ex = records.parse_example_numpy(r.numpy())
    m = ex['masks'][FH]
    for bits, out in ((16, png16), (8, png8)):
      buf = io.BytesIO()
      Image.fromarray(m.astype(f'uint{bits}')).save(buf, format='PNG', compress_level=6)
      out.append(buf.getvalue())
  times = {16: [], 8: []}
  for _ in range(rounds):
    for bits, data, dtype in ((16, png16, tf.uint16), (8, png8, tf.uint8)):
      c = time.process_time()
      for _ in range(reps):
        for x in data:
          tf.io.decode_png(x, channels=1, dtype=dtype)
      times[bits].append((time.process_time() - c) / reps / len(data) * 1e3)
  return {k: statistics.median(v) for k, v in times.items()}


# -------------------------------------------------------------------- main ---

def main(argv):
  del argv
  cores = os.cpu_count()
  size, batch = _SIZE.value, _BATCH.value
  with tempfile.TemporaryDirectory() as d:
    n_base, mean_bytes, shapes, max_id = build_dataset(d, _NUM_IMAGES.value)
    files = sorted(tf.io.gfile.glob(os.path.join(d, '*.tfrecord')))
    cfg = configs_common.base_config('pipeline_throughput').data.to_dict()
    cfg.update(dir=d, image_size=size, mask='fh', fh_scale=1000, shuffle_buffer=1000,
               color_on='device')
    kw = dict(global_batch_size=batch, seed=0, num_local_devices=1)
    make = lambda **over: input_pipeline.make_pretrain_dataset({**cfg, **over}, **kw)
    b = make()
    c = make(num_local_crops=_LOCAL.value)
    variants = {
        '(a) plain tf.data two-view baseline (JPEG decode, 2 Inception crops, flip,'
        ' bicubic to uint8)': plain_dataset(files, baseline_fn(size), batch),
        '(b) host pipeline: 2 views + FH mask, color_on=device (uint8)': b,
        f'(c) (b) + {_LOCAL.value} local crops of 96 px': c,
        '(d) (b) with color_on=host (BYOL colour in tf.data, float32)': make(color_on='host'),
        "(a') (a) with uint8 fed to the bicubic resize": plain_dataset(
            files, baseline_fn(size, uint8_resize=True), batch),
        "(a'') (a) with (b)'s tf.data options (deterministic, max_intra_op_parallelism=1)":
            with_options(plain_dataset(files, baseline_fn(size), batch), deterministic=True,
                         max_intra_op_parallelism=1),
    }
    main_keys = list(variants)
    if _PROFILE.value:
      manifest = input_pipeline.read_manifest(d)
      spec = view_config.view_specs(cfg)[0]
      mdt = input_pipeline.mask_dtype(manifest, cfg)
      views_fn = input_pipeline.make_views_fn(cfg, [FH], mdt)
      parts = lambda **k: plain_dataset(files, parts_fn(spec, mdt, **k), batch, with_seed=True)
      variants.update({
          'p1 decode only: parse + JPEG': parts(decode_mask=False, views=False),
          'p2 decode only: parse + JPEG + FH PNG (parse_and_decode)': parts(
              decode_mask=True, views=False),
          'p3 image half of (b): JPEG + 2 x (window, crop, bicubic, uint8, flip)': parts(
              decode_mask=False),
          'p4 p3 + FH PNG decoded (not cropped)': parts(decode_mask=True),
          'p5 p4 + labels cropped/resized as before this change (nearest resize, tf.cond'
          ' flip)': parts(decode_mask=True, labels='old'),
          'p6 p4 + labels cropped/resized now (row/column gathers, flip in the index,'
          ' cast to the mask dtype after the row gather)':
              parts(decode_mask=True, labels='new'),
          'p7 p3 with tf.io.decode_and_crop_jpeg per view': parts(decode_mask=False,
                                                                  decode_and_crop=True),
          'p8 (b)\'s make_views_fn on (a)\'s plain reader (no shuffle/enumerate/seeding)':
              plain_dataset(files, views_fn, batch, with_seed=True),
          'p9 (b) with max_intra_op_parallelism unset (input_pipeline sets 1)':
              with_options(b, max_intra_op_parallelism=0),
          'p10 (b) with deterministic=False': with_options(b, deterministic=False),
      })
    load_start = os.getloadavg()
    res, loads = time_rounds(variants, _ROUNDS.value, _WARMUP.value, _STEPS.value, batch)
    bytes_b, bytes_c = transfer_bytes(b), transfer_bytes(c)
    (cd, cp, cm), (rd, rn, rm) = equivalence(files, size)
    png_ms = label_map_decode_ms(files)

  lines = [
      '# Input pipeline throughput', '',
      f'{common.machine_line()} TensorFlow {tf.__version__}. Dataset: {_NUM_IMAGES.value}'
      f' records from {n_base} skimage.data photos resized to {sorted(set(shapes))}'
      f' (JPEG q90, mean {mean_bytes / 1024:.0f} KiB) + one FH map (scale 1000, ids'
      f' <= {max_id}: uint8 masks). Views {size} px, batch {batch}; {_ROUNDS.value}'
      f' rounds, each timing every configuration in turn ({_STEPS.value} batches after'
      f' {_WARMUP.value} warm-up, fresh iterator); medians over rounds, ratios within'
      ' a round to (a). CPU = process CPU time, all threads.'
      f' 1-min load average: {load_start[0]:.1f} at the start, after each round'
      f' {", ".join(f"{x:.1f}" for x in loads[1:])} (other jobs share the machine:'
      ' compare ratios, not absolute figures).', '',
      '| configuration | examples/s | examples/s per core | ratio to (a) | ratio to (a),'
      ' CPU time | per-round ratios |',
      '|---|---:|---:|---:|---:|---|']
  for k in main_keys:
    r = res[k]
    lines.append(f'| {k} | {r["eps"]:.1f} | {r["eps"] / cores:.1f} | {r["ratio"]:.2f} |'
                 f' {r["cpu_ratio"]:.2f} | {" ".join(f"{x:.2f}" for x in r["ratios"])} |')
  b_key = main_keys[1]
  ok = res[b_key]['ratio'] >= 0.6
  lines += [
      '', f'goal: (b) >= 0.6x (a): {"met" if ok else "NOT met"} ((b) = '
      f'{res[b_key]["ratio"]:.2f}x (a) wall, {res[b_key]["cpu_ratio"]:.2f}x in CPU time).', '',
      'Host -> device bytes per example (views + masks): '
      f'(b) {bytes_b[0] / 1e6:.3f} MB as shipped (uint8 views, {mdt_name(b)} masks) vs'
      f' {bytes_b[1] / 1e6:.3f} MB as float32 views + int32 masks ({bytes_b[1] / bytes_b[0]:.1f}x);'
      f' (c) {bytes_c[0] / 1e6:.3f} MB vs {bytes_c[1] / 1e6:.3f} MB.', '',
      f'decode_and_crop_jpeg vs decode-then-crop: {cd} of {cp} pixels differ'
      f' ({cd / cp:.3%}), by up to {cm} levels (chroma upsampling at the window edge);'
      f' uint8 views (round(clip(resize(crop)))) vs round(255 x the [0, 1] host resize):'
      f' {rd} of {rn} values differ (max {rm}).', '',
      f'Label-map decode (eager, 1 thread, ms per map): {png_ms[8]:.2f} as stored (8-bit'
      f' PNG, record format 2) vs {png_ms[16]:.2f} for the same map as a 16-bit PNG'
      ' (format 1).']
  if _PROFILE.value:
    lines += ['', '## Where (b)\'s time goes', '',
              'Rows p1-p7 build (b)\'s pieces from its own functions on (a)\'s plain'
              ' reader; cost = 1 / (examples per CPU-second), in units of (a)\'s cost'
              ' per example in the same round (CPU-time ratios; (a) = 1.00).', '',
              '| configuration | examples/s | ratio to (a) | ratio to (a), CPU time |'
              ' cost per example, CPU, x (a) |',
              '|---|---:|---:|---:|---:|']
    for k in [main_keys[0], b_key] + list(variants)[len(main_keys):]:
      r = res[k]
      lines.append(f'| {k} | {r["eps"]:.1f} | {r["ratio"]:.2f} | {r["cpu_ratio"]:.2f} |'
                   f' {1 / r["cpu_ratio"]:.2f} |')
    cost = {k.split(' ')[0]: 1 / r['cpu_ratio'] for k, r in res.items()}
    lines += ['', 'Breakdown, CPU cost per example in units of (a): JPEG parse + decode'
              f' {cost["p1"]:.2f}; FH PNG decode {cost["p2"] - cost["p1"]:.2f} (p2 - p1),'
              f' {cost["p4"] - cost["p3"]:.2f} (p4 - p3); two image views (window, crop,'
              f' bicubic, uint8, flip) {cost["p3"] - cost["p1"]:.2f}; two label views now'
              f' {cost["p6"] - cost["p4"]:.2f}, before {cost["p5"] - cost["p4"]:.2f};'
              ' decode_and_crop_jpeg per view instead of one decode'
              f' {cost["p7"] - cost["p3"]:+.2f}; make_pretrain_dataset\'s reader, shuffle'
              f' and seeding {cost["(b)"] - cost["p8"]:+.2f} ((b) - p8). (b) = {cost["(b)"]:.2f}'
              ' in all; the goal needs <= 1.67.']
  common.write_table('\n'.join(lines) + '\n', _OUT.value)


def mdt_name(ds):
  for k, spec in ds.element_spec.items():
    if k.endswith('/mask'):
      return spec.dtype.name
  return '-'


if __name__ == '__main__':
  app.run(main)
