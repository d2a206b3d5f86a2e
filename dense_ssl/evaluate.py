r"""Frozen-feature dense probe: per-pixel linear classification of encoder features.

  # held-out demo scenes (with the `class` map), in their own folder:
  python -m data_pipeline.precompute_masks --source=demo --split_name=val \
      --num_examples=500 --out_dir=out/demo/masks_val
  python -m dense_ssl.evaluate --workdir=out/demo/detcon_b --data_dir=out/demo/masks \
      --eval_data_dir=out/demo/masks_val --feature=c4 --image_size=128
  python -m dense_ssl.evaluate --workdir=out/demo/detcon_b --init=random ...  # the floor

The encoder of a checkpoint (dense_ssl.checkpoint.restore_encoder:
--network=online|target, --step=N, default the latest; any method, the
encoder is always at the same place in the TrainState), or with --init=random
a freshly initialised ResNet (the trainer's initialisers: torchvision's conv
init, zero-init last BN of each block, BN statistics 0/1; seeded by --seed;
the size from the workdir's config.json or --depth/--width_multiplier), runs
frozen in eval mode (BatchNorm running statistics). The protocol
(dense_ssl/probe.py has the math):

  1. images of --train_split and --eval_split (data_pipeline/eval_input.py):
     centre square crop, resize to --image_size (bilinear), ImageNet
     normalisation; the per-pixel class map `class` cropped and resized with
     nearest; no augmentation;
  2. features extracted once, data-parallel over every device (the trainer's
     1-D mesh 'batch'): --feature c2..c5, or c4+c5 (C5 upsampled
     bilinearly to C4's grid and concatenated); standardised per channel
     with the training split's mean and std;
  3. a linear classifier (1x1 conv with bias) trained on the training
     features for --steps steps of --batch_size images (Adam, learning rate
     --learning_rate cosine-decayed to 0, softmax cross-entropy over the
     labelled pixels of the logits upsampled bilinearly to the label
     resolution, gradients pmean'ed over devices), examples drawn in seeded
     epoch permutations;
  4. on the eval split: argmax per pixel, confusion matrix, mIoU over the
     classes with a non-zero union, pixel accuracy, per-class IoU.

Every id in [0, K) is a class (the demo's 0 = background included);
--ignore_index=ID leaves pixels labelled ID out of the loss and metrics (and
never predicts ID). K is --num_classes, else the number of class names the
dataset declares (the demo: 6), else the largest id in the two splits + 1.
Results go to --out, by default WORKDIR/probe_<feature>_<network>.json
(`random` for --init=random). Same seed, same devices: the same numbers.
"""

import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from absl import flags
from absl import logging

from data_pipeline import tf_setup
from dense_ssl import cli

PROG = 'dense_ssl.evaluate'
FLAGS = flags.FlagValues()

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints, config.json).',
                               flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Mask dataset with a `class` map.',
                                flag_values=FLAGS)
_EVAL_DATA_DIR = flags.DEFINE_string(
    'eval_data_dir', None, 'Dataset of --eval_split if not --data_dir (a split '
    'written to its own folder).', flag_values=FLAGS)
_FEATURE = flags.DEFINE_enum('feature', 'c4', ['c2', 'c3', 'c4', 'c5', 'c4+c5'],
                             'Encoder map(s) to probe.', flag_values=FLAGS)
_NETWORK = flags.DEFINE_enum('network', 'online', ['online', 'target'], 'Which encoder.',
                             flag_values=FLAGS)
_INIT = flags.DEFINE_enum('init', 'checkpoint', ['checkpoint', 'random'],
                          'random: the seeded initial network (the floor).',
                          flag_values=FLAGS)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).',
                             flag_values=FLAGS)
_TRAIN_SPLIT = flags.DEFINE_string('train_split', 'train', 'Split the probe trains on.',
                                   flag_values=FLAGS)
_EVAL_SPLIT = flags.DEFINE_string('eval_split', 'val', 'Held-out split it is scored on.',
                                  flag_values=FLAGS)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square side images are resized to.',
                                   flag_values=FLAGS)
_CROP = flags.DEFINE_enum('crop', 'center', ['center', 'none'],
                          'center: central square first; none: stretch.', flag_values=FLAGS)
