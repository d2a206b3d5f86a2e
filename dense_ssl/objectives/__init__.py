"""The registry of objectives: config.objectives.<name> -> its class.

Adding an objective is one file in this package (its loss, heads, config
subtree `default_config()`, per-preset overrides `presets` and checks
`validate`; see base.py) plus its line below, and a config in configs/ that
gives it a weight.
"""

import ml_collections

from dense_ssl.objectives import byol
from dense_ssl.objectives import clove
from dense_ssl.objectives import detcon
from dense_ssl.objectives import lc
from dense_ssl.objectives import moco
from dense_ssl.objectives import resim
from dense_ssl.objectives import scrl
from dense_ssl.objectives import simclr

REGISTRY = {cls.name: cls for cls in (byol.BYOL, simclr.SimCLR, moco.MoCo, detcon.DetCon,
                                      lc.LC, scrl.SCRL, resim.ReSim, clove.CLoVE)}


def default_configs():
  """config.objectives: every registered objective's paper subtree, all off (weight 0)."""
  return ml_collections.ConfigDict({name: cls.default_config()
                                    for name, cls in REGISTRY.items()})


def active(config):
  """[(objective, weight)] of config.objectives with weight != 0.

  The config has passed dense_ssl/config_check.py, which names every
  problem (unknown objectives, all weights 0, two global objectives).
  """
  return [(cls(config), float(config.objectives[name].weight))
          for name, cls in REGISTRY.items()
          if name in config.objectives and float(config.objectives[name].weight)]
