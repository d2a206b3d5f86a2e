"""What every method shares: the network, the Method interface, view helpers.

A method says what to compute from a batch; the trainer (train.py) owns the
rest (optimiser, EMA, devices, checkpoints). Interface:

  method.uses_target: bool          an EMA target network exists (BYOL family)
  method.init(rng, batch) -> dict(online=variables, target=variables | None)
  method.loss(online_params, online_batch_stats, target_variables, batch, rng)
      -> (loss, (new_online_batch_stats, new_target_batch_stats | None, metrics))

`batch` is one device's batch (input_pipeline's dict without the device
dim). `loss` runs inside the per-device step with the mapped axis `AXIS`
bound: BatchNorm statistics are cross-replica and negatives are gathered
over it. Target parameters are never differentiated (stop_gradient here).
"""

from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dense_ssl.models import heads
from dense_ssl.models import resnet

AXIS = 'batch'  # The data-parallel mesh axis: cross-replica BN and gathers.
# Modules of the online network that its EMA target does not have.
ONLINE_ONLY = ('predictor', 'dense_predictor')


class SSLNetwork(nn.Module):
  """Encoder -> pooling -> projector [-> predictor] (DetCon Sec. 3.1, f, g, q).

  `pool` maps the encoder's {'c2'..'c5'} to the vectors to project, [B, C]
  (global pool) or [B, K, C] (mask pooling), so that global and dense methods
  share one network. It may also return a dict {name: [B, K_name, C]} (the
  composed method: global, masks and boxes of one view in one pass): the
  heads then run once on their concatenation along K (one set of BN
  statistics) and 'projection' / 'prediction' are dicts of the same names.
  Params: encoder (torchvision names), projector[, predictor], and the
  optional dense heads below.

  Optional dense heads (each off by default):
    local_hidden > 0   LC-loss's local projection of C5 -> 'local' [B, h, w, local_dim]
    fpn_dim > 0        an FPN -> 'fpn' {'p3', 'p4', ...} (ReSim-FPN; exported)
    region_levels      maps ('c4', 'p3', ...) for ReSim's windows -> 'region'
                       {level: [B, h, w, C]}, through RegionHead(region_dim)
                       when region_dim > 0 (ReSim Sec. 3.4), else as they are
    dense_hidden > 0   CLoVE's projection of C5 -> 'dense' [B, h, w, dense_dim];
                       with dense_attention_heads > 0 also its NMHSA predictor
                       -> 'dense_prediction' (online network only)
  """
  depth: int
  width_multiplier: int = 1
  projector_hidden: int = 4096
  projector_dim: int = 256
  projector_bn: bool = True
  predictor_hidden: int = 4096
  use_predictor: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = AXIS
  local_hidden: int = 0
  local_dim: int = 256
  fpn_dim: int = 0
  fpn_levels: Tuple[int, ...] = (3, 4)
  region_levels: Tuple[str, ...] = ()
  region_dim: int = 0
  dense_hidden: int = 0
  dense_dim: int = 256
  dense_attention_heads: int = 0
  dense_attention_temperature: float = 0.1

  @nn.compact
  def __call__(self, images, *, pool: Callable, train: bool = True):
    """images [B, S, S, 3] -> dict(features, pooled, projection[, prediction], ...)."""
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    feats = resnet.ResNet(depth=self.depth, width_multiplier=self.width_multiplier,
                          name='encoder', **kw)(images, train)
    pooled = pool(feats)
    out = dict(features=feats, pooled=pooled)
    named = isinstance(pooled, dict)
    if named and not pooled:         # Only dense heads (e.g. CLoVE): no projector.
      return self._dense_heads(feats, out, train, kw)
    if named:
      names = sorted(pooled)
      sizes = [pooled[n].shape[1] for n in names]
      pooled = jnp.concatenate([pooled[n].astype(jnp.float32) for n in names], axis=1)
    heads_out = {}
    heads_out['projection'] = heads.MLPHead(
        self.projector_hidden, self.projector_dim, use_bn=self.projector_bn,
        name='projector', **kw)(pooled, train)
    if self.use_predictor:
      heads_out['prediction'] = heads.MLPHead(
          self.predictor_hidden, self.projector_dim, name='predictor',
          **kw)(heads_out['projection'], train)
    for key, value in heads_out.items():
      if named:
        parts = jnp.split(value, np.cumsum(sizes)[:-1], axis=1)
        value = dict(zip(names, parts))
      out[key] = value
    return self._dense_heads(feats, out, train, kw)

  def _dense_heads(self, feats, out, train, kw):
    if self.local_hidden:
      out['local'] = heads.MLPHead(self.local_hidden, self.local_dim,
                                   name='local_projector', **kw)(feats['c5'], train)
    maps = dict(feats)
    if self.fpn_dim:
      out['fpn'] = heads.FPN(self.fpn_dim, tuple(self.fpn_levels), dtype=self.dtype,
                             name='fpn')(feats)
      maps.update(out['fpn'])
    if self.region_levels:
      out['region'] = {
          level: (heads.RegionHead(self.region_dim, name=f'region_head_{level}', **kw)(
              maps[level], train) if self.region_dim else maps[level])
          for level in self.region_levels}
    if self.dense_hidden:
      out['dense'] = heads.MLPHead(self.dense_hidden, self.dense_dim, final_bn=True,
                                   name='dense_projector', **kw)(feats['c5'], train)
      if self.dense_attention_heads:
        out['dense_prediction'] = heads.NormalizedMultiHeadAttention(
            self.dense_attention_heads, self.dense_attention_temperature,
            dtype=self.dtype, name='dense_predictor')(out['dense'])
    return out


