r"""MoCo-v2 (Chen et al. 2020): InfoNCE against a queue, ReSim's baseline.

imagenet preset = MoCo-v2's 200-epoch setting as ReSim trains it (Table 7):
ResNet-50, batch 256, SGD LR 0.03 x batch/256, momentum 0.9, WD 1e-4,
cosine, no warmup, queue K = 65,536, momentum encoder 0.999 (constant),
temperature 0.2, head 2048 -> 2048 -> 128 without BN; MoCo-v2 views (crop
[0.2, 1], blur p = 0.5 on both views, no solarisation).

  python -m dense_ssl.main --config=configs/moco.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/moco.py:demo --workdir=out/demo/moco \
      --config.data.dir=out/demo/masks
"""

from configs import common


def setting(c):
  """MoCo-v2's optimiser, momentum encoder, head and views (shared with ReSim)."""
  c.batch_size = 256
  c.total_epochs = 200.0
  c.warmup_epochs = 0.0
  c.optimizer.update(name='sgd', base_lr=0.03, weight_decay=1e-4, momentum=0.9)
  c.ema.update(base=0.999, schedule='constant')
  c.model.update(projector_hidden=2048, projector_dim=128, projector_bn=False)
  c.data.update(crop_area=(0.2, 1.0), saturation=0.4, blur_prob=(0.5, 0.5),
                solarize_prob=(0.0, 0.0))
  c.data.mask = 'grid'               # No masks.


def get_config(arg=None):
  return common.make('moco', arg, weights=dict(moco=1.0), setting=setting)
