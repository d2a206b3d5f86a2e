"""Composed objectives: one global objective x any set of dense objectives.

config.objectives maps every objective name to its weight (0 = off):

  global (at most one)  byol, simclr, moco
  dense (any set)       detcon (masks), lc (pixels), scrl (boxes),
                        resim (windows), clove (context)

  loss = sum_name weight_name x L_name

e.g. DetCon-B + LC-loss (configs/detcon_b_lc.py):
  --config.objectives.detcon=0.9 --config.objectives.lc=0.1
One network serves all of them: the encoder runs once per view and branch
(online / EMA target), every objective's pooled C5 vectors (global, masks,
boxes) go through the SAME projector and predictor in one pass, and the
dense heads (LC's local projection, ReSim's FPN and region heads, CLoVE's
projection and NMHSA) are added for the objectives that need them. The
target network exists when any objective needs one (all but simclr) and
follows config.ema (BYOL's cosine schedule, or MoCo's constant momentum).

An objective (one per paper, in that paper's method file) is a small class:
  name, uses_target, uses_predictor, has_state
  passes               the (branch, view) forward passes it reads
  network_heads()      SSLNetwork keyword arguments for its dense heads
  plan(batch, rng)     per-step random choices (mask ids, boxes, windows)
  pools(plan, view)    {name: feats -> [B, K, C]} vectors for the heads
  loss(ctx, plan, state) -> (loss, metrics, new_state)
  init_state(rng)      its part of the train state (MoCo's queue)
ctx: online=(o1, o2), target=(t1, t2) (None for passes nobody reads), batch.
"""

import dataclasses
from typing import Any, Optional, Tuple

import jax

from dense_ssl.methods import base

ONLINE, TARGET = 'online', 'target'
ALL_PASSES = frozenset({(ONLINE, 0), (ONLINE, 1), (TARGET, 0), (TARGET, 1)})
GLOBAL_OBJECTIVES = ('byol', 'simclr', 'moco')
DENSE_OBJECTIVES = ('detcon', 'lc', 'scrl', 'resim', 'clove')
# Fixed per-objective RNG streams: switching one objective on or off does not
# change the random choices of the others.
_RNG_STREAM = {name: i + 1 for i, name in enumerate(GLOBAL_OBJECTIVES + DENSE_OBJECTIVES)}


@dataclasses.dataclass
class Context:
  online: Tuple[Optional[dict], Optional[dict]]
  target: Tuple[Optional[dict], Optional[dict]]
  batch: Any


class Objective:
  """Base class of one loss term; see the module docstring."""
  name = ''
  uses_target = True
  uses_predictor = False
  has_state = False
  passes = ALL_PASSES

  def __init__(self, config):
    self.config = config

  def network_heads(self):
    return {}

  def plan(self, batch, rng):
    del batch, rng
    return None

  def pools(self, plan, view):
    del plan, view
    return {}

  def init_pools(self, batch):
    return self.pools(self.plan(batch, jax.random.key(0)), 0)

  def init_state(self, rng):
    del rng
    return {}

  def gather_axis(self):
    return base.negatives_axis(self.config)

  def loss(self, ctx, plan, state):
    raise NotImplementedError


def global_vectors(feats):
  """The global pool as one slot: [B, 1, C]."""
  return base.global_pool(feats)[:, None]


def objective_registry():
  # Imported here: the method files import this module for Objective.
  from dense_ssl.methods import byol, clove, detcon_b, lc_byol, moco, resim, scrl, simclr  # pylint: disable=g-import-not-at-top,multiple-imports
  return {
      'byol': byol.BYOLObjective, 'simclr': simclr.SimCLRObjective,
      'moco': moco.MoCoObjective, 'detcon': detcon_b.DetConObjective,
      'lc': lc_byol.LCObjective, 'scrl': scrl.SCRLObjective,
      'resim': resim.ReSimObjective, 'clove': clove.CLoVEObjective,
  }


