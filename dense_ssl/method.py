"""The one method: a weighted set of objectives over one network.

  loss = sum over config.objectives of  weight_name x L_name

Every config in configs/ is a set of objective weights plus overrides:
DetCon-B = detcon, BYOL = byol, DetCon-S = detcon with a shared network,
LC-loss = 0.9 byol + 0.1 lc, ReSim = moco + resim, ... (objectives/). One
network serves them all (models/network.py): the encoder runs once per
view and branch (online, and the EMA target when any objective reads it),
the pooled vectors of every objective share one projector / predictor pass,
and each objective adds its heads. With multi-crop (config.data.num_local_crops)
the online network also runs once on all local crops, for the objectives
that read them (CLoVE; Method.local_pass). With data.mask='discovered' (Odin)
the views' masks are made in the step first, from the EMA target
(dense_ssl/discovery.py). The trainer (train.py) owns the rest:
optimiser, EMA, devices, checkpoints.

  method.init(rng, batch) -> dict(online=variables, target=variables | None, state=dict)
  method.loss(online_params, online_batch_stats, target_variables, method_state, batch, rng,
              probe_view=None)
      -> (loss, (new_online_batch_stats, new_target_batch_stats | None, metrics, method_state,
                 probed features | None))

`batch` is one device's batch (input_pipeline's dict without the device
dim); `loss` runs inside the per-device step with the mapped axis AXIS
bound (cross-replica BN, gathered negatives). Target parameters are never
differentiated (stop_gradient here).
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp

from data_pipeline import view_config
from dense_ssl import discovery
from dense_ssl import objectives as objectives_lib
from dense_ssl.models import network
from dense_ssl.objectives import base
from dense_ssl.objectives.base import ONLINE, TARGET


def network_from_config(config, objectives, *, online):
  """SSLNetwork with config.model's sizes and the objectives' heads."""
  m = config.model
  return network.SSLNetwork(
      depth=m.depth, width_multiplier=m.width_multiplier,
      projector_hidden=m.projector_hidden, projector_dim=m.projector_dim,
      projector_bn=m.projector_bn, predictor_hidden=m.predictor_hidden,
      use_predictor=online and any(o.uses_predictor for o in objectives),
      dtype=jnp.dtype(m.dtype),
      objective_heads=tuple(functools.partial(o.heads, online=online) for o in objectives))


def _pool_of(pools):
  return lambda feats: {slot: fn(feats) for slot, fn in pools.items()}


class Method:
  """The method of config.objectives (see the module docstring)."""

  def __init__(self, config):
    self.config = config
    active = objectives_lib.active(config)
    self.objectives = [o for o, _ in active]
    self.weights = {o.name: w for o, w in active}
    self.uses_target = any(o.uses_target for o in self.objectives)
    self.has_state = any(o.has_state for o in self.objectives)
    self.online = network_from_config(config, self.objectives, online=True)
    self.target = (network_from_config(config, self.objectives, online=False)
                   if self.uses_target else None)
    if (view_config.num_local_crops(config.data)
        and not any(o.uses_local_crops for o in self.objectives)):
      logging.warning('config.data.num_local_crops=%d, but no active objective reads local '
                      'crops (only %s do): the pipeline makes them and the step ignores '
                      'them; set config.data.num_local_crops=0 to save the host the work',
                      view_config.num_local_crops(config.data),
                      [n for n, cls in objectives_lib.REGISTRY.items()
                       if cls.uses_local_crops])
    # Odin: the views' masks are discovered in the step (dense_ssl/discovery.py).
    self.discovers = discovery.uses_discovery(config)
    passes = frozenset().union(*(o.passes for o in self.objectives))
    self.passes = passes if self.uses_target else frozenset(
        p for p in passes if p[0] == ONLINE)

  # ------------------------------------------------------------------ init --

  def init(self, rng, batch):
    """Variables of both networks and the objectives' state, from one device batch.

    The target starts as a copy of the online network's modules that it has
    (all but the predictors). The state (MoCo's queue) draws from
    fold_in(rng, 1) and then each objective's own stream.
    """
    images = jnp.asarray(batch['view1/image'])
    if self.discovers:
      batch = discovery.placeholder_masks(batch)
    pools = {}
    for o in self.objectives:
      pools.update(o.init_pools(batch))
    online = self.online.init(rng, images, pool=_pool_of(pools), train=True)
    online = dict(params=online['params'], batch_stats=online['batch_stats'])
    target = None
    if self.uses_target:
      shapes = jax.eval_shape(lambda: self.target.init(rng, images, pool=_pool_of(pools),
                                                       train=True))
      target = {k: jax.tree.map(jnp.array, {n: online[k][n] for n in shapes[k]})
                for k in ('params', 'batch_stats')}
    state_rng = jax.random.fold_in(rng, 1)
    state = {o.name: o.init_state(base.stream(state_rng, o.name))
             for o in self.objectives if o.has_state}
    return dict(online=online, target=target, state=state)

  # ------------------------------------------------------------------ loss --

  @staticmethod
  def apply(net, params, batch_stats, images, pool, heads_used=None):
    """One train-mode pass; returns (outputs, updated batch_stats)."""
    out, updates = net.apply({'params': params, 'batch_stats': batch_stats},
                             images, pool=pool, train=True, heads_used=heads_used,
                             mutable=['batch_stats'])
    return out, updates['batch_stats']

  def local_pass(self, online_params, stats, batch):
    """The online network on every local crop at once -> (per-crop outputs, stats).

    Multi-crop (config.data.num_local_crops, SwAV/DINO style): the N local
    crops [B, s, s, 3] of the device batch go through the encoder as one
    [N B, s, s, 3] batch (one BatchNorm batch, as those releases concatenate
    crops of one size) with only the heads of the objectives that read them
    and no shared-projector pool; the outputs are split back per crop.
    """
    users = tuple(i for i, o in enumerate(self.objectives) if o.uses_local_crops)
    names = view_config.local_view_names(self.config.data) if users else ()
    if not names:
      return (), (), stats
    images = jnp.concatenate([batch[f'{v}/image'] for v in names], axis=0)
    out, stats = self.apply(self.online, online_params, stats, images, lambda _: {},
                            heads_used=users)
    b = batch[f'{names[0]}/image'].shape[0]
    per_crop = tuple(jax.tree.map(lambda x, i=i: x[i * b:(i + 1) * b], out)
                     for i in range(len(names)))
    return per_crop, names, stats

  def forward(self, online_params, online_batch_stats, target_variables, batch, rng):
    """The passes the objectives read -> (Context, plans, online stats, target stats)."""
    plans = {o.name: o.plan(batch, base.stream(rng, o.name)) for o in self.objectives}

    def view_pool(view):
      pools = {}
      for o in self.objectives:
        pools.update(o.pools(plans[o.name], view))
      return _pool_of(pools)

    images = (batch['view1/image'], batch['view2/image'])
    online, target = [None, None], [None, None]
    stats, tstats = online_batch_stats, None
    for v in (0, 1):
      if (ONLINE, v) in self.passes:
        online[v], stats = self.apply(self.online, online_params, stats, images[v],
                                      view_pool(v))
    online_local, local_views, stats = self.local_pass(online_params, stats, batch)
    if self.uses_target:
      tparams = jax.tree.map(jax.lax.stop_gradient, target_variables['params'])
      tstats = target_variables['batch_stats']
      for v in (0, 1):
        if (TARGET, v) in self.passes:
          target[v], tstats = self.apply(self.target, tparams, tstats, images[v],
                                         view_pool(v))
    ctx = base.Context(online=tuple(online), target=tuple(target), batch=batch,
                       online_local=online_local, local_views=local_views)
    return ctx, plans, stats, tstats

  def loss(self, online_params, online_batch_stats, target_variables, method_state, batch,
           rng, probe_view=None):
    """-> (loss, (online stats, target stats, metrics, method state, probed)).

    probed: with probe_view (a global view's index), the stop-gradient C4
    and C5 maps of the online network's pass of that view, for the online
    probes (dense_ssl/online_eval.py); None otherwise.
    With discovered masks (config.data.mask='discovered') the views' masks
    are made first, from the EMA target (dense_ssl/discovery.py), with the
    step's own 'discovery' stream: the objectives' random choices are those
    of any other mask source.
    """
    metrics = {}
    if self.discovers:
      batch, metrics = discovery.discover_masks(self.config, target_variables, batch,
                                                base.stream(rng, 'discovery'))
    ctx, plans, stats, tstats = self.forward(online_params, online_batch_stats,
                                             target_variables, batch, rng)
    total, new_state = 0.0, {}
    for o in self.objectives:
      value, m, state = o.loss(ctx, plans[o.name], method_state.get(o.name, {}))
      total = total + self.weights[o.name] * value
      metrics[f'{o.name}_loss'] = value
      metrics.update({f'{o.name}_{k}': v for k, v in m.items()})
      if o.has_state:
        new_state[o.name] = state
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics, loss=total).items()}
    probed = None
    if probe_view is not None:
      feats = ctx.online[probe_view]['features']
      probed = {k: jax.lax.stop_gradient(feats[k]) for k in ('c4', 'c5')}
    return total, (stats, tstats, metrics, new_state, probed)
