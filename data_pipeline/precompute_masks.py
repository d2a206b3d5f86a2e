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
folder:DIR  every *.jpg/.jpeg/.png/.bmp/.webp under DIR (recursive, any case,
  following symlinked folders; a folder reached twice, e.g. by a symlink loop,
  is listed once), sorted by path; the id is the path relative to DIR. Other
  files are skipped and counted by extension in manifest.json "skipped"; a
  file name that is not valid UTF-8 is a failure (rename it). Item j of n goes to
  shard j mod k, so every shard mixes all subfolders (e.g. ImageNet classes)
  and a re-run assigns the same items to the same shards.
  Image labels (--labels, default on) follow torchvision's ImageFolder: when
  no image lies directly in DIR and at least two first-level subfolders hold
  images, DIR/<class>/.../<image> gets the label of <class>, ids = the sorted
  class folder names (manifest label_names). A flat DIR (images directly in
  it) stores none; images both directly in DIR and in subfolders are refused
  (move them into one layout, or --nolabels).
tfds:NAME:SPLIT  a TFDS dataset already prepared under --data_dir; this tool
  never downloads. The original encoded bytes are read
  (tfds.decode.SkipDecoding). Shard i holds a contiguous index range of the
  split (TFDS shuffles examples when it prepares a dataset), read by each
  worker itself as `SPLIT[a:b]`, so memory stays bounded. The id is
  image/filename (or file_name, else TFDS's own example id). A `label`
  ClassLabel feature (imagenet2012) is stored as the image label (--labels),
  its names as manifest label_names.
demo  the synthetic scenes of data_pipeline/demo_dataset.py (--num_examples,
  --demo_seed, --image_size), contiguous ranges, with GT and class maps. The
  split name picks the scenes: --split_name=train (default) is scenes 0..n-1,
  val scenes 1,000,000.., test 2,000,000.. (demo_dataset.SPLIT_FIRST_INDEX),
  so a held-out split never shares a scene with train (ids demo/<index>);
  --demo_first_index=N sets the first scene explicitly (any split name):
    python -m data_pipeline.precompute_masks --source=demo --split_name=val \
        --num_examples=500 --out_dir=$MASKS/demo_val
  --demo_appearance=class_texture gives each shape kind its own texture pool
  (same shapes, GT and classes; other object pixels); the default 'random'
  leaves the outline as a class's only cue.

Label maps
----------
FH: `skimage.segmentation.felzenszwalb(image, scale, sigma, min_size)` for
each (--fh_scales[i], --fh_min_sizes[i]) pair, on the full-resolution RGB
uint8 image that the record stores, kept exactly as skimage returns it (ids
0..n-1, never wrapped: records.encode_label_map picks png8, png16
or png_rgb24).
'gt' (--gt, on by default) when the source has instance/segment maps: demo's
scenes; a TFDS feature `panoptic_image` (coco/2017_panoptic: id = R + 256 G +
65536 B, 0 = VOID, relabelled to 0 = unlabelled and 1..N, one per segment in
increasing id order, things and stuff alike); or per-instance binary masks
`objects/segmentation` or `objects/mask` (e.g. lvis), painted largest first
so that small instances stay visible, ids 1..N in dataset order. TFDS's
coco/2017 holds boxes only (no masks): use coco/2017_panoptic for COCO GT.
imagenet2012 has none. 'class' (with 'gt', when the source has semantic
labels): each GT pixel's class, 0 = background/VOID (ids: records.py) -- the
demo's shape kinds, or for coco/2017_panoptic 1 + the segment's category
(TFDS panoptic_objects/label). 'user' (--user_masks=DIR): DIR/<id without
extension>.png, greyscale/palette/16-bit ids, or RGB read as R*65536 + G*256
+ B (records' png_rgb24 convention); it must match the image's size. Two
images whose paths differ only by extension (a.jpg, a.png) would share one
map: both are failures, each naming both files.

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
manifest, with the failures, is still written), as does a refusal (a folder of
another run, a source that cannot be read); flags that do not parse exit
with 2 (data_pipeline/cli.py).

On disk, parallelism and resume
-------------------------------
  OUT/params.json                              written first: what determines the output
  OUT/<split>-<i:05d>-of-<k:05d>.tfrecord      one per shard
  OUT/<split>-<i:05d>-of-<k:05d>.tfrecord.json sidecar: counts, failures, mask names
  OUT/manifest.json                            written last, from the sidecars
With GT stored, each worker also measures the ABO (DetCon's Average Best
Overlap, data_pipeline/masks/quality.py) of every FH / user map it wrote
with the GT instances, from the maps in memory (no second pass; about 1 ms
an image); the sidecars hold the sums and manifest.json "abo" the totals,
the same as `python -m data_pipeline.mask_quality --data_dir=OUT`.
One task per shard on a pool of --num_workers 'spawn' processes (TensorFlow
and fork do not mix); each imports TensorFlow once. --num_workers=1 runs in
this process. A worker writes `<shard>.tmp-<pid>`, renames it to the shard's
name, then writes the sidecar (also tmp + rename): a shard is complete iff
its sidecar exists and the shard file still has the size (and, with
--verify, the checksum: zlib CRC-32) the sidecar records. Re-running the same
command checks the complete shards (one line for each that fails: it is
recomputed), skips them, deletes stale temporary files and redoes the rest;
re-running with different parameters (or a changed source folder) into the
same --out_dir is refused. A job holds OUT/precompute.lock (host, pid, start
time): a second job on the same --out_dir is refused; a lock left by a dead job
on this host is taken over, one from another host is never (delete it if that
job is known dead).

SIGINT / SIGTERM (local mode): the first stops handing out shards and lets the
running ones finish, the second stops at once; either way manifest.json is
written for the complete shards with "partial": true (the training pipeline
refuses it), the command says how to resume (the same command) and exits with
128 + the signal (130 for SIGINT). Worker processes die with the main process,
even when it is killed.

Apache Beam (--runner)
----------------------
With --runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner|PortableRunner
the same job runs as a Beam pipeline (data_pipeline/masks/beam_runner.py; pip
install -r requirements-beam.txt): the same checks, shard tasks, shards and
sidecars, one shard per element, manifest.json written by the pipeline's last
step. The flags above keep their meaning (--num_workers and --progress_every_s
are the local mode's); any other flag is a Beam pipeline option, e.g.
  --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
"""

import collections
import dataclasses
import os
import signal
import sys

from absl import flags

from data_pipeline import cli
from data_pipeline.masks import local_runner
from data_pipeline.masks import plan
from data_pipeline.masks.errors import Interrupted
from data_pipeline.masks.errors import FlagError
from data_pipeline.masks.errors import PrecomputeError

# A private flag set: the module can be imported next to other tools' flags
# (tests, benchmarks) and main() can be called more than once in a process.
PROG = 'data_pipeline.precompute_masks'
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
flags.DEFINE_bool('labels', True, 'Store the image-level class label (int64'
                  ' image/label; manifest label_names, num_labels) when the source has'
                  ' one: a TFDS `label` ClassLabel, or a folder with one subfolder per'
                  ' class (DIR/<class>/<image>, ids = sorted subfolder names; at least'
                  ' two; images may sit deeper in a class folder). A flat folder has'
                  ' none; images both directly in DIR and in subfolders are refused.'
                  ' --nolabels stores none (any layout; resumes runs written before'
                  ' labels).', flag_values=FLAGS)
flags.DEFINE_float('max_pixels', 50e6, 'Larger images are failures.', flag_values=FLAGS)
flags.DEFINE_integer('min_image_size', 32, 'Images whose smaller side is below this'
                     ' are failures (too small for a crop).', flag_values=FLAGS)
flags.DEFINE_string('split_name', 'train', 'Split name in the shard file names and'
                    ' the manifest.', flag_values=FLAGS)
flags.DEFINE_integer('num_examples', None, 'demo: number of scenes (default:'
                     ' demo_dataset.DEFAULT_NUM_EXAMPLES).', flag_values=FLAGS)
flags.DEFINE_integer('demo_seed', 0, 'demo: scene seed.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', 128, 'demo: scene size in pixels.', flag_values=FLAGS)
flags.DEFINE_integer('demo_first_index', None, 'demo: index of the first scene.'
                     ' Default: by --split_name, train 0, val 1000000, test 2000000'
                     ' (held-out scenes never in train); other split names need it.',
                     flag_values=FLAGS)
flags.DEFINE_string('demo_appearance', 'random', 'demo: random (a class is its'
                    ' outline only) or class_texture (each shape kind draws its'
                    ' textures from its own pool; demo_dataset.py).', flag_values=FLAGS)
flags.DEFINE_integer('limit', None, 'Use only the first N inputs (smoke runs).',
                     flag_values=FLAGS)
flags.DEFINE_float('progress_every_s', 5.0, 'Seconds between progress lines.',
                   flag_values=FLAGS)
flags.DEFINE_bool('verify', False, 'On a re-run, also check the checksum of every'
                  ' complete shard (reads them all; the size is always checked).',
                  flag_values=FLAGS)
flags.DEFINE_string('runner', None, 'Run as an Apache Beam pipeline on this runner'
                    ' (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner,'
                    ' PortableRunner); the flags this tool does not know are passed'
                    ' to Beam as pipeline options. Default: local worker processes.'
                    ' See data_pipeline/masks/beam_runner.py.', flag_values=FLAGS)


def params_from_flags():
  """plan.Params from the parsed flags."""
  return plan.Params(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(plan.Params)})


class _Signals:
  """SIGINT / SIGTERM while main() runs: KeyboardInterrupt(signal name).

  The local mode installs its own handlers while it computes (local_runner.Stop).
  After a run stopped by a signal they stay installed and end the process at
  once (status 128 + signum) if another signal comes while it exits.
  """

  def __init__(self):
    self.status = None
    self.old = {}

  def __enter__(self):
    try:
      for sig in (signal.SIGINT, signal.SIGTERM):
        self.old[sig] = signal.signal(sig, self._handle)
    except ValueError:  # Not the main thread: leave the signals alone.
      pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.status is not None:
      os._exit(self.status)  # pylint: disable=protected-access
    self.status = 128 + signum
    raise KeyboardInterrupt(signal.Signals(signum).name)

  def __exit__(self, *exc):
    if self.status is None:
      for sig, old in self.old.items():
        signal.signal(sig, old)
    return False


def main(argv=None):
  """The command line; returns the exit status.

  0 ok, 1 user errors (a refused --out_dir, a source that cannot be read,
  every input failed), 2 flag errors (data_pipeline/cli.py), 128 + signum
  when stopped by a signal (130: SIGINT, 143: SIGTERM).
  """
  argv = list(sys.argv if argv is None else argv)
  # With --runner, the flags this tool does not know are Beam pipeline options.
  rest, status = cli.parse(FLAGS, argv, PROG, __doc__, known_only=True)
  if rest is not None and not FLAGS.runner:
    rest, status = cli.parse(FLAGS, argv, PROG, __doc__)
  if rest is None:
    return status
  if not FLAGS.runner and len(rest) > 1:
    cli.error(PROG, cli.usage_message(f'unexpected arguments {rest[1:]}'))
    return cli.USAGE
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Inherited by the workers.
  log = lambda s: print(s, flush=True)
  with _Signals() as signals:
    try:
      if FLAGS.runner:
        from data_pipeline.masks import beam_runner  # Lazy: apache_beam is optional.
        manifest = beam_runner.run(params_from_flags(), FLAGS.runner, rest[1:], log=log)
      else:
        manifest = local_runner.precompute(params_from_flags(), log=log)
    except FlagError as e:
      cli.error(PROG, cli.usage_message(e))
      return cli.USAGE
    except PrecomputeError as e:
      cli.error(PROG, e)
      return cli.FAILURE
    except Interrupted as e:
      signals.status = 128 + int(e.signum)
      print(f'{PROG}: {e}', file=sys.stderr)
      return signals.status
    except KeyboardInterrupt as e:  # Beam mode, or the local mode before it starts.
      sig = signal.SIGTERM if str(e) == 'SIGTERM' else signal.SIGINT
      signals.status = 128 + int(sig)
      print(f'{PROG}: interrupted by {sig.name}; complete shards are kept:'
            ' run the same command again to resume', file=sys.stderr)
      return signals.status
  if manifest['num_examples'] == 0:
    reasons = collections.Counter(f['reason'].split(':')[0] for f in manifest['failures'])
    out_dir = FLAGS.out_dir if '://' in FLAGS.out_dir else os.path.abspath(FLAGS.out_dir)
    cli.error(PROG, f'every one of the {manifest["num_failures"]} inputs'
              f' failed ({dict(reasons.most_common(5))}); the reasons are listed in'
              f' {os.path.join(out_dir, "manifest.json")}')
    return cli.FAILURE
  return 0


if __name__ == '__main__':
  sys.exit(main())