_STEPS = flags.DEFINE_integer('steps', 1000, 'Probe training steps.', flag_values=FLAGS)
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Images per probe step and per '
                              'feature-extraction batch (a multiple of the devices).',
                              flag_values=FLAGS)
_LR = flags.DEFINE_float('learning_rate', 0.01, 'Adam peak learning rate (cosine to 0).',
                         flag_values=FLAGS)
_SEED = flags.DEFINE_integer('seed', 0, 'Probe init, batch order, random encoder.',
                             flag_values=FLAGS)
_IGNORE = flags.DEFINE_integer('ignore_index', None, 'Label id of unlabelled pixels '
                               '(left out of loss and metrics).', flag_values=FLAGS)
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, "Classes (default: the dataset's, else largest id + 1).",
    flag_values=FLAGS)
_DEPTH = flags.DEFINE_integer('depth', None, '--init=random without a workdir: ResNet depth.',
                              flag_values=FLAGS)
_WIDTH = flags.DEFINE_integer('width_multiplier', None, '--init=random: ResNet width.',
                              flag_values=FLAGS)
_MAX_TRAIN = flags.DEFINE_integer('max_train_images', None, 'Use the first N training images.',
                                  flag_values=FLAGS)
_MAX_EVAL = flags.DEFINE_integer('max_eval_images', None, 'Use the first N eval images.',
                                 flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'JSON result (default WORKDIR/probe_<feature>_'
                           '<network>.json).', flag_values=FLAGS)


class ProbeError(ValueError):
  """The probe cannot run as asked; the message says what to do."""


# ----------------------------------------------------------------------------
# The mesh, the encoder and feature extraction.
# ----------------------------------------------------------------------------


def make_mesh(devices=None):
  """The trainer's 1-D mesh (axis 'batch') over `devices` (default: all)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top
  return Mesh(np.asarray(list(devices or jax.devices())), (AXIS,))


def build_encoder(*, workdir=None, init='checkpoint', network='online', step=None,
                  depth=None, width_multiplier=None, seed=0, image_size=224,
                  log=None):
  """(model, variables, info): the frozen encoder and where it came from.

  The one encoder loader of the tools that read a checkpoint (evaluate,
  flip_test, benchmarks). A fall back past damaged steps (the latest
  truncated, say) goes to `log` in checkpoint.fallback_lines' words and into
  info['skipped_steps'].

  init='checkpoint' restores `network` of `step` (latest if None) from
  workdir; 'random' initialises ResNet(depth, width) with PRNGKey(seed) folded
  with 1 (the sizes from the arguments, else the workdir's config.json).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dense_ssl import checkpoint  # pylint: disable=g-import-not-at-top
  from dense_ssl.models import resnet  # pylint: disable=g-import-not-at-top
  model_cfg = ((checkpoint.read_config(workdir) or {}).get('model') or {}) if workdir else {}
  depth = depth if depth is not None else model_cfg.get('depth')
  width = (width_multiplier if width_multiplier is not None
           else model_cfg.get('width_multiplier', 1))
  if init == 'checkpoint':
    if not workdir:
      raise ProbeError('--workdir is required (or --init=random with --depth).')
    encoder = checkpoint.restore_encoder(workdir, step, network)
    for line in checkpoint.fallback_lines(encoder):
      (log or logging.warning)(line)
    if model_cfg.get('depth') is None:
      raise ProbeError(f'{workdir}/config.json has no model.depth: cannot build '
                       'the encoder')
    depth, width = model_cfg['depth'], model_cfg.get('width_multiplier', 1)
    variables = {'params': encoder.params, 'batch_stats': encoder.batch_stats}
    info = dict(init='checkpoint', network=network, step=int(encoder.step),
                skipped_steps=[int(s) for s, _ in encoder.skipped])
  elif init == 'random':
    if depth is None:
      raise ProbeError('--init=random needs the ResNet size: --depth (and '
                       '--width_multiplier), or a --workdir with config.json.')
    model = resnet.ResNet(depth=int(depth), width_multiplier=int(width))
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    variables = jax.jit(lambda r: model.init(
        r, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False))(rng)
    variables = jax.device_get(variables)
    info = dict(init='random', network='random', step=None)
  else:
    raise ProbeError(f'--init={init!r}: choose checkpoint or random')
  model = resnet.ResNet(depth=int(depth), width_multiplier=int(width), bn_axis_name=None)
  info.update(depth=int(depth), width_multiplier=int(width))
  return model, variables, info


def _per_device(mesh, batch_size):
  n = mesh.devices.size
  if batch_size % n:
    raise ProbeError(f'--batch_size={batch_size} is not divisible by the {n} '
                     f'devices; choose a multiple of {n}.')


def make_extractor(model, feature, mesh):
  """jit(shard_map) (variables, images [B, S, S, 3]) -> features [B, h, w, C]."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top

  def per_device(variables, images):
    return probe.combine_features(model.apply(variables, images, train=False), feature)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(AXIS)))


def extract_features(model, variables, batches, feature, mesh, batch_size):
  """Runs the frozen encoder over `batches` (dicts of image, label, numpy).

  Every batch is padded to batch_size (one compiled shape) and the padding
  dropped. Returns (features float32 [N, h, w, C], labels int32 [N, S, S]).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top
  _per_device(mesh, batch_size)
  fn = make_extractor(model, feature, mesh)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  sharding = NamedSharding(mesh, P(AXIS))
  feats, labels = [], []
  for batch in batches:
    images = np.asarray(batch['image'], np.float32)
    n = images.shape[0]
    if n > batch_size:
      raise ValueError(f'a batch of {n} images exceeds batch_size={batch_size}')
    if n < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:],
                                                images.dtype)])
    out = fn(variables, jax.device_put(images, sharding))
    feats.append(np.asarray(out)[:n])
    labels.append(np.asarray(batch['label'], np.int32))
  if not feats:
    raise ProbeError('no images read')
  return np.concatenate(feats), np.concatenate(labels)


