"""data_pipeline/export_coco.py: the COCO json against the demo instance maps."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from data_pipeline import demo_dataset
from data_pipeline import export_coco

SIZE = 64


def _rasterise(polygons, shape):
  """Our polygons are axis-aligned rectangles in pixel-edge coordinates."""
  out = np.zeros(shape, np.int32)
  for p in polygons:
    assert len(p) == 8, p
    x0, y0, x1, y1 = p[0], p[1], p[4], p[5]
    assert p == [x0, y0, x1, y0, x1, y1, x0, y1] and x1 > x0 and y1 > y0
    out[y0:y1, x0:x1] += 1
  return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('d2data'))
  assert export_coco.main(['export_coco', f'--out_dir={out}', '--num_train=3',
                           '--num_val=2', f'--image_size={SIZE}', '--seed=1']) == 0
  return out


def test_mask_rectangles_cover_exactly():
  rng = np.random.default_rng(0)
  for _ in range(20):
    mask = rng.random((13, 17)) < 0.5
    count = _rasterise([export_coco.rectangle_polygon(r)
                        for r in export_coco.mask_rectangles(mask)], mask.shape)
    np.testing.assert_array_equal(count, mask.astype(np.int32))  # disjoint, exact
  ring = np.ones((5, 5), bool)
  ring[2, 2] = False  # a hole: a single COCO polygon could not express it
  assert len(export_coco.mask_rectangles(ring)) == 4
  assert export_coco.mask_rectangles(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize('split,first,num', [('train2017', 0, 3),
                                             ('val2017', 1_000_000, 2)])
def test_json_matches_the_instance_maps(exported, split, first, num):
  root = os.path.join(exported, 'coco')
  with open(os.path.join(root, 'annotations', f'instances_{split}.json')) as f:
    d = json.load(f)
  assert {c['id']: c['name'] for c in d['categories']}[1] == 'person'
  assert len(d['categories']) == 80
  cat_ids = {c['id'] for c in d['categories']}
  assert [im['id'] for im in d['images']] == [first + i + 1 for i in range(num)]
  ann_ids = [a['id'] for a in d['annotations']]
  assert ann_ids == list(range(1, len(ann_ids) + 1))
  for im in d['images']:
    index = im['id'] - 1
    path = os.path.join(root, split, im['file_name'])
    assert im['file_name'] == f'demo_{index:06d}.jpg'
    with Image.open(path) as jpg:
      assert jpg.format == 'JPEG' and jpg.size == (SIZE, SIZE)
    assert (im['height'], im['width']) == (SIZE, SIZE)
    _, gt, classes = demo_dataset.generate_scene_with_classes(index, 1, SIZE)
    anns = [a for a in d['annotations'] if a['image_id'] == im['id']]
    # Every instance exactly once, in instance order, with its class.
    assert len(anns) == gt.max() == len(classes)
    for instance, a in enumerate(anns, start=1):
      mask = gt == instance
      ys, xs = np.nonzero(mask)
      assert a['category_id'] == classes[instance - 1] + 1 and a['category_id'] in cat_ids
      assert 1 <= a['category_id'] <= len(demo_dataset.SHAPES)
      assert a['iscrowd'] == 0
      assert a['area'] == mask.sum()
      assert a['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                           ys.max() - ys.min() + 1]
      np.testing.assert_array_equal(_rasterise(a['segmentation'], gt.shape),
                                    mask.astype(np.int32))


def test_pycocotools_reads_the_polygons_as_the_masks(exported):
  """Only where pycocotools is installed (Detectron2's environment has it)."""
  mask_util = pytest.importorskip('pycocotools.mask')
  with open(os.path.join(exported, 'coco', 'annotations',
                         'instances_val2017.json')) as f:
    d = json.load(f)
  im = d['images'][0]
  _, gt, _ = demo_dataset.generate_scene_with_classes(im['id'] - 1, 1, SIZE)
  for instance, a in enumerate(
      [a for a in d['annotations'] if a['image_id'] == im['id']], start=1):
    rle = mask_util.merge(mask_util.frPyObjects(a['segmentation'], SIZE, SIZE))
    np.testing.assert_array_equal(mask_util.decode(rle), gt == instance)


def test_cli_refuses_bad_flags(capsys):
  # A missing required flag: exit 2; values the tool refuses: exit 1 (data_pipeline/cli.py).
  assert export_coco.main(['export_coco', '--num_train=0']) == 2
  assert '--out_dir is required' in capsys.readouterr().err
  assert export_coco.main(['export_coco', '--out_dir=/x', '--num_train=0']) == 1
  assert '--num_train=0 must be >= 1' in capsys.readouterr().err
  assert export_coco.main(['export_coco', '--out_dir=/x', '--image_size=8']) == 1
  assert '--image_size=8 must be >= 32' in capsys.readouterr().err
  assert export_coco.main(['export_coco', '--help']) == 0
  assert 'instances_train2017.json' in capsys.readouterr().out
