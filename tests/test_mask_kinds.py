"""The mask-kind registry (data_pipeline/mask_kinds/) and the config.data reader.

A kind is one module plus its registry line: a kind registered here only
(`half`, made on the fly) goes through the real pipeline with no other edit.
"""

import numpy as np
import pytest

from data_pipeline import input_pipeline as ip
from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline import view_config
from data_pipeline.mask_kinds import base
from tests import fake_data
from tests import mask_records

S = 32


def test_the_registry_lists_exactly_the_kinds():
  assert mask_kinds.names() == ('fh', 'gt', 'user', 'grid', 'discovered')
  assert [k.name for k in mask_kinds.stored()] == ['fh', 'gt', 'user']
  assert mask_kinds.get(fake_data.data_config(mask='grid')) is mask_kinds.grid.KIND
  # Only 'discovered' changes what a batch carries (its views' masks come from the step).
  assert [k.name for k in mask_kinds.REGISTRY.values() if not k.ships_view_masks] == [
      'discovered']
  assert [k.name for k in mask_kinds.REGISTRY.values() if k.ships_whole_view] == [
      'discovered']
  assert mask_kinds.owner('fh_s500_m500_sig0.8').name == 'fh'
  assert mask_kinds.owner('class') is None   # GT's class labels: never a view's mask.


@pytest.mark.parametrize('overrides, key', [
    (dict(mask='edges'), 'config.data.mask='),
    (dict(mask='fh', fh_scale=0), 'config.data.fh_scale='),
    (dict(mask='fh', fh_scale='big'), 'config.data.fh_scale='),
    (dict(mask='grid', grid_size=0), 'config.data.grid_size='),
    (dict(mask='grid', grid_size=2.5), 'config.data.grid_size='),
    (dict(mask='discovered', discovery_view_size=-32), 'config.data.discovery_view_size='),
    (dict(mask='discovered', discovery_view_size=100), 'config.data.discovery_view_size='),
    (dict(mask='discovered', discovery_view_size=96.0), 'config.data.discovery_view_size='),
    (dict(mask='discovered', discovery_view_size='96'), 'config.data.discovery_view_size='),
    (dict(mask='discovered', discovery_view_size=True), 'config.data.discovery_view_size='),
])
def test_each_kinds_check_names_the_key(overrides, key):
  problems = mask_kinds.check(fake_data.data_config(**overrides))
  assert len(problems) == 1 and problems[0].startswith(key), problems


def test_good_values_pass_and_other_kinds_keys_are_not_checked():
  assert mask_kinds.check(fake_data.data_config(mask='fh', fh_scale=-1)) == []
  assert mask_kinds.check(fake_data.data_config(mask='gt', fh_scale=0, grid_size=0,
                                                discovery_view_size=7)) == []
  for size in (0, 96):   # 0: data.image_size.
    assert mask_kinds.check(fake_data.data_config(mask='discovered',
                                                  discovery_view_size=size)) == []
  assert view_config.discovery_view_size(fake_data.data_config(
      image_size=64, discovery_view_size=0)) == 64
  assert view_config.discovery_view_size(fake_data.data_config(
      image_size=64, discovery_view_size=96)) == 96


def test_the_discovered_kind_reads_nothing_stored_and_has_no_quality_rows():
  """Any dataset with images works; mask_quality's table gets no row from it."""
  from data_pipeline import mask_quality  # pylint: disable=g-import-not-at-top
  cfg = fake_data.data_config(mask='discovered', dir='/data/masks')
  for manifest in ({}, {'mask_names': ['gt'], 'fh': [], 'max_label_id': 3}):
    assert mask_kinds.check_dataset(cfg, manifest) == []
    assert ip.mask_choices(manifest, cfg) == []
    assert ip.mask_dtype(manifest, cfg) == ip.tf.int32   # No view masks: unused.
  assert ip.shipped_mask_dtype(cfg) == (ip.tf.int32, "none shipped (data.mask='discovered')")
  # Its size rule uses the ResNet's C5 stride, restated below the layer of dense_ssl.
  from data_pipeline.mask_kinds import discovered  # pylint: disable=g-import-not-at-top
  from dense_ssl.models import resnet  # pylint: disable=g-import-not-at-top
  assert discovered.C5_STRIDE == resnet.C5_STRIDE
  manifest = {'mask_names': ['gt', records.fh_mask_name(500, 500, 0.8)]}
  sets = mask_quality.mask_sets(manifest, grids=[1, 2])
  assert [kind for _, kind, _ in sets] == ['grid', 'grid', 'fh', 'gt']


