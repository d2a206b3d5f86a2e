r"""CLoVE (Silva et al.): contextualised local embeddings, with multi-crop.

imagenet preset = the paper's setting (Sec. 6; FACTS.md §8): ResNet-50, batch
2048, LARS base LR 1.0 x batch/256, WD 2e-5, cosine, 5 warmup epochs, EMA
0.99 -> 1 (cosine), 400 epochs (--config.total_epochs=200 for the shorter
schedule), BYOL's views; projector 1x1 2048 -> 4096 -> 256 + BN without
affine, NMHSA predictor with 8 heads, T_pos = 0.7, k = 10, margin mu = 100,
lambda = 1; multi-crop as the public code and the paper's best setting
(Table 8): 2 global 224 px views + 6 local 96 px crops of area (0.05, 0.14)
(how local crops enter the loss: dense_ssl/objectives/clove.py).
The 2-view CLoVE (Table 8's other rows): --config.data.num_local_crops=0.
coco: the same on COCO. demo and test: 2 views (CPU: tiny local crops are
slow there: configs/common.py; the tests set data.num_local_crops themselves).

  python -m dense_ssl.main --config=configs/clove.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/clove.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR --config.data.num_local_crops=0      # 2-view
  python -m dense_ssl.main --config=configs/clove.py:demo --workdir=out/demo/clove \
      --config.data.dir=out/demo/masks
"""

from configs import common


def setting(c):
  c.batch_size = 2048
  c.total_epochs = 400.0
  c.warmup_epochs = 5.0
  c.optimizer.update(name='lars', base_lr=1.0, weight_decay=2e-5)
  c.ema.base = 0.99
  c.data.num_local_crops = 6        # The demo and test presets turn multi-crop off.
  c.data.mask = 'grid'              # No masks.


def get_config(arg=None):
  return common.make('clove', arg, weights=dict(clove=1.0), setting=setting)
