"""The trainer: optimiser masks and schedules, bfloat16 compute, exact resume,
NaN stop, and one real step of each method through the real pipeline.

Runs on 4 simulated CPU devices (conftest.py).
"""

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from configs import byol, clove, detcon_b, detcon_s, simclr
from dense_ssl import convert
from dense_ssl import method as method_lib
from dense_ssl import optim
from dense_ssl import train
from dense_ssl.objectives.base import AXIS
from tests import trained_run as trained_run_lib
from tests.fake_data import fake_batch

CONFIGS = dict(byol=byol, simclr=simclr, detcon_b=detcon_b, detcon_s=detcon_s, clove=clove)


def override(config, **overrides):
  """Sets dotted keys ('optimizer.base_lr'=...) of a config; returns it."""
  for k, v in overrides.items():
    node = config
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return config


def make_config(name, data_dir='', **overrides):
  c = CONFIGS[name].get_config('test')
  c.data.dir = data_dir
  return override(c, **overrides)


# ------------------------------------------------------------------- optim ---

def test_decay_mask_excludes_biases_and_batchnorm():
  config = make_config('byol')
  method = method_lib.Method(config)
  # jit: op-by-op init and update of a ResNet cost seconds on a busy CPU.
  params = jax.jit(method.init)(jax.random.key(0), fake_batch(2, 0))['online']['params']
  mask = optim.decay_mask(params)
  flat = {'/'.join(str(k.key) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat['encoder/conv1/kernel']
  assert flat['encoder/layer1_0/conv2/kernel']
  assert flat['projector/linear1/kernel']
  for name in ('encoder/bn1/scale', 'encoder/bn1/bias', 'encoder/layer4_0/bn2/scale',
               'projector/bn1/bias', 'projector/linear1/bias', 'predictor/linear2/bias'):
    assert not flat[name], name
  # With zero gradients LARS only applies weight decay: masked leaves stay put.
  tx = optim.make_optimizer(config, lambda s: 1.0)
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                                  params)
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    name = '/'.join(str(k.key) for k in path)
    if flat[name]:
      assert float(jnp.abs(u).max()) > 0, name
    else:
      assert float(jnp.abs(u).max()) == 0, name


def test_learning_rate_schedule_and_steps():
  config = make_config('detcon_b', batch_size=512, total_steps=0, total_epochs=10.0,
                       warmup_epochs=1.0, **{'optimizer.base_lr': 0.2})
  total, warmup, per_epoch = optim.steps_from_config(config, num_examples=5120)
  assert (total, warmup, per_epoch) == (100, 10, 10.0)
  lr = optim.learning_rate_schedule(config, total, warmup)
  peak = 0.2 * 512 / 256
  np.testing.assert_allclose(float(lr(0)), 0.0)
  np.testing.assert_allclose(float(lr(5)), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(lr(55)), peak / 2, rtol=1e-6)  # Cosine midpoint.
  np.testing.assert_allclose(float(lr(100)), 0.0, atol=1e-7)
  config.total_steps = 7
  assert optim.steps_from_config(config, 5120)[0] == 7


def test_ema_tau_schedule():
  base = 0.996
  np.testing.assert_allclose(float(optim.ema_tau(0, 100, base)), base, rtol=1e-7)
  np.testing.assert_allclose(float(optim.ema_tau(50, 100, base)), 1 - 0.004 / 2, rtol=1e-7)
  np.testing.assert_allclose(float(optim.ema_tau(100, 100, base)), 1.0, rtol=1e-7)
  k = 30
  want = 1 - (1 - base) * (np.cos(np.pi * k / 100) + 1) / 2
  np.testing.assert_allclose(float(optim.ema_tau(k, 100, base)), want, rtol=1e-7)


# ---------------------------------------------------- devices and the step ---

def one_step(config, batch, num_devices):
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (AXIS,))
  method = method_lib.Method(config)
  schedule = optim.learning_rate_schedule(config, 10, 0)
  tx = optim.make_optimizer(config, schedule)
  local = {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}
  state = train.init_state(method, tx, config, local, mesh)
  before = jax.device_get(state)
  step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh, seed=config.seed, data_config=config.data)
  hyper = optim.step_hyperparameters(config, 10, 0)
  state, metrics = step(state, train.global_batch(local, mesh), hyper(0))
  return before, jax.device_get(state), jax.device_get(metrics)