def active_objectives(config):
  """[(name, weight)] of config.objectives with weight != 0, validated."""
  weights = dict(config.get('objectives') or {})
  known = GLOBAL_OBJECTIVES + DENSE_OBJECTIVES
  unknown = sorted(set(weights) - set(known))
  if unknown:
    raise ValueError(f'config.objectives has unknown keys {unknown}; known: {list(known)}')
  active = [(n, float(weights[n])) for n in known if float(weights.get(n, 0.0))]
  if not active:
    raise ValueError('config.objectives: every weight is 0; give at least one '
                     f'objective a weight, e.g. --config.objectives.byol=1.0 ({list(known)})')
  globals_on = [n for n, _ in active if n in GLOBAL_OBJECTIVES]
  if len(globals_on) > 1:
    raise ValueError(f'config.objectives: at most one global objective, got '
                     f'{globals_on}; set the others to 0')
  return active


class Composed(base.Method):
  """The method of config.objectives (see the module docstring)."""

  def __init__(self, config):
    self.config = config
    registry = objective_registry()
    self.weights = dict(active_objectives(config))
    self.objectives = [registry[n](config) for n in self.weights]
    self.uses_target = any(o.uses_target for o in self.objectives)
    self.has_predictor = any(o.uses_predictor for o in self.objectives)
    self.has_state = any(o.has_state for o in self.objectives)
    heads = {}
    for o in self.objectives:
      heads.update(o.network_heads())
    self.online = base.network_from_config(config, use_predictor=self.has_predictor,
                                           **heads)
    # The target has no predictors (base.ONLINE_ONLY): no MLP nor NMHSA one.
    self.target = (base.network_from_config(config, use_predictor=False,
                                            **dict(heads, dense_attention_heads=0))
                   if self.uses_target else None)
    self.passes = frozenset().union(*(o.passes for o in self.objectives))
    if not self.uses_target:
      self.passes = frozenset(p for p in self.passes if p[0] == ONLINE)

  def _view_pool(self, pools):
    return lambda feats: {name: fn(feats) for name, fn in pools.items()}

  def init_pool(self, batch):
    pools = {}
    for o in self.objectives:
      pools.update(o.init_pools(batch))
    return self._view_pool(pools)

  def init_method_state(self, rng):
    return {o.name: o.init_state(jax.random.fold_in(rng, _RNG_STREAM[o.name]))
            for o in self.objectives if o.has_state}

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng,
           method_state=None):
    plans = {o.name: o.plan(batch, jax.random.fold_in(rng, _RNG_STREAM[o.name]))
             for o in self.objectives}
    images = base.two_views(batch)
    online, target = [None, None], [None, None]
    stats = online_batch_stats
    for v in (0, 1):
      if (ONLINE, v) in self.passes:
        online[v], stats = self.apply(self.online, online_params, stats, images[v],
                                      self._pools(plans, v))
    tstats = None
    if self.uses_target:
      tp = base.stop_gradient_tree(target_variables['params'])
      tstats = target_variables['batch_stats']
      for v in (0, 1):
        if (TARGET, v) in self.passes:
          target[v], tstats = self.apply(self.target, tp, tstats, images[v],
                                         self._pools(plans, v))
    ctx = Context(online=tuple(online), target=tuple(target), batch=batch)
    total, metrics, new_state = 0.0, {}, {}
    for o in self.objectives:
      state = (method_state or {}).get(o.name, {})
      value, m, state = o.loss(ctx, plans[o.name], state)
      total = total + self.weights[o.name] * value
      metrics[f'{o.name}_loss'] = value
      metrics.update({f'{o.name}_{k}': v for k, v in m.items()})
      if o.has_state:
        new_state[o.name] = state
    metrics = base.as_metrics(loss=total, **metrics)
    if self.has_state:
      return total, (stats, tstats, metrics, new_state)
    return total, (stats, tstats, metrics)

  def _pools(self, plans, view):
    pools = {}
    for o in self.objectives:
      pools.update(o.pools(plans[o.name], view))
    return self._view_pool(pools)
