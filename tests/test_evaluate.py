"""The frozen-feature dense probe: metrics, probe training, determinism, the CLI."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import eval_input
from dense_ssl import checkpoint
from dense_ssl import evaluate
from dense_ssl import probe
from tests import mask_records
from tests import trained_run as trained_run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- metrics ---


def _numpy_metrics(pred, label, k, ignore=None):
  """float64 re-derivation: loops over pixels and classes."""
  cm = np.zeros((k, k), np.float64)
  for p, l in zip(pred.ravel(), label.ravel()):
    if (ignore is not None and l == ignore) or not 0 <= l < k:
      continue
    cm[l, p] += 1
  ious = {}
  for c in range(k):
    if ignore is not None and c == ignore:
      continue
    tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
    if tp + fp + fn > 0:
      ious[c] = tp / (tp + fp + fn)
  return cm, float(np.mean(list(ious.values()))), float(np.trace(cm) / cm.sum()), ious


def test_hand_built_confusion_cases():
  label = np.array([[0, 0, 1, 1, 2, 2]])
  pred = np.array([[0, 1, 1, 1, 2, 0]])
  cm = np.asarray(probe.confusion_matrix(pred, label, 3))
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  m = probe.miou_from_confusion(cm)
  # IoU: 1/(2+2-1), 2/(2+3-2), 1/(2+1-1); mean 0.5; 4 of 6 pixels right.
  np.testing.assert_allclose(m['iou'], [1 / 3, 2 / 3, 1 / 2])
  assert m['miou'] == pytest.approx(0.5) and m['pixel_accuracy'] == pytest.approx(4 / 6)
  assert m['present'] == [0, 1, 2] and m['num_pixels'] == 6
  # A 4th class neither labelled nor predicted has no union: left out.
  m4 = probe.miou_from_confusion(probe.confusion_matrix(pred, label, 4))
  assert m4['iou'][3] is None and m4['miou'] == pytest.approx(0.5)
  # A class predicted but never labelled has union > 0 and IoU 0: counted.
  m5 = probe.miou_from_confusion(probe.confusion_matrix(
      np.array([[0, 3, 1, 1, 2, 2]]), label, 4))
  assert m5['iou'][3] == 0.0 and m5['present'] == [0, 1, 2, 3]
  assert m5['miou'] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)
  # Perfect prediction.
  perfect = probe.miou_from_confusion(probe.confusion_matrix(label, label, 3))
  assert perfect['miou'] == 1.0 and perfect['pixel_accuracy'] == 1.0
  # An out-of-range ignore id (255): those pixels are not counted at all.
  lab255 = np.array([[0, 255, 1, 255, 2, 2]])
  m = probe.miou_from_confusion(probe.confusion_matrix(pred, lab255, 3, 255), 255)
  assert m['num_pixels'] == 4 and m['pixel_accuracy'] == pytest.approx(3 / 4)
  # An in-range ignore id (0 = unlabelled): its pixels are dropped and it is
  # not a class of the mean, even when predicted.
  cm0 = probe.confusion_matrix(pred, label, 3, 0)
  assert int(np.asarray(cm0)[0].sum()) == 0
  m = probe.miou_from_confusion(cm0, 0)
  assert m['iou'][0] is None and m['present'] == [1, 2]
  # class 1: TP 2, FP 0, FN 0 -> 1; class 2: TP 1, FN 1 (predicted 0) -> 1/2.
  assert m['miou'] == pytest.approx(0.75) and m['pixel_accuracy'] == pytest.approx(3 / 4)
  # Padding examples (weight 0) do not count.
  two = probe.confusion_matrix(np.stack([pred[0], pred[0]]), np.stack([label[0], label[0]]),
                               3, None, np.array([1.0, 0.0]))
  np.testing.assert_array_equal(two, cm)
  # Empty matrix: NaN, not a crash.
  assert math.isnan(probe.miou_from_confusion(np.zeros((3, 3)))['miou'])


@pytest.mark.parametrize('ignore', [None, 0, 255])
def test_metrics_match_a_float64_numpy_rederivation(ignore):
  r = np.random.default_rng(3)
  k = 5
  label = r.integers(0, k, (3, 9, 11))
  label[r.random(label.shape) < 0.1] = 255 if ignore == 255 else 0
  pred = np.where(r.random(label.shape) < 0.6, label % k, r.integers(0, k, label.shape))
  pred[pred == 4] = 3   # class 4: labelled, never predicted
  cm = np.asarray(jax.jit(lambda p, l: probe.confusion_matrix(p, l, k, ignore))(pred, label))
  ref_cm, ref_miou, ref_acc, ref_ious = _numpy_metrics(pred, label, k, ignore)
  np.testing.assert_array_equal(cm, ref_cm)
  m = probe.miou_from_confusion(cm, ignore)
  assert m['miou'] == pytest.approx(ref_miou, abs=1e-12)
  assert m['pixel_accuracy'] == pytest.approx(ref_acc, abs=1e-12)
  assert m['present'] == sorted(ref_ious)
  for c, v in ref_ious.items():
    assert m['iou'][c] == pytest.approx(v, abs=1e-12)


def test_probe_forward_is_a_1x1_conv_then_jax_bilinear_resize():
  r = np.random.default_rng(0)
  feats = jnp.asarray(r.normal(size=(2, 4, 5, 7)), jnp.float32)
  params = probe.init_probe(jax.random.PRNGKey(1), 7, 3, scale=1.0)
  params['bias'] = jnp.asarray([0.5, -1.0, 2.0])
  logits = probe.probe_logits(params, feats, (16, 20))
  assert logits.shape == (2, 3, 16, 20)
  ref = np.einsum('bhwc,ck->bhwk', np.asarray(feats, np.float64),
                  np.asarray(params['kernel'], np.float64)) + np.asarray(params['bias'])
  ref = jax.image.resize(jnp.asarray(ref, jnp.float32), (2, 16, 20, 3), 'bilinear')
  np.testing.assert_allclose(logits, np.transpose(ref, (0, 3, 1, 2)), atol=1e-5)
  # The loss is the mean softmax cross-entropy of those logits (float64).
  labels = r.integers(0, 3, (2, 16, 20))
  total, count = probe.probe_loss_sums(params, feats, labels, 3, None)
  lg = np.asarray(logits, np.float64)
  lse = np.log(np.exp(lg).sum(1))
  nll = lse - np.take_along_axis(lg, labels[:, None], 1)[:, 0]
  assert float(count) == labels.size
  assert float(total) == pytest.approx(nll.sum(), rel=1e-5)
  # c4+c5: C5 upsampled bilinearly to C4's grid, concatenated after C4.
  c4, c5 = jnp.ones((2, 4, 4, 3)), jnp.asarray(r.normal(size=(2, 2, 2, 5)), jnp.float32)
  both = probe.combine_features({'c4': c4, 'c5': c5}, 'c4+c5')
  assert both.shape == (2, 4, 4, 8)
  np.testing.assert_allclose(both[..., 3:], jax.image.resize(c5, (2, 4, 4, 5), 'bilinear'))


# ------------------------------------------------------------ probe training ---


def _onehot_case(n, seed, stripes):
  """One-hot class features on an 8x8 grid; labels 4x finer (stripes) or at
  the grid itself."""
  r = np.random.default_rng(seed)
  if stripes:  # Classes constant down each column of cells: 1-D interpolation.
    cls = np.repeat(r.integers(0, 3, (n, 1, 8)), 8, 1)
    labels = np.repeat(np.repeat(cls, 4, 1), 4, 2)
  else:
    cls = r.integers(0, 3, (n, 8, 8))
    labels = cls
  return np.eye(3, dtype=np.float32)[cls], labels.astype(np.int32)


@pytest.mark.parametrize('stripes', [False, True])
def test_linearly_encoded_classes_reach_miou_one(stripes):
  tr = _onehot_case(32, 0, stripes)
  ev = _onehot_case(16, 1, stripes)
  r = evaluate.probe_features(*tr, *ev, steps=100, batch_size=8)
  assert r['miou'] == 1.0 and r['pixel_accuracy'] == 1.0
  assert r['num_classes'] == 3 and r['final_loss'] < r['first_loss']


def test_random_features_stay_near_chance():
  r = np.random.default_rng(5)
  _, ltr = _onehot_case(32, 0, True)
  _, lev = _onehot_case(16, 1, True)
  ftr = r.normal(size=(32, 8, 8, 16)).astype(np.float32)
  fev = r.normal(size=(16, 8, 8, 16)).astype(np.float32)
  res = evaluate.probe_features(ftr, ltr, fev, lev, steps=100, batch_size=8)
  assert res['miou'] < 0.3 and res['pixel_accuracy'] < 0.45


def test_same_seed_same_numbers_and_devices_do_not_matter():
  r = np.random.default_rng(2)
  ftr, ltr = _onehot_case(32, 0, True)
  fev, lev = _onehot_case(16, 1, True)
  # Noisy features, so the probe is neither perfect nor trivial.
  ftr = ftr + r.normal(scale=1.0, size=ftr.shape).astype(np.float32)
  fev = fev + r.normal(scale=1.0, size=fev.shape).astype(np.float32)
  kw = dict(steps=60, batch_size=8, seed=4)
  devices = jax.devices()
  assert len(devices) == 4
  four = evaluate.probe_features(ftr, ltr, fev, lev, mesh=evaluate.make_mesh(devices), **kw)
  again = evaluate.probe_features(ftr, ltr, fev, lev, mesh=evaluate.make_mesh(devices), **kw)
  one = evaluate.probe_features(ftr, ltr, fev, lev, mesh=evaluate.make_mesh(devices[:1]),
                                **kw)
  drop = ('train_s', 'eval_s')
  assert ({k: v for k, v in four.items() if k not in drop}
          == {k: v for k, v in again.items() if k not in drop})
  assert 0.3 < four['miou'] < 1.0
  assert one['miou'] == pytest.approx(four['miou'], abs=1e-3)
  assert one['final_loss'] == pytest.approx(four['final_loss'], rel=1e-4)
  other = evaluate.probe_features(ftr, ltr, fev, lev, steps=60, batch_size=8, seed=5)
  assert other['final_loss'] != four['final_loss']


def test_ignore_index_is_left_out_and_never_predicted():
  ftr, ltr = _onehot_case(16, 0, False)
  fev, lev = _onehot_case(8, 1, False)
  r = evaluate.probe_features(ftr, ltr, fev, lev, steps=50, batch_size=8, ignore=0)
  assert r['iou'][0] is None and r['present'] == [1, 2] and r['miou'] == 1.0
  assert r['num_pixels'] == int((lev != 0).sum())
  assert all(row[0] == 0 for row in r['confusion'])
  with pytest.raises(evaluate.ProbeError, match='outside'):
    evaluate.probe_features(ftr, ltr, fev, lev, steps=1, batch_size=8, num_classes=2)


# ------------------------------------------------------ data and end to end ---


def _class_data(root):
  """A demo dataset with class maps: train and val, each in its own folder
  (as precompute_masks --split_name=val --out_dir=... writes them)."""
  data, val = str(root / 'masks'), str(root / 'masks_val')
  mask_records.write_demo_class_dataset(data, num_examples=16, size=64, num_shards=2)
  mask_records.write_demo_class_dataset(val, num_examples=8, size=64, split='val',
                                        first_index=1_000_000, num_shards=1)
  return data, val


def _cli(args, cwd):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'dense_ssl.evaluate'] + args,
                        capture_output=True, text=True, cwd=cwd, env=env)


def _check_result(r):
  for key in ('miou', 'pixel_accuracy'):
    assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
  assert all(v is None or 0.0 <= v <= 1.0 for v in r['per_class_iou'])
  assert len(r['per_class_iou']) == r['probe']['num_classes'] == 6
  assert r['class_names'] == ['background', 'ellipse', 'rectangle', 'triangle',
                              'polygon', 'star']
  assert r['num_train_images'] == 16 and r['num_eval_images'] == 8
  assert math.isfinite(r['train_loss']['final'])


@pytest.mark.xdist_group(trained_run_lib.XDIST_GROUP)
def test_end_to_end_on_a_trained_checkpoint_and_the_random_floor(trained_run, tmp_path):
  # The real trainer's 2-step DetCon-B workdir (conftest's shared run),
  # copied: the probe writes its results into the workdir.
  data, val = _class_data(tmp_path)
  workdir = trained_run_lib.copy_workdir(trained_run, tmp_path / 'run')

  args = ['--data_dir=masks', '--eval_data_dir=masks_val', '--image_size=64',
          '--steps=20', '--batch_size=8']
  # The CLI: online network of the latest checkpoint, paths relative to the
  # working directory, the default --out.
  done = _cli(['--workdir=run', '--feature=c4+c5'] + args, tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'mIoU' in done.stdout
  r = json.load(open(os.path.join(workdir, 'probe_c4+c5_online.json')))
  _check_result(r)
  assert r['step'] == 2 and r['probe']['network'] == 'online'
  assert r['probe']['feature_grid'] == [4, 4] and r['probe']['feature_channels'] == 768
  assert r['probe']['num_devices'] == 4
  # The floor: a random-init ResNet-10 (its size from the workdir's config),
  # through the API (the CLI's flags are checked above; a process costs CI time).
  evaluate.evaluate_probe(data_dir=data, eval_data_dir=val, workdir=workdir, init='random',
                          feature='c4', image_size=64, steps=20, batch_size=8)
  r = json.load(open(os.path.join(workdir, 'probe_c4_random.json')))
  _check_result(r)
  assert r['step'] is None and r['probe']['init'] == 'random'
  assert r['probe']['depth'] == 10

  # The Python API: the EMA target; same seed, same numbers; 1 vs 4 devices.
  kw = dict(data_dir=data, eval_data_dir=val, workdir=workdir, image_size=64, steps=15,
            batch_size=8, feature='c5', network='target')
  a = evaluate.evaluate_probe(out=str(tmp_path / 'a.json'), **kw)
  b = evaluate.evaluate_probe(out=str(tmp_path / 'b.json'), **kw)
  _check_result(a)
  assert a['probe']['network'] == 'target' and a['probe']['feature_grid'] == [2, 2]
  strip = lambda r: {k: v for k, v in r.items() if k not in ('timing', 'out')}
  assert strip(a) == strip(b)
  assert (strip(json.load(open(tmp_path / 'a.json')))
          == strip(json.load(open(tmp_path / 'b.json'))))
  one = evaluate.evaluate_probe(write=False, devices=jax.devices()[:1], **kw)
  assert one['probe']['num_devices'] == 1
  assert one['miou'] == pytest.approx(a['miou'], abs=1e-3)
  assert one['pixel_accuracy'] == pytest.approx(a['pixel_accuracy'], abs=1e-3)


def test_clear_errors(tmp_path):
  data, val = _class_data(tmp_path)
  # A dataset without the class map (GT only), naming the command that writes it.
  plain = str(tmp_path / 'plain')
  mask_records.write_blocky_dataset(plain, num_examples=4, size=32, num_shards=1)
  with pytest.raises(eval_input.EvalDataError, match="no per-pixel class map 'class'") as e:
    evaluate.evaluate_probe(data_dir=plain, workdir=str(tmp_path), eval_split='train')
  assert 'precompute_masks --source=demo' in str(e.value)
  # A missing split: names the splits there are, and --eval_data_dir.
  with pytest.raises(eval_input.EvalDataError,
                     match=r"split 'val' not found .*\['train'\].*--eval_data_dir"):
    evaluate.evaluate_probe(data_dir=data, workdir=str(tmp_path))
  # A workdir without checkpoints: the CLI's one line, and the API's error.
  done = _cli([f'--workdir={tmp_path / "none"}', f'--data_dir={data}',
               f'--eval_data_dir={val}'], REPO)
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('dense_ssl.evaluate: ERROR: --workdir=') and 'no checkpoints' in last
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoints'):
    evaluate.evaluate_probe(data_dir=data, eval_data_dir=val,
                            workdir=str(tmp_path / 'none'))
  with pytest.raises(evaluate.ProbeError, match='--depth'):
    evaluate.evaluate_probe(data_dir=data, eval_data_dir=val, init='random',
                            out=str(tmp_path / 'x.json'))


def test_split_found_by_shard_names(tmp_path):
  d = str(tmp_path / 'both')
  mask_records.write_demo_class_dataset(d, num_examples=2, size=32, num_shards=1)
  examples = mask_records.demo_class_examples(2, size=32, first_index=1_000_000)
  mask_records.write_mask_dataset(d, examples, num_shards=1, split='val',
                                  write_manifest=False)
  files, manifest = eval_input.split_files(d, 'val')
  assert [os.path.basename(f) for f in files] == ['val-00000-of-00001.tfrecord']
  assert manifest is None
  assert eval_input.available_splits(d) == ['train', 'val']
  batches = list(eval_input.iterate_split(d, 'val', image_size=16, batch_size=4))
  assert batches[0]['image'].shape == (2, 16, 16, 3)
  assert batches[0]['label'].shape == (2, 16, 16) and batches[0]['label'].max() <= 5
  # Labels are resized with nearest: only ids of the original map appear.
  full = list(eval_input.iterate_split(d, 'val', image_size=32, batch_size=4))[0]
  ref = np.stack([e['masks']['class'] for e in examples])
  np.testing.assert_array_equal(full['label'], ref)
  assert set(np.unique(batches[0]['label'])) <= set(np.unique(ref))
