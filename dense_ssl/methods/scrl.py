"""SCRL (Roh et al. 2021): BYOL on boxes at the same place in both views.

Per image, K = 10 random boxes are drawn inside the two views' overlap
(geometry.sample_boxes_in_overlap: >= 32 px in both views, IoU < 0.5), pooled
from C5 with 1x1 RoIAlign in each view, projected (g) and predicted (q); the
online prediction of a box in one view regresses the target projection of the
same box in the other view (symmetric). The official code uses this box loss
alone; `loss.global_weight` > 0 adds the global BYOL loss.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses import byol as byol_losses
from dense_ssl.losses import scrl as scrl_losses
from dense_ssl.methods import base
from dense_ssl.ops import geometry
from dense_ssl.ops import roi


def box_pool(boxes, sampling_ratio):
  """C5 -> [B, K, C] 1x1 RoIAlign of view-pixel boxes (torchvision, aligned=False)."""
  def pool(feats):
    out = roi.roi_align(feats['c5'], boxes, output_size=1, spatial_scale=1 / 32,
                        sampling_ratio=sampling_ratio, aligned=False)
    return out.reshape(out.shape[:2] + out.shape[-1:])
  return pool


class SCRL(base.Method):
  uses_target = True
  has_predictor = True

  def sample_boxes(self, batch, rng):
    c = self.config.loss
    size = batch['view1/image'].shape[1]
    b = batch['view1/image'].shape[0]
    # One key per image from its global index: 1 and N devices agree.
    keys = base.example_rngs(rng, b)
    one = lambda k, b1, f1, b2, f2: geometry.sample_boxes_in_overlap(
        k, b1[None], f1[None], b2[None], f2[None], size_a=size, size_b=size,
        num_boxes=c.num_boxes, min_size=c.min_box_size,
        iou_threshold=c.box_iou_threshold)
    out = jax.vmap(one)(keys, batch['view1/box'], batch['view1/flip'],
                        batch['view2/box'], batch['view2/flip'])
    return {k: v[:, 0] for k, v in out.items()}

  def init_pool(self, batch):
    b = batch['view1/image'].shape[0]
    size = batch['view1/image'].shape[1]
    whole = jnp.tile(jnp.array([0.0, 0.0, size, size]), (b, self.config.loss.num_boxes, 1))
    return box_pool(whole, self.config.loss.sampling_ratio)

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    c = self.config.loss
    boxes = self.sample_boxes(batch, rng)
    pool1 = box_pool(boxes['boxes_a'], c.sampling_ratio)
    pool2 = box_pool(boxes['boxes_b'], c.sampling_ratio)
    x1, x2 = base.two_views(batch)
    o1, stats = self.apply(self.online, online_params, online_batch_stats, x1, pool1)
    o2, stats = self.apply(self.online, online_params, stats, x2, pool2)
    tp = base.stop_gradient_tree(target_variables['params'])
    t1, tstats = self.apply(self.target, tp, target_variables['batch_stats'], x1, pool1)
    t2, tstats = self.apply(self.target, tp, tstats, x2, pool2)
    valid = boxes['valid']
    loss_12, n = scrl_losses.box_byol_loss(o1['prediction'], t2['projection'], valid)
    loss_21, _ = scrl_losses.box_byol_loss(o2['prediction'], t1['projection'], valid)
    loss = loss_12 + loss_21
    metrics = dict(scrl_loss_1to2=loss_12, scrl_loss_2to1=loss_21,
                   scrl_valid_boxes_per_image=n / valid.shape[0])
    if c.global_weight:
      g = base.global_pool
      go1, stats = self.apply(self.online, online_params, stats, x1, g)
      go2, stats = self.apply(self.online, online_params, stats, x2, g)
      gt1, tstats = self.apply(self.target, tp, tstats, x1, g)
      gt2, tstats = self.apply(self.target, tp, tstats, x2, g)
      global_loss = (byol_losses.byol_loss(go1['prediction'], gt2['projection']) +
                     byol_losses.byol_loss(go2['prediction'], gt1['projection']))
      loss = loss + c.global_weight * global_loss
      metrics['byol_global_loss'] = global_loss
    return loss, (stats, tstats, base.as_metrics(loss=loss, **metrics))
