"""SimCLR (Chen et al. 2020): the global baseline of DetCon-S.

One shared network without predictor or EMA; NT-Xent between the two views'
projections with negatives from the whole (gathered) batch.
"""

from dense_ssl.losses import simclr as simclr_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose


class SimCLR(base.Method):
  uses_target = False
  has_predictor = False

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del target_variables, rng
    x1, x2 = base.two_views(batch)
    pool = base.global_pool
    o1, stats = self.apply(self.online, online_params, online_batch_stats, x1, pool)
    o2, stats = self.apply(self.online, online_params, stats, x2, pool)
    loss, m = simclr_losses.nt_xent_loss(
        o1['projection'], o2['projection'], temperature=self.config.loss.temperature,
        axis_name=self.gather_axis())
    return loss, (stats, None, base.as_metrics(loss=loss, **{f'simclr_{k}': v for k, v in m.items()}))


class SimCLRObjective(compose.Objective):
  """SimCLR's NT-Xent on the online projections of both views (no target)."""
  name = 'simclr'
  uses_target = False
  passes = frozenset({(compose.ONLINE, 0), (compose.ONLINE, 1)})

  def pools(self, plan, view):
    return {'global': compose.global_vectors}

  def loss(self, ctx, plan, state):
    z1, z2 = (o['projection']['global'][:, 0] for o in ctx.online)
    loss, m = simclr_losses.nt_xent_loss(z1, z2, temperature=self.config.loss.temperature,
                                         axis_name=self.gather_axis())
    return loss, m, state
