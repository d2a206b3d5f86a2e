"""Tests of data_pipeline/precompute_masks.py: the CLI, run in this process.

Tiny images (about 64 px) from skimage.data; every stored FH map is compared
with skimage's felzenszwalb on the stored pixels, after the round trip through
the records (records.parse_example_numpy) and TensorFlow's decode, which is
what the training pipeline sees.
"""

import io
import json
import os

import numpy as np
from PIL import Image
import skimage.data
import skimage.segmentation
import tensorflow_datasets as tfds

from data_pipeline import input_pipeline as ip
from data_pipeline import mask_kinds
from data_pipeline import precompute_masks as pm
from data_pipeline import records
from data_pipeline import tf_setup
from tests import fake_data

tf = tf_setup.hide_accelerators()

FAST = ('--fh_scales=100', '--fh_min_sizes=20')
FH100 = records.fh_mask_name(100, 20, 0.8)
PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::8, ::7])     # 64 x 74
PHOTO2 = np.ascontiguousarray(skimage.data.coffee()[::6, ::8])       # 67 x 75
PHOTO3 = np.ascontiguousarray(skimage.data.chelsea()[::4, ::6])      # 75 x 76


def run(out_dir, *args, workers=1):
  return pm.main(['precompute_masks', f'--out_dir={out_dir}', f'--num_workers={workers}',
                  '--progress_every_s=0', *args])