# ----------------------------------------------------------------------------
# Probe training and scoring on precomputed features.
# ----------------------------------------------------------------------------


def batch_indices(num_examples, batch_size, steps, seed):
  """int [steps, batch_size]: epochs of seeded permutations, read in order."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, 7])
  need = steps * batch_size
  epochs = [rng.permutation(num_examples) for _ in range(math.ceil(need / num_examples))]
  return np.concatenate(epochs)[:need].reshape(steps, batch_size)


def make_train_step(tx, num_classes, ignore, mesh):
  """jit(shard_map) (params, opt_state, feats, labels) -> (params, opt_state, loss).

  Per device: the gradient of (its loss sum) x devices / (global labelled
  pixels); their pmean is the gradient of the global batch's mean loss.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top

  def per_device(params, opt_state, feats, labels):
    count = jax.lax.psum(jnp.sum(probe.labelled(labels, num_classes, ignore)), AXIS)
    scale = jax.lax.axis_size(AXIS) / jnp.maximum(count, 1.0)

    def loss_fn(p):
      total, _ = probe.probe_loss_sums(p, feats, labels, num_classes, ignore)
      return total * scale

    varying = jax.lax.pcast(params, AXIS, to='varying')
    loss, grads = jax.value_and_grad(loss_fn)(varying)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, AXIS)

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(), P(AXIS), P(AXIS)),
                               out_specs=(P(), P(), P())),
                 donate_argnums=(0, 1))


def make_scorer(num_classes, ignore, mesh):
  """jit(shard_map) (params, feats, labels, weights) -> confusion [K, K] (psum)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top

  def per_device(params, feats, labels, weights):
    pred = probe.probe_predict(params, feats, labels.shape[1:3], num_classes, ignore)
    cm = probe.confusion_matrix(pred, labels, num_classes, ignore, weights)
    return jax.lax.psum(cm, AXIS)

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                               out_specs=P()))


def train_probe(feats, labels, *, num_classes, ignore=None, steps=1000, batch_size=64,
                learning_rate=0.01, seed=0, mesh=None):
  """Trains the linear probe on features [N, h, w, C] and labels [N, H, W].

  Returns (params as numpy, dict(first_loss, final_loss)).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top
  mesh = mesh or make_mesh()
  _per_device(mesh, batch_size)
  if steps < 1:
    raise ProbeError(f'--steps={steps}: at least 1')
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  repl = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P(AXIS))
  params = probe.init_probe(jax.random.fold_in(jax.random.PRNGKey(seed), 2),
                            feats.shape[-1], num_classes)
  params = jax.device_put(params, repl)
  opt_state = jax.device_put(tx.init(params), repl)
  step_fn = make_train_step(tx, num_classes, ignore, mesh)
  losses = []
  for idx in batch_indices(feats.shape[0], batch_size, steps, seed):
    idx = np.sort(idx)  # faster gathers; the set, not the order, matters
    params, opt_state, loss = step_fn(
        params, opt_state, jax.device_put(feats[idx], sharded),
        jax.device_put(labels[idx].astype(np.int32), sharded))
    # One step in flight: XLA:CPU runs each simulated device's part on a
    # shared thread pool, and a long queue of steps with all-reduces can
    # starve one device's part past the 40 s rendezvous timeout (an abort,
    # seen under load with 4 simulated devices).
    losses.append(float(loss))
  return jax.device_get(params), dict(first_loss=losses[0], final_loss=losses[-1])


