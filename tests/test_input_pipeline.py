"""Tests of the real two-view tf.data pipeline on tiny record datasets.

The geometry tests use images whose pixels encode their own coordinates
(R = x, G = y) and a label map id = y * W + x, run with the colour
augmentation switched off, and check that each view's recorded box/flip maps
every view pixel back to the original pixel it shows (WORKSPACE.md, section 4,
"Geometry convention").
"""

import ml_collections
import numpy as np
import pytest

from data_pipeline import augment
from data_pipeline import input_pipeline as ip
from data_pipeline import records
from tests import fake_data
from tests import mask_records

H, W = 72, 104          # Non-square, so that x/y mix-ups show.
S = 24                  # View size.
NO_COLOR = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                solarize_prob=(0., 0.))
FH500 = records.fh_mask_name(500, 500, 0.8)
FH1000 = records.fh_mask_name(1000, 1000, 0.8)


def coord_example(i, h=H, w=W):
  y, x = np.mgrid[:h, :w]
  image = np.stack([x, y, np.full_like(x, 7 * i % 256)], -1).astype(np.uint8)
  return dict(id=f'img{i:03d}', image=image, masks={'gt': y * w + x})


@pytest.fixture(scope='module')
def coord_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('coords'))
  mask_records.write_mask_dataset(d, [coord_example(i) for i in range(8)],
                                  num_shards=2)
  return d


@pytest.fixture(scope='module')
def fh_dir(tmp_path_factory):
  """10 records in 4 shards, two FH maps (constant ids 500 / 1000) and gt."""
  d = str(tmp_path_factory.mktemp('fh'))
  exs = []
  for i in range(10):
    h, w = 30 + i, 40
    exs.append(dict(id=f'img{i:03d}',
                    image=np.random.default_rng(i).integers(0, 256, (h, w, 3), np.uint8),
                    masks={FH500: np.full((h, w), 500), FH1000: np.full((h, w), 1000),
                           'gt': np.full((h, w), 7)}))
  mask_records.write_mask_dataset(d, exs, num_shards=4,
                                  fh=[(500, 500, 0.8), (1000, 1000, 0.8)])
  return d


def config(data_dir, **kw):
  """The test preset's config.data on `data_dir`, colour on the host and off."""
  return fake_data.data_config(**{
      **dict(dir=data_dir, image_size=S, mask='gt', shuffle_buffer=8,
             crop_area=(0.08, 1.0), view_modes=('crop', 'crop'), color_on='host',
             **NO_COLOR), **kw})


def take(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def view_coords(box, flip, size):
  """Contract mapping: view pixel centres -> normalised original (y [S, S], x [S, S])."""
  v = (np.arange(size) + 0.5) / size
  vy, vx = np.meshgrid(v, v, indexing='ij')
  if flip:
    vx = 1 - vx
  y0, x0, y1, x1 = box.astype(np.float64)
  return y0 + vy * (y1 - y0), x0 + vx * (x1 - x0)


def check_geometry(batch, view, h=H, w=W, size=S):
  """Every pixel of the view shows the original point its box/flip says."""
  img = batch[f'{view}/image'].reshape(-1, size, size, 3)
  img = (img * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)) * 255
  mask = batch[f'{view}/mask'].reshape(-1, size, size)
  boxes = batch[f'{view}/box'].reshape(-1, 4)
  flips = batch[f'{view}/flip'].reshape(-1)
  for b in range(len(boxes)):
    y, x = view_coords(boxes[b], flips[b], size)
    # Image: a bicubic resize of a linear ramp reproduces it; up to half a
    # source pixel where the window edge clamps the interpolation.
    np.testing.assert_allclose(img[b, ..., 0], x * w - 0.5, atol=0.6)
    np.testing.assert_allclose(img[b, ..., 1], y * h - 0.5, atol=0.6)
    # Labels (nearest): the original pixel containing the point.
    ly, lx = mask[b] // w, mask[b] % w
    assert np.all(np.abs(ly + 0.5 - y * h) <= 0.5 + 1e-4)
    assert np.all(np.abs(lx + 0.5 - x * w) <= 0.5 + 1e-4)
    # Image and labels agree pixel by pixel.
    assert np.all(np.abs(img[b, ..., 0] - lx) <= 1.1)
    assert np.all(np.abs(img[b, ..., 1] - ly) <= 1.1)


