r"""DetCon-B: BYOL with the contrastive detection loss (Hénaff et al. 2021).

Paper setting (imagenet preset): ResNet-50, 224 px, batch 4096, 1000 epochs,
FH masks at scale = min_size = 1000, 16 masks per view, temperature 0.1,
LARS base LR 0.2 x batch/256, WD 1.5e-6, EMA base 0.996, 10 warmup epochs
(the official release warms up for 1% of training; FACTS.md §10).

  python -m dense_ssl.main --config=configs/detcon_b.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/detcon_b.py:coco --workdir=WORKDIR \
      --config.data.dir=COCO_MASKS_DIR
  python -m dense_ssl.main --config=configs/detcon_b.py:demo --workdir=out/demo/detcon_b
  python -m dense_ssl.main --config=configs/detcon_b.py:test --workdir=/tmp/t \
      --config.data.dir=MASKS_DIR
Paper ablations: --config.objectives.detcon.local_negatives=False,
--config.objectives.detcon.gather_negatives=False (negatives from this device
only, Table 5), --config.data.mask=grid|gt.
"""

from configs import common


def get_config(arg=None):
  return common.make('detcon_b', arg, weights=dict(detcon=1.0))
