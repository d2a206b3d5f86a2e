"""BYOL (Grill et al. 2020): the global baseline of DetCon-B.

The online network (encoder, projector, predictor) predicts the EMA target
network's projection of the other view: loss = sum over both directions of
2 - 2 cos(q(z_1), sg(z'_2)).
"""

from dense_ssl.losses import byol as byol_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose


class BYOL(base.Method):
  uses_target = True
  has_predictor = True

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del rng
    pool = base.global_pool
    (o1, o2), (t1, t2), stats, tstats = self.forward_two_views(
        online_params, online_batch_stats, target_variables, batch, pool, pool)
    loss_12 = byol_losses.byol_loss(o1['prediction'], t2['projection'])
    loss_21 = byol_losses.byol_loss(o2['prediction'], t1['projection'])
    loss = loss_12 + loss_21
    return loss, (stats, tstats, base.as_metrics(
        loss=loss, byol_loss_1to2=loss_12, byol_loss_2to1=loss_21))


class BYOLObjective(compose.Objective):
  """BYOL's global term, both directions, for composed methods."""
  name = 'byol'
  uses_predictor = True

  def pools(self, plan, view):
    return {'global': compose.global_vectors}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    q = lambda o: o['prediction']['global'][:, 0]
    z = lambda t: t['projection']['global'][:, 0]
    loss_12 = byol_losses.byol_loss(q(o1), z(t2))
    loss_21 = byol_losses.byol_loss(q(o2), z(t1))
    return loss_12 + loss_21, dict(loss_1to2=loss_12, loss_2to1=loss_21), state
