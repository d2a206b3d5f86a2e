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


def local_heads(config):
  """SSLNetwork's local projection branch: 2048 x width -> local_dim on C5."""
  m = config.model
  return dict(local_hidden=m.local_hidden or 2048 * m.width_multiplier,
              local_dim=m.local_dim)


def local_loss(config, batch, target_local, online_local):
  """L_LC between the target's map of view 1 (I_c) and the online map of view 2."""
  coords, valid = geometry.cell_correspondence(
      batch['view1/box'], batch['view1/flip'], batch['view2/box'], batch['view2/flip'],
      target_local.shape[1:3], online_local.shape[1:3])
  return lc_losses.local_contrastive_loss(target_local, online_local, coords, valid,
                                          temperature=config.loss.lc_temperature)


class LCBYOL(base.Method):
  uses_target = True
  has_predictor = True

  def __init__(self, config):
    super().__init__(config)
    heads = local_heads(config)
    self.online = base.network_from_config(config, use_predictor=True, **heads)
    self.target = base.network_from_config(config, use_predictor=False, **heads)

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del rng
    alpha = self.config.loss.lc_alpha
    pool = base.global_pool
    (o1, o2), (t1, t2), stats, tstats = self.forward_two_views(
        online_params, online_batch_stats, target_variables, batch, pool, pool)
    global_loss = (byol_losses.byol_loss(o1['prediction'], t2['projection']) +
                   byol_losses.byol_loss(o2['prediction'], t1['projection']))
    lc_loss, frac = local_loss(self.config, batch, t1['local'], o2['local'])
    loss = (1 - alpha) * global_loss + alpha * lc_loss
    return loss, (stats, tstats, base.as_metrics(
        loss=loss, byol_loss=global_loss, lc_loss=lc_loss, lc_valid_pairs=frac))


class LCObjective(compose.Objective):
  """LC-loss's local term: target local map of view 1 (I_c), online of view 2 (I_sc)."""
  name = 'lc'
  passes = frozenset({(compose.TARGET, 0), (compose.ONLINE, 1)})

  def network_heads(self):
    return local_heads(self.config)

  def loss(self, ctx, plan, state):
    loss, frac = local_loss(self.config, ctx.batch, ctx.target[0]['local'],
                            ctx.online[1]['local'])
    return loss, dict(valid_pairs=frac), state
