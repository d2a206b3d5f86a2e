r"""SimCLR (Chen et al. 2020), DetCon-S's global baseline.

imagenet preset: LARS base LR 0.3 x batch/256, WD 1e-6, temperature 0.1,
batch 4096, 1000 epochs; negatives gathered over all devices.

  python -m dense_ssl.main --config=configs/simclr.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/simclr.py:demo --workdir=out/demo/simclr
"""

from configs import common


def get_config(arg=None):
  preset = common.preset_name(arg)
  c = common.base_config('simclr', preset, simclr=1.0)
  c.optimizer.base_lr = 0.3
  c.optimizer.weight_decay = 1e-6
  return common.apply_preset(c, preset)
