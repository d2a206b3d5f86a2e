r"""ReSim (Xiao et al. 2021): MoCo-v2 + region similarity on sliding windows.

imagenet preset = the paper's IN-1K setting (Sec. 4, Table 7): MoCo-v2 for
200 epochs (configs/moco.py: SGD 0.03 x batch/256, WD 1e-4, batch 256, queue
65,536, momentum 0.999, temperature 0.2) + ReSim-C4 (windows 48 px stride
32 on C4, two 3x3 convs to 128 channels, Precise RoI Pooling, negatives from
3x3 average-pooled key maps of all devices), loss weights 1 (Eq. 5); the
two views share one flip decision (Sec. 3.3). ReSim-FPN:
--config.objectives.resim.variant=fpn (P4: 48/32, P3: 32/24; the FPN is exported
to Detectron2). --config.objectives.resim.region_dim=0 pools the maps without the
region head (the official FPN code); in100 preset: IN-100, 500 epochs,
queue 16,384.

  python -m dense_ssl.main --config=configs/resim.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/resim.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR --config.objectives.resim.variant=fpn
  python -m dense_ssl.main --config=configs/resim.py:demo --workdir=out/demo/resim \
      --config.data.dir=out/demo/masks
"""

from configs import common
from configs import moco


def setting(c):
  """MoCo-v2's (configs/moco.py); the two views share one flip (Sec. 3.3)."""
  moco.setting(c)
  c.data.shared_flip = True


def in100(c):
  c.total_epochs = 500.0
  c.objectives.moco.queue_size = 16384


def get_config(arg=None):
  return common.make('resim', arg, weights=dict(moco=1.0, resim=1.0), setting=setting,
                     variants=dict(in100=in100))