def test_crop_geometry_and_alignment(coord_dir):
  batches = take(ip.make_pretrain_dataset(config(coord_dir), global_batch_size=8,
                                          seed=3, num_local_devices=2), 2)
  for batch in batches:
    for view in ('view1', 'view2'):
      check_geometry(batch, view)
  flips = np.concatenate([b[f'{v}/flip'].ravel() for b in batches for v in ('view1', 'view2')])
  assert 0 < flips.sum() < len(flips)  # Both flip outcomes occur.
  boxes = np.concatenate([b['view1/box'].reshape(-1, 4) for b in batches])
  assert np.all((boxes >= 0) & (boxes <= 1))
  assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  assert area.min() < 0.9 and np.all(area >= 0.07)
  # The two views of an example are different crops.
  assert not np.allclose(batches[0]['view1/box'], batches[0]['view2/box'])


def test_color_only_view(coord_dir):
  cfg = config(coord_dir, view_modes=('color_only', 'crop'))
  batch = take(ip.make_pretrain_dataset(cfg, global_batch_size=8, seed=0), 1)[0]
  np.testing.assert_array_equal(batch['view1/box'].reshape(-1, 4),
                                np.tile([0., 0., 1., 1.], (8, 1)))
  assert not batch['view1/flip'].any()
  check_geometry(batch, 'view1')
  check_geometry(batch, 'view2')


def test_shared_flip(coord_dir):
  cfg = config(coord_dir, shared_flip=True)
  batches = take(ip.make_pretrain_dataset(cfg, global_batch_size=8, seed=1), 2)
  for batch in batches:
    np.testing.assert_array_equal(batch['view1/flip'], batch['view2/flip'])
    check_geometry(batch, 'view1')
    check_geometry(batch, 'view2')
  flips = np.concatenate([b['view1/flip'].ravel() for b in batches])
  assert 0 < flips.sum() < len(flips)


def test_third_view_with_own_size_is_config(coord_dir):
  cfg = config(coord_dir, view_modes=('crop', 'crop', 'crop'), view_sizes=(S, S, 8),
               view_crop_areas=((0.08, 1.), (0.08, 1.), (0.05, 0.14)),
               blur_prob=(0., 0., 0.), solarize_prob=(0., 0., 0.))
  batch = take(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0), 1)[0]
  assert batch['view3/image'].shape == (1, 4, 8, 8, 3)
  assert batch['view3/mask'].shape == (1, 4, 8, 8)
  b = batch['view3/box'].reshape(-1, 4)
  assert np.all((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) < 0.2)


