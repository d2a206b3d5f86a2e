"""ReSim (Xiao et al. 2021): region similarity on sliding windows + MoCo-v2.

Windows slide over the query view (view 1); each is mapped through the
original image into the key view (view 2) (geometry.resim_windows; pairs
whose key window leaves the key view are dropped). Region features are
Precise-RoI-pooled (1x1, roi.precise_roi_pool) from the online query map
and the momentum encoder's key map, and contrasted with every k x k
average-pooled location of the key maps (Eqs. 1-2; losses/resim.py).

Variants (config.loss.resim_variant):
  c4   ReSim-C4: windows 48 px stride 32 on C4 (stride 16); negatives
       gathered over all devices.
  fpn  ReSim-FPN: an FPN (laterals on C3-C5, outputs P3, P4; 256 channels)
       with 48/32 windows on P4 (negatives from all devices) and 32/24 on P3
       (negatives from this device). The FPN is exported with the encoder
       (dense_ssl.convert --to=detectron2 writes fpn_lateral*, fpn_output*).
Region head (config.model.region_dim): the paper's two 3x3 convs to 128
channels (Sec. 3.4); 0 pools the maps as they are (the official FPN code).
The total is MoCo-v2's instance loss + the region losses, weights 1 (Eq. 5):
configs/resim.py sets config.objectives.moco = config.objectives.resim = 1.
"""

import jax

from dense_ssl.losses import resim as resim_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose
from dense_ssl.ops import geometry
from dense_ssl.ops import roi

# variant -> ((level, feature stride, negatives gathered over devices), ...)
LEVELS = {
    'c4': (('c4', 16, True),),
    'fpn': (('p4', 16, True), ('p3', 8, False)),
}


class ReSimObjective(compose.Objective):
  name = 'resim'
  passes = frozenset({(compose.ONLINE, 0), (compose.TARGET, 1)})

  def __init__(self, config):
    super().__init__(config)
    variant = config.loss.resim_variant
    if variant not in LEVELS:
      raise ValueError(f'config.loss.resim_variant={variant!r}: choose one of {sorted(LEVELS)}')
    self.levels = LEVELS[variant]

  def network_heads(self):
    m = self.config.model
    heads = dict(region_levels=tuple(level for level, _, _ in self.levels),
                 region_dim=int(m.region_dim))
    if self.config.loss.resim_variant == 'fpn':
      heads.update(fpn_dim=int(m.fpn_dim), fpn_levels=(3, 4))
    return heads

  def plan(self, batch, rng):
    del rng  # The windows are a fixed grid.
    b = batch
    size_q, size_k = b['view1/image'].shape[1], b['view2/image'].shape[1]
    plan = {}
    for level, stride, _ in self.levels:
      window, step = geometry.RESIM_WINDOWS[stride]
      plan[level] = geometry.resim_windows(
          b['view1/box'], b['view1/flip'], b['view2/box'], b['view2/flip'],
          size_q=size_q, size_k=size_k, window=window, stride=step)
    return plan

  def loss(self, ctx, plan, state):
    c = self.config.loss
    query_maps, key_maps = ctx.online[0]['region'], ctx.target[1]['region']
    total, metrics = 0.0, {}
    for level, stride, gather in self.levels:
      wq, wk, valid = plan[level]
      pool = lambda m, w: roi.precise_roi_pool(m, w, spatial_scale=1.0 / stride)[:, :, 0, 0]
      query = pool(query_maps[level], wq)
      key = pool(key_maps[level], wk)
      negatives = resim_losses.key_map_negatives(key_maps[level], int(c.resim_negative_kernel))
      if gather:
        negatives = jax.lax.all_gather(negatives, base.AXIS, tiled=True)
      loss, m = resim_losses.region_contrast_loss(
          query, key, valid, negatives, temperature=c.resim_temperature,
          axis_name=base.AXIS)
      total = total + loss
      metrics[f'{level}_loss'] = loss
      metrics.update({f'{level}_{k}': v for k, v in m.items()})
    return total, metrics, state
