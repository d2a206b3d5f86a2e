"""Mask quality (data_pipeline/masks/quality.py, data_pipeline/mask_quality.py).

DetCon's Average Best Overlap against hand-built cases with known answers, the
demo's class maps and held-out split, the CLI on a tiny demo precompute, and
the precompute manifest's ABO (which must equal the tool's).
"""

import json

import numpy as np
import pytest

from data_pipeline import augment
from data_pipeline import demo_dataset
from data_pipeline import mask_quality
from data_pipeline import records
from data_pipeline.masks import quality
from tests import test_precompute_masks as tpm


def brute_force_best(gt, masks):
  """Best IoU per GT instance (ids > 0), one boolean mask at a time."""
  ids = [i for i in np.unique(gt) if i > 0]
  stack = [m for m in masks] if masks.ndim == 3 else [masks == k for k in np.unique(masks)]
  out = []
  for i in ids:
    g = gt == i
    out.append(max((g & m).sum() / (g | m).sum() for m in stack if m.any()))
  return np.array(out)


# ------------------------------------------------------------ known answers ---

def test_identical_masks_give_one():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 6, (20, 30))
  assert quality.average_best_overlap(gt, gt) == 1.0
  # The ids do not matter, only the regions: a relabelled copy is the same masks.
  relabelled = np.array([7, 300, 2, 9, 41, 5])[gt]
  best, num_masks = quality.image_best_overlaps(gt, relabelled)
  np.testing.assert_array_equal(best, np.ones(5))
  assert num_masks == 6


def test_2x2_grid_on_one_object():
  grid = quality.grid_label_map(16, 16, 2)
  quadrant = np.zeros((16, 16), np.int32)
  quadrant[:8, :8] = 1                      # Exactly the top-left cell.
  assert quality.average_best_overlap(quadrant, grid) == 1.0
  whole = np.ones((16, 16), np.int32)       # Covers every cell: 64 / 256 each.
  assert quality.average_best_overlap(whole, grid) == 0.25
  wide = np.zeros((16, 16), np.int32)
  wide[:8, :12] = 3                         # 96 pixels: TL cell 64 / 96, TR 32 / 128.
  np.testing.assert_allclose(quality.iou_matrix(wide, grid)[0], [2 / 3, 0.25, 0, 0])
  assert quality.average_best_overlap(wide, grid) == pytest.approx(2 / 3)
  # 1 x 1 (SimCLR's global mask): the object's share of the image.
  assert quality.average_best_overlap(wide, quality.grid_label_map(16, 16, 1)) == 96 / 256


@pytest.mark.parametrize('h,w,n', [(16, 16, 2), (7, 10, 3), (128, 128, 5), (33, 17, 4)])
def test_grid_is_the_training_pipelines(h, w, n):
  np.testing.assert_array_equal(quality.grid_label_map(h, w, n),
                                augment.grid_label_map(h, w, n).numpy())


def test_overlapping_masks_are_allowed():
  gt = np.zeros((8, 8), np.int32)
  gt[:4, :4] = 1                                        # Top-left quadrant, 16 px.
  left = np.zeros((8, 8), bool)
  left[:, :4] = True
  top = np.zeros((8, 8), bool)
  top[:4, :] = True
  # Both overlap each other and the object: 16 / 32 each.
  best, k = quality.image_best_overlaps(gt, np.stack([left, top]))
  np.testing.assert_array_equal(best, [0.5])
  assert k == 2
  # A mask covering everything plus the object itself: 1.0; empty masks ignored.
  stack = np.stack([np.ones((8, 8), bool), gt == 1, np.zeros((8, 8), bool)])
  best, k = quality.image_best_overlaps(gt, stack)
  np.testing.assert_array_equal(best, [1.0])
  assert k == 2
  # Overlapping GT instances (a stack) are fine too.
  gts = np.stack([gt == 1, left])
  np.testing.assert_array_equal(quality.image_best_overlaps(gts, np.stack([left, top]))[0],
                                [0.5, 1.0])


def test_fast_paths_agree_with_brute_force():
  rng = np.random.default_rng(1)
  for trial in range(6):
    h, w = rng.integers(5, 40, 2)
    gt = rng.integers(0, 5, (h, w)) * (rng.random((h, w)) < 0.7)
    masks = rng.integers(0, 9, (h, w))
    if trial % 2:
      masks = masks * 100_003 + 7            # Sparse, large ids: the np.unique path.
    want = brute_force_best(gt, masks)
    np.testing.assert_allclose(quality.image_best_overlaps(gt, masks)[0], want)
    # The same masks as an (overlap-capable) stack give the same answer.
    stack = np.stack([masks == k for k in np.unique(masks)])
    np.testing.assert_allclose(quality.image_best_overlaps(gt, stack)[0], want)
    overlapping = rng.random((4, h, w)) < 0.4
    np.testing.assert_allclose(quality.image_best_overlaps(gt, overlapping)[0],
                               brute_force_best(gt, overlapping))


