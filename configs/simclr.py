r"""SimCLR (Chen et al. 2020), DetCon-S's global baseline.

imagenet preset: LARS base LR 0.3 x batch/256, WD 1e-6, temperature 0.1,
batch 4096, 1000 epochs; negatives gathered over all devices.

  python -m dense_ssl.main --config=configs/simclr.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/simclr.py:demo --workdir=out/demo/simclr
"""

from configs import common


def setting(c):
  c.optimizer.update(base_lr=0.3, weight_decay=1e-6)


def get_config(arg=None):
  return common.make('simclr', arg, weights=dict(simclr=1.0), setting=setting)