def test_local_crops_have_their_own_geometry_and_stream(coord_dir):
  """Multi-crop: N local views after the globals, each passing the coordinate test.

  Local crops draw from their own stream, so the global views are those of
  the same config without local crops.
  """
  local = dict(num_local_crops=3, local_crop_size=16, local_crop_area=(0.05, 0.14),
               local_blur_prob=0.)
  cfg = config(coord_dir, **local)
  ds = ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=3, with_metadata=True)
  plain = ip.make_pretrain_dataset(config(coord_dir), global_batch_size=4, seed=3,
                                   with_metadata=True)
  areas = []
  for batch, ref in zip(take(ds, 3), take(plain, 3)):
    assert sorted(k for k in batch if k.startswith('view')) == sorted(
        f'view{v}/{k}' for v in range(1, 6) for k in ('image', 'mask', 'box', 'flip'))
    for v in ('view1', 'view2'):
      for k in ('image', 'mask', 'box', 'flip'):
        np.testing.assert_array_equal(batch[f'{v}/{k}'], ref[f'{v}/{k}'])
      check_geometry(batch, v)
    for v in ('view3', 'view4', 'view5'):
      assert batch[f'{v}/image'].shape == (1, 4, 16, 16, 3)
      check_geometry(batch, v, size=16)
      b = batch[f'{v}/box'].reshape(-1, 4)
      areas.append((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    # The local crops of an example are different crops.
    assert not np.allclose(batch['view3/box'], batch['view4/box'])
  # Inside the local area range, up to the rounding of the window to pixels.
  areas = np.concatenate(areas)
  assert areas.min() > 0.04 and areas.max() < 0.16


def test_grid_mask(coord_dir):
  n = 4
  cfg = config(coord_dir, mask='grid', grid_size=n, view_modes=('color_only', 'crop'))
  batch = take(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0), 1)[0]
  full = batch['view1/mask'].reshape(-1, S, S)
  for m in full:  # The whole image: an n x n grid in reading order.
    np.testing.assert_array_equal(np.unique(m), np.arange(n * n))
    np.testing.assert_array_equal(m[::S // n, ::S // n], np.arange(n * n).reshape(n, n))
  # A cropped view shows the grid of the original image through its crop:
  # compare with the grid cell of the original point each pixel maps to.
  crop = batch['view2/mask'].reshape(-1, S, S)
  boxes, flips = batch['view2/box'].reshape(-1, 4), batch['view2/flip'].ravel()
  for m, box, flip in zip(crop, boxes, flips):
    y, x = view_coords(box, flip, S)
    expected = (np.floor(y * H).astype(int) * n // H) * n + np.floor(x * W).astype(int) * n // W
    assert np.mean(m == expected) > 0.97  # Differs only on exact cell borders.


def test_batch_shapes_and_dtypes(fh_dir):
  cfg = config(fh_dir, mask='fh', fh_scale=1000)
  cfg.update(color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=(1., .1),
             solarize_prob=(0., .2))
  it = ip.make_pretrain_iterator(ml_collections.ConfigDict(cfg), global_batch_size=8, seed=0, start_step=0,
                                 process_index=0, process_count=1,
                                 num_local_devices=2)
  batch = next(it)
  expected = {'image': ((2, 4, S, S, 3), np.float32), 'mask': ((2, 4, S, S), np.int32),
              'box': ((2, 4, 4), np.float32), 'flip': ((2, 4), np.int32)}
  assert sorted(batch) == sorted(f'{v}/{k}' for v in ('view1', 'view2') for k in expected)
  for v in ('view1', 'view2'):
    for k, (shape, dtype) in expected.items():
      assert batch[f'{v}/{k}'].shape == shape and batch[f'{v}/{k}'].dtype == dtype, k
    assert np.all(batch[f'{v}/mask'] == 1000)
    assert np.all(np.isfinite(batch[f'{v}/image']))


def test_fh_random_scale_picks_stored_scales(fh_dir):
  cfg = config(fh_dir, mask='fh', fh_scale=-1)
  batches = take(ip.make_pretrain_dataset(cfg, global_batch_size=10, seed=0), 2)
  seen = []
  for batch in batches:
    m1 = batch['view1/mask'].reshape(10, -1)
    m2 = batch['view2/mask'].reshape(10, -1)
    for a, b in zip(m1, m2):
      assert len(np.unique(a)) == 1 and a[0] in (500, 1000)
      assert np.all(b == a[0])  # One map per example, shared by its views.
      seen.append(a[0])
  assert set(seen) == {500, 1000}


def test_resume_is_exact_across_epoch_boundary(fh_dir):
  # 10 records, batch 4: epochs end inside batches 2 and 4.
  cfg = config(fh_dir, mask='fh', fh_scale=-1)
  cfg.update(color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=(1., .1),
             solarize_prob=(0., .2))
  kw = dict(global_batch_size=4, seed=5, num_local_devices=2, with_metadata=True)
  full = take(ip.make_pretrain_dataset(cfg, start_step=0, **kw), 6)
  again = take(ip.make_pretrain_dataset(cfg, start_step=0, **kw), 6)
  resumed = take(ip.make_pretrain_dataset(cfg, start_step=3, **kw), 3)
  epochs = np.concatenate([b['meta/epoch'].ravel() for b in full])
  assert list(np.unique(epochs)) == [0, 1, 2]
  assert resumed[0]['meta/epoch'].ravel()[0] == 1  # Started inside epoch 1.
  for a, b in zip(full, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(full[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Epochs reshuffle; each epoch visits every record once.
  ids = np.concatenate([b['meta/id'].ravel() for b in full])
  assert sorted(ids[:10]) == sorted(ids[10:20]) and list(ids[:10]) != list(ids[10:20])
  other = take(ip.make_pretrain_dataset(cfg, start_step=0, **{**kw, 'seed': 6}), 1)
  assert not np.array_equal(other[0]['view1/image'], full[0]['view1/image'])


def test_process_sharding_covers_every_file_once(fh_dir):
  cfg = config(fh_dir, mask='gt')
  manifest = ip.read_manifest(fh_dir)
  files = [[p for p, _ in ip.process_shards(manifest, fh_dir, i, 2)] for i in range(2)]
  all_files = [f'{fh_dir}/{s["file"]}' for s in manifest['shards']]
  assert sorted(files[0] + files[1]) == sorted(all_files)
  assert not set(files[0]) & set(files[1])
  ids = []
  for i in range(2):
    # 4 shards of 3, 3, 2, 2 records: each process's epoch has 5 records.
    ds = ip.make_pretrain_dataset(cfg, global_batch_size=10, seed=0, process_index=i,
                                  process_count=2, with_metadata=True)
    batch = take(ds, 1)[0]
    assert batch['meta/epoch'].max() == 0
    ids.append(list(batch['meta/id'].ravel()))
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == [f'img{i:03d}'.encode() for i in range(10)]


def test_errors(fh_dir, tmp_path):
  kw = dict(global_batch_size=4, seed=0)
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match='nope'):
    ip.make_pretrain_dataset(config(missing), **kw)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='manifest.json'):
    ip.make_pretrain_dataset(config(str(tmp_path / 'empty')), **kw)
  with pytest.raises(ValueError, match=r'data\.mask.*gt'):
    ip.make_pretrain_dataset(config(fh_dir, mask='user'), **kw)
  with pytest.raises(ValueError, match=r'data\.fh_scale=300.*fh_s500'):
    ip.make_pretrain_dataset(config(fh_dir, mask='fh', fh_scale=300), **kw)
  with pytest.raises(ValueError, match='divisible'):
    ip.make_pretrain_dataset(config(fh_dir), global_batch_size=6, seed=0,
                             num_local_devices=4)
  with pytest.raises(ValueError, match='shard files'):
    ip.make_pretrain_dataset(config(fh_dir), global_batch_size=8, seed=0,
                             process_index=0, process_count=8)
  with pytest.raises(ValueError, match=r'data\.blur_prob'):
    ip.make_pretrain_dataset(config(fh_dir, view_modes=('crop',) * 3), **kw)


def test_device_colour_ships_uint8_views_equal_to_the_host_resize(coord_dir):
  """data.color_on='device': no colour on the host, uint8 views."""
  kw = dict(global_batch_size=8, seed=3)
  host = take(ip.make_pretrain_dataset(config(coord_dir), **kw), 1)[0]
  dev = take(ip.make_pretrain_dataset(config(coord_dir, color_on='device'), **kw), 1)[0]
  for v in ('view1', 'view2'):
    assert dev[f'{v}/image'].dtype == np.uint8
    unnorm = (host[f'{v}/image'] * np.array(augment.IMAGENET_STD)
              + np.array(augment.IMAGENET_MEAN)) * 255
    np.testing.assert_allclose(dev[f'{v}/image'], unnorm, atol=0.51)
    for k in ('box', 'flip', 'mask'):
      np.testing.assert_array_equal(dev[f'{v}/{k}'], host[f'{v}/{k}'])
  grid = take(ip.make_pretrain_dataset(config(coord_dir, color_on='device', mask='grid',
                                              grid_size=4), **kw), 1)[0]
  assert grid['view1/mask'].dtype == np.uint8           # 16 ids.
  with pytest.raises(ValueError, match='config.data.color_on'):
    ip.make_pretrain_dataset(config(coord_dir, color_on='gpu'), **kw)


def test_mask_dtype_is_the_smallest_that_holds_the_ids():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert ip.mask_dtype({'max_label_id': 255}, {'mask': 'gt'}) == tf.uint8
  assert ip.mask_dtype({'max_label_id': 256}, {'mask': 'fh'}) == tf.uint16
  assert ip.mask_dtype({'max_label_id': 70000}, {'mask': 'fh'}) == tf.int32
  assert ip.mask_dtype({}, {'mask': 'fh'}) == tf.int32   # A manifest from before the field.
  assert ip.mask_dtype({}, {'mask': 'grid', 'grid_size': 17}) == tf.uint16


def test_example_spec_is_what_the_pipeline_ships(coord_dir):
  """The compile check's abstract batch (example_spec) = a real batch's shapes and dtypes."""
  cfg = config(coord_dir, color_on='device', num_local_crops=2, local_crop_size=16)
  batch = take(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0,
                                        num_local_devices=2), 1)[0]
  spec = ip.example_spec(cfg, ip.mask_dtype(ip.read_manifest(coord_dir), cfg))
  assert sorted(spec) == sorted(batch)
  for k, (shape, dtype) in spec.items():
    assert batch[k].shape == (2, 2) + shape and batch[k].dtype == dtype, k
  assert spec['view1/image'] == ((S, S, 3), np.uint8)
  assert spec['view3/image'] == ((16, 16, 3), np.uint8)
