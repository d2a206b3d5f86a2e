"""Image labels in the mask records, and the probe targets in the training batch.

The precompute stores a source's image-level label (records.IMAGE_LABEL;
manifest label_names / num_labels): a TFDS `label` ClassLabel, a folder in
class-subfolder layout. make_pretrain_dataset(probe_targets=True) ships it as
`label`, and the stored class map as view{k}/class of every global view, with
the view's mask geometry. Tiny images, a handful of records.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline import input_pipeline as ip
from data_pipeline import records
from tests import mask_records
from tests.test_precompute_masks import FAST
from tests.test_precompute_masks import read_dataset
from tests.test_precompute_masks import run
from tests.test_precompute_masks import save

CLASSES = ('cat', 'dog', 'eel')


def tiny_image(i, size=40):
  return np.random.default_rng(i).integers(0, 256, (size, size + 4, 3), np.uint8)


# --------------------------------------------------------------- precompute ---

class LabelsTestClassified(tfds.core.GeneratorBasedBuilder):
  """Images with a ClassLabel `label`, as imagenet2012."""
  VERSION = tfds.core.Version('1.0.0')
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='png'),
        'image/filename': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=CLASSES),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {'image': tiny_image(i), 'image/filename': f'{i}.png', 'label': (2 * i) % 3}


def test_tfds_label_survives_the_records(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  LabelsTestClassified(data_dir=data_dir).download_and_prepare()
  out = tmp_path / 'out'
  assert run(out, '--source=tfds:labels_test_classified:train', f'--data_dir={data_dir}',
             *FAST, '--num_shards=2') == 0
  manifest, exs = read_dataset(out)
  assert manifest['label_names'] == list(CLASSES) and manifest['num_labels'] == 3
  assert {i: ex['label'] for i, ex in exs.items()} == {f'{i}.png': (2 * i) % 3
                                                       for i in range(4)}
  assert ip.probe_targets(manifest) == ('label',) and ip.num_label_classes(manifest) == 3


def test_folder_labels_follow_the_class_subfolders(tmp_path, capsys):
  src = tmp_path / 'images'
  # Class folders out of order, one image a level deeper (ImageFolder walks them).
  for i, rel in enumerate(['eel/0.png', 'cat/1.png', 'dog/2.png', 'cat/deep/3.png']):
    save(str(src / rel), tiny_image(i))
  out = tmp_path / 'out'
  assert run(out, f'--source=folder:{src}', *FAST) == 0
  manifest, exs = read_dataset(out)
  assert manifest['label_names'] == ['cat', 'dog', 'eel'] and manifest['num_labels'] == 3
  for image_id, ex in exs.items():
    assert ex['label'] == manifest['label_names'].index(image_id.split('/')[0]), image_id
  assert json.loads((out / 'params.json').read_text())['image_labels'] is True

  # A run written without labels (--nolabels, or before they existed) resumes
  # only with --nolabels; the refusal says so.
  old = tmp_path / 'old'
  assert run(old, f'--source=folder:{src}', *FAST, '--nolabels') == 0
  assert 'label_names' not in read_dataset(old)[0]
  capsys.readouterr()
  assert run(old, f'--source=folder:{src}', *FAST) == 1
  assert 'resumes with --nolabels' in capsys.readouterr().err

  # A flat folder has no labels.
  flat = tmp_path / 'flat'
  for i in range(2):
    save(str(flat / f'{i}.png'), tiny_image(i))
  assert run(tmp_path / 'out_flat', f'--source=folder:{flat}', *FAST) == 0
  manifest, exs = read_dataset(tmp_path / 'out_flat')
  assert 'label_names' not in manifest and 'num_labels' not in manifest
  assert all(ex['label'] is None for ex in exs.values())
  assert ip.probe_targets(manifest) == ()

  # Mixed: refused, naming the folder; --nolabels takes it.
  save(str(flat / 'cat' / '2.png'), tiny_image(2))
  capsys.readouterr()
  assert run(tmp_path / 'out_mixed', f'--source=folder:{flat}', *FAST) == 1
  err = capsys.readouterr().err
  assert f'folder:{flat}: mixed layout' in err and '--nolabels' in err, err
  assert run(tmp_path / 'out_mixed', f'--source=folder:{flat}', *FAST, '--nolabels') == 0


# ------------------------------------------------------------ training batch ---

H, W, S = 40, 56, 16
NO_COLOR = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                solarize_prob=(0., 0.))


def bucket_map(h=H, w=W):
  """A coordinate-like class map: one id per 8 x 8 cell (5 x 7 = 35 classes)."""
  y, x = np.mgrid[:h, :w]
  return (y // 8) * (w // 8) + x // 8


@pytest.fixture(scope='module')
def labelled_dir(tmp_path_factory):
  """6 records with image labels and a class map equal to their gt map."""
  d = str(tmp_path_factory.mktemp('labelled'))
  exs = [dict(id=f'img{i}', label=i % 3,
              image=np.random.default_rng(i).integers(0, 256, (H, W, 3), np.uint8),
              masks={'gt': bucket_map(), records.CLASS_MASK: bucket_map()})
         for i in range(6)]
  manifest = mask_records.write_mask_dataset(d, exs, num_shards=2, write_manifest=False,
                                             label_names=CLASSES)
  manifest['class_names'] = [f'c{i}' for i in range(35)]
  with open(os.path.join(d, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  return d


def config(data_dir, **kw):
  from tests import fake_data  # pylint: disable=g-import-not-at-top
  return fake_data.data_config(**{**dict(
      dir=data_dir, image_size=S, mask='gt', shuffle_buffer=8, color_on='device',
      view_modes=('crop', 'crop'), **NO_COLOR), **kw})


def test_probe_targets_ship_labels_and_class_maps_with_the_views_geometry(labelled_dir):
  manifest = ip.read_manifest(labelled_dir)
  assert ip.probe_targets(manifest) == ('label', 'class')
  assert ip.num_map_classes(manifest) == 35 and ip.num_label_classes(manifest) == 3
  cfg = config(labelled_dir, num_local_crops=1, local_crop_size=8)
  kw = dict(global_batch_size=4, seed=1, num_local_devices=2)
  plain = next(ip.make_pretrain_dataset(cfg, **kw).as_numpy_iterator())
  ds = ip.make_pretrain_dataset(cfg, with_metadata=True, probe_targets=True, **kw)
  flips = set()
  for batch in list(ds.take(3).as_numpy_iterator()):
    ids = [int(i.decode()[3:]) for i in batch['meta/id'].reshape(-1)]
    assert batch['label'].dtype == np.int32 and batch['label'].shape == (2, 2)
    assert batch['label'].reshape(-1).tolist() == [i % 3 for i in ids]
    for v in ('view1', 'view2'):
      cls = batch[f'{v}/class']
      assert cls.dtype == np.uint8 and cls.shape == (2, 2, S, S)
      # The same map as the mask: the same pixels after crop, flip and resize.
      np.testing.assert_array_equal(cls, batch[f'{v}/mask'])
      flips.update(batch[f'{v}/flip'].reshape(-1).tolist())
    assert 'view3/class' not in batch and 'view3/mask' in batch  # Local crop: none.
  assert flips == {0, 1}
  # The views are those of the default batch: the targets add keys, change nothing.
  first = next(ip.make_pretrain_dataset(cfg, probe_targets=True, **kw).as_numpy_iterator())
  assert sorted(first) == sorted([*plain, 'label', 'view1/class', 'view2/class'])
  for k, v in plain.items():
    np.testing.assert_array_equal(first[k], v)
  # The compile check's abstract batch.
  spec = ip.example_spec(cfg, ip.mask_dtype(manifest, cfg), probe_targets=('label', 'class'),
                         class_dtype=ip.id_dtype(ip.num_map_classes(manifest)))
  assert sorted(spec) == sorted(first)
  for k, (shape, dtype) in spec.items():
    assert first[k].shape == (2, 2) + shape and first[k].dtype == dtype, k


def test_a_dataset_without_labels_or_class_maps_still_reads(tmp_path):
  d = str(tmp_path / 'old')
  exs = [dict(id=f'img{i}', image=np.zeros((H, W, 3), np.uint8),
              masks={'gt': bucket_map()}) for i in range(4)]
  mask_records.write_mask_dataset(d, exs, num_shards=1)
  manifest = ip.read_manifest(d)
  assert ip.probe_targets(manifest) == ()
  assert ip.num_label_classes(manifest) is None and ip.num_map_classes(manifest) is None
  kw = dict(global_batch_size=2, seed=0)
  plain = next(ip.make_pretrain_dataset(config(d), **kw).as_numpy_iterator())
  probed = next(ip.make_pretrain_dataset(config(d), probe_targets=True,
                                         **kw).as_numpy_iterator())
  assert sorted(plain) == sorted(probed)
  for path, _ in ip.process_shards(manifest, d, 0, 1):
    for r in ip.tf.data.TFRecordDataset(path):
      assert records.parse_example_numpy(r.numpy())['label'] is None
  assert ip.id_dtype(300) == ip.tf.uint16 and ip.id_dtype(256) == ip.tf.uint8