@pytest.mark.parametrize('mask', ['gt', 'user', 'fh'])
def test_each_stored_kind_refuses_a_dataset_without_its_maps(mask):
  cfg = fake_data.data_config(mask=mask, dir='/data/masks')
  manifest = {'mask_names': ['grid_like'], 'fh': []}
  problems = mask_kinds.check_dataset(cfg, manifest)
  assert len(problems) == 1 and problems[0].startswith(f"config.data.mask='{mask}'")
  assert '/data/masks' in problems[0]
  with pytest.raises(ValueError, match=f"data.mask='{mask}'.*/data/masks"):
    mask_kinds.get(cfg).choices(manifest, cfg)


def test_a_missing_data_key_is_named():
  cfg = fake_data.data_config()
  del cfg['color_on']
  with pytest.raises(KeyError,
                     match=r'data\.color_on is missing: configs/common.py base_config'):
    ip.color_on(cfg)
  del cfg['grid_size']
  cfg['mask'] = 'grid'
  assert mask_kinds.check(cfg) == [str(view_config.MissingConfigKey(
      'config key data.grid_size is missing: configs/common.py base_config defines'
      ' every data key; build the config from a configs/ file (tests:'
      ' tests/fake_data.data_config)'))]
  with pytest.raises(KeyError, match=r'data\.view_modes is missing'):
    view_config.view_specs({})
  with pytest.raises(ValueError, match='not optional'):
    view_config.optional(cfg, 'color_on')


def test_the_test_helper_refuses_unknown_keys():
  with pytest.raises(KeyError, match='colour_on'):
    fake_data.data_config(colour_on='host')


class Half(base.MaskKind):
  """Two masks made on the fly: the image's left half (id 0) and right half (id 1)."""
  name = 'half'
  stored = False
  num_ids_without_manifest = 'two halves'

  def num_ids(self, manifest, data_config):
    return 2

  def labels_fn(self, data_config):
    from data_pipeline import tf_setup  # pylint: disable=g-import-not-at-top
    tf = tf_setup.import_tensorflow()

    def fn(image, labels):
      h, w = tf.shape(image)[0], tf.shape(image)[1]
      return tf.broadcast_to((tf.range(w) * 2 // w)[None, :], tf.stack([h, w]))
    return fn


@pytest.fixture
def half_kind(monkeypatch):
  monkeypatch.setitem(mask_kinds.REGISTRY, 'half', Half())


def test_a_kind_registered_alone_flows_through_the_pipeline(half_kind, tmp_path):
  exs = [dict(id=f'img{i}', image=np.full((40, 60, 3), i, np.uint8),
              masks={'gt': np.zeros((40, 60), np.int32)}) for i in range(4)]
  mask_records.write_mask_dataset(str(tmp_path), exs, num_shards=1)
  cfg = fake_data.data_config(dir=str(tmp_path), mask='half', image_size=S,
                              view_modes=('color_only', 'crop'))
  assert 'half' in mask_kinds.names() and mask_kinds.check(cfg) == []
  assert ip.mask_choices(ip.read_manifest(str(tmp_path)), cfg) == []
  assert ip.shipped_mask_dtype(cfg)[0] == ip.tf.uint8
  batch = next(ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0)
               .as_numpy_iterator())
  whole = batch['view1/mask'][0]                       # [B, S, S]: the whole image.
  assert whole.dtype == np.uint8
  np.testing.assert_array_equal(whole[:, :, :S // 2], 0)
  np.testing.assert_array_equal(whole[:, :, S // 2:], 1)
  assert set(np.unique(batch['view2/mask'])) <= {0, 1}
  spec = ip.example_spec(cfg, ip.tf.uint8)
  assert spec['view2/mask'] == ((S, S), np.uint8)
