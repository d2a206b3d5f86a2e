"""DetCon-S (Hénaff et al. 2021, Sec. 3.1): SimCLR with the contrastive detection loss.

One shared network (no predictor, no EMA); both views' mask-pooled
projections serve as predictions and as targets, and gradients flow through
both (SimCLR-style). With a 1x1 grid mask every sample is the whole image and
the loss reduces to SimCLR's (up to the constant factor of duplicates,
tests/test_methods.py).
"""

from dense_ssl.methods import base
from dense_ssl.methods import detcon_b


class DetConS(detcon_b.DetConMasks, base.Method):
  uses_target = False
  has_predictor = False

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    del target_variables
    (pool1, ids1), (pool2, ids2) = self.view_pools(batch, rng)
    x1, x2 = base.two_views(batch)
    o1, stats = self.apply(self.online, online_params, online_batch_stats, x1, pool1)
    o2, stats = self.apply(self.online, online_params, stats, x2, pool2)
    z1, z2 = o1['projection'], o2['projection']
    loss, m = self.detcon(z1, z2, z1, z2, ids1, ids2, stop_gradient_targets=False)
    return loss, (stats, None, base.as_metrics(
        loss=loss, **{f'detcon_{k}': v for k, v in m.items()}))
