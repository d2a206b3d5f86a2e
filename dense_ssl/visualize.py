"""Draws a batch of the real input pipeline to a PNG, to check it by eye.

  python -m dense_ssl.visualize --data_dir=DIR --out=batch.png \
      [--mask=fh --fh_scale=1000 --num_examples=4 --seed=0 --image_size=128]

  python -m dense_ssl.visualize --data_dir=DIR --out=multicrop.png \
      --num_local_crops=4 --local_crop_size=64

One row per example: the original image with both crop windows (and the
local crops' windows, dashed), then view 1 and view 2 (denormalised) with
the label map overlaid, then each local crop (multi-crop,
--num_local_crops); the views are shown after the colour recipe exactly as
the training step applies it (dense_ssl/ops/color.augment_views); the same id has the same
colour in both views (colour = a fixed hash of the id). Lines join points of
view 1 to the same scene points in view 2, computed only from the recorded
geometry (box, flip): view 1 pixel -> original coordinates -> view 2 pixel,
drawn when the point lies inside view 2. If the lines do not land on the same
scene content, the geometry is wrong.

config.data comes from --config (default: configs/detcon_b.py:demo, the
demo's colour recipe and crops); the flags above set the keys they name.
"""

import colorsys
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from data_pipeline import augment
from data_pipeline import input_pipeline
from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline import tf_setup
from data_pipeline import view_config
from dense_ssl.ops import color

tf = tf_setup.hide_accelerators()

# Read by path, not imported: configs/ sits above dense_ssl/ in the layering.
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'detcon_b.py') + ':demo',
    'Config file and preset whose config.data the batch is drawn with.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Mask dataset directory (manifest.json).')
_OUT = flags.DEFINE_string('out', 'batch.png', 'PNG to write.')
# The kinds whose views carry masks ('discovered' masks exist only in the step).
_MASK = flags.DEFINE_enum('mask', 'fh', [n for n, k in mask_kinds.REGISTRY.items()
                                         if k.ships_view_masks], 'data.mask')
_FH_SCALE = flags.DEFINE_integer('fh_scale', 1000, 'data.fh_scale (-1: random stored scale).')
_GRID = flags.DEFINE_integer('grid_size', 4, 'data.grid_size for --mask=grid.')
_NUM = flags.DEFINE_integer('num_examples', 4, 'Examples (rows) to draw.')
_SEED = flags.DEFINE_integer('seed', 0, 'Pipeline seed.')
_SIZE = flags.DEFINE_integer('image_size', 128, 'View size.')
_STEP = flags.DEFINE_integer('step', 0, 'Draw the batch of this step.')
_MODES = flags.DEFINE_list('view_modes', ['crop', 'crop'], 'data.view_modes.')
_SHARED_FLIP = flags.DEFINE_bool('shared_flip', False, 'data.shared_flip.')
_COLOR = flags.DEFINE_bool('color', True, 'Apply the colour augmentations.')
_POINTS = flags.DEFINE_integer('num_points', 8, 'Correspondence points tried per example.')
_LOCAL = flags.DEFINE_integer('num_local_crops', 0, 'data.num_local_crops (multi-crop).')
_LOCAL_SIZE = flags.DEFINE_integer('local_crop_size', 64, 'data.local_crop_size.')
_LOCAL_AREA = flags.DEFINE_list('local_crop_area', ['0.05', '0.14'], 'data.local_crop_area.')


def id_colour(i):
  """Fixed colour of a label id (Knuth multiplicative hash -> hue)."""
  h = ((int(i) * 2654435761) & 0xFFFFFFFF) / 2**32
  return np.array(colorsys.hsv_to_rgb(h, 0.85, 1.0))


def overlay(image, mask, alpha=0.45):
  """float [S, S, 3] in [0, 1] blended with the id colours of int [S, S]."""
  ids, inv = np.unique(mask, return_inverse=True)
  colours = np.stack([id_colour(i) for i in ids])[inv.reshape(mask.shape)]
  out = (1 - alpha) * image + alpha * colours
  edge = np.zeros(mask.shape, bool)  # Segment borders in white.
  edge[:-1] |= mask[:-1] != mask[1:]
  edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
  out[edge] = 1.
  return out


def view_to_original(rc, box, flip, size):
  """View pixel coords (row, col) [N, 2] -> normalised original (y, x) [N, 2]."""
  v = (np.asarray(rc, np.float64) + 0.5) / size
  if flip:
    v[:, 1] = 1 - v[:, 1]
  y0, x0, y1, x1 = box
  return np.stack([y0 + v[:, 0] * (y1 - y0), x0 + v[:, 1] * (x1 - x0)], 1)


def original_to_view(yx, box, flip, size):
  """Inverse of view_to_original; also returns which points lie inside the view."""
  y0, x0, y1, x1 = box
  v = np.stack([(yx[:, 0] - y0) / (y1 - y0), (yx[:, 1] - x0) / (x1 - x0)], 1)
  inside = np.all((v >= 0) & (v <= 1), axis=1)
  if flip:
    v[:, 1] = 1 - v[:, 1]
  return v * size - 0.5, inside


