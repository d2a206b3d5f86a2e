"""SimCLR (Chen et al. 2020): NT-Xent between the two views' projections.

One shared network (no target, no predictor); negatives are the other
images of the whole (gathered) batch in both views. DetCon-S's global
baseline.

Config (config.objectives.simclr): weight, temperature (0.1),
gather_negatives (True; False: this device's images only).
"""

from dense_ssl.losses import simclr as simclr_losses
from dense_ssl.objectives import base


class SimCLR(base.Objective):
  name = 'simclr'
  is_global = True
  uses_target = False
  passes = frozenset({(base.ONLINE, 0), (base.ONLINE, 1)})

  @classmethod
  def default_config(cls):
    return base.objective_config(temperature=0.1, gather_negatives=True)

  def pools(self, plan, view):
    return {'global': base.global_pool}

  def loss(self, ctx, plan, state):
    z1, z2 = (o['projection']['global'][:, 0] for o in ctx.online)
    loss, m = simclr_losses.nt_xent_loss(z1, z2, temperature=self.c.temperature,
                                         axis_name=base.negatives_axis(self.c.gather_negatives))
    return loss, m, state
