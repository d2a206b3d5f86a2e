"""BYOL (Grill et al. 2020): the global baseline of DetCon-B.

The online network (encoder, projector, predictor) predicts the EMA target
network's projection of the other view: loss = sum over both directions of
2 - 2 cos(q(z_1), sg(z'_2)).
"""

from dense_ssl.losses import byol as byol_losses
from dense_ssl.methods import base


class BYOL(base.Method):
  uses_target = True
  has_predictor = True

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del rng
    x1, x2 = base.two_views(batch)
    pool = base.global_pool
    o1, stats = self.apply(self.online, online_params, online_batch_stats, x1, pool)
    o2, stats = self.apply(self.online, online_params, stats, x2, pool)
    tp = base.stop_gradient_tree(target_variables['params'])
    t1, tstats = self.apply(self.target, tp, target_variables['batch_stats'], x1, pool)
    t2, tstats = self.apply(self.target, tp, tstats, x2, pool)
    loss_12 = byol_losses.byol_loss(o1['prediction'], t2['projection'])
    loss_21 = byol_losses.byol_loss(o2['prediction'], t1['projection'])
    loss = loss_12 + loss_21
    return loss, (stats, tstats, base.as_metrics(
        loss=loss, byol_loss_1to2=loss_12, byol_loss_2to1=loss_21))
