r"""LC-loss's flip test: how well a checkpoint's features find mirrored points.

LC-loss (Islam et al., "More analysis on correspondence"): an image and its
left-right mirror with colour transforms (jitter, grey, blur); since the only
spatial change is the flip, feature cell (i, j) of the image corresponds to
cell (i, w - 1 - j) of the mirror. For every cell of the image we take the
most cosine-similar cell of the transformed mirror; the correspondence
accuracy is the fraction that land on the mirrored cell (chance: 1 / (h w)).
A global objective alone (BYOL) learns flip-invariant but not flip-
equivariant features and scores low; a local loss scores high.

  python -m dense_ssl.flip_test --workdir=out/demo/detcon_b \
      --data_dir=out/demo/masks --num_images=256 --image_size=224 --feature=c4

The encoder runs in eval mode (BN running statistics) on the restored
checkpoint (dense_ssl.checkpoint.restore_encoder: --network=online|target,
--step=N, default the latest), built at config.json's model.depth; images
are read from a mask dataset (precompute_masks' shards; masks unused),
resized to --image_size without crop. Prints accuracy and the mean cell
distance of the matches; --out writes them as JSON.
"""

import json
import sys

from absl import flags

from data_pipeline import tf_setup
from dense_ssl import cli

PROG = 'dense_ssl.flip_test'
# A private flag set: its --workdir etc. cannot clash with absl flags that
# other modules define in the same process.
FLAGS = flags.FlagValues()

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints).',
                               flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Mask dataset to read images from.',
                                flag_values=FLAGS)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).',
                             flag_values=FLAGS)
_NETWORK = flags.DEFINE_enum('network', 'online', ['online', 'target'], 'Which encoder.',
                             flag_values=FLAGS)
_FEATURE = flags.DEFINE_enum('feature', 'c5', ['c3', 'c4', 'c5'], 'Feature map to match.',
                             flag_values=FLAGS)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 128, 'Images to test.',
                                   flag_values=FLAGS)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Resize side (no crop).',
                                   flag_values=FLAGS)
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.',
                              flag_values=FLAGS)
_SEED = flags.DEFINE_integer('seed', 0, 'Colour-transform seed.', flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'Optional JSON file for the result.',
                           flag_values=FLAGS)


def correspondence_accuracy(feats_a, feats_b):
  """feats_a [N, h, w, C] of images, feats_b of their mirrors -> (accuracy, mean error).

  Cell (i, j) of a matches argmax_k cos(a_ij, b_k); correct when k = (i, w-1-j).
  The error is the Euclidean distance in cells between the match and (i, w-1-j).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  n, h, w, c = feats_a.shape
  a = feats_a.reshape(n, h * w, c).astype(np.float64)
  b = feats_b.reshape(n, h * w, c).astype(np.float64)
  a /= np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b /= np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  match = np.argmax(np.einsum('nic,njc->nij', a, b), -1)           # [N, hw]
  ii, jj = np.divmod(np.arange(h * w), w)
  want_i, want_j = ii, w - 1 - jj
  got_i, got_j = np.divmod(match, w)
  correct = (got_i == want_i) & (got_j == want_j)
  err = np.hypot(got_i - want_i, got_j - want_j)
  return float(correct.mean()), float(err.mean())


def image_pairs(data_dir, num_images, size, seed):
  """Yields (image, transformed mirror) float32 [size, size, 3], normalised."""
  tf = tf_setup.import_tensorflow()
  from data_pipeline import augment, input_pipeline, records  # pylint: disable=g-import-not-at-top
  manifest = input_pipeline.read_manifest(data_dir)
  files = [p for p, _ in input_pipeline.process_shards(manifest, data_dir, 0, 1)]
  ds = tf.data.TFRecordDataset(files).take(num_images)
  for i, rec in enumerate(ds):
    image = records.parse_record_tf(rec, [])['image']
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (size, size),
                            antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    # Jitter, grey and blur (LC's list), always blurred, never solarised.
    moved = augment.byol_color_augment(image, tf.constant([seed, i], tf.int32),
                                       blur_prob=1.0, solarize_prob=0.0)
    yield (augment.normalize(image).numpy(), augment.normalize(moved[:, ::-1]).numpy())


def run(workdir, data_dir, *, step=None, network='online', feature='c5',
        num_images=128, image_size=224, batch_size=16, seed=0):
  """Returns dict(accuracy, mean_cell_error, chance, grid, step, num_images)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dense_ssl import evaluate  # pylint: disable=g-import-not-at-top
  # The tools' one encoder loader; a fall back past a damaged step is said on stderr.
  model, variables, info = evaluate.build_encoder(
      workdir=workdir, network=network, step=step,
      log=lambda line: print(f'{PROG}: {line}', file=sys.stderr, flush=True))
  forward = jax.jit(lambda x: model.apply(variables, x, train=False)[feature])
  feats_a, feats_b, batch = [], [], []

  def flush():
    x = np.stack([p for pair in batch for p in pair])
    f = np.asarray(forward(x))
    feats_a.append(f[0::2])
    feats_b.append(f[1::2])
    batch.clear()

  for pair in image_pairs(data_dir, num_images, image_size, seed):
    batch.append(pair)
    if len(batch) == batch_size:
      flush()
  if batch:
    flush()
  if not feats_a:
    raise ValueError(f'{data_dir}: no images read')
  a, b = np.concatenate(feats_a), np.concatenate(feats_b)
  acc, err = correspondence_accuracy(a, b)
  h, w = a.shape[1:3]
  return dict(accuracy=acc, mean_cell_error=err, chance=1.0 / (h * w), grid=[h, w],
              step=info['step'], num_images=int(a.shape[0]), feature=feature, network=network)


def main(argv=None):
  argv = sys.argv if argv is None else argv
  if cli.wants_help(argv):
    print(FLAGS.main_module_help())
    sys.exit(0)
  try:
    rest = FLAGS(argv)
    if len(rest) > 1:
      raise flags.Error(f'unexpected arguments: {rest[1:]}')
    if not _WORKDIR.value or not _DATA_DIR.value:
      raise flags.Error('--workdir and --data_dir are required')
  except flags.Error as e:
    cli.usage_error(PROG, e)
  tf_setup.hide_accelerators()
  try:
    result = run(_WORKDIR.value, _DATA_DIR.value, step=_STEP.value,
                 network=_NETWORK.value, feature=_FEATURE.value,
                 num_images=_NUM_IMAGES.value, image_size=_IMAGE_SIZE.value,
                 batch_size=_BATCH.value, seed=_SEED.value)
  except (RuntimeError, ValueError, OSError) as e:  # CheckpointError is a RuntimeError.
    cli.fail(PROG, cli.last_line(e))
  print(f'flip test, {result["network"]} encoder of step {result["step"]}, '
        f'{result["feature"]} grid {result["grid"][0]}x{result["grid"][1]}, '
        f'{result["num_images"]} images: correspondence accuracy '
        f'{100 * result["accuracy"]:.1f}% (chance {100 * result["chance"]:.1f}%), '
        f'mean error {result["mean_cell_error"]:.2f} cells')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