def save(path, img, fmt=None, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = img if isinstance(img, Image.Image) else Image.fromarray(img)
  img.save(path, fmt, **kw)
  return path


def read_dataset(out_dir):
  """(manifest, {id: parsed record}), read the way training reads it."""
  manifest = ip.read_manifest(out_dir)
  out = {}
  for path, n in ip.process_shards(manifest, out_dir, 0, 1):
    recs = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(recs) == n
    for r in recs:
      ex = records.parse_example_numpy(r)
      ex['raw'] = r
      out[ex['id']] = ex
  return manifest, out


def pixels(ex):
  """The stored image as the input pipeline decodes it."""
  return tf.io.decode_image(ex['encoded'], channels=3, expand_animations=False).numpy()


def encoding(ex, name):
  f = tf.train.Example.FromString(ex['raw']).features.feature
  return f[records.mask_key(name, 'encoding')].bytes_list.value[0].decode()


def fh(image, scale=100, min_size=20, sigma=0.8):
  return skimage.segmentation.felzenszwalb(image, scale=scale, sigma=sigma,
                                           min_size=min_size)


def photo_folder(root, n=4):
  photos = [PHOTO, PHOTO2, PHOTO3, PHOTO[:, ::-1]]
  for i in range(n):
    save(f'{root}/d{i % 2}/img{i}.png', photos[i % 4])
  return root


def shard_files(out_dir):
  return sorted(f for f in os.listdir(out_dir) if f.endswith('.tfrecord'))


# ----------------------------------------------------------------- FH masks ---

def test_fh_maps_equal_skimage_after_round_trip(tmp_path):
  src = tmp_path / 'images'
  with open(save(f'{src}/a/photo.JPG', PHOTO, 'JPEG', quality=90), 'rb') as f:
    jpeg = f.read()
  save(f'{src}/b.png', PHOTO2)
  rng = np.random.default_rng(0)
  save(f'{src}/noise.png', rng.integers(0, 256, (64, 64, 3), np.uint8))
  save(f'{src}/noise_big.png', rng.integers(0, 256, (260, 260, 3), np.uint8))
  # Scale 0.001 / min_size 0 leaves noise nearly one segment per pixel: more
  # than 256 (png16) and, for the 260 x 260 image, more than 65,535 (png_rgb24).
  # Images in the folder and in a subfolder: a mixed layout takes --nolabels.
  assert run(tmp_path / 'out', f'--source=folder:{src}', '--fh_scales=0.001,100',
             '--fh_min_sizes=0,20', '--num_shards=2', '--nolabels') == 0
  manifest, exs = read_dataset(tmp_path / 'out')
  tiny = records.fh_mask_name(0.001, 0, 0.8)
  assert manifest['mask_names'] == [tiny, FH100]
  assert [e[3] for e in mask_kinds.fh.stored_maps(manifest)] == [tiny, FH100]
  assert sorted(exs) == ['a/photo.JPG', 'b.png', 'noise.png', 'noise_big.png']
  assert manifest['num_examples'] == 4 and manifest['num_failures'] == 0
  # The JPEG is stored unchanged; its masks are computed on TF's decode.
  assert exs['a/photo.JPG']['encoded'] == jpeg
  assert not exs['a/photo.JPG']['transcoded']
  np.testing.assert_array_equal(pixels(exs['b.png']), PHOTO2)
  for ex in exs.values():
    image = pixels(ex)
    assert (ex['height'], ex['width']) == image.shape[:2]
    np.testing.assert_array_equal(ex['masks'][FH100], fh(image), err_msg=ex['id'])
    np.testing.assert_array_equal(ex['masks'][tiny], fh(image, 0.001, 0), err_msg=ex['id'])
  n_noise = exs['noise.png']['masks'][tiny].max() + 1
  n_big = exs['noise_big.png']['masks'][tiny].max() + 1
  assert 256 < n_noise < 65536 and encoding(exs['noise.png'], tiny) == records.PNG16
  assert n_big > 65536 and encoding(exs['noise_big.png'], tiny) == records.PNG_RGB24
  # Maps with < 256 ids take the 8-bit PNG (half the decode time of 16 bits).
  assert exs['b.png']['masks'][FH100].max() < 256
  assert encoding(exs['b.png'], FH100) == records.PNG8


# --------------------------------------------------------------- bad inputs ---

def test_bad_inputs_are_converted_or_listed(tmp_path):
  src = str(tmp_path / 'images')
  cmyk = Image.fromarray(PHOTO).convert('CMYK')
  grey16 = PHOTO[..., 0].astype(np.uint16) * 257 + 3
  rgba = np.dstack([PHOTO2, PHOTO2[..., :1]])
  palette = Image.fromarray(PHOTO3).quantize(16)
  save(f'{src}/photo.jpg', PHOTO, 'JPEG', quality=90)
  save(f'{src}/grey.png', PHOTO[..., 1])
  save(f'{src}/grey.jpeg', PHOTO[..., 1], 'JPEG')
  save(f'{src}/palette.png', palette)
  save(f'{src}/photo.bmp', PHOTO2)
  save(f'{src}/cmyk.jpg', cmyk, 'JPEG')
  save(f'{src}/grey16.png', Image.fromarray(grey16))
  save(f'{src}/rgba.png', rgba)
  save(f'{src}/photo.WEBP', PHOTO3, 'WEBP', quality=80)
  save(f'{src}/tiny.png', PHOTO[:20, :40])
  save(f'{src}/big.png', np.zeros((150, 150, 3), np.uint8))
  open(f'{src}/zero.jpg', 'wb').close()
  with open(f'{src}/photo.jpg', 'rb') as f:
    jpeg = f.read()
  with open(f'{src}/truncated.jpg', 'wb') as f:
    f.write(jpeg[:len(jpeg) // 2])
  with open(f'{src}/text.jpg', 'w') as f:
    f.write('not a picture\n')
  open(f'{src}/notes.txt', 'w').close()  # Not an image extension: counted as skipped.

  assert run(tmp_path / 'out', f'--source=folder:{src}', *FAST,
             '--max_pixels=20000') == 0
  manifest, exs = read_dataset(tmp_path / 'out')
  reasons = {f['id']: f['reason'] for f in manifest['failures']}
  assert reasons.keys() == {'zero.jpg', 'truncated.jpg', 'text.jpg', 'tiny.png', 'big.png'}
  assert 'empty' in reasons['zero.jpg']
  assert 'truncated' in reasons['truncated.jpg']
  assert 'not an image' in reasons['text.jpg']
  assert 'too small for a crop' in reasons['tiny.png']
  assert 'too large' in reasons['big.png'] and '--max_pixels' in reasons['big.png']
  assert all(f['path'] == os.path.join(src, f['id']) for f in manifest['failures'])
  assert manifest['num_failures'] == 5 and manifest['num_examples'] == 9
  assert manifest['skipped'] == {'count': 1, 'by_extension': {'.txt': 1}, 'folders': []}

  def pil_rgb(name):
    return np.asarray(Image.open(f'{src}/{name}').convert('RGB'))

  grey = np.repeat(PHOTO[..., 1:2], 3, -1)
  expected = {  # id: (transcoded, original_format, stored pixels)
      'photo.jpg': (False, 'jpeg', None),
      'grey.png': (False, 'png', grey),
      'grey.jpeg': (False, 'jpeg', None),
      'palette.png': (False, 'png', np.asarray(palette.convert('RGB'))),
      'photo.bmp': (False, 'bmp', PHOTO2),
      'cmyk.jpg': (True, 'jpeg', pil_rgb('cmyk.jpg')),
      'grey16.png': (True, 'png', np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1)),
      'rgba.png': (True, 'png', PHOTO2),
      'photo.WEBP': (True, 'webp', pil_rgb('photo.WEBP')),
  }
  assert sorted(exs) == sorted(expected)
  for name, (transcoded, original, want) in expected.items():
    ex = exs[name]
    assert ex['transcoded'] == transcoded, name
    assert ex['original_format'] == original, name
    if transcoded:
      assert ex['format'] == 'png'
    else:  # Original bytes, unchanged.
      with open(f'{src}/{name}', 'rb') as f:
        assert ex['encoded'] == f.read(), name
    got = pixels(ex)
    if want is not None:
      np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(ex['masks'][FH100], fh(got), err_msg=name)
  assert manifest['num_transcoded'] == 4


def test_all_inputs_failing_exits_nonzero(tmp_path, capsys):
  src = tmp_path / 'images'
  src.mkdir()
  (src / 'zero.png').write_bytes(b'')
  (src / 'text.jpg').write_text('hello')
  assert run(tmp_path / 'out', f'--source=folder:{src}', *FAST) == 1
  assert 'every one of the 2 inputs failed' in capsys.readouterr().err
  manifest = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert manifest['num_examples'] == 0 and manifest['num_failures'] == 2


# ---------------------------------------------------------- resume, refusal ---

def test_resume_recomputes_only_missing_shard(tmp_path, capsys):
  src = photo_folder(str(tmp_path / 'images'), n=5)
  out = tmp_path / 'out'
  args = (f'--source=folder:{src}', *FAST, '--num_shards=3')
  assert run(out, *args) == 0
  files = shard_files(out)
  assert files == [f'train-0000{i}-of-00003.tfrecord' for i in range(3)]
  before = {f: (out / f).read_bytes() for f in files}
  mtimes = {f: os.stat(out / f).st_mtime_ns for f in files}
  (out / files[1]).unlink()
  (out / f'{files[1]}.json').unlink()
  (out / f'{files[1]}.tmp-99999').write_bytes(b'half a shard')
  (out / 'manifest.json').unlink()
  capsys.readouterr()
  assert run(out, *args) == 0
  log = capsys.readouterr().out
  assert 'resuming: 2 of 3 shards already complete' in log
  assert 'removed 1 stale temporary files' in log
  assert 'computing 1 shards (2 inputs)' in log
  assert not [f for f in os.listdir(out) if '.tmp-' in f]
  for f in (files[0], files[2]):
    assert os.stat(out / f).st_mtime_ns == mtimes[f]
  assert {f: (out / f).read_bytes() for f in shard_files(out)} == before
  manifest, exs = read_dataset(out)
  assert manifest['num_examples'] == 5 and len(exs) == 5
  # Round-robin by sorted position: shard 1 holds items 1 and 4.
  assert [s['num_examples'] for s in manifest['shards']] == [2, 2, 1]

  # Different parameters into the same folder: refused, nothing touched.
  capsys.readouterr()
  assert run(out, f'--source=folder:{src}', '--fh_scales=200', '--fh_min_sizes=20',
             '--num_shards=3') == 1
  err = capsys.readouterr().err
  assert 'different parameters' in err and 'fh_s200_m20' in err
  assert {f: (out / f).read_bytes() for f in shard_files(out)} == before
  # A non-empty folder that is not ours: refused.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'x.txt').write_text('x')
  assert run(tmp_path / 'other', *args) == 1
  assert 'not empty' in capsys.readouterr().err


def test_record_format_versions(tmp_path, capsys):
  """An older format's job resumes (its shards stay readable); a newer one is
  refused by the precompute and by every reader, naming the file."""
  import pytest  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import eval_input  # pylint: disable=g-import-not-at-top
  from data_pipeline import mask_quality  # pylint: disable=g-import-not-at-top
  src = photo_folder(str(tmp_path / 'images'), n=2)
  out = tmp_path / 'out'
  args = (f'--source=folder:{src}', *FAST, '--num_shards=2')
  assert run(out, *args) == 0
  params = json.loads((out / 'params.json').read_text())
  assert params['format_version'] == records.FORMAT_VERSION == 2

  # A format-1 job interrupted before its second shard: the re-run resumes it.
  first, second = shard_files(out)
  (out / second).unlink()
  (out / f'{second}.json').unlink()
  (out / 'manifest.json').unlink()
  (out / 'params.json').write_text(json.dumps(dict(params, format_version=1)))
  capsys.readouterr()
  assert run(out, *args) == 0
  assert 'resuming: 1 of 2 shards already complete' in capsys.readouterr().out
  manifest, exs = read_dataset(out)
  assert manifest['format_version'] == records.FORMAT_VERSION and len(exs) == 2

  # Written by a newer dense_ssl: the precompute and the readers refuse it.
  newer = records.FORMAT_VERSION + 1
  (out / 'params.json').write_text(json.dumps(dict(params, format_version=newer)))
  assert run(out, *args) == 1
  err = capsys.readouterr().err
  assert f'params.json has record format version {newer}' in err, err
  (out / 'manifest.json').write_text(json.dumps(dict(manifest, format_version=newer)))
  match = f'manifest.json has record format version {newer}; this dense_ssl reads up to'
  with pytest.raises(ValueError, match=match):
    ip.read_manifest(str(out))
  with pytest.raises(eval_input.EvalDataError, match=match):
    eval_input.split_files(str(out), 'train')
  with pytest.raises(mask_quality.UsageError, match=match):
    mask_quality.read_manifest(str(out))
  # An encoding this code does not know fails loudly, not as a wrong decode.
  data, _ = records.encode_label_map(np.zeros((4, 4), np.int32))
  with pytest.raises(tf.errors.InvalidArgumentError, match='unknown label map encoding'):
    records.decode_label_map_tf(tf.constant(data), tf.constant('png9'))


def test_flag_errors(tmp_path, capsys):
  src = photo_folder(str(tmp_path / 'images'), n=1)
  out = tmp_path / 'out'
  assert run(out, f'--source=folder:{src}', '--fh_scales=500,1000',
             '--fh_min_sizes=500') == 1
  assert '--fh_scales has 2 values' in capsys.readouterr().err
  assert run(out, '--source=nonsense') == 1
  assert 'folder:DIR, tfds:NAME:SPLIT' in capsys.readouterr().err
  assert run(out, '--source=tfds:imagenet2012:train') == 1
  assert 'needs --data_dir' in capsys.readouterr().err
  assert run(out, f'--source=folder:{tmp_path}/missing') == 1
  assert 'not a directory' in capsys.readouterr().err
  assert not out.exists()


# -------------------------------------------------------------- user masks ---

def test_user_masks(tmp_path):
  src, masks = str(tmp_path / 'images'), str(tmp_path / 'labels')
  save(f'{src}/a.png', PHOTO)
  save(f'{src}/sub/b.jpg', PHOTO2, 'JPEG')
  save(f'{src}/sub/c.png', PHOTO3)       # No mask at all.
  save(f'{src}/d.png', PHOTO)            # Mask of the wrong size.
  ids = (np.arange(PHOTO.shape[0] * PHOTO.shape[1]) % 300).reshape(PHOTO.shape[:2])
  save(f'{masks}/a.png', Image.fromarray(ids.astype(np.uint16)))
  pal = Image.fromarray((np.arange(PHOTO2.shape[1])[None] % 7 * np.ones(
      PHOTO2.shape[:2], int)).astype(np.uint8), 'L').convert('P')
  save(f'{masks}/sub/b.png', pal)
  save(f'{masks}/d.png', np.zeros((10, 12), np.uint8))
  assert run(tmp_path / 'out', f'--source=folder:{src}', f'--user_masks={masks}',
             *FAST, '--nolabels') == 0  # A mixed layout (test_labels.py).
  manifest, exs = read_dataset(tmp_path / 'out')
  assert manifest['mask_names'] == [FH100, records.USER_MASK]
  assert sorted(exs) == ['a.png', 'sub/b.jpg']
  np.testing.assert_array_equal(exs['a.png']['masks']['user'], ids)
  np.testing.assert_array_equal(exs['sub/b.jpg']['masks']['user'], np.asarray(pal))
  reasons = {f['id']: f['reason'] for f in manifest['failures']}
  assert reasons['sub/c.png'] == f'no user mask {masks}/sub/c.png'
  assert 'is 12x10 but the image is 74x64' in reasons['d.png']


# ------------------------------------------------- parallel, demo, pipeline ---

def test_two_workers_write_the_same_shards(tmp_path, capsys):
  src = photo_folder(str(tmp_path / 'images'), n=4)
  args = (f'--source=folder:{src}', *FAST, '--examples_per_shard=2')
  assert run(tmp_path / 'one', *args, workers=1) == 0
  assert run(tmp_path / 'two', *args, workers=2) == 0
  assert 'with 2 workers' in capsys.readouterr().out
  files = shard_files(tmp_path / 'one')
  assert len(files) == 2 and shard_files(tmp_path / 'two') == files
  for f in files:
    assert (tmp_path / 'one' / f).read_bytes() == (tmp_path / 'two' / f).read_bytes()
  manifest = json.loads((tmp_path / 'two' / 'manifest.json').read_text())
  assert manifest['timing']['num_workers'] == 2 and manifest['num_examples'] == 4


def test_demo_source_with_gt_feeds_the_input_pipeline(tmp_path):
  from data_pipeline import demo_dataset
  out = tmp_path / 'out'
  assert run(out, '--source=demo', '--num_examples=6', '--image_size=64', *FAST,
             '--num_shards=2') == 0
  manifest, exs = read_dataset(out)
  assert manifest['mask_names'] == [FH100, records.GT_MASK, records.CLASS_MASK]
  scenes = list(demo_dataset.iterate_scenes(6, seed=0, size=64, classes=True))
  assert sorted(exs) == sorted(str(s[0]) for s in scenes)
  for image_id, image, gt, cls in scenes:
    ex = exs[str(image_id)]
    np.testing.assert_array_equal(pixels(ex), image)
    np.testing.assert_array_equal(ex['masks']['gt'], gt)
    np.testing.assert_array_equal(ex['masks']['class'], cls)
    np.testing.assert_array_equal(ex['masks'][FH100], fh(image))
    assert ex['transcoded'] and ex['original_format'] == 'raw'
  no_color = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                  solarize_prob=(0., 0.))
  for mask in ('gt', 'fh'):
    cfg = fake_data.data_config(dir=str(out), image_size=32, mask=mask, fh_scale=100,
                                shuffle_buffer=8, color_on='host', **no_color)
    ds = ip.make_pretrain_dataset(cfg, global_batch_size=4, seed=0)
    batch = next(ds.as_numpy_iterator())
    assert batch['view1/image'].shape == (1, 4, 32, 32, 3)
    assert batch['view2/mask'].shape == (1, 4, 32, 32)


def test_demo_appearance_is_part_of_the_run(tmp_path, capsys):
  from data_pipeline import demo_dataset
  out = tmp_path / 'out'
  assert run(out, '--source=demo', '--num_examples=2', '--image_size=64', *FAST,
             '--demo_appearance=class_textures') == 1
  assert '--demo_appearance=\'class_textures\': choose one of random, class_texture' in (
      capsys.readouterr().err)
  assert not out.exists()
  assert run(out, '--source=demo', '--num_examples=2', '--image_size=64', *FAST,
             '--demo_appearance=class_texture') == 0
  manifest, exs = read_dataset(out)
  assert 'appearance=class_texture' in manifest['source']
  # The class map's names travel with the data (dense_ssl.evaluate reads them).
  assert manifest['class_names'] == list(demo_dataset.CLASS_NAMES)
  for image_id, image, gt, _ in demo_dataset.iterate_scenes(
      2, size=64, classes=True, appearance='class_texture'):
    np.testing.assert_array_equal(pixels(exs[str(image_id)]), image)
    np.testing.assert_array_equal(exs[str(image_id)]['masks']['gt'], gt)
  # The default scenes are another run: refused in the same folder, not mixed in.
  assert run(out, '--source=demo', '--num_examples=2', '--image_size=64', *FAST) == 1
  assert 'different parameters' in capsys.readouterr().err


# --------------------------------------------------------------------- TFDS ---

def _panoptic_example(i):
  rng = np.random.default_rng(i)
  image = np.ascontiguousarray(np.roll(PHOTO, 9 * i, axis=1))
  pan = np.zeros(PHOTO.shape, np.uint8)      # id = R + 256 G + 65536 B, 0 = VOID.
  pan[5:30, 10:40] = (7, 1, 0)               # id 263
  pan[35:60, :] = (2, 0, 1)                  # id 65538
  pan[0:5, 50:70] = (0, 0, 3) if i % 2 else (0, 0, 0)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=int(rng.integers(80, 95)))
  return buf.getvalue(), pan