# 1 vs 4 devices (same global batch: same loss and update; cross-replica BN,
# gathers, pmean), each a full train step: CLoVE with uint8 views coloured in
# the step, local crops and BYOL's EMA, with MoCo's queue, ReSim-C4's negatives
# gathered over devices and DetCon on Odin's discovered masks, in one step
# (tests/test_dense_objectives.py::test_composed_one_device_equals_four_devices), DetCon-B with
# 2 processes x 2 devices vs 1 x 4 (tests/test_multiprocess.py); DetCon's
# gathered negatives (DetCon-S's too) in tests/test_losses.py.


# ------------------------------------------- the whole trainer, real data ---

# Real steps: BYOL's in test_workdir_of_another_run_is_refused (and
# test_faults'), SimCLR's (one network, colour on the host) in the NaN test.


def test_kill_and_resume_is_exact(labelled_data_dir, tmp_path, caplog):
  """Every dense objective composed on DetCon-B (MoCo's queue, LC, SCRL,
  ReSim-FPN), through the real pipeline with LC's colour-only first view, on
  masks discovered in the step (Odin, dense_ssl/discovery.py):
  2 + 2 steps == 4 steps, bit for bit,
  objective state included; and each objective's real step did its work.

  This one run is also the real step of LC-loss, SCRL and ReSim-FPN (their
  configs' float64 checks: test_method.py, test_dense_objectives.py): one
  program for all of them instead of one per config.
  """
  config = make_config('detcon_b', labelled_data_dir, total_steps=4, ckpt_every_steps=2,
                       **{'optimizer.base_lr': 1.0, 'objectives.moco.weight': 0.5,
                          'objectives.lc.weight': 0.1, 'objectives.scrl.weight': 0.5,
                          'objectives.resim.weight': 1.0,
                          'objectives.resim.variant': 'fpn',
                          # LC-loss's views: view 1 colour only (lc_byol.py).
                          'data.view_modes': ('color_only', 'crop'),
                          'data.mask': 'discovered'})
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))
  m = full['metrics']
  for name in ('moco_loss', 'lc_loss', 'scrl_loss', 'resim_loss', 'detcon_loss'):
    assert np.isfinite(m[f'train/{name}']), name
  assert m['train/lc_valid_pairs'] > 0
  assert m['train/scrl_valid_boxes_per_image'] > 0
  assert m['train/resim_p3_valid_windows_per_image'] > 0
  assert m['train/discovery_clusters'] > 1
  part = train.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_after_steps=2)
  assert part['step'] == 2 and not part['finished']
  with caplog.at_level(logging.INFO):
    resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert 'resuming from step 2' in caplog.text
  assert resumed['finished'] and resumed['step'] == 4
  a, b = jax.device_get(full['state']), jax.device_get(resumed['state'])
  for x, y in [(a.online_params, b.online_params), (a.target_params, b.target_params),
               (a.opt_state, b.opt_state), (a.online_batch_stats, b.online_batch_stats),
               (a.method_state, b.method_state), (a.probe_params, b.probe_params),
               (a.probe_opt_state, b.probe_opt_state)]:
    jax.tree.map(np.testing.assert_array_equal, x, y)
  assert full['metrics']['train/loss'] == resumed['metrics']['train/loss']
  # The online probes (the blocky data has labels and class maps) resume too.
  assert set(b.probe_params) == {'classifier', 'dense'}
  assert full['metrics']['probe/miou'] == resumed['metrics']['probe/miou']
  moco = b.method_state['moco']
  batch = config.batch_size
  assert int(moco['pointer']) == 4 * batch % moco['queue'].shape[0]
  np.testing.assert_allclose(np.linalg.norm(moco['queue'], axis=-1), 1.0, rtol=1e-5)
  # The heads each objective adds are trained and checkpointed; the target
  # network has LC's local projector but no predictor.
  assert {'local_projector', 'fpn'} <= set(b.online_params)
  assert 'local_projector' in b.target_params and 'predictor' not in b.target_params
  fpn = b.online_params['fpn']
  assert sorted(fpn) == ['lateral_3', 'lateral_4', 'lateral_5', 'output_3', 'output_4']
  # ReSim-FPN's FPN reaches Detectron2's names. Detectron2's depth table has
  # no ResNet-10 (the test preset's): the custom-depth switch.
  report = convert.convert(str(tmp_path / 'resumed'), 'detectron2', str(tmp_path / 'r.pkl'),
                           verify=False, log=lambda *_: None,
                           allow_custom_detectron2_depth=True)
  names = set(report['export'].tensors)
  assert {'fpn_lateral3.weight', 'fpn_lateral5.bias', 'fpn_output4.weight'} <= names
  assert 'fpn_output5.weight' not in names
  # A finished run says so and does nothing.
  with caplog.at_level(logging.INFO):
    again = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert again['finished'] and 'training is finished' in caplog.text


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path,
                                                              monkeypatch):
  """SimCLR's real steps (one network, no target), colour on the host (the
  other data.color_on path, through the trainer): float views from the
  start, so the NaN batch below runs the same step program (uint8 views
  would compile a second one for it)."""
  config = make_config('simclr', data_dir, total_steps=5, ckpt_every_steps=1,
                       **{'data.color_on': 'host'})
  real = train.global_batch
  calls = []

  def poisoned(local_batch, mesh):
    calls.append(1)
    if len(calls) == 3:  # Step 3 sees NaN pixels.
      local_batch = dict(local_batch)
      assert local_batch['view1/image'].dtype == np.float32   # Coloured on the host.
      local_batch['view1/image'] = np.full(local_batch['view1/image'].shape, np.nan,
                                           np.float32)
    return real(local_batch, mesh)

  monkeypatch.setattr(train, 'global_batch', poisoned)
  with pytest.raises(train.NonFiniteLossError, match='step 3.*last good checkpoint'):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps[-1] == 2
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['name'] == 'simclr'