def find_originals(data_dir, ids, limit=20000):
  """Decoded original images of `ids`, scanning the shards (small datasets)."""
  manifest = input_pipeline.read_manifest(data_dir)
  files = [f'{data_dir}/{s["file"]}' for s in manifest['shards']]
  want, found = set(ids), {}
  ds = tf.data.TFRecordDataset(files).take(limit).map(
      lambda r: tf.io.parse_single_example(
          r, {records.IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
              records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}))
  for ex in ds.as_numpy_iterator():
    if ex[records.IMAGE_ID] in want:
      found[ex[records.IMAGE_ID]] = tf.io.decode_image(
          ex[records.IMAGE_ENCODED], channels=3, expand_animations=False).numpy()
      if len(found) == len(want):
        break
  return found


def main(argv):
  del argv
  # Warnings only: app.run logs INFO, where JAX reports each platform it
  # probes and does not find ("Unable to initialize backend 'tpu'").
  logging.set_verbosity(logging.WARNING)
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.patches import ConnectionPatch, Rectangle

  n, size = _NUM.value, _SIZE.value
  cfg = _CONFIG.value.data.to_dict()
  cfg.update(dir=_DATA_DIR.value, image_size=size, mask=_MASK.value,
             fh_scale=_FH_SCALE.value, grid_size=_GRID.value, shuffle_buffer=256,
             view_modes=tuple(_MODES.value), shared_flip=_SHARED_FLIP.value,
             color_on='device', num_local_crops=_LOCAL.value,
             local_crop_size=_LOCAL_SIZE.value,
             local_crop_area=tuple(float(a) for a in _LOCAL_AREA.value))
  if not _COLOR.value:
    cfg.update(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
               solarize_prob=(0., 0.), local_blur_prob=0.)
  local_views = view_config.local_view_names(cfg)
  ds = input_pipeline.make_pretrain_dataset(cfg, global_batch_size=n, seed=_SEED.value,
                                            start_step=_STEP.value, with_metadata=True)
  batch = {k: v[0] for k, v in next(ds.as_numpy_iterator()).items()}
  # The colour recipe as the training step applies it, on the uint8 views.
  views = {k: v for k, v in batch.items() if not k.startswith('meta/')}
  views = color.augment_views(views, seed=_SEED.value, step=_STEP.value, data_config=cfg,
                              axis_name=None)
  batch.update({k: np.asarray(v) for k, v in views.items()})
  originals = find_originals(_DATA_DIR.value, list(batch['meta/id']))
  mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
  rng = np.random.default_rng(0)

  cols = 3 + len(local_views)
  fig, axes = plt.subplots(n, cols, figsize=(3.5 * cols, 3.5 * n), squeeze=False)
  for b in range(n):
    box1, box2 = batch['view1/box'][b], batch['view2/box'][b]
    flip1, flip2 = batch['view1/flip'][b], batch['view2/flip'][b]
    ax0, ax1, ax2 = axes[b][:3]
    local_colours = plt.cm.Set2(np.arange(max(1, len(local_views))) % 8)
    orig = originals.get(batch['meta/id'][b])
    if orig is not None:
      h, w = orig.shape[:2]
      ax0.imshow(orig)
      windows = [(box1, 'tab:orange', 'view 1', '-'), (box2, 'tab:cyan', 'view 2', '-')]
      windows += [(batch[f'{v}/box'][b], c, f'local {i + 1}', '--')
                  for i, (v, c) in enumerate(zip(local_views, local_colours))]
      for box, c, name, style in windows:
        y0, x0, y1, x1 = box
        ax0.add_patch(Rectangle((x0 * w - .5, y0 * h - .5), (x1 - x0) * w, (y1 - y0) * h,
                                fill=False, ec=c, lw=2, ls=style, label=name))
      ax0.legend(loc='lower right', fontsize=7)
    ax0.set_title(batch['meta/id'][b].decode(), fontsize=8)
    views = [(ax1, 'view1', 'view 1'), (ax2, 'view2', 'view 2')]
    views += [(axes[b][3 + i], v, f'local {i + 1} ({v})') for i, v in enumerate(local_views)]
    for ax, v, name in views:
      img = np.clip(batch[f'{v}/image'][b] * std + mean, 0, 1)
      ax.imshow(overlay(img, batch[f'{v}/mask'][b]))
      y0, x0, y1, x1 = batch[f'{v}/box'][b]
      ax.set_title(f'{name}: box ({y0:.2f}, {x0:.2f}, {y1:.2f}, {x1:.2f})'
                   f' flip {batch[f"{v}/flip"][b]}', fontsize=8)
    # Correspondences from geometry only.
    # Many candidates in view 1; keep the first few that view 2 also shows.
    rc1 = rng.uniform(0, size - 1, (50 * _POINTS.value, 2))
    yx = view_to_original(rc1, box1, flip1, size)
    rc2, inside = original_to_view(yx, box2, flip2, size)
    for p, q in list(zip(rc1[inside], rc2[inside]))[:_POINTS.value]:
      ax1.plot(p[1], p[0], 'o', ms=5, mfc='yellow', mec='black')
      ax2.plot(q[1], q[0], 'o', ms=5, mfc='yellow', mec='black')
      fig.add_artist(ConnectionPatch(xyA=(p[1], p[0]), xyB=(q[1], q[0]), coordsA='data',
                                     coordsB='data', axesA=ax1, axesB=ax2,
                                     color='yellow', lw=1))
    for ax in axes[b]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(f'mask={_MASK.value} fh_scale={_FH_SCALE.value} seed={_SEED.value}'
               f' step={_STEP.value}: same id = same colour; lines join the same'
               ' scene point (from box/flip)', fontsize=9)
  fig.tight_layout()
  fig.savefig(_OUT.value, dpi=110)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  flags.mark_flag_as_required('data_dir')
  app.run(main)