class PrecomputeTestPanoptic(tfds.core.GeneratorBasedBuilder):
  """A tiny panoptic-like TFDS dataset, prepared offline in a temp folder."""
  VERSION = tfds.core.Version('1.0.0')
  # No source file lookup (TFDS would look for a checksums file next to it).
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'image/filename': tfds.features.Text(),
        'panoptic_image': tfds.features.Image(encoding_format='png'),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      jpeg, pan = _panoptic_example(i)
      yield i, {'image': jpeg, 'image/filename': f'{i:03d}.jpg', 'panoptic_image': pan}


class PrecomputeTestPanopticLabels(tfds.core.GeneratorBasedBuilder):
  """Panoptic PNGs plus panoptic_objects {id, label}, as TFDS's coco/2017_panoptic."""
  VERSION = tfds.core.Version('1.0.0')
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'image/filename': tfds.features.Text(),
        'panoptic_image': tfds.features.Image(encoding_format='png'),
        'panoptic_objects': tfds.features.Sequence({
            'id': np.int64,
            'label': tfds.features.ClassLabel(num_classes=133),
            'is_crowd': np.bool_,
        }),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      jpeg, pan = _panoptic_example(i)
      # Segment 263 is category 0, 65538 category 132; 196608 (odd i) unlisted.
      yield i, {'image': jpeg, 'image/filename': f'{i:03d}.jpg', 'panoptic_image': pan,
                'panoptic_objects': {'id': [65538, 263], 'label': [132, 0],
                                     'is_crowd': [False, True]}}


