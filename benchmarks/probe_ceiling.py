r"""What the frozen-feature probe can see: a supervised encoder through the same probe.

  python -m benchmarks.probe_ceiling --data_dir=DIR --eval_data_dir=DIR_VAL \
      [--depth=18 --image_size=128 --steps=0,250,1000 --batch_size=32]

A diagnostic for the dense probe (dense_ssl/evaluate.py): when an
SSL checkpoint scores no better than a random-init encoder, is the probe
unable to read class information from C4 at this size and budget, or did the
pretraining not put it there? This script answers the first half. It trains
the encoder end to end, *supervised*, on the training split's class maps
(ResNet -> C4 -> 1x1 convolution -> bilinear upsampling -> per-pixel softmax
cross-entropy: the probe's own head, Adam with cosine decay, horizontal flips,
BatchNorm in training mode), then throws that head away, freezes the encoder
and runs the unchanged probe protocol (`evaluate.probe_features`: a fresh
linear classifier on the standardised frozen features, scored on the
held-out split). Rows: the encoder after each of --steps supervised steps
(0 = the random-init floor, the same encoder `--init=random` builds).

A supervised encoder is not a baseline for SSL (it sees the labels); it is
the ceiling of what a ResNet of this size, trained this long on these
scenes, can make linearly readable at C4. Writes a markdown table to --out.
"""

import json
import time

from absl import app
from absl import flags

from benchmarks import common

_DATA = flags.DEFINE_string('data_dir', None, 'Training split (with class maps).',
                            required=True)
_EVAL = flags.DEFINE_string('eval_data_dir', None, 'Held-out split (default: data_dir).')
_DEPTH = flags.DEFINE_integer('depth', 18, 'ResNet depth.')
_SIZE = flags.DEFINE_integer('image_size', 128, 'Image size (training and probe).')
_STEPS = flags.DEFINE_list('steps', ['0', '250', '1000'],
                           'Supervised steps at which the probe is run (0 = random init).')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Supervised batch size.')
_LR = flags.DEFINE_float('learning_rate', 1e-3, 'Supervised Adam learning rate (peak).')
_PROBE_STEPS = flags.DEFINE_integer('probe_steps', 500, 'Probe training steps.')
_TRAIN_SPLIT = flags.DEFINE_string('train_split', 'train', 'Split read from --data_dir.')
_EVAL_SPLIT = flags.DEFINE_string('eval_split', 'val', 'Split read from --eval_data_dir.')
_FEATURE = flags.DEFINE_string('feature', 'c4', 'Probed feature (c4, c5, c4+c5).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed (encoder init, batches, probe).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/probe_ceiling.md', 'Table file.')


