r"""LC-loss (Islam et al.): BYOL + alpha x local contrastive NLL.

paper / imagenet preset: BYOL's ImageNet setting (ResNet-50, 224 px, LARS
0.2 x batch/256, EMA 0.996), alpha = 0.1 (Eq. 5; the paper's ablation finds
0.1-0.3 best), view 1 colour-only (I_c: no crop, no flip), view 2 cropped +
flipped (I_sc). The paper does not state its softmax temperature tau: we use
0.1 (config key objectives.lc.temperature) -- an assumption to ablate.

  python -m dense_ssl.main --config=configs/lc_byol.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/lc_byol.py:demo --workdir=out/demo/lc_byol \
      --config.data.dir=out/demo/masks
"""

from configs import common


ALPHA = 0.1  # LC Eq. 5: (1 - alpha) L_BYOL + alpha L_LC.


def setting(c):
  c.data.view_modes = ('color_only', 'crop')
  c.data.mask = 'grid'              # LC-loss uses no masks.


def get_config(arg=None):
  return common.make('lc_byol', arg, weights=dict(byol=1 - ALPHA, lc=ALPHA),
                     setting=setting)
