"""Online probes (dense_ssl/online_eval.py): what they learn, and what they leave alone.

  * a probe reaches 100% on features that encode the answer (one-hot) and
    chance on random ones (the classifier and the dense probe);
  * the self-supervised update of the trainer's step is bit-identical with
    the probes on or off (the gradient stops at the encoder);
  * 1 and 4 devices give the same probe update and metrics;
  * the window's confusion matrices add up before mIoU is taken.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from configs import detcon_b
from dense_ssl import method as method_lib
from dense_ssl import online_eval
from dense_ssl import optim
from dense_ssl import train
from dense_ssl.models import resnet
from dense_ssl.objectives.base import AXIS, ONLINE
from tests.fake_data import fake_batch


def probes_of(targets=('label', 'class'), num_labels=4, num_classes=3, c4=8, c5=8, lr=0.05):
  return online_eval.OnlineProbes(targets=tuple(targets), num_labels=num_labels,
                                  num_classes=num_classes, view=0, c4_channels=c4,
                                  c5_channels=c5, lr=lr, weight_decay=0.0)


def run_updates(probes, feats, batch, steps, num_devices=4):
  """`steps` probe updates on one fixed global batch -> (params, metrics of each step)."""
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (AXIS,))
  params = probes.init(jax.random.PRNGKey(0))
  opt_state = probes.tx().init(params)

  def per_device(params, opt_state, feats, batch):
    return probes.update(params, opt_state, feats, batch)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS)),
                             out_specs=(P(), P(), P())))
  history = []
  for _ in range(steps):
    params, opt_state, metrics = fn(params, opt_state, feats, batch)
    history.append(jax.device_get(metrics))
  return jax.device_get(params), history


def encoded(labels, class_map, *, noise, rng):
  """C4 [B, 4, 4, 8] / C5 [B, 2, 2, 8] maps that hold the answers one-hot (+ noise)."""
  r = np.random.default_rng(rng)
  b = labels.shape[0]
  c5 = np.zeros((b, 2, 2, 8), np.float32)
  c5[np.arange(b), :, :, labels] = 1.0          # Pooled C5: the image's label.
  cells = np.asarray(online_eval.class_at_cells(class_map, (4, 4)))
  c4 = np.eye(8, dtype=np.float32)[cells]       # Each cell: its class, one-hot.
  if noise:
    c4, c5 = (r.normal(size=c4.shape).astype(np.float32),
              r.normal(size=c5.shape).astype(np.float32))
  return {'c4': jnp.asarray(c4), 'c5': jnp.asarray(c5)}


def labelled_batch(n, rng):
  r = np.random.default_rng(rng)
  coarse = r.integers(0, 3, size=(n, 4, 4))
  class_map = np.repeat(np.repeat(coarse, 16, 1), 16, 2).astype(np.uint8)   # [n, 64, 64]
  return {'label': r.integers(0, 4, size=(n,)).astype(np.int32), 'view1/class': class_map}


def test_probes_learn_what_the_features_hold_and_nothing_from_noise():
  batch = labelled_batch(32, 0)
  probes = probes_of()
  _, history = run_updates(probes, encoded(batch['label'], batch['view1/class'], noise=False,
                                           rng=0), batch, steps=150)
  last = history[-1]
  assert last['probe/top1'] == 1.0
  scores = online_eval.window_scalars([last])[0]
  assert scores['probe/pixel_accuracy'] == 1.0 and scores['probe/miou'] == 1.0
  assert last['probe/label_loss'] < history[0]['probe/label_loss']
  # Random features, random labels: the next batch's answers are chance.
  train_batch, test_batch = labelled_batch(32, 1), labelled_batch(512, 2)
  params, _ = run_updates(probes, encoded(train_batch['label'], train_batch['view1/class'],
                                          noise=True, rng=1), train_batch, steps=50)
  feats = encoded(test_batch['label'], test_batch['view1/class'], noise=True, rng=2)
  logits = feats['c5'].mean(axis=(1, 2)) @ params['classifier']['kernel']
  top1 = float(np.mean(np.argmax(logits + params['classifier']['bias'], -1)
                       == test_batch['label']))
  assert 0.1 < top1 < 0.45                       # Chance: 0.25.


def test_one_device_equals_four():
  batch = labelled_batch(8, 3)
  feats = encoded(batch['label'], batch['view1/class'], noise=True, rng=3)
  p1, h1 = run_updates(probes_of(), feats, batch, steps=3, num_devices=1)
  p4, h4 = run_updates(probes_of(), feats, batch, steps=3, num_devices=4)
  for a, b in zip(h1, h4):
    np.testing.assert_array_equal(a[online_eval.CONFUSION], b[online_eval.CONFUSION])
    for k in ('probe/top1', 'probe/label_loss', 'probe/class_loss'):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p4)


def test_window_sums_the_confusion_matrices():
  a = {online_eval.CONFUSION: np.array([[3, 1], [0, 0]]), 'probe/top1': 0.5}
  b = {online_eval.CONFUSION: np.array([[0, 0], [2, 2]]), 'probe/top1': 1.0}
  scores, rest = online_eval.window_scalars([a, b])
  # Summed: [[3, 1], [2, 2]]: accuracy 5/8; IoU 3/6 and 2/5.
  np.testing.assert_allclose(scores['probe/pixel_accuracy'], 5 / 8)
  np.testing.assert_allclose(scores['probe/miou'], (3 / 6 + 2 / 5) / 2)
  assert rest == [{'probe/top1': 0.5}, {'probe/top1': 1.0}]


def test_the_self_supervised_update_is_the_same_with_the_probes():
  config = detcon_b.get_config('test')
  mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
  method = method_lib.Method(config)
  tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 10, 0))
  batch = dict(fake_batch(8, 4), **labelled_batch(8, 4))
  local = {k: v.reshape((4, -1) + v.shape[1:]) for k, v in batch.items()}
  hyper = optim.step_hyperparameters(config, 10, 0)
  channels = resnet.stage_channels(config.model.depth)[2:]   # C4, C5.
  probes = online_eval.OnlineProbes(
      targets=('label', 'class'), num_labels=4, num_classes=3,
      view=min(v for b, v in method.passes if b == ONLINE), c4_channels=channels[0],
      c5_channels=channels[1], lr=1e-3, weight_decay=0.0)
  out = {}
  for name, p in (('off', None), ('on', probes)):
    state = train.init_state(method, tx, config, local, mesh, probes=p)
    step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                    mesh, seed=config.seed, data_config=config.data,
                                    probes=p)
    out[name] = jax.device_get(step(state, train.global_batch(local, mesh), hyper(0)))
  (off, m_off), (on, m_on) = out['off'], out['on']
  for field in ('online_params', 'online_batch_stats', 'target_params', 'target_batch_stats',
                'opt_state', 'rng', 'step'):
    jax.tree.map(np.testing.assert_array_equal, getattr(off, field), getattr(on, field))
  for k, v in m_off.items():
    np.testing.assert_array_equal(v, m_on[k])
  assert off.probe_params == {} and set(on.probe_params) == {'classifier', 'dense'}
  assert 0 <= m_on['probe/top1'] <= 1 and m_on[online_eval.CONFUSION].sum() == 8 * 4 * 4


def test_a_labelled_run_logs_its_probes_and_the_held_out_ones_against_the_floor(
    labelled_data_dir, tmp_path):
  """The trainer on labelled data with class maps (tests/mask_records.py's
  blocky images: image labels and class maps): the online classifier and
  dense probe every logged step; the held-out dense probe and kNN at step 0
  (the floor), at eval_every_steps and at the end; all in TensorBoard.

  The run is configs/odin.py:test (DetCon-B on masks discovered in the step,
  no precomputed mask read), which also scores its discovery against the GT
  instances (discovery/abo) on the same schedule: the real run of Odin's
  config (tests/test_odin.py has the rest of its tests).
  """
  from configs import odin  # pylint: disable=g-import-not-at-top
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  from tests.test_train import read_event_scalars  # pylint: disable=g-import-not-at-top
  val = str(tmp_path / 'val')
  mask_records.write_blocky_dataset(val, num_examples=8, size=80, num_shards=1, seed=1,
                                    split='val', labelled=True)
  config = odin.get_config('test')
  config.data.dir = labelled_data_dir
  config.update(total_steps=3, eval_every_steps=2, eval_data_dir=val)
  config.discovery.quality_every_steps = 2
  workdir = str(tmp_path / 'run')
  out = train.train_and_evaluate(config, workdir)
  m = out['metrics']
  assert out['finished'] and np.isfinite(m['train/detcon_loss'])
  assert 1 < m['train/discovery_clusters'] <= config.discovery.num_clusters
  scalars = read_event_scalars(workdir)
  steps = lambda tag: [s for s, _ in scalars[tag]]
  for tag in ('probe/top1', 'probe/miou', 'probe/pixel_accuracy', 'probe/label_loss',
              'probe/class_loss'):
    assert steps(tag) == [1, 2, 3], tag
  for tag in ('eval/probe_miou', 'eval/probe_pixel_accuracy', 'eval/knn_top1',
              'eval/probe_miou_floor', 'eval/knn_top1_floor', 'discovery/abo',
              'discovery/masks_per_image'):
    assert steps(tag) == [0, 2, 3], tag
  assert all(0 < v <= 1 for _, v in scalars['discovery/abo'])
  values = {t: [v for _, v in scalars[t]] for t in scalars}
  assert all(0 <= v <= 1 for t in values if t.startswith(('probe/top1', 'eval/'))
             for v in values[t])
  # The floor is the step-0 evaluation, logged again beside every later one.
  assert values['eval/probe_miou_floor'] == [values['eval/probe_miou'][0]] * 3


def test_the_held_out_evaluation_needs_targets_both_datasets_share(labelled_data_dir,
                                                                  tmp_path):
  from configs import byol  # pylint: disable=g-import-not-at-top
  from dense_ssl import config_check  # pylint: disable=g-import-not-at-top
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  plain, labelled = str(tmp_path / 'plain'), str(tmp_path / 'labelled')
  mask_records.write_blocky_dataset(plain, num_examples=4, size=32, num_shards=1,
                                    split='val')
  mask_records.write_blocky_dataset(labelled, num_examples=4, size=32, num_shards=1,
                                    split='val', labelled=True)
  config = byol.get_config('test')
  config.data.dir = labelled_data_dir
  config.update(eval_every_steps=2, eval_data_dir=plain)
  found = config_check.problems(config)
  assert len(found) == 1 and found[0].startswith(f'config.eval_data_dir={plain!r}: the '
                                                 'held-out evaluation')
  config.eval_data_dir = labelled
  assert config_check.problems(config) == []
  config.eval_data_dir = ''
  assert config_check.problems(config, check_data=False) == [
      'config.eval_every_steps=2: needs config.eval_data_dir, a held-out mask dataset '
      'with class maps or image labels (python -m data_pipeline.precompute_masks '
      '--split_name=val ...), or set it to 0']