def load_split(data_dir, split, image_size):
  """(images float32 [N, S, S, 3] normalised, class labels int32 [N, S, S])."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import eval_input  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  for b in eval_input.iterate_split(data_dir, split, image_size=image_size, batch_size=64):
    images.append(b['image'])
    labels.append(b['label'])
  return np.concatenate(images), np.concatenate(labels)


def make_supervised_step(model, num_classes, tx):
  """jit (state, opt_state, images, labels) -> (state, opt_state, loss); state =
  (encoder params, batch_stats, probe head)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top

  def loss_fn(params, batch_stats, head, images, labels):
    feats, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                 train=True, mutable=['batch_stats'])
    x = probe.combine_features(feats, _FEATURE.value)
    total, count = probe.probe_loss_sums(head, x, labels, num_classes, None)
    return total / count, updates['batch_stats']

  @jax.jit
  def step(state, opt_state, images, labels):
    params, batch_stats, head = state
    (loss, batch_stats), (g, gh) = jax.value_and_grad(
        loss_fn, argnums=(0, 2), has_aux=True)(params, batch_stats, head, images, labels)
    updates, opt_state = tx.update((g, gh), opt_state, (params, head))
    params, head = optax.apply_updates((params, head), updates)
    return (params, batch_stats, head), opt_state, loss

  return step


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from dense_ssl import evaluate  # pylint: disable=g-import-not-at-top
  from dense_ssl import probe  # pylint: disable=g-import-not-at-top
  from dense_ssl.models import resnet  # pylint: disable=g-import-not-at-top

  t_start = time.perf_counter()
  size, bs = _SIZE.value, _BATCH.value
  eval_dir = _EVAL.value or _DATA.value
  train_x, train_y = load_split(_DATA.value, _TRAIN_SPLIT.value, size)
  eval_x, eval_y = load_split(eval_dir, _EVAL_SPLIT.value, size)
  num_classes = evaluate.infer_num_classes([train_y, eval_y])
  checkpoints = sorted({int(s) for s in _STEPS.value})

  # The random-init encoder exactly as `evaluate --init=random --seed` builds it.
  model, variables, _ = evaluate.build_encoder(
      init='random', depth=_DEPTH.value, width_multiplier=1, seed=_SEED.value,
      image_size=size)
  train_model = resnet.ResNet(depth=_DEPTH.value, width_multiplier=1, bn_axis_name=None)
  channels = evaluate.make_extractor(model, _FEATURE.value, evaluate.make_mesh(
      jax.devices()[:1]))(variables, train_x[:1]).shape[-1]
  head = probe.init_probe(jax.random.PRNGKey(_SEED.value + 100), channels, num_classes)
  total = max(checkpoints)
  tx = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, _LR.value, max(1, total // 20), max(total, 1)))
  state = (variables['params'], variables['batch_stats'], head)
  opt_state = tx.init((state[0], state[2]))
  step_fn = make_supervised_step(train_model, num_classes, tx)
  order = evaluate.batch_indices(len(train_x), bs, max(total, 1), _SEED.value)
  flips = np.random.default_rng([_SEED.value, 3]).random((max(total, 1), bs)) < 0.5
  mesh = evaluate.make_mesh()

  rows, losses, t_train = [], [], 0.0
  for s in range(total + 1):
    if s in checkpoints:
      enc = {'params': state[0], 'batch_stats': state[1]}
      t0 = time.perf_counter()
      tf_ = evaluate.extract_features(model, enc, _batches(train_x, train_y, 64),
                                      _FEATURE.value, mesh, 64)
      ef_ = evaluate.extract_features(model, enc, _batches(eval_x, eval_y, 64),
                                      _FEATURE.value, mesh, 64)
      r = evaluate.probe_features(*tf_, *ef_, num_classes=num_classes,
                                  steps=_PROBE_STEPS.value, batch_size=64,
                                  seed=_SEED.value, mesh=mesh)
      rows.append(dict(step=s, miou=r['miou'], pixel_accuracy=r['pixel_accuracy'],
                       iou=r['iou'], sup_loss=float(np.mean(losses[-20:])) if losses else None,
                       probe_s=time.perf_counter() - t0))
      print(json.dumps(rows[-1]), flush=True)
    if s == total:
      break
    idx = order[s]
    x, y = train_x[idx], train_y[idx]
    x = np.where(flips[s][:, None, None, None], x[:, :, ::-1], x)
    y = np.where(flips[s][:, None, None], y[:, :, ::-1], y)
    t0 = time.perf_counter()
    state, opt_state, loss = step_fn(state, opt_state, x, y)
    losses.append(float(loss))
    t_train += time.perf_counter() - t0

  lines = [
      '# Probe ceiling: a supervised encoder through the frozen-feature probe', '',
      f'{common.machine_line()} ResNet-{_DEPTH.value}, {size} px, {len(train_x)} train /'
      f' {len(eval_x)} val images of {_DATA.value} / {eval_dir}; supervised: batch {bs},'
      f' Adam peak LR {_LR.value}, cosine, flips, the probe\'s head on'
      f' {_FEATURE.value}; probe: the fixed protocol of dense_ssl/evaluate.py,'
      f' {_PROBE_STEPS.value} steps, seed {_SEED.value}. Supervised training'
      f' {t_train:.0f} s, total {time.perf_counter() - t_start:.0f} s.', '',
      '| supervised steps (0 = random init) | supervised loss (last 20 steps) |'
      ' probe mIoU | pixel acc. | per-class IoU |',
      '|---:|---:|---:|---:|---|']
  for r in rows:
    loss = '-' if r['sup_loss'] is None else f'{r["sup_loss"]:.3f}'
    ious = ' '.join('-' if v is None else f'{v:.2f}' for v in r['iou'])
    lines.append(f'| {r["step"]} | {loss} | {r["miou"]:.1%} | {r["pixel_accuracy"]:.1%} |'
                 f' {ious} |')
  common.write_table('\n'.join(lines) + '\n', _OUT.value)


def _batches(x, y, n):
  for i in range(0, len(x), n):
    yield dict(image=x[i:i + n], label=y[i:i + n])


if __name__ == '__main__':
  app.run(main)
