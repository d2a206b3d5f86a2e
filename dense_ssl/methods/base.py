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

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dense_ssl.models import heads
from dense_ssl.models import resnet

AXIS = 'batch'  # The data-parallel mesh axis: cross-replica BN and gathers.


class SSLNetwork(nn.Module):
  """Encoder -> pooling -> projector [-> predictor] (DetCon Sec. 3.1, f, g, q).

  `pool` maps the encoder's {'c2'..'c5'} to the vectors to project, [B, C]
  (global pool) or [B, K, C] (mask pooling), so that global and dense methods
  share one network. Params: encoder (torchvision names), projector[, predictor].
  """
  depth: int
  width_multiplier: int = 1
  projector_hidden: int = 4096
  projector_dim: int = 256
  predictor_hidden: int = 4096
  use_predictor: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = AXIS
  local_hidden: int = 0            # > 0: a local projection branch on C5
  local_dim: int = 256             # (LC-loss), output 'local' [B, h, w, D].

  @nn.compact
  def __call__(self, images, *, pool: Callable, train: bool = True):
    """images [B, S, S, 3] -> dict(features, pooled, projection[, prediction])."""
    feats = resnet.ResNet(depth=self.depth, width_multiplier=self.width_multiplier,
                          dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                          name='encoder')(images, train)
    pooled = pool(feats)
    out = dict(features=feats, pooled=pooled)
    out['projection'] = heads.MLPHead(self.projector_hidden, self.projector_dim,
                                      dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                      name='projector')(pooled, train)
    if self.local_hidden:
      out['local'] = heads.MLPHead(self.local_hidden, self.local_dim, dtype=self.dtype,
                                   bn_axis_name=self.bn_axis_name,
                                   name='local_projector')(feats['c5'], train)
    if self.use_predictor:
      out['prediction'] = heads.MLPHead(self.predictor_hidden, self.projector_dim,
                                        dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                        name='predictor')(out['projection'], train)
    return out


def global_pool(feats):
  """Mean of C5 over space: [B, h, w, C] -> [B, C] (SimCLR/BYOL's h)."""
  return feats['c5'].mean(axis=(1, 2))


def network_from_config(config, *, use_predictor, local_hidden=0, local_dim=256):
  m = config.model
  return SSLNetwork(depth=m.depth, width_multiplier=m.width_multiplier,
                    projector_hidden=m.projector_hidden, projector_dim=m.projector_dim,
                    predictor_hidden=m.predictor_hidden, use_predictor=use_predictor,
                    dtype=jnp.dtype(m.dtype), local_hidden=local_hidden,
                    local_dim=local_dim)


class Method:
  """Base class: a network applied to views, and a loss on what it returns.

  Subclasses set `uses_target` and `has_predictor` and implement `loss`;
  `init` and `apply` are shared.
  """
  uses_target = False
  has_predictor = False

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
      # The target starts as a copy of the online encoder and projector.
      target = jax.tree.map(
          jnp.array, {k: {n: v for n, v in online[k].items() if n != 'predictor'}
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
    """Axis to gather negatives over, or None for this device only (DetCon Table 5)."""
    return AXIS if self.config.loss.get('gather_negatives', True) else None

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    raise NotImplementedError


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