def test_background_is_never_an_instance_and_empty_images_are_counted():
  masks = quality.grid_label_map(8, 8, 2)
  empty = np.zeros((8, 8), np.int32)
  best, k = quality.image_best_overlaps(empty, masks)
  assert best.shape == (0,) and k == 4
  assert np.isnan(quality.average_best_overlap(empty, masks))
  # Background (id 0) matching a mask exactly adds nothing: only id 1 counts.
  gt = np.zeros((8, 8), np.int32)
  gt[:, 4:] = 1                               # Right half: best cell 16 / 32.
  assert quality.average_best_overlap(gt, masks) == 0.5

  stats = quality.AboStats()
  stats.add_image(gt, masks)
  stats.add_image(empty, masks)
  s = stats.summary()
  assert s['num_images'] == 2 and s['num_images_without_instances'] == 1
  assert s['num_instances'] == 1 and s['abo'] == 0.5 and s['abo_per_image'] == 0.5
  assert s['masks_per_image'] == 4.0


def test_pooled_and_per_image_means():
  """ABO pools instances; abo_per_image weighs images equally."""
  grid = quality.grid_label_map(8, 8, 2)
  one = np.zeros((8, 8), np.int32)
  one[:4, :4] = 1                            # 1 instance, best 1.0.
  three = np.zeros((8, 8), np.int32)
  three[:4, :4] = 1                          # 1.0
  three[4:, :] = 2                           # 16 / 32 = 0.5
  three[:4, 4:6] = 3                         # 8 / 16 = 0.5
  stats = quality.AboStats()
  stats.add_image(one, grid)
  stats.add_image(three, grid)
  s = stats.summary()
  assert s['abo'] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
  assert s['abo_per_image'] == pytest.approx((1 + 2 / 3) / 2)
  # Merging per-part sums = adding the images to one (JSON round trip too).
  a, b = quality.AboStats(), quality.AboStats()
  a.add_image(one, grid)
  b.add_image(three, grid)
  merged = quality.AboStats().merge(quality.AboStats.from_json(json.loads(json.dumps(a.to_json()))))
  merged.merge(b)
  assert merged.summary() == s


# ------------------------------------------------------- demo class maps -----

def test_class_map_aligns_with_instances():
  for index in range(10):
    image, gt, classes = demo_dataset.generate_scene_with_classes(index, 0, 64)
    image2, gt2, cls = demo_dataset.generate_labelled_scene(index, 0, 64)
    assert image.tobytes() == image2.tobytes() and gt.tobytes() == gt2.tobytes()
    assert cls.shape == gt.shape and cls.dtype == np.int32
    assert (cls[gt == 0] == 0).all()
    for i in range(1, gt.max() + 1):
      values = np.unique(cls[gt == i])
      assert values.tolist() == [classes[i - 1] + 1]     # One class per object.
      assert 1 <= values[0] < len(demo_dataset.CLASS_NAMES)
  assert demo_dataset.CLASS_NAMES == ('background', 'ellipse', 'rectangle', 'triangle',
                                      'polygon', 'star')


# ------------------------------------------------- precompute and the CLI ----

@pytest.fixture(scope='module')
def demo_masks(tmp_path_factory):
  out = tmp_path_factory.mktemp('demo') / 'masks'
  assert tpm.run(out, '--source=demo', '--num_examples=6', '--image_size=64',
                 '--fh_scales=100,400', '--fh_min_sizes=20,50', '--num_shards=2') == 0
  return out


def test_precompute_stores_class_maps_and_abo(demo_masks):
  manifest, exs = tpm.read_dataset(demo_masks)
  fh_names = [records.fh_mask_name(100, 20, 0.8), records.fh_mask_name(400, 50, 0.8)]
  assert manifest['mask_names'] == fh_names + [records.GT_MASK, records.CLASS_MASK]
  for image_id, image, gt, cls in demo_dataset.iterate_scenes(6, size=64, classes=True):
    ex = exs[image_id]
    np.testing.assert_array_equal(ex['masks'][records.GT_MASK], gt)
    np.testing.assert_array_equal(ex['masks'][records.CLASS_MASK], cls)
  abo = manifest['abo']
  assert abo['num_images'] == 6 and abo['num_images_without_instances'] == 0
  assert sorted(abo['maps']) == sorted(fh_names)
  for name in fh_names:
    stats = quality.AboStats()
    for ex in exs.values():
      stats.add_image(ex['masks']['gt'], ex['masks'][name])
    assert abo['maps'][name]['abo'] == pytest.approx(stats.summary()['abo'], rel=1e-12)
    assert abo['num_instances'] == stats.num_instances


