"""BYOL (Grill et al. 2020): the online prediction of one view regresses the target's projection of the other.

L = 2 - 2 cos(q(z_1), sg(z'_2)) + 2 - 2 cos(q(z_2), sg(z'_1)), on the
global-average-pooled C5 through the shared projector and predictor.
DetCon-B's global baseline; LC-loss's global term (weight 1 - alpha).

Config (config.objectives.byol): weight.
"""

from dense_ssl.losses import byol as byol_losses
from dense_ssl.objectives import base


class BYOL(base.Objective):
  name = 'byol'
  is_global = True
  uses_predictor = True

  @classmethod
  def default_config(cls):
    return base.objective_config()

  def pools(self, plan, view):
    return {'global': base.global_pool}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    q = lambda o: o['prediction']['global'][:, 0]
    z = lambda t: t['projection']['global'][:, 0]
    loss_12 = byol_losses.byol_loss(q(o1), z(t2))
    loss_21 = byol_losses.byol_loss(q(o2), z(t1))
    return loss_12 + loss_21, dict(loss_1to2=loss_12, loss_2to1=loss_21), state
