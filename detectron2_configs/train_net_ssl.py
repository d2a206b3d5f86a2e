#!/usr/bin/env python
"""Detectron2's tools/train_net.py, plus the one ROI head our VOC config needs.

  DETECTRON2_DIR=/path/to/detectron2 python detectron2_configs/train_net_ssl.py \
      --config-file CONFIG --num-gpus 8 MODEL.WEIGHTS converted.pkl OUTPUT_DIR out

Every flag and option is Detectron2's own (this runs `main` of the unchanged
DETECTRON2_DIR/tools/train_net.py). The only addition is the registered ROI
head "Res5ROIHeadsExtraNorm": Detectron2's Res5ROIHeads with one more norm
layer (MODEL.RESNETS.NORM, i.e. SyncBN) after the res5 box head: the C4
recipe of the self-supervised transfer literature (MoCo's detection
configs), so the box predictor sees normalised res5 features.

Run by launch/detectron2_eval.sh; needs the environment Detectron2 was built
in (torch, detectron2), not dense_ssl's.
"""

import os
import sys

_D2 = os.environ.get('DETECTRON2_DIR', '')
_TOOLS = os.path.join(_D2, 'tools')
if not os.path.isfile(os.path.join(_TOOLS, 'train_net.py')):
  sys.exit('detectron2_configs/train_net_ssl.py: set DETECTRON2_DIR to a '
           f'Detectron2 source checkout (no tools/train_net.py under '
           f'"{_D2}"); see WORKSPACE.md section 6.')
# Importable by name, so that the worker processes Detectron2's launch()
# spawns (they re-import this file) can unpickle train_net.main.
sys.path.insert(0, _TOOLS)

import train_net  # noqa: E402  Detectron2's own script, unchanged.
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling.roi_heads import (  # noqa: E402
    ROI_HEADS_REGISTRY, Res5ROIHeads)


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
  """Res5ROIHeads whose res5 stage ends in a norm layer (MODEL.RESNETS.NORM)."""

  @classmethod
  def _build_res5_block(cls, cfg):
    res5, channels = super()._build_res5_block(cfg)
    res5.add_module('norm', get_norm(cfg.MODEL.RESNETS.NORM, channels))
    return res5, channels


if __name__ == '__main__':
  args = default_argument_parser().parse_args()
  print('Command Line Args:', args)
  launch(train_net.main, args.num_gpus, num_machines=args.num_machines,
         machine_rank=args.machine_rank, dist_url=args.dist_url,
         args=(args,))
