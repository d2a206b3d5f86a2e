"""One shard: its task, its records, its file and completion sidecar.

The output folder (--out_dir) is read and written through etils.epath only, so
a local path, a file:// URL and gs:// (or another scheme epath knows) work
alike, from the main process and from any worker. A shard is written as
`<shard>.tmp-<pid>` and renamed; then its sidecar `<shard>.json` is written
the same way and marks the shard complete. The sidecar records the shard's
size and checksum (`checksum`: zlib's CRC-32 of the whole file, read back
after writing; about 3 GB/s, i.e. milliseconds per shard): a re-run checks
every complete shard's size, and with --verify its checksum
(plan.verify_shard). The record stream itself is
written by TensorFlow's TFRecordWriter at the epath path (TensorFlow's file
systems: local and gs://, the one epath uses for gs:// when TensorFlow is
installed).
"""

import collections
import dataclasses
import importlib.metadata
import json
import os
import platform
import time
import urllib.parse
import zlib

from etils import epath
import numpy as np
from PIL import Image

from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline.masks import decode
from data_pipeline.masks import quality
from data_pipeline.masks import sources
from data_pipeline.masks.errors import ImageFailure
from data_pipeline.masks.errors import PrecomputeError


# ------------------------------------------------------------ output folder ---

def is_url(path):
  """True for 'scheme://...' (gs://, file://, ...), False for a plain path."""
  return '://' in str(path)


def normalize_out_dir(text):
  """--out_dir as runs show it and tasks carry it: a URL as given, else absolute."""
  text = os.fspath(text)
  return text.rstrip('/') if is_url(text) else os.path.abspath(text)


def out_path(out_dir):
  """The epath.Path of a --out_dir (a file:// URL becomes its local path)."""
  text = os.fspath(out_dir)
  if text.startswith('file://'):
    return epath.Path(urllib.parse.urlparse(text).path or '/')
  try:
    return epath.Path(text)
  except (KeyError, NotImplementedError):  # A scheme epath does not know.
    raise PrecomputeError(f'--out_dir={text}: unsupported URL scheme; use a local'
                          ' path, file://, gs:// or s3://') from None


def shard_name(split, i, k):
  """The file name of shard i of k."""
  return f'{split}-{i:05d}-of-{k:05d}.tfrecord'


def write_json_atomic(path, obj):
  """Writes `obj` to `path` (an epath.Path) as `<path>.tmp-<pid>`, then renames."""
  tmp = path.parent / f'{path.name}.tmp-{os.getpid()}'
  tmp.write_text(json.dumps(obj, indent=1))
  tmp.replace(path)


def read_json(path):
  """The JSON object stored at `path` (an epath.Path)."""
  return json.loads(path.read_text())


def file_checksum(path):
  """'crc32:<8 hex digits>' of the file at `path` (an epath.Path), read in 4 MiB blocks."""
  crc = 0
  local = os.fspath(path)
  # Python's own file for local paths: about 3x faster than epath's backend.
  with (open(local, 'rb') if not is_url(local) else path.open('rb')) as f:
    while True:
      block = f.read(1 << 22)
      if not block:
        break
      crc = zlib.crc32(block, crc)
  return f'crc32:{crc:08x}'


def file_size(path):
  """The size in bytes of the file at `path` (an epath.Path)."""
  return int(path.stat().length)


def read_sidecar(out_dir, file):
  """The sidecar of a complete shard `file` in `out_dir`, else None."""
  path = out_path(out_dir) / file
  try:
    sidecar = read_json(path.parent / f'{file}.json')
  except Exception:  # pylint: disable=broad-except  # Missing or partial, any backend.
    return None
  return sidecar if path.is_file() else None


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


# ---------------------------------------------------------------- one shard ---

@dataclasses.dataclass(frozen=True)
class ShardTask:
  """Everything a worker needs to write one shard."""
  index: int
  file: str
  out_dir: str                  # normalize_out_dir's form: a path or a URL
  source: sources.Source
  num_shards: int
  folder_ids: tuple
  fh: tuple                     # ((scale, min_size, name), ...)
  fh_sigma: float
  gt: bool
  user_masks: str
  max_pixels: float
  min_image_size: int
  mask_names: tuple
  # ((id, reason), ...): inputs of this shard whose --user_masks map is ambiguous.
  user_mask_conflicts: tuple = ()


