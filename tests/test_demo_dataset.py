"""The demo scenes: deterministic, meaningful objects, consistent GT."""

import numpy as np
from PIL import Image
import pytest

from data_pipeline import demo_dataset
from data_pipeline import make_demo_dataset


def test_same_scene_same_bytes_whatever_the_order():
  a_image, a_gt = demo_dataset.generate_scene(5, seed=3)
  for i in range(5):
    demo_dataset.generate_scene(i, seed=3)
  b_image, b_gt = demo_dataset.generate_scene(5, seed=3)
  assert a_image.tobytes() == b_image.tobytes()
  assert a_gt.tobytes() == b_gt.tobytes()
  c_image, _ = demo_dataset.generate_scene(5, seed=4)
  assert c_image.tobytes() != a_image.tobytes()
  ids = [i for i, _, _ in demo_dataset.iterate_scenes(3, seed=3, start=4)]
  assert ids == ['demo/000004', 'demo/000005', 'demo/000006']
  _, it_image, _ = list(demo_dataset.iterate_scenes(2, seed=3, start=4))[1]
  assert it_image.tobytes() == a_image.tobytes()


@pytest.mark.parametrize('size', [64, 128])
def test_scene_structure(size):
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
    counts = np.bincount(gt.ravel())
    assert counts[1:].min() >= demo_dataset.MIN_VISIBLE_PIXELS


def test_objects_stand_out_from_the_background():
  """Most objects differ in mean colour from the background around them."""
  distinct = total = 0
  for index in range(20):
    image, gt = demo_dataset.generate_scene(index)
    image = image.astype(np.float32)
    background = image[gt == 0].mean(0)
    for i in range(1, gt.max() + 1):
      total += 1
      if np.abs(image[gt == i].mean(0) - background).max() > 20:
        distinct += 1
  assert distinct / total > 0.85, (distinct, total)


def test_folder_writer_round_trip(tmp_path):
  out = str(tmp_path)
  assert make_demo_dataset.write_folder(out, 4, seed=1, size=64) == (4, 0)
  assert make_demo_dataset.write_folder(out, 5, seed=1, size=64) == (1, 4)
  for i in range(5):
    image, gt = demo_dataset.generate_scene(i, 1, 64)
    read_image = np.asarray(Image.open(tmp_path / 'images' / f'demo_{i:06d}.png'))
    read_gt = np.asarray(Image.open(tmp_path / 'gt' / f'demo_{i:06d}.png'))
    np.testing.assert_array_equal(read_image, image)
    np.testing.assert_array_equal(read_gt.astype(np.int32), gt)