class PrecomputeTestInstances(tfds.core.GeneratorBasedBuilder):
  """Per-instance binary masks under objects/segmentation (as lvis)."""
  VERSION = tfds.core.Version('1.0.0')
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='png'),
        'objects': tfds.features.Sequence({
            'segmentation': tfds.features.Image(shape=(None, None, 1),
                                                encoding_format='png')}),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    big = np.zeros(PHOTO.shape[:2] + (1,), np.uint8)
    big[10:60, 10:70] = 1
    small = np.zeros_like(big)
    small[20:30, 20:30] = 1
    yield 0, {'image': PHOTO, 'objects': {'segmentation': [small, big]}}


def test_tfds_source_keeps_bytes_and_reads_panoptic_gt(tmp_path, capsys):
  data_dir = str(tmp_path / 'tfds')
  builder = PrecomputeTestPanoptic(data_dir=data_dir)
  builder.download_and_prepare()
  name = builder.name
  out = tmp_path / 'out'
  assert run(out, f'--source=tfds:{name}:train', f'--data_dir={data_dir}', *FAST,
             '--num_shards=2') == 0
  manifest, exs = read_dataset(out)
  assert manifest['mask_names'] == [FH100, records.GT_MASK]
  assert sorted(exs) == [f'{i:03d}.jpg' for i in range(5)]
  for i in range(5):
    jpeg, pan = _panoptic_example(i)
    ex = exs[f'{i:03d}.jpg']
    assert ex['encoded'] == jpeg and not ex['transcoded']  # The original bytes.
    expected = np.zeros(pan.shape[:2], np.int32)  # Segments numbered by panoptic id.
    expected[5:30, 10:40] = 1
    expected[35:60, :] = 2
    if i % 2:
      expected[0:5, 50:70] = 3
    np.testing.assert_array_equal(ex['masks']['gt'], expected)
    np.testing.assert_array_equal(ex['masks'][FH100], fh(pixels(ex)))

  data_dir2 = str(tmp_path / 'tfds2')
  PrecomputeTestInstances(data_dir=data_dir2).download_and_prepare()
  assert run(tmp_path / 'out2', '--source=tfds:precompute_test_instances:train',
             f'--data_dir={data_dir2}', *FAST) == 0
  _, exs = read_dataset(tmp_path / 'out2')
  (ex,) = exs.values()
  expected = np.zeros(PHOTO.shape[:2], np.int32)
  expected[10:60, 10:70] = 2
  expected[20:30, 20:30] = 1   # The small instance is painted over the large one.
  np.testing.assert_array_equal(ex['masks']['gt'], expected)

  # With panoptic_objects (coco/2017_panoptic): the category map, 1 + label.
  data_dir4 = str(tmp_path / 'tfds4')
  PrecomputeTestPanopticLabels(data_dir=data_dir4).download_and_prepare()
  assert run(tmp_path / 'out4', '--source=tfds:precompute_test_panoptic_labels:train',
             f'--data_dir={data_dir4}', *FAST) == 0
  manifest, exs = read_dataset(tmp_path / 'out4')
  assert manifest['mask_names'] == [FH100, records.GT_MASK, records.CLASS_MASK]
  assert manifest['abo']['num_images'] == 3
  # VOID, then TFDS's panoptic category names: the class probe's 134 ids.
  assert manifest['class_names'] == ['VOID', *map(str, range(133))]
  assert ip.probe_targets(manifest) == ('class',) and ip.num_map_classes(manifest) == 134
  for i in range(3):
    ex = exs[f'{i:03d}.jpg']
    expected = np.zeros(PHOTO.shape[:2], np.int32)
    expected[5:30, 10:40] = 1          # Label 0 -> class 1.
    expected[35:60, :] = 133           # Label 132 -> class 133.
    np.testing.assert_array_equal(ex['masks']['class'], expected)  # Unlisted: 0.
    gt = ex['masks']['gt']
    for j in np.unique(gt):            # One class per instance.
      assert len(np.unique(ex['masks']['class'][gt == j])) == 1

  # Never downloads: an unprepared dataset is refused with what to run.
  capsys.readouterr()
  assert run(tmp_path / 'out3', f'--source=tfds:{name}:train',
             f'--data_dir={tmp_path / "empty"}') == 1
  assert 'is not prepared' in capsys.readouterr().err
