r"""DetCon-B + LC-loss, composed: 0.9 x DetCon-B's loss + 0.1 x LC's local loss.

An example of composing objectives: DetCon-B's paper setting (configs/
detcon_b.py: FH masks, 16 per view, LARS 0.2 x batch/256, EMA 0.996, 1000
epochs) with LC-loss's local projection branch and pixel NLL added at
alpha = 0.1 (LC Eq. 5 weights BYOL and LC as (1 - alpha) and alpha; DetCon's
mask loss takes BYOL's place). Both views are DetCon's random crops; the LC
term reads view 1's cells at their true sub-pixel points in view 2 and
drops those outside it. Any other objective can be added from the command
line, e.g. --config.objectives.scrl.weight=0.5.

  python -m dense_ssl.main --config=configs/detcon_b_lc.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/detcon_b_lc.py:demo \
      --workdir=out/demo/detcon_b_lc
"""

from configs import common


def get_config(arg=None):
  return common.make('detcon_b_lc', arg, weights=dict(detcon=0.9, lc=0.1))