def test_cli_end_to_end_equals_the_manifest(demo_masks, tmp_path, capsys):
  out = tmp_path / 'q.json'
  assert mask_quality.main(['mask_quality', f'--data_dir={demo_masks}', '--grids=1,2',
                            f'--out={out}']) == 0
  text = capsys.readouterr().out
  assert 'grid_2x2' in text and 'images/s' in text
  report = json.loads(out.read_text())
  for key in ('data_dir', 'split', 'gt_map', 'num_images', 'num_images_with_instances',
              'num_images_without_instances', 'num_instances', 'grids', 'definition',
              'rows', 'seconds', 'images_per_s'):
    assert key in report, key
  assert report['num_images'] == 6 and report['split'] == 'train'
  rows = {r['name']: r for r in report['rows']}
  assert [r['kind'] for r in report['rows']] == ['grid', 'grid', 'fh', 'fh', 'gt']
  assert rows['grid_1x1']['masks_per_image'] == 1.0
  assert rows['grid_2x2']['masks_per_image'] == 4.0
  assert rows['gt']['abo'] == 1.0
  assert rows['grid_1x1']['abo'] < rows['grid_2x2']['abo'] < 1.0
  manifest = json.loads((demo_masks / 'manifest.json').read_text())
  assert manifest['abo']['num_instances'] == report['num_instances']
  for name, got in manifest['abo']['maps'].items():
    for key in ('abo', 'abo_per_image', 'masks_per_image'):
      assert got[key] == rows[name][key], (name, key)      # Same sums, same order.
  # A grid by hand on the stored GT agrees with the tool's grid row.
  _, exs = tpm.read_dataset(demo_masks)
  stats = quality.AboStats()
  for ex in exs.values():
    gt = ex['masks']['gt']
    stats.add_image(gt, augment.grid_label_map(*gt.shape, 2).numpy())
  assert rows['grid_2x2']['abo'] == pytest.approx(stats.summary()['abo'], rel=1e-12)

  # --limit, the default output path, and usage errors.
  assert mask_quality.main(['mask_quality', f'--data_dir={demo_masks}', '--limit=2',
                            '--grids=']) == 0
  report = json.loads((demo_masks / 'mask_quality.json').read_text())
  assert report['num_images'] == 2 and [r['kind'] for r in report['rows']][0] == 'fh'
  capsys.readouterr()
  assert mask_quality.main(['mask_quality', f'--data_dir={demo_masks}',
                            '--split=val']) == 1
  assert "holds split 'train'" in capsys.readouterr().err
  assert mask_quality.main(['mask_quality', f'--data_dir={tmp_path}']) == 1
  assert 'no manifest.json' in capsys.readouterr().err
  assert mask_quality.main(['mask_quality']) == 2


def test_held_out_split_shares_no_scene_with_train(demo_masks, tmp_path, capsys):
  val = tmp_path / 'val'
  assert tpm.run(val, '--source=demo', '--split_name=val', '--num_examples=3',
                 '--image_size=64', *tpm.FAST) == 0
  manifest, val_exs = tpm.read_dataset(val)
  assert manifest['split'] == 'val' and 'first=1000000' in manifest['source']
  assert tpm.shard_files(val) == ['val-00000-of-00001.tfrecord']
  first = demo_dataset.SPLIT_FIRST_INDEX['val']
  assert sorted(val_exs) == [demo_dataset.scene_id(first + i) for i in range(3)]
  _, train_exs = tpm.read_dataset(demo_masks)
  assert not set(val_exs) & set(train_exs)
  train_pixels = {tpm.pixels(ex).tobytes() for ex in train_exs.values()}
  for i in range(3):
    ex = val_exs[demo_dataset.scene_id(first + i)]
    image, gt, cls = demo_dataset.generate_labelled_scene(first + i, 0, 64)
    np.testing.assert_array_equal(tpm.pixels(ex), image)
    np.testing.assert_array_equal(ex['masks']['class'], cls)
    assert image.tobytes() not in train_pixels
  assert manifest['abo']['num_images'] == 3
  # Other split names need the first index; with it, any name works.
  capsys.readouterr()
  assert tpm.run(tmp_path / 'x', '--source=demo', '--split_name=holdout',
                 '--num_examples=2', '--image_size=64', *tpm.FAST) == 1
  assert '--demo_first_index' in capsys.readouterr().err
  assert tpm.run(tmp_path / 'y', '--source=demo', '--split_name=holdout',
                 '--demo_first_index=500', '--num_examples=2', '--image_size=64',
                 *tpm.FAST) == 0
  _, exs = tpm.read_dataset(tmp_path / 'y')
  assert sorted(exs) == ['demo/000500', 'demo/000501']
