r"""SCRL (Roh et al. 2021): BYOL on K = 10 matched boxes of the two views.

Presets (NOTES.md, official code):
  imagenet / paper  1000 epochs: LARS LR 0.2 x batch/256, WD 1.5e-6, EMA 0.996,
                    batch 8192 (set --config.batch_size to what fits), crops
                    with area in [0.2, 1].
  paper200          200 epochs: LR 0.45 x batch/256, WD 1e-6, EMA base 0.97.
  coco, demo, test  as for every method (configs/common.py).
Box rules: K = 10, >= 32 px in both views, IoU < 0.5 among an image's boxes;
1x1 RoIAlign on C5 (aligned=False). The official code samples adaptively
(ceil(box / output) points per axis); we use a fixed sampling_ratio (jit needs
static shapes), 4 by default: a 32-224 px box covers 1-7 C5 cells.

  python -m dense_ssl.main --config=configs/scrl.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/scrl.py:paper200 --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/scrl.py:demo --workdir=out/demo/scrl \
      --config.data.dir=out/demo/masks
Switch: --config.loss.global_weight=1.0 adds the global BYOL loss.
"""

from configs import common


def get_config(arg=None):
  preset = (arg or 'imagenet').strip()
  c = common.base_config('scrl')
  c.loss.num_boxes = 10
  c.loss.min_box_size = 32.0
  c.loss.box_iou_threshold = 0.5
  c.loss.sampling_ratio = 4
  c.loss.global_weight = 0.0
  c.data.crop_area = (0.2, 1.0)
  c.batch_size = 8192
  if preset == 'paper200':
    c.total_epochs = 200.0
    c.optimizer.base_lr = 0.45
    c.optimizer.weight_decay = 1e-6
    c.ema.base = 0.97
    preset = 'imagenet'
  c = common.apply_preset(c, preset)
  # SCRL uses no masks: a grid (computed on the fly) lets it read any mask
  # dataset, even one without FH maps.
  c.data.mask = 'grid'
  if preset == 'test':
    c.loss.num_boxes = 4
    c.loss.min_box_size = 16.0   # 64 px test views.
  return c