def test_workdir_of_another_run_is_refused(data_dir, tmp_path):
  config = make_config('byol', data_dir, total_steps=1)
  out = train.train_and_evaluate(config, str(tmp_path))
  assert out['finished'] and out['step'] == 1      # BYOL's one real step.
  assert np.isfinite(out['metrics']['train/loss'])
  assert os.path.isdir(tmp_path / 'checkpoints' / '1')
  other = make_config('simclr', data_dir, total_steps=1)
  with pytest.raises(ValueError, match=r'config.objectives.byol.weight=1.0 but this run has 0.0'):
    train.train_and_evaluate(other, str(tmp_path))


@pytest.mark.xdist_group(trained_run_lib.XDIST_GROUP)
def test_the_run_writes_its_scalars_through_one_writer(trained_run):
  # The trainer's clu writer: TensorBoard event files, read back with
  # TensorFlow's own reader, a value per logged step (the test preset logs
  # every step).
  scalars = read_event_scalars(trained_run.workdir)
  assert [s for s, _ in scalars['train/loss']] == list(range(1, trained_run_lib.STEPS + 1))
  assert all(np.isfinite(v) for _, v in scalars['train/loss'])
  assert {'train/learning_rate', 'train/tau', 'train/epoch', 'perf/step_time_s'} <= set(scalars)


def read_event_scalars(workdir):
  """{tag: sorted [(step, value)]} of a workdir's event files, read with TensorFlow's reader."""
  import glob  # pylint: disable=g-import-not-at-top
  from data_pipeline import tf_setup  # pylint: disable=g-import-not-at-top
  tf = tf_setup.import_tensorflow()
  scalars = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        scalars.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
  return {k: sorted(v) for k, v in scalars.items()}
