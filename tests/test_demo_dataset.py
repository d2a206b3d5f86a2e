"""The demo scenes: deterministic, meaningful objects, consistent GT, and the CLI."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from data_pipeline import demo_dataset
from data_pipeline import make_demo_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_same_scene_same_bytes_whatever_the_order():
  a_image, a_gt = demo_dataset.generate_scene(5, seed=3)
  for i in range(5):
    demo_dataset.generate_scene(i, seed=3)
  b_image, b_gt = demo_dataset.generate_scene(5, seed=3)
  assert a_image.tobytes() == b_image.tobytes()
  assert a_gt.tobytes() == b_gt.tobytes()
  ids = [i for i, _, _ in demo_dataset.iterate_scenes(3, seed=3, start=4)]
  assert ids == ['demo/000004', 'demo/000005', 'demo/000006']
  _, it_image, it_gt = list(demo_dataset.iterate_scenes(2, seed=3, start=4))[1]
  assert it_image.tobytes() == a_image.tobytes()
  assert it_gt.tobytes() == a_gt.tobytes()


def test_seeds_and_indices_give_different_scenes():
  a, _ = demo_dataset.generate_scene(5, seed=3)
  assert a.tobytes() != demo_dataset.generate_scene(5, seed=4)[0].tobytes()
  assert a.tobytes() != demo_dataset.generate_scene(6, seed=3)[0].tobytes()


@pytest.mark.parametrize('size', [64, 128])
def test_scene_structure(size):
  seen_kinds = set()
  for index in range(12):
    image, gt, classes = demo_dataset.generate_scene_with_classes(index, 0, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert gt.shape == (size, size) and gt.dtype == np.int32
    ids = np.unique(gt)
    n = int(ids.max())
    assert 3 <= n <= 8, (index, n)
    # Background present, object ids consecutive 1..N, one class per object.
    np.testing.assert_array_equal(ids, np.arange(n + 1))
    assert classes.shape == (n,) and classes.max() < len(demo_dataset.SHAPES)
    seen_kinds.update(classes.tolist())
    counts = np.bincount(gt.ravel())
    assert counts[1:].min() >= demo_dataset.MIN_VISIBLE_PIXELS
  assert len(seen_kinds) >= 4


def test_objects_stand_out_from_the_background_around_them():
  """Mean colour inside an object vs the background in a 3-pixel ring around it."""
  distinct = total = 0
  for index in range(16):
    image, gt = demo_dataset.generate_scene(index, size=64)
    image = image.astype(np.float32)
    for i in range(1, gt.max() + 1):
      inside = gt == i
      ring = ndimage.binary_dilation(inside, iterations=3) & (gt == 0)
      if ring.sum() < 10:  # Surrounded by other objects.
        continue
      total += 1
      if np.abs(image[inside].mean(0) - image[ring].mean(0)).max() > 30:
        distinct += 1
  assert total > 40 and distinct / total > 0.9, (distinct, total)


def test_small_sizes_are_refused():
  with pytest.raises(ValueError, match='size >= 32'):
    demo_dataset.generate_scene(0, size=16)


def test_cli_writes_a_folder_that_reads_back_identically(tmp_path, capsys):
  out = tmp_path / 'demo'
  # A separate process: also checks the scenes do not depend on the process.
  subprocess.run([sys.executable, '-m', 'data_pipeline.make_demo_dataset',
                  f'--out_dir={out}', '--num_examples=5', '--seed=1', '--image_size=64'],
                 cwd=ROOT, check=True, capture_output=True)
  for i in range(5):
    image, gt, cls = demo_dataset.generate_labelled_scene(i, 1, 64)
    read_image = Image.open(out / 'images' / f'demo_{i:06d}.png')
    read_gt = Image.open(out / 'gt' / f'demo_{i:06d}.png')
    read_cls = Image.open(out / 'class' / f'demo_{i:06d}.png')
    assert read_image.mode == 'RGB' and read_gt.mode == 'I;16'
    np.testing.assert_array_equal(np.asarray(read_image), image)
    np.testing.assert_array_equal(np.asarray(read_gt).astype(np.int32), gt)
    np.testing.assert_array_equal(np.asarray(read_cls).astype(np.int32), cls)
  # Idempotent: a re-run keeps the 5 and writes only the new one.
  argv = ['make_demo_dataset', f'--out_dir={out}', '--num_examples=6', '--seed=1',
          '--image_size=64']
  assert make_demo_dataset.main(argv) == 0
  assert '1 written, 5 already there' in capsys.readouterr().out
  assert sorted(os.listdir(out / 'images')) == [f'demo_{i:06d}.png' for i in range(6)]
  assert make_demo_dataset.main(['make_demo_dataset']) == 2  # No --out_dir.
  capsys.readouterr()
  assert make_demo_dataset.main(argv[:2] + ['--first_index=-1']) == 1   # Refused value.
  assert '--first_index=-1 must be >= 0' in capsys.readouterr().err
  # Held-out scenes: another index range, other files.
  assert make_demo_dataset.main(argv[:2] + ['--num_examples=2', '--first_index=1000000',
                                            '--seed=1', '--image_size=64']) == 0
  assert '2 written' in capsys.readouterr().out
  image, _ = demo_dataset.generate_scene(1_000_001, 1, 64)
  np.testing.assert_array_equal(
      np.asarray(Image.open(out / 'images' / 'demo_1000001.png')), image)


def test_class_map_is_the_shape_kind_on_the_instance_pixels():
  for index in range(8):
    image, gt, kinds = demo_dataset.generate_scene_with_classes(index, 2, 64)
    _, gt2, cls = demo_dataset.generate_labelled_scene(index, 2, 64)
    assert image.tobytes() == demo_dataset.generate_scene(index, 2, 64)[0].tobytes()
    np.testing.assert_array_equal(gt, gt2)
    np.testing.assert_array_equal(cls == 0, gt == 0)
    for i, kind in enumerate(kinds):
      assert set(np.unique(cls[gt == i + 1])) == {kind + 1}
      assert demo_dataset.CLASS_NAMES[kind + 1] == demo_dataset.SHAPES[kind]
  ids = [s[0] for s in demo_dataset.iterate_scenes(2, start=10**6, classes=True)]
  assert ids == ['demo/1000000', 'demo/1000001']


def test_class_texture_appearance_keeps_shapes_and_ties_textures_to_classes():
  pools = demo_dataset.CLASS_TEXTURES
  assert len(pools) == len(demo_dataset.SHAPES)
  flat = sorted(t for pool in pools for t in pool)
  assert flat == list(range(len(demo_dataset.textures())))  # Disjoint, all used.
  rng = np.random.default_rng(0)
  for kind in range(len(pools)):
    for bg in range(len(flat)):
      random_draws = {demo_dataset.object_texture(rng, kind, bg) for _ in range(200)}
      assert random_draws == set(range(len(flat))) - {bg}
      class_draws = {demo_dataset.object_texture(rng, kind, bg, 'class_texture')
                     for _ in range(100)}
      assert class_draws == set(pools[kind]) - {bg}
  for index in range(4):
    image, gt, kinds = demo_dataset.generate_scene_with_classes(index, 2, 64)
    t_image, t_gt, t_kinds = demo_dataset.generate_scene_with_classes(
        index, 2, 64, appearance='class_texture')
    np.testing.assert_array_equal(gt, t_gt)
    np.testing.assert_array_equal(kinds, t_kinds)
    assert image.tobytes() != t_image.tobytes()
    assert t_image.dtype == np.uint8 and t_image.shape == image.shape
  _, it_image, _, _ = next(demo_dataset.iterate_scenes(
      1, seed=2, size=64, start=3, classes=True, appearance='class_texture'))
  assert it_image.tobytes() == t_image.tobytes()
  with pytest.raises(ValueError, match='class_textures'):
    demo_dataset.generate_scene(0, appearance='class_textures')
