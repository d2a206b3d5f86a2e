r"""BYOL (Grill et al. 2020), DetCon-B's global baseline.

imagenet preset = BYOL's 1000-epoch setting: LARS base LR 0.2 x batch/256,
WD 1.5e-6, EMA base 0.996, batch 4096 (FACTS.md §10; shorter BYOL schedules:
300 epochs LR 0.3 WD 1e-6 EMA 0.99, 100 epochs LR 0.45 EMA 0.99).

  python -m dense_ssl.main --config=configs/byol.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/byol.py:demo --workdir=out/demo/byol
"""

from configs import common


def get_config(arg=None):
  return common.make('byol', arg, weights=dict(byol=1.0))