def make_record(item, task):
  """One Item -> (serialized record, Decoded, {name: label map}); raises ImageFailure."""
  try:
    item.id.encode('utf-8')
  except UnicodeEncodeError:
    raise ImageFailure(f'file name is not valid UTF-8 ({sources.printable(item.id)}):'
                       ' rename it (image ids are stored as UTF-8 text)') from None
  for conflict_id, reason in task.user_mask_conflicts:
    if conflict_id == item.id:
      raise ImageFailure(reason)
  data = item.load()
  kw = dict(max_pixels=task.max_pixels, min_image_size=task.min_image_size)
  if isinstance(data, np.ndarray):
    dec = decode.decoded_from_pixels(data, **kw)
  else:
    dec = decode.decode_image(data, **kw)
  height, width = dec.rgb.shape[:2]
  # Each stored kind's maps (mask_kinds), the cheap ones first: a missing one
  # fails the input before FH runs; the record lists them in registry order.
  kinds = mask_kinds.stored()
  by_kind = {k.name: k.label_maps(item, dec.rgb, task)
             for k in sorted(kinds, key=lambda k: k.expensive)}
  maps = {name: m for k in kinds for name, m in by_kind[k.name].items()}
  try:
    rec = records.make_example(
        encoded=dec.encoded, image_format=dec.image_format,
        original_format=dec.original_format, transcoded=dec.transcoded,
        height=height, width=width, image_id=item.id, label_maps=maps,
        label=item.label)
  except ValueError as e:  # Ids that cannot be stored losslessly.
    raise ImageFailure(str(e)) from None
  return rec, dec, maps


def abo_map_names(mask_names):
  """The stored maps whose ABO a shard's sidecar records (each kind's `abo_names`:
  FH maps and user), in record order.

  None when no GT is stored (nothing to measure against).
  """
  if records.GT_MASK not in mask_names:
    return None
  scored = {n for k in mask_kinds.stored() for n in k.abo_names(mask_names)}
  return [n for n in mask_names if n in scored]


def abo_sidecar_entry(stats):
  """The sidecar's "abo": {map name: quality.AboStats sums} (mergeable)."""
  return {'gt_map': records.GT_MASK,
          'maps': {name: s.to_json() for name, s in stats.items()}}


def limit_tf_threads():
  """Once per worker process: TensorFlow on one thread (parallelism is across workers)."""
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:
    pass


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
  out = out_path(task.out_dir)
  final = out / task.file
  tmp = out / f'{task.file}.tmp-{os.getpid()}'
  positions = sources.shard_positions(task.source, task.num_shards, task.index)
  failures, formats = [], collections.Counter()
  num, transcoded = 0, 0
  max_label_id = -1      # Over every stored map: the training pipeline's mask dtype.
  # ABO of each stored map with GT (quality.py), from the maps already in memory.
  abo_names = abo_map_names(task.mask_names)
  abo = {name: quality.AboStats() for name in abo_names or ()}

  def fail(item, reason):
    failures.append({'id': sources.printable(item.id),
                     'path': sources.printable(item.path), 'reason': reason})
    report(False)

  try:
    with tf.io.TFRecordWriter(os.fspath(tmp)) as writer:
      for item in sources.iterate_items(task.source, positions, task.folder_ids):
        try:
          rec, dec, maps = make_record(item, task)
        except ImageFailure as e:
          fail(item, str(e))
          continue
        except Exception as e:  # pylint: disable=broad-except
          # One bad input must not stop the job; it is listed like the others.
          fail(item, f'unexpected error: {type(e).__name__}: {e}')
          continue
        # Protobuf writes map entries (the features) in a per-process order;
        # the deterministic form makes shards byte-identical across runs.
        writer.write(tf.train.Example.FromString(rec).SerializeToString(deterministic=True))
        for name, stats in abo.items():
          stats.add_image(maps[records.GT_MASK], maps[name])
        max_label_id = max([max_label_id] + [int(np.max(m)) for m in maps.values() if np.size(m)])
        num += 1
        transcoded += dec.transcoded
        formats[dec.original_format] += 1
        report(True)
    num_bytes, checksum = file_size(tmp), file_checksum(tmp)
    tmp.replace(final)
  except BaseException:  # An error, or the run stopped at once: no half file left.
    try:
      tmp.unlink(missing_ok=True)
    except Exception:  # pylint: disable=broad-except
      pass
    raise
  sidecar = {
      'file': task.file, 'shard_index': task.index, 'num_examples': num,
      'num_failures': len(failures), 'failures': failures,
      'mask_names': list(task.mask_names), 'num_transcoded': transcoded,
      'original_formats': dict(sorted(formats.items())),
      'num_bytes': num_bytes, 'checksum': checksum, 'max_label_id': max_label_id,
      'seconds': round(time.perf_counter() - t0, 3), 'versions': versions(),
  }
  if abo_names is not None:
    sidecar['abo'] = abo_sidecar_entry(abo)
  write_json_atomic(out / f'{task.file}.json', sidecar)  # Marks the shard complete.
  return sidecar