def score_probe(params, feats, labels, *, num_classes, ignore=None, batch_size=64,
                mesh=None):
  """Confusion matrix (int64 [K, K], rows true) of the probe on feats/labels."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top
  mesh = mesh or make_mesh()
  _per_device(mesh, batch_size)
  fn = make_scorer(num_classes, ignore, mesh)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  sharded = NamedSharding(mesh, P(AXIS))
  cm = np.zeros((num_classes, num_classes), np.int64)
  for i in range(0, feats.shape[0], batch_size):
    f, l = feats[i:i + batch_size], labels[i:i + batch_size].astype(np.int32)
    n = f.shape[0]
    weights = np.zeros((batch_size,), np.float32)
    weights[:n] = 1.0
    if n < batch_size:
      f = np.concatenate([f, np.zeros((batch_size - n,) + f.shape[1:], f.dtype)])
      l = np.concatenate([l, np.zeros((batch_size - n,) + l.shape[1:], l.dtype)])
    cm += np.asarray(fn(params, jax.device_put(f, sharded), jax.device_put(l, sharded),
                        jax.device_put(weights, sharded)), np.int64)
  return cm


def infer_num_classes(label_arrays, ignore=None):
  """Largest id (other than `ignore`) in the label arrays + 1."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  top = -1
  for labels in label_arrays:
    ids = np.unique(labels)
    if ignore is not None:
      ids = ids[ids != ignore]
    if ids.size:
      top = max(top, int(ids.max()))
  if top < 0:
    raise ProbeError('the class maps hold no labelled pixel')
  return top + 1


