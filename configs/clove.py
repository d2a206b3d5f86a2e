r"""CLoVE (Silva et al.): contextualised local embeddings, 2-view variant.

imagenet preset = the paper's setting (Sec. 6; NOTES.md): ResNet-50, batch
2048, LARS base LR 1.0 x batch/256, WD 2e-5, cosine, 5 warmup epochs, EMA
0.99 -> 1 (cosine), 400 epochs (--config.total_epochs=200 for the shorter
schedule), BYOL's views; projector 1x1 2048 -> 4096 -> 256 + BN without
affine, NMHSA predictor with 8 heads, T_pos = 0.7, k = 10, margin mu = 100,
lambda = 1. Two views, not the paper's multi-crop (dense_ssl/objectives/clove.py).

  python -m dense_ssl.main --config=configs/clove.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/clove.py:demo --workdir=out/demo/clove \
      --config.data.dir=out/demo/masks
"""

from configs import common


def get_config(arg=None):
  preset = common.preset_name(arg)
  c = common.base_config('clove', preset, clove=1.0)
  c.batch_size = 2048
  c.total_epochs = 400.0
  c.warmup_epochs = 5.0
  c.optimizer.update(name='lars', base_lr=1.0, weight_decay=2e-5)
  c.ema.base = 0.99
  c = common.apply_preset(c, preset)
  c.data.mask = 'grid'              # No masks.
  return c