def global_pool(feats):
  """Mean of C5 over space: [B, h, w, C] -> [B, C] (SimCLR/BYOL's h)."""
  return feats['c5'].mean(axis=(1, 2))


def network_from_config(config, *, use_predictor, **dense_heads):
  """SSLNetwork with config.model's sizes; dense_heads: SSLNetwork's optional heads."""
  m = config.model
  return SSLNetwork(depth=m.depth, width_multiplier=m.width_multiplier,
                    projector_hidden=m.projector_hidden, projector_dim=m.projector_dim,
                    projector_bn=m.get('projector_bn', True),
                    predictor_hidden=m.predictor_hidden, use_predictor=use_predictor,
                    dtype=jnp.dtype(m.dtype), **dense_heads)


class Method:
  """Base class: a network applied to views, and a loss on what it returns.

  Subclasses set `uses_target` and `has_predictor` and implement `loss`;
  `init` and `apply` are shared. A method with state outside the networks
  (MoCo's queue) sets `has_state`, implements `init_method_state(rng)`, and
  its `loss` takes `method_state=` and returns it updated as a 4th aux item:
  (loss, (stats, target_stats, metrics, new_method_state)).
  """
  uses_target = False
  has_predictor = False
  has_state = False

  def __init__(self, config):
    self.config = config
    self.online = network_from_config(config, use_predictor=self.has_predictor)
    # The target (EMA) network is the online one without the predictor.
    self.target = (network_from_config(config, use_predictor=False)
                   if self.uses_target else None)

  def init_pool(self, batch):
    """The pooling used at init (shapes only); dense methods override."""
    del batch
    return global_pool

  def init(self, rng, batch):
    images = jnp.asarray(batch['view1/image'])
    pool = self.init_pool(batch)
    online = self.online.init(rng, images, pool=pool, train=True)
    online = dict(params=online['params'], batch_stats=online['batch_stats'])
    target = None
    if self.uses_target:
      # The target starts as a copy of the online network without predictors.
      target = jax.tree.map(
          jnp.array, {k: {n: v for n, v in online[k].items() if n not in ONLINE_ONLY}
                      for k in ('params', 'batch_stats')})
    return dict(online=online, target=target)

  @staticmethod
  def apply(net, params, batch_stats, images, pool):
    """One train-mode pass; returns (outputs, updated batch_stats)."""
    out, updates = net.apply({'params': params, 'batch_stats': batch_stats},
                             images, pool=pool, train=True, mutable=['batch_stats'])
    return out, updates['batch_stats']

  def forward_two_views(self, online_params, online_batch_stats, target_variables,
                        batch, pool1, pool2):
    """BYOL family: online and (stop-gradient) target passes over both views.

    Returns ((o1, o2), (t1, t2), new online batch_stats, new target batch_stats).
    """
    x1, x2 = two_views(batch)
    o1, stats = self.apply(self.online, online_params, online_batch_stats, x1, pool1)
    o2, stats = self.apply(self.online, online_params, stats, x2, pool2)
    tp = stop_gradient_tree(target_variables['params'])
    t1, tstats = self.apply(self.target, tp, target_variables['batch_stats'], x1, pool1)
    t2, tstats = self.apply(self.target, tp, tstats, x2, pool2)
    return (o1, o2), (t1, t2), stats, tstats

  def gather_axis(self):
    return negatives_axis(self.config)

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    raise NotImplementedError


def negatives_axis(config):
  """Axis to gather negatives over, or None for this device only (DetCon Table 5)."""
  return AXIS if config.loss.get('gather_negatives', True) else None


def gather_replicated(x, axis_name=AXIS):
  """all_gather (tiled) whose result is typed as replicated over the axis.

  `lax.all_gather`'s output counts as device-varying under shard_map, so it
  cannot become replicated state (MoCo's queue). Each device writes its rows
  into a zero [D * B, ...] buffer and a psum adds them: the same values, as
  an all-reduce of a D-times larger buffer (fine for a batch of keys).
  """
  n = jax.lax.psum(1, axis_name)
  b = x.shape[0]
  buf = jnp.zeros((n * b,) + x.shape[1:], x.dtype)
  buf = jax.lax.dynamic_update_slice_in_dim(buf, x, jax.lax.axis_index(axis_name) * b, 0)
  return jax.lax.psum(buf, axis_name)


def example_rngs(rng, batch_size):
  """One key per example of this device, from the example's GLOBAL index.

  Random choices made per example (e.g. which mask ids to sample) then do
  not depend on how the global batch is split over devices: 1 and 4
  devices give the same update. Needs the axis AXIS bound.
  """
  first = jax.lax.axis_index(AXIS) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(batch_size))


def two_views(batch):
  return batch['view1/image'], batch['view2/image']


def stop_gradient_tree(tree):
  return jax.tree.map(jax.lax.stop_gradient, tree)


def as_metrics(**metrics):
  """Scalar metrics as float32 (the trainer pmeans them over devices)."""
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