def probe_features(train_feats, train_labels, eval_feats, eval_labels, *,
                   num_classes=None, ignore=None, steps=1000, batch_size=64,
                   learning_rate=0.01, seed=0, mesh=None) -> Dict[str, Any]:
  """Steps 2 (standardisation) to 4 of the protocol on precomputed features.

  Returns dict(miou, pixel_accuracy, iou, present, num_pixels, num_classes,
  confusion, first_loss, final_loss, train_s, eval_s).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  mesh = mesh or make_mesh()
  if num_classes is None:
    num_classes = infer_num_classes([train_labels, eval_labels], ignore)
  for name, labels in (('training', train_labels), ('eval', eval_labels)):
    ids = np.unique(labels)
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if ignore is not None:
      bad = bad[bad != ignore]
    if bad.size:
      raise ProbeError(f'the {name} class maps hold ids {bad.tolist()[:5]} outside '
                       f'[0, {num_classes}): raise --num_classes or set --ignore_index.')
  mean, std = probe.channel_stats(train_feats)
  train_feats = probe.standardise(train_feats, mean, std)
  eval_feats = probe.standardise(eval_feats, mean, std)
  t0 = time.perf_counter()
  params, losses = train_probe(train_feats, train_labels, num_classes=num_classes,
                               ignore=ignore, steps=steps, batch_size=batch_size,
                               learning_rate=learning_rate, seed=seed, mesh=mesh)
  t1 = time.perf_counter()
  cm = score_probe(params, eval_feats, eval_labels, num_classes=num_classes,
                   ignore=ignore, batch_size=batch_size, mesh=mesh)
  t2 = time.perf_counter()
  metrics = probe.miou_from_confusion(cm, ignore)
  return dict(metrics, num_classes=int(num_classes), confusion=cm.tolist(), **losses,
              train_s=t1 - t0, eval_s=t2 - t1)


# ----------------------------------------------------------------------------
# The whole evaluation, and the command.
# ----------------------------------------------------------------------------


def default_out(workdir, feature, network):
  return os.path.join(workdir, f'probe_{feature}_{network}.json')


def evaluate_probe(*, data_dir: str, workdir: Optional[str] = None, feature: str = 'c4',
                   network: str = 'online', init: str = 'checkpoint',
                   step: Optional[int] = None, train_split: str = 'train',
                   eval_split: str = 'val', eval_data_dir: Optional[str] = None,
                   image_size: int = 224, crop: str = 'center', steps: int = 1000,
                   batch_size: int = 64, learning_rate: float = 0.01, seed: int = 0,
                   ignore_index: Optional[int] = None, num_classes: Optional[int] = None,
                   depth: Optional[int] = None, width_multiplier: Optional[int] = None,
                   max_train_images: Optional[int] = None,
                   max_eval_images: Optional[int] = None,
                   out: Optional[str] = None, devices: Optional[Sequence[Any]] = None,
                   write: bool = True, log=None, encoder=None) -> Dict[str, Any]:
  """The frozen-feature dense probe of one encoder (module docstring).

  Returns the result dict that is written as JSON to `out` (default
  WORKDIR/probe_<feature>_<network|random>.json; with no workdir and no out,
  nothing is written). `devices`: the mesh's devices (default: all).
  Raises ProbeError / eval_input.EvalDataError / checkpoint.CheckpointError
  (one-line messages) for unusable inputs. encoder: (model, variables, info)
  as build_encoder returns them, to probe an encoder in memory (the
  trainer's held-out evaluation) instead of one built from workdir / init.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import eval_input  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  if feature not in probe.FEATURES:
    raise ProbeError(f'--feature={feature!r}: choose one of {probe.FEATURES}')
  if jax.process_count() > 1 and devices is None:
    raise ProbeError('the probe runs in one process (all its local devices)')
  eval_data_dir = eval_data_dir or data_dir
  t_start = time.perf_counter()
  mesh = make_mesh(devices)
  _per_device(mesh, batch_size)
  # The data first: its errors are cheaper than a restore.
  for d, s in ((data_dir, train_split), (eval_data_dir, eval_split)):
    files, manifest = eval_input.split_files(d, s)
    eval_input.check_class_map(d, s, files, manifest)
  model, variables, info = encoder or build_encoder(
      workdir=workdir, init=init, network=network, step=step, depth=depth,
      width_multiplier=width_multiplier, seed=seed, image_size=image_size, log=log)
  read = dict(image_size=image_size, batch_size=batch_size, crop=crop)
  train_feats, train_labels = extract_features(
      model, variables, eval_input.iterate_split(data_dir, train_split,
                                                 max_examples=max_train_images, **read),
      feature, mesh, batch_size)
  eval_feats, eval_labels = extract_features(
      model, variables, eval_input.iterate_split(eval_data_dir, eval_split,
                                                 max_examples=max_eval_images, **read),
      feature, mesh, batch_size)
  extract_s = time.perf_counter() - t_start
  names = eval_input.class_names(eval_data_dir, eval_split)
  if num_classes is None and names is not None:
    num_classes = len(names)  # the dataset's classes, even if some are absent
  result = probe_features(train_feats, train_labels, eval_feats, eval_labels,
                          num_classes=num_classes, ignore=ignore_index, steps=steps,
                          batch_size=batch_size, learning_rate=learning_rate,
                          seed=seed, mesh=mesh)
  k = result['num_classes']
  if names is not None and len(names) != k:
    names = None
  label = info['network']
  if out is None and workdir:
    out = default_out(workdir, feature, label)
  report = dict(
      miou=result['miou'], pixel_accuracy=result['pixel_accuracy'],
      per_class_iou=result['iou'], class_names=names,
      classes_in_miou=result['present'], step=info['step'],
      num_train_images=int(train_feats.shape[0]),
      num_eval_images=int(eval_feats.shape[0]), num_eval_pixels=result['num_pixels'],
      train_loss=dict(first=result['first_loss'], final=result['final_loss']),
      confusion=result['confusion'],
      probe=dict(
          feature=feature, network=info['network'], init=info['init'], step=info['step'],
          depth=info['depth'], width_multiplier=info['width_multiplier'],
          workdir=workdir and os.path.abspath(workdir), data_dir=os.path.abspath(data_dir),
          eval_data_dir=os.path.abspath(eval_data_dir), train_split=train_split,
          eval_split=eval_split, image_size=image_size, crop=crop,
          feature_grid=list(train_feats.shape[1:3]), feature_channels=int(train_feats.shape[-1]),
          num_classes=k, ignore_index=ignore_index,
          classifier='linear 1x1 conv with bias on per-channel standardised features; '
                     'logits bilinearly upsampled to the label resolution',
          feature_combination=('C5 bilinearly upsampled to the C4 grid, concatenated '
                               'after C4' if feature == 'c4+c5' else None),
          loss='softmax cross-entropy, mean over labelled pixels',
          optimizer='adam', learning_rate=learning_rate, schedule='cosine to 0',
          steps=steps, batch_size=batch_size, seed=seed,
          miou_convention='mean IoU over classes with a non-zero union (TP+FP+FN>0) '
                          'in the eval split, ignore_index excluded',
          num_devices=int(mesh.devices.size)),
      timing=dict(extract_s=round(extract_s, 3), train_s=round(result['train_s'], 3),
                  eval_s=round(result['eval_s'], 3),
                  total_s=round(time.perf_counter() - t_start, 3)),
      out=out and os.path.abspath(out))
  if write and out:
    tmp = out + '.tmp'
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=1)
    os.replace(tmp, out)
  return report


