"""LC-loss (Islam et al.): a local contrastive NLL read at the true sub-pixel correspondence.

View 1 is I_c (colour transforms only: no crop, no flip;
data.view_modes = ('color_only', 'crop')), view 2 is I_sc (crop + flip +
colour); the pipeline records both windows. The target network's local
projection of I_c and the online network's of I_sc meet in the NLL of
Eq. 3, read at the true sub-pixel correspondence (Eq. 4); pairs outside
I_sc are dropped. LC-loss's total (Eq. 5) is (1 - alpha) L_BYOL + alpha
L_LC, alpha = 0.1: objectives byol.weight = 0.9, lc.weight = 0.1
(configs/lc_byol.py); with random crops on both views it composes with
DetCon the same way (configs/detcon_b_lc.py).

Heads: the local projection branch on C5, 1x1 conv C5 -> local_hidden + BN +
ReLU, 1x1 conv -> local_dim ('local_projector'), with its EMA twin on the
target side.

Config (config.objectives.lc): weight, temperature (0.1: not given by the
paper, an assumption), local_hidden (0: 2048 x model.width_multiplier, the paper's 2048),
local_dim (256).
"""

from data_pipeline import config_rules
from dense_ssl.losses import lc as lc_losses
from dense_ssl.models import heads
from dense_ssl.objectives import base
from dense_ssl.ops import geometry


def local_loss(batch, target_local, online_local, temperature):
  """L_LC between the target's map of view 1 (I_c) and the online map of view 2."""
  coords, valid = geometry.cell_correspondence(
      batch['view1/box'], batch['view1/flip'], batch['view2/box'], batch['view2/flip'],
      target_local.shape[1:3], online_local.shape[1:3])
  return lc_losses.local_contrastive_loss(target_local, online_local, coords, valid,
                                          temperature=temperature)


class LC(base.Objective):
  name = 'lc'
  passes = frozenset({(base.TARGET, 0), (base.ONLINE, 1)})
  presets = {'demo': dict(local_hidden=512, local_dim=128),
             'test': dict(local_hidden=64, local_dim=32)}

  @classmethod
  def default_config(cls):
    return base.objective_config(temperature=0.1, local_hidden=0, local_dim=256)

  @classmethod
  def validate(cls, config):
    c = config.objectives.lc
    return (super().validate(config)
            + config_rules.check('objectives.lc.local_hidden', c.local_hidden, '>= 0', integer=True)
            + config_rules.check('objectives.lc.local_dim', c.local_dim, '>= 1', integer=True))

  def heads(self, feats, *, train, online, dtype, bn_axis_name):
    del online
    m = self.config.model
    hidden = self.c.local_hidden or 2048 * m.width_multiplier
    local = heads.MLPHead(hidden, self.c.local_dim, dtype=dtype, bn_axis_name=bn_axis_name,
                          name='local_projector')(feats['c5'], train)
    return {'local': local}

  def loss(self, ctx, plan, state):
    loss, frac = local_loss(ctx.batch, ctx.target[0]['local'], ctx.online[1]['local'],
                            self.c.temperature)
    return loss, dict(valid_pairs=frac), state
