"""ReSim (Xiao et al. 2021): region similarity on sliding windows (with MoCo-v2 as its global term).

Windows slide over the query view (view 1); each is mapped through the
original image into the key view (view 2) (geometry.resim_windows; pairs
whose key window leaves the key view are dropped). Region features are
Precise-RoI-pooled (1x1, roi.precise_roi_pool) from the online query map
and the momentum encoder's key map, and contrasted with every k x k
average-pooled location of the key maps (Eqs. 1-2; losses/resim.py).
ReSim's total (Eq. 5) is MoCo-v2's instance loss + the region losses,
weights 1: objectives moco.weight = resim.weight = 1 (configs/resim.py);
the two views share one flip (data.shared_flip).

Variants (variant):
  c4   ReSim-C4: windows 48 px stride 32 on C4 (stride 16); negatives
       gathered over all devices.
  fpn  ReSim-FPN: an FPN (models/heads.py: laterals on C3-C5, outputs P3,
       P4; fpn_dim channels) with 48/32 windows on P4 (negatives from all
       devices) and 32/24 on P3 (negatives from this device, as in the
       paper: the loss then depends on how the batch is split). The FPN is
       exported with the encoder (dense_ssl.convert --to=detectron2 writes
       fpn_lateral*, fpn_output*).
Heads: RegionHead (region_dim > 0), the paper's two 3x3 convs to 128
channels (Sec. 3.4), one per level ('region_head_<level>'); 0 pools the
maps as they are (the official FPN code).

Config (config.objectives.resim): weight, variant (c4 | fpn), temperature
(0.2), negative_kernel (3), region_dim (128), fpn_dim (256).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipeline import config_rules
from dense_ssl.losses import resim as resim_losses
from dense_ssl.models import heads
from dense_ssl.objectives import base
from dense_ssl.ops import geometry
from dense_ssl.ops import roi

# variant -> ((level, feature stride, negatives gathered over devices), ...)
LEVELS = {
    'c4': (('c4', 16, True),),
    'fpn': (('p4', 16, True), ('p3', 8, False)),
}


class RegionHead(nn.Module):
  """ReSim Sec. 3.4: two 3x3 convs (BN + ReLU after the first) to `dim` channels."""
  dim: int = 128
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    """x: [B, h, w, C] -> [B, h, w, dim] float32."""
    conv = lambda d, name, bias: nn.Conv(d, (3, 3), padding=((1, 1), (1, 1)),
                                         use_bias=bias, dtype=self.dtype,
                                         param_dtype=jnp.float32, name=name)
    x = conv(x.shape[-1], 'conv1', False)(jnp.asarray(x, self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     axis_name=self.bn_axis_name, dtype=self.dtype,
                     param_dtype=jnp.float32, name='bn1')(x)
    return conv(self.dim, 'conv2', True)(nn.relu(x)).astype(jnp.float32)


class ReSim(base.Objective):
  name = 'resim'
  passes = frozenset({(base.ONLINE, 0), (base.TARGET, 1)})
  presets = {'demo': dict(region_dim=64, fpn_dim=64), 'test': dict(region_dim=32, fpn_dim=32)}

  @classmethod
  def default_config(cls):
    return base.objective_config(variant='c4', temperature=0.2, negative_kernel=3,
                                 region_dim=128, fpn_dim=256)

  def __init__(self, config):
    super().__init__(config)
    self.levels = LEVELS[self.c.variant]

  @classmethod
  def validate(cls, config):
    c, p = config.objectives.resim, 'objectives.resim'
    problems = super().validate(config)
    if c.variant not in LEVELS:
      problems.append(f'config.{p}.variant={c.variant!r}: choose one of '
                      f'{"|".join(sorted(LEVELS))}')
    return (problems
            + config_rules.check(f'{p}.negative_kernel', c.negative_kernel, '>= 1', integer=True)
            + config_rules.check(f'{p}.region_dim', c.region_dim, '>= 0', integer=True)
            + config_rules.check(f'{p}.fpn_dim', c.fpn_dim, '>= 1', integer=True))

  def heads(self, feats, *, train, online, dtype, bn_axis_name):
    del online
    maps = dict(feats)
    if self.c.variant == 'fpn':
      maps.update(heads.FPN(int(self.c.fpn_dim), (3, 4), dtype=dtype, name='fpn')(feats))
    region = {}
    for level, _, _ in self.levels:
      region[level] = maps[level]
      if self.c.region_dim:
        region[level] = RegionHead(int(self.c.region_dim), dtype=dtype,
                                   bn_axis_name=bn_axis_name,
                                   name=f'region_head_{level}')(maps[level], train)
    return {'region': region}

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
    query_maps, key_maps = ctx.online[0]['region'], ctx.target[1]['region']
    total, metrics = 0.0, {}
    for level, stride, gather in self.levels:
      wq, wk, valid = plan[level]
      pool = lambda m, w: roi.precise_roi_pool(m, w, spatial_scale=1.0 / stride)[:, :, 0, 0]
      query = pool(query_maps[level], wq)
      key = pool(key_maps[level], wk)
      negatives = resim_losses.key_map_negatives(key_maps[level], int(self.c.negative_kernel))
      if gather:
        negatives = jax.lax.all_gather(negatives, base.AXIS, tiled=True)
      loss, m = resim_losses.region_contrast_loss(
          query, key, valid, negatives, temperature=self.c.temperature, axis_name=base.AXIS)
      total = total + loss
      metrics[f'{level}_loss'] = loss
      metrics.update({f'{level}_{k}': v for k, v in m.items()})
    return total, metrics, state