def main(argv=None):
  argv = sys.argv if argv is None else argv
  if cli.wants_help(argv):
    print(FLAGS.main_module_help())
    sys.exit(0)
  try:
    rest = FLAGS(argv)
    if len(rest) > 1:
      raise flags.Error(f'unexpected arguments: {rest[1:]}')
    if not _DATA_DIR.value:
      raise flags.Error('--data_dir is required')
    if _INIT.value == 'checkpoint' and not _WORKDIR.value:
      raise flags.Error('--workdir is required (or --init=random with --depth)')
    if not _WORKDIR.value and not _OUT.value:
      raise flags.Error('--out is required without --workdir')
  except flags.Error as e:
    cli.usage_error(PROG, e)
  tf = tf_setup.hide_accelerators()
  try:
    r = evaluate_probe(
        data_dir=_DATA_DIR.value, workdir=_WORKDIR.value, feature=_FEATURE.value,
        network=_NETWORK.value, init=_INIT.value, step=_STEP.value,
        train_split=_TRAIN_SPLIT.value, eval_split=_EVAL_SPLIT.value,
        eval_data_dir=_EVAL_DATA_DIR.value, image_size=_IMAGE_SIZE.value,
        crop=_CROP.value, steps=_STEPS.value, batch_size=_BATCH.value,
        learning_rate=_LR.value, seed=_SEED.value, ignore_index=_IGNORE.value,
        num_classes=_NUM_CLASSES.value, depth=_DEPTH.value,
        width_multiplier=_WIDTH.value, max_train_images=_MAX_TRAIN.value,
        max_eval_images=_MAX_EVAL.value, out=_OUT.value,
        log=lambda line: print(f'{PROG}: {line}', file=sys.stderr, flush=True))
  # CheckpointError is a RuntimeError; EvalDataError and ProbeError ValueErrors;
  # a damaged shard a tf.errors.DataLossError (an OpError).
  except (RuntimeError, ValueError, OSError, tf.errors.OpError) as e:
    message = getattr(e, 'message', None) or str(e)
    cli.fail(PROG, message.strip().splitlines()[0])
  p = r['probe']
  which = ('random-init encoder' if p['init'] == 'random'
           else f'{p["network"]} encoder of step {p["step"]}')
  print(f'dense probe, {which}, {p["feature"]} {p["feature_grid"][0]}x'
        f'{p["feature_grid"][1]}x{p["feature_channels"]}, {p["num_classes"]} classes, '
        f'{r["num_train_images"]} {p["train_split"]} -> {r["num_eval_images"]} '
        f'{p["eval_split"]} images: mIoU {100 * r["miou"]:.1f}%, pixel accuracy '
        f'{100 * r["pixel_accuracy"]:.1f}% ({r["timing"]["total_s"]:.0f} s); '
        f'wrote {r["out"]}')


if __name__ == '__main__':
  main()
