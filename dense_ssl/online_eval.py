"""Online probes: linear heads trained inside the training step on the
stop-gradient representation, so TensorBoard shows whether the features learn
while the run goes on (the BYOL and DetCon releases train such an online
classifier; solo-learn and lightly ship online linear evaluation).

  probes = online_eval.OnlineProbes.from_config(config, manifest)  # None: nothing to probe
  state = train.init_state(method, tx, config, batch, mesh, probes=probes)
  (per device, in the step) params, opt_state, metrics = probes.update(...)
  (host, at each log line) scalars.update(online_eval.window_scalars(logged))

What is probed, where the data has the target (config.online_eval=False: nothing):
  classifier  image labels (`label` [B], the records' image/label): the
              online C5 map of the probed view, mean-pooled, -> a linear
              layer -> softmax cross-entropy. Metric: probe/top1 (of the
              training batch, scored before this step's probe update).
  dense       class maps (`view{k}/class` [B, S, S]): a per-cell linear
              classifier on C4 concatenated with C5 upsampled bilinearly to
              C4's grid (probe.combine_features 'c4+c5'), trained and scored
              at C4's grid (stride 16; the label of a cell is the class map
              at its centre pixel: the full-resolution logits of a 224 px
              view with COCO's 134 classes would take GBs of HBM per step).
              Metrics: the confusion matrix of the step, summed over the
              logging window on the host into probe/pixel_accuracy and
              probe/miou (probe.miou_from_confusion).
The probed view is the first global view the online network runs (view 1;
view 2 for LC-loss alone, whose view 1 is the target's), in train-mode
BatchNorm as the step computes it, behind jax.lax.stop_gradient: no gradient
reaches the encoder, and the self-supervised update is the same with the
probes on or off (tested: bit-identical).

Optimiser: optax.adamw (config.probe_optimizer: LR 1e-3, constant, no weight
decay), with its own state in the TrainState. Not the self-supervised
optimiser: LARS at the SSL learning rate (0.2 x B/256 with warmup and a
cosine decay to 0; 8.0 in the demo) is tuned for the encoder, and its decay
would freeze the probe at the end of the run; a linear probe on features
that keep moving wants a small constant step that adapts to their scale.
"""

import dataclasses
import json
import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dense_ssl import probe
from dense_ssl.models import resnet
from dense_ssl.objectives.base import AXIS, ONLINE

CONFUSION = 'probe/confusion'   # Summed over the logging window, never averaged.
_C4_STRIDE = resnet.FEATURE_STRIDES['c4']


