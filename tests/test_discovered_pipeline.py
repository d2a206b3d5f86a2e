"""The batches of data.mask='discovered' (Odin): no view masks, plus whole/image.

The real tf.data pipeline on the tiny datasets of tests/conftest.py: the
views are those of any other kind (the same random streams), and whole/image
is the whole image resized as a 'color_only' view of its size is, without
colour.
"""

import numpy as np

from data_pipeline import augment
from data_pipeline import input_pipeline as ip
from tests import fake_data
from tests import mask_records

S, S_D = 32, 64          # The views' size and the whole view's.
NO_COLOR = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                solarize_prob=(0., 0.))


def config(data_dir, **kw):
  return fake_data.data_config(**{**dict(dir=data_dir, image_size=S, mask='discovered',
                                         discovery_view_size=S_D, shuffle_buffer=8),
                                  **kw})


def first_batch(cfg, **kw):
  return next(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=5,
                                       with_metadata=True, **kw).as_numpy_iterator())


def test_views_ship_no_mask_and_the_same_streams_as_other_kinds(data_dir):
  batch = first_batch(config(data_dir))
  assert batch['whole/image'].shape == (1, 4, S_D, S_D, 3)
  assert batch['whole/image'].dtype == np.uint8          # color_on='device'.
  assert not [k for k in batch if k.endswith('/mask')]
  assert 'whole/box' not in batch and 'whole/flip' not in batch
  # The views are exactly gt's: the kind adds no random draw and reads no map.
  gt = first_batch(config(data_dir, mask='gt'))
  for k in gt:
    if not k.endswith('/mask'):
      np.testing.assert_array_equal(batch[k], gt[k], err_msg=k)
  # 0: the views' size.
  zero = first_batch(config(data_dir, discovery_view_size=0))
  assert zero['whole/image'].shape == (1, 4, S, S, 3)


def test_whole_view_is_a_color_only_view_of_its_size(data_dir):
  """The same pixels as a 'color_only' view of size S_d (color_on='device': uint8)."""
  batch = first_batch(config(data_dir))
  ref = first_batch(config(data_dir, mask='gt', image_size=S_D,
                           view_modes=('color_only', 'crop')))
  np.testing.assert_array_equal(batch['meta/id'], ref['meta/id'])
  np.testing.assert_array_equal(ref['view1/box'][0], np.tile([0., 0., 1., 1.], (4, 1)))
  np.testing.assert_array_equal(batch['whole/image'], ref['view1/image'])


def test_whole_view_is_the_resized_decoded_image(tmp_path):
  """Against tf.image.resize of the original pixels (non-square: no x/y mix-up)."""
  tf = ip.tf
  r = np.random.default_rng(0)
  images = {f'img{i}': r.integers(0, 256, (40, 72, 3), np.uint8) for i in range(4)}
  mask_records.write_mask_dataset(
      str(tmp_path), [dict(id=k, image=v, masks={'gt': np.zeros((40, 72), np.int32)})
                      for k, v in images.items()], num_shards=1)
  batch = first_batch(config(str(tmp_path)))
  for image_id, whole in zip(batch['meta/id'][0], batch['whole/image'][0]):
    original = tf.constant(images[image_id.decode()], tf.float32)
    expected = tf.image.resize(original, [S_D, S_D], method='bicubic', antialias=False)
    expected = np.round(np.clip(expected.numpy(), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(whole, expected)


def test_host_colour_normalises_the_whole_view_but_does_not_colour_it(data_dir):
  """color_on='host': float32 ImageNet-normalised, the colour recipe on the views only."""
  device = first_batch(config(data_dir))
  host = first_batch(config(data_dir, color_on='host'))   # The recipe on, as configured.
  whole = host['whole/image']
  assert whole.dtype == np.float32 and whole.shape == (1, 4, S_D, S_D, 3)
  pixels = (whole * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)) * 255
  np.testing.assert_allclose(pixels, device['whole/image'], atol=0.51)
  # The views are coloured (else they would equal the uint8 views).
  view = (host['view1/image'] * np.array(augment.IMAGENET_STD)
          + np.array(augment.IMAGENET_MEAN)) * 255
  assert np.abs(view - device['view1/image']).max() > 10
  # With the recipe off, whole/image is the normalised 'color_only' view of its size.
  ref = first_batch(config(data_dir, mask='gt', image_size=S_D, color_on='host',
                           view_modes=('color_only', 'crop'), **NO_COLOR))
  np.testing.assert_allclose(whole, ref['view1/image'], atol=1e-5)


def test_example_spec_is_what_the_pipeline_ships(data_dir):
  """The compile check's abstract batch: whole/image, no view masks, local crops too."""
  cfg = config(data_dir, num_local_crops=2, local_crop_size=S)
  batch = next(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0,
                                        num_local_devices=2).as_numpy_iterator())
  spec = ip.example_spec(cfg, ip.shipped_mask_dtype(cfg)[0])
  assert sorted(spec) == sorted(batch)
  for k, (shape, dtype) in spec.items():
    assert batch[k].shape == (2, 2) + shape and batch[k].dtype == dtype, k
  assert spec['whole/image'] == ((S_D, S_D, 3), np.uint8)
  assert 'view4/image' in spec and not [k for k in spec if k.endswith('/mask')]


def test_probe_targets_still_come(labelled_data_dir):
  """The class maps of the global views and the image label, as for any kind."""
  cfg = config(labelled_data_dir)
  batch = first_batch(cfg, probe_targets=True)
  manifest = ip.read_manifest(labelled_data_dir)
  targets = ip.probe_targets(manifest)
  assert targets == ('label', 'class')
  assert batch['label'].shape == (1, 4)
  for v in ('view1', 'view2'):
    assert batch[f'{v}/class'].shape == (1, 4, S, S) and f'{v}/mask' not in batch
  assert batch['whole/image'].shape == (1, 4, S_D, S_D, 3)
  # The class maps are cropped with their views: equal to gt's (the same streams).
  gt = first_batch(config(labelled_data_dir, mask='gt'), probe_targets=True)
  for k in ('label', 'view1/class', 'view2/class', 'view1/box'):
    np.testing.assert_array_equal(batch[k], gt[k], err_msg=k)
  spec = ip.example_spec(cfg, ip.shipped_mask_dtype(cfg)[0], targets,
                         ip.id_dtype(ip.num_map_classes(manifest)))
  del batch['meta/epoch'], batch['meta/position'], batch['meta/id']
  assert sorted(spec) == sorted(batch)
  for k, (shape, dtype) in spec.items():
    assert batch[k].shape == (1, 4) + shape and batch[k].dtype == dtype, k
