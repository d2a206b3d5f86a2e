"""LC-loss (Islam et al.): BYOL + a local contrastive loss at known correspondences.

View 1 is I_c (colour transforms only: no crop, no flip), view 2 is I_sc
(crop + flip + colour); the pipeline records both windows. The target
network's local projection of I_c and the online network's of I_sc meet in
the NLL of Eq. 3, read at the true sub-pixel correspondence (Eq. 4).
Total: (1 - alpha) L_BYOL + alpha L_LC (Eq. 5), alpha = 0.1.
Local projection branch: 1x1 conv 2048 -> 2048 + BN + ReLU, 1x1 conv -> 256
on C5, with its EMA twin on the target side.
"""

from dense_ssl.losses import byol as byol_losses
from dense_ssl.losses import lc as lc_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose
from dense_ssl.ops import geometry


class LCBYOL(base.Method):
  uses_target = True
  has_predictor = True

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    hidden = m.local_hidden or 2048 * m.width_multiplier
    self.online = base.network_from_config(config, use_predictor=True,
                                           local_hidden=hidden, local_dim=m.local_dim)
    self.target = base.network_from_config(config, use_predictor=False,
                                           local_hidden=hidden, local_dim=m.local_dim)

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del rng
    c = self.config.loss
    pool = base.global_pool
    (o1, o2), (t1, t2), stats, tstats = self.forward_two_views(
        online_params, online_batch_stats, target_variables, batch, pool, pool)
    global_loss = (byol_losses.byol_loss(o1['prediction'], t2['projection']) +
                   byol_losses.byol_loss(o2['prediction'], t1['projection']))
    grid_c, grid_sc = t1['local'].shape[1:3], o2['local'].shape[1:3]
    coords, valid = geometry.cell_correspondence(
        batch['view1/box'], batch['view1/flip'], batch['view2/box'],
        batch['view2/flip'], grid_c, grid_sc)
    local_loss, frac = lc_losses.local_contrastive_loss(
        t1['local'], o2['local'], coords, valid, temperature=c.lc_temperature)
    loss = (1 - c.lc_alpha) * global_loss + c.lc_alpha * local_loss
    return loss, (stats, tstats, base.as_metrics(
        loss=loss, byol_loss=global_loss, lc_loss=local_loss, lc_valid_pairs=frac))


class LCObjective(compose.Objective):
  """LC-loss's local term: target local map of view 1 (I_c), online of view 2 (I_sc)."""
  name = 'lc'
  passes = frozenset({(compose.TARGET, 0), (compose.ONLINE, 1)})

  def network_heads(self):
    m = self.config.model
    return dict(local_hidden=m.local_hidden or 2048 * m.width_multiplier,
                local_dim=m.local_dim)

  def loss(self, ctx, plan, state):
    t1, o2 = ctx.target[0], ctx.online[1]
    b = ctx.batch
    coords, valid = geometry.cell_correspondence(
        b['view1/box'], b['view1/flip'], b['view2/box'], b['view2/flip'],
        t1['local'].shape[1:3], o2['local'].shape[1:3])
    loss, frac = lc_losses.local_contrastive_loss(
        t1['local'], o2['local'], coords, valid,
        temperature=self.config.loss.lc_temperature)
    return loss, dict(valid_pairs=frac), state
