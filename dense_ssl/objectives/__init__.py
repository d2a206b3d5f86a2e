"""The registry of objectives: config.objectives.<name> -> its class and config subtree.

Adding an objective is one file in this package (its loss, heads and
`default_config`; see base.py) plus its line below, and a config in
configs/ that gives it a weight.
"""

from dense_ssl.objectives import byol
from dense_ssl.objectives import clove
from dense_ssl.objectives import detcon
from dense_ssl.objectives import lc
from dense_ssl.objectives import moco
from dense_ssl.objectives import resim
from dense_ssl.objectives import scrl
from dense_ssl.objectives import simclr

# name -> the module holding the objective's class and default_config(preset).
REGISTRY = {
    'byol': (byol.BYOL, byol.default_config),
    'simclr': (simclr.SimCLR, simclr.default_config),
    'moco': (moco.MoCo, moco.default_config),
    'detcon': (detcon.DetCon, detcon.default_config),
    'lc': (lc.LC, lc.default_config),
    'scrl': (scrl.SCRL, scrl.default_config),
    'resim': (resim.ReSim, resim.default_config),
    'clove': (clove.CLoVE, clove.default_config),
}


def default_configs(preset):
  """config.objectives: every registered objective's subtree, all off (weight 0)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({name: make_config(preset)
                                    for name, (_, make_config) in REGISTRY.items()})


def active(config):
  """[(objective, weight)] of config.objectives with weight != 0, validated.

  Errors name the config key: unknown objectives, all weights 0, or more
  than one global objective (byol, simclr, moco).
  """
  subtrees = config.get('objectives') or {}
  unknown = sorted(set(subtrees) - set(REGISTRY))
  if unknown:
    raise ValueError(f'config.objectives has unknown keys {unknown}; known: {sorted(REGISTRY)}')
  on = [(name, float(subtrees[name].weight)) for name in REGISTRY
        if name in subtrees and float(subtrees[name].weight)]
  if not on:
    raise ValueError('config.objectives: every weight is 0; give at least one objective a '
                     'weight, e.g. --config.objectives.byol.weight=1.0 '
                     f'(objectives: {sorted(REGISTRY)})')
  objectives = [(REGISTRY[name][0](config), w) for name, w in on]
  globals_on = [o.name for o, _ in objectives if o.is_global]
  if len(globals_on) > 1:
    raise ValueError(f'config.objectives: at most one global objective, got {globals_on}; '
                     'set the weight of the others to 0')
  return objectives
