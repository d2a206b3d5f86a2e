r"""SCRL: BYOL on K matched boxes of the two views (Roh et al. 2021).

Presets:
  imagenet | paper  SCRL's 1000-epoch ImageNet run: ResNet-50, 224 px, batch
      8192, LARS base LR 0.2 x batch/256, WD 1.5e-6, EMA base 0.996, 10
      warmup epochs, crop area [0.2, 1] (the official code's 1000-epoch config,
      FACTS.md §5; the paper's Sec. 3.3 text gives LR 0.45 and tau 0.97 for its
      1000-epoch run, which are the code's 200-epoch values).
  paper200  the code's 200-epoch config: LR 0.45 x batch/256, WD 1e-6, EMA
      base 0.97, otherwise as imagenet.
  coco      the shared COCO setting (configs/common.py); SCRL itself was
      pretrained on ImageNet only.
  demo, test  tiny, CPU (configs/common.py).
Boxes (Sec. 3.1): K = 10, >= 32 px in both views at 224 px (demo/test keep
the same fraction of the view, 32/224), IoU < 0.5 among an image's boxes;
1x1 RoIAlign on C5 with aligned=True (SCRL's code: False, which misplaces
boxes by half a cell; --config.objectives.scrl.roi_aligned=False reproduces
it) and sampling_ratio = image_size / 32 (fixed; the code's is adaptive:
dense_ssl/objectives/scrl.py). Views need no masks: data.mask = 'grid'
(made on the fly) reads any mask dataset.

  python -m dense_ssl.main --config=configs/scrl.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/scrl.py:paper200 --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/scrl.py:coco --workdir=WORKDIR \
      --config.data.dir=COCO_MASKS_DIR
  python -m dense_ssl.main --config=configs/scrl.py:demo --workdir=out/demo/scrl
  python -m dense_ssl.main --config=configs/scrl.py:test --workdir=/tmp/t \
      --config.data.dir=MASKS_DIR
Switches: --config.objectives.byol.weight=1.0 adds the global BYOL loss (not
in SCRL's code); --config.objectives.scrl.box_iou_threshold=1.0 turns IoU
rejection off (Table 7); --config.objectives.scrl.num_boxes=K (Table 6).
"""

from configs import common


def setting(c):
  c.data.crop_area = (0.2, 1.0)
  c.data.mask = 'grid'              # No masks: grids are made on the fly.
  c.batch_size = 8192


def paper200(c):
  """The official code's 200-epoch config."""
  c.total_epochs = 200.0
  c.optimizer.update(base_lr=0.45, weight_decay=1e-6)
  c.ema.base = 0.97


def get_config(arg=None):
  # SCRL's code: the box loss only (--config.objectives.byol.weight=1 adds BYOL's).
  return common.make('scrl', arg, weights=dict(scrl=1.0), setting=setting,
                     variants=dict(paper200=paper200))