@dataclasses.dataclass(frozen=True)
class OnlineProbes:
  """The probes of one run: which targets, how many classes, which view.

  targets: the subset of ('label', 'class') the data offers and
  config.online_eval asks for; num_labels / num_classes: the classes of the
  image labels / the class maps; view: the probed global view (0-based);
  c4_channels, c5_channels: the encoder's map widths.
  """
  targets: Tuple[str, ...]
  num_labels: int
  num_classes: int
  view: int
  c4_channels: int
  c5_channels: int
  lr: float
  weight_decay: float

  @classmethod
  def from_config(cls, config, manifest, passes):
    """The run's probes, or None (config.online_eval off, or nothing to probe).

    manifest: the mask dataset's (its `label_names` and `class_names`);
    passes: the method's (branch, view) passes (Method.passes).
    """
    if not config.online_eval:
      return None
    targets = []
    num_labels = len(manifest.get('label_names') or ())
    num_classes = len(manifest.get('class_names') or ())
    if num_labels:
      targets.append('label')
    if num_classes and 'class' in (manifest.get('mask_names') or ()):
      targets.append('class')
    online_views = sorted(v for branch, v in passes if branch == ONLINE)
    if not targets or not online_views:
      return None
    channels = resnet.stage_channels(config.model.depth, config.model.width_multiplier)
    o = config.probe_optimizer
    return cls(targets=tuple(targets), num_labels=num_labels, num_classes=num_classes,
               view=online_views[0], c4_channels=channels[2], c5_channels=channels[3],
               lr=float(o.lr), weight_decay=float(o.weight_decay))

  def batch_keys(self):
    """The batch keys the probes read (input_pipeline's probe targets)."""
    keys = []
    if 'label' in self.targets:
      keys.append('label')
    if 'class' in self.targets:
      keys.append(f'view{self.view + 1}/class')
    return tuple(keys)

  def tx(self):
    return optax.adamw(self.lr, weight_decay=self.weight_decay)

  def init(self, rng):
    """{'classifier': {kernel [C5, L], bias}, 'dense': {kernel [C4 + C5, K], bias}}."""
    r1, r2 = jax.random.split(rng)
    params = {}
    if 'label' in self.targets:
      params['classifier'] = probe.init_probe(r1, self.c5_channels, self.num_labels)
    if 'class' in self.targets:
      params['dense'] = probe.init_probe(r2, self.c4_channels + self.c5_channels,
                                         self.num_classes)
    return params

  def update(self, params, opt_state, features, batch):
    """One probe step on this device's batch (the mapped axis AXIS bound).

    features: {'c4', 'c5'} of the probed view (stop-gradient here too).
    Returns (params, opt_state, metrics): the losses and top-1 as global
    batch means, the dense probe's confusion matrix summed over devices.
    """
    feats = {k: jax.lax.stop_gradient(features[k]).astype(jnp.float32)
             for k in ('c4', 'c5')}
    cells = dense_in = scale = None
    if 'class' in self.targets:
      cells = class_at_cells(batch[f'view{self.view + 1}/class'], feats['c4'].shape[1:3])
      dense_in = probe.combine_features(feats, 'c4+c5')
      # Each device's loss sum x devices / global cell count: the pmean of
      # the gradients is then the gradient of the global batch's mean.
      count = jax.lax.psum(jnp.sum(probe.labelled(cells, self.num_classes, None)), AXIS)
      scale = jax.lax.axis_size(AXIS) / jnp.maximum(count, 1.0)

    def loss_fn(p):
      total, metrics = 0.0, {}
      if 'label' in self.targets:
        pooled = feats['c5'].mean(axis=(1, 2))
        logits = pooled @ p['classifier']['kernel'] + p['classifier']['bias']
        labels = batch['label'].astype(jnp.int32)
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        total += ce
        metrics['probe/label_loss'] = ce
        metrics['probe/top1'] = jnp.mean(jnp.argmax(logits, -1) == labels)
      if 'class' in self.targets:
        s, _ = probe.probe_loss_sums(p['dense'], dense_in, cells, self.num_classes, None)
        total += s * scale
        metrics['probe/class_loss'] = s * scale     # Its pmean: the global mean.
      return total, metrics

    varying = jax.lax.pcast(params, AXIS, to='varying')
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(varying)
    grads = jax.lax.pmean(grads, AXIS)
    metrics = {k: jax.lax.pmean(v.astype(jnp.float32), AXIS) for k, v in metrics.items()}
    if 'class' in self.targets:
      pred = probe.probe_predict(params['dense'], dense_in, cells.shape[1:3],
                                 self.num_classes, None)
      metrics[CONFUSION] = jax.lax.psum(
          probe.confusion_matrix(pred, cells, self.num_classes), AXIS)
    updates, opt_state = self.tx().update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def class_at_cells(class_map, grid_hw):
  """class_map [B, S, S] -> int32 [B, h, w]: the class at each cell's centre pixel.

  Cell (i, j) of a stride-s grid covers pixels [s i, s i + s); its centre
  pixel is s i + s // 2 (nearest, like the stored maps).
  """
  h, w = grid_hw
  sy, sx = class_map.shape[1] // h, class_map.shape[2] // w
  return class_map[:, sy // 2::sy, sx // 2::sx][:, :h, :w].astype(jnp.int32)


def window_scalars(logged):
  """The probes' TensorBoard scalars of a logging window from the steps' host metrics.

  `logged`: the steps' metric dicts. The confusion matrices are summed over
  the window (pixel accuracy and mIoU of every cell the probe scored since
  the last line); the other probe metrics are averaged by the caller.
  Returns ({scalar name: value}, the metric dicts without the matrices).
  """
  if not logged or CONFUSION not in logged[-1]:
    return {}, logged
  cm = np.sum([np.asarray(m[CONFUSION], np.int64) for m in logged], axis=0)
  scores = probe.miou_from_confusion(cm)
  rest = [{k: v for k, v in m.items() if k != CONFUSION} for m in logged]
  return {'probe/pixel_accuracy': scores['pixel_accuracy'],
          'probe/miou': scores['miou']}, rest



class HeldOutEval:
  """The held-out evaluation of the online encoder, as a clu periodic action.

  Every config.eval_every_steps steps and at the last one (and at step 0 of
  a fresh run: the random-init floor), on process 0 over its local devices
  (the other processes wait for it in their next step's collectives):
    eval/probe_miou, eval/probe_pixel_accuracy: the frozen-feature dense
      probe of dense_ssl/evaluate.py (its protocol, config.eval: feature,
      steps, LR), trained on the first config.eval.probe_train_images of
      config.data.dir and scored on config.eval_data_dir, where both store
      class maps;
    eval/knn_top1 (and eval/knn_top5 with >= 5 classes): kNN on mean-pooled
      C5 (dense_ssl/knn.py, k = config.eval.knn_k, T = knn_temperature), the
      bank the first probe_train_images of config.data.dir, the queries
      config.eval_data_dir, where both store image labels;
    eval/*_floor: the same numbers of the step-0 encoder (the random
      init), kept in WORKDIR/eval_floor.json so a resumed run logs them too.
  """

  def __init__(self, config, workdir, total_steps):
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
    self.config = config
    self.floor_path = os.path.join(workdir, 'eval_floor.json')
    manifest = input_pipeline.read_manifest(config.eval_data_dir)
    train_manifest = input_pipeline.read_manifest(config.data.dir)
    self.eval_split = manifest.get('split', 'val')
    both = lambda f: bool(f(manifest)) and bool(f(train_manifest))
    self.dense = both(lambda m: 'class' in (m.get('mask_names') or ()))
    self.num_labels = len(train_manifest.get('label_names') or ())
    self.knn = both(lambda m: m.get('label_names'))
    self.action = periodic_actions.PeriodicCallback(
        every_steps=int(config.eval_every_steps), on_steps=[total_steps],
        callback_fn=self.evaluate, pass_step_and_time=True)

  def encoder(self, state, step):
    """(model, variables, info) of the state's online encoder, on this host."""
    from dense_ssl.models import resnet  # pylint: disable=g-import-not-at-top
    local = lambda tree: jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
    variables = {'params': local(state.online_params['encoder']),
                 'batch_stats': local(state.online_batch_stats['encoder'])}
    m = self.config.model
    model = resnet.ResNet(depth=int(m.depth), width_multiplier=int(m.width_multiplier),
                          bn_axis_name=None)
    info = dict(init='training', network='online', step=int(step), depth=int(m.depth),
                width_multiplier=int(m.width_multiplier))
    return model, variables, info

  def evaluate(self, step, t, state):
    """{eval/* scalar: value} of the encoder at `step` (process 0 only; {} elsewhere)."""
    del t
    if jax.process_index() != 0:
      return {}
    from dense_ssl import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
    c, e = self.config, self.config.eval
    encoder = self.encoder(state, step)
    scalars = {}
    if self.dense:
      report = evaluate_lib.evaluate_probe(
          data_dir=c.data.dir, train_split=c.data.split, eval_data_dir=c.eval_data_dir,
          eval_split=self.eval_split, feature=e.feature, image_size=int(c.data.image_size),
          steps=int(e.probe_steps), batch_size=int(e.batch_size),
          learning_rate=float(e.probe_lr), seed=int(c.seed),
          max_train_images=int(e.probe_train_images), write=False,
          devices=jax.local_devices(), encoder=encoder)
      scalars.update({'eval/probe_miou': report['miou'],
                      'eval/probe_pixel_accuracy': report['pixel_accuracy']})
    if self.knn:
      scalars.update(self.knn_scalars(encoder))
    if step == 0:
      with open(self.floor_path, 'w') as f:
        json.dump(scalars, f)
    if os.path.exists(self.floor_path):
      with open(self.floor_path) as f:
        scalars.update({f'{k}_floor': v for k, v in json.load(f).items()})
    return scalars

  def knn_scalars(self, encoder):
    """eval/knn_top1 (and top5) of the encoder's mean-pooled C5 (dense_ssl/knn.py)."""
    from data_pipeline import eval_input  # pylint: disable=g-import-not-at-top
    from dense_ssl import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
    from dense_ssl import knn  # pylint: disable=g-import-not-at-top
    c, e = self.config, self.config.eval
    model, variables, _ = encoder
    mesh = evaluate_lib.make_mesh(jax.local_devices())
    read = dict(image_size=int(c.data.image_size), batch_size=int(e.batch_size))

    def pooled(data_dir, split, limit):
      feats, labels = evaluate_lib.extract_features(
          model, variables, eval_input.iterate_image_labels(data_dir, split,
                                                            max_examples=limit, **read),
          'c5', mesh, int(e.batch_size))
      return feats.mean(axis=(1, 2)), labels

    bank, bank_labels = pooled(c.data.dir, c.data.split, int(e.probe_train_images))
    queries, query_labels = pooled(c.eval_data_dir, self.eval_split, None)
    scores = knn.knn_accuracy(bank, bank_labels, queries, query_labels,
                              num_classes=self.num_labels, k=int(e.knn_k),
                              temperature=float(e.knn_temperature))
    return {f'eval/knn_{k}': v for k, v in scores.items()}
