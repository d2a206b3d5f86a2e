"""SCRL (Roh et al. 2021): BYOL on boxes that cover the same region in both views.

Per image, K random boxes are drawn in the intersection IS(v1, v2) of the two
views (geometry.sample_boxes_in_overlap: Eq. 1, >= min_box_size px in both
views, IoU < box_iou_threshold with the image's earlier boxes), mapped into
each view (flip-aware), and pooled from C5 with 1x1 RoIAlign:
p_i^k = RoIAlign(B_i^k, m_i). The online projector g and predictor q and the
EMA target projector run on every pooled box; scrl_loss (Eqs. 2-3) pulls the
online prediction of box k in one view to the target projection of box k in
the other view, both directions.

RoIAlign: SCRL's code calls torchvision's roi_align on C5 with
spatial_scale 1/32, aligned=False and adaptive sampling (sampling_ratio -1:
ceil(box size in cells) samples per axis, 1..7 for 32..224 px boxes at
224 px). Adaptive sampling has data-dependent shapes under jit, so
`loss.sampling_ratio` fixes n (configs/scrl.py: image_size / 32, the
adaptive count of the largest possible box; smaller boxes get more samples
than adaptive, i.e. a closer estimate of the same bilinear box mean).
`loss.roi_aligned` defaults to True: without the half-cell shift a box is
read half a C5 cell (16 px) down-right of where it is, and mirrored in a
flipped view, so the "same" box of a flipped and an unflipped view is pooled
up to a cell apart (tests/test_scrl.py); False reproduces SCRL's code.

Global term: SCRL's code trains with the box loss alone (NOTES.md), so
`loss.global_weight` = 0 by default. When > 0, the global-average-pooled C5
of each view is appended as one more slot after the K boxes, so it goes
through the SAME projector and predictor in the same encoder pass (the
heads' BN statistics then also see the global vectors), and
global_weight x BYOL's loss (2 - 2 cos, both directions) is added.
"""

import jax
import jax.numpy as jnp

from dense_ssl.losses import byol as byol_losses
from dense_ssl.losses import scrl as scrl_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose
from dense_ssl.ops import geometry
from dense_ssl.ops import roi

C5_STRIDE = 32


def box_pool(boxes, *, sampling_ratio, aligned, with_global):
  """A `pool` for SSLNetwork: C5 -> [B, K(+1), C] RoIAlign'ed boxes.

  boxes: [B, K, 4] (x1, y1, x2, y2) view pixels. with_global appends the
  spatial mean of C5 as slot K.
  """
  def pool(feats):
    c5 = feats['c5']
    pooled = roi.roi_align(c5, boxes, output_size=1, spatial_scale=1.0 / C5_STRIDE,
                           sampling_ratio=sampling_ratio, aligned=aligned)
    pooled = pooled[:, :, 0, 0, :]                          # [B, K, C]
    if with_global:
      g = base.global_pool(feats).astype(pooled.dtype)
      pooled = jnp.concatenate([pooled, g[:, None]], axis=1)
    return pooled
  return pool


def config_box_pool(config_loss, boxes, *, with_global):
  """box_pool with the RoIAlign settings of config.loss."""
  return box_pool(boxes, sampling_ratio=int(config_loss.sampling_ratio),
                  aligned=bool(config_loss.roi_aligned), with_global=with_global)


def whole_image_boxes(batch, num_boxes):
  """[B, K, 4] boxes covering view 1: the shapes for init (no RNG, no axis)."""
  images = batch['view1/image']
  whole = jnp.array([0.0, 0.0, images.shape[2], images.shape[1]], jnp.float32)
  return jnp.broadcast_to(whole, (images.shape[0], num_boxes, 4))


def sample_view_boxes(rng, batch, config_loss):
  """K boxes per image in both views' pixels, from per-example keys.

  rng: one key (the same on every device); each image gets the key of its
  global index (base.example_rngs), so 1 and N devices draw the same boxes.
  Returns geometry.sample_boxes_in_overlap's dict, [B, K, ...].
  """
  images = batch['view1/image']
  bsz, size = images.shape[0], images.shape[1]
  keys = base.example_rngs(rng, bsz)

  def one_image(key, box1, flip1, box2, flip2):
    out = geometry.sample_boxes_in_overlap(
        key, box1[None], flip1[None], box2[None], flip2[None],
        size_a=size, size_b=batch['view2/image'].shape[1],
        num_boxes=config_loss.num_boxes, min_size=float(config_loss.min_box_size),
        iou_threshold=float(config_loss.box_iou_threshold))
    return {k: v[0] for k, v in out.items()}

  return jax.vmap(one_image)(keys, jnp.asarray(batch['view1/box']),
                             jnp.asarray(batch['view1/flip']),
                             jnp.asarray(batch['view2/box']),
                             jnp.asarray(batch['view2/flip']))


class SCRL(base.Method):
  uses_target = True
  has_predictor = True

  def _pool(self, boxes):
    return config_box_pool(self.config.loss, boxes,
                           with_global=bool(self.config.loss.global_weight))

  def init_pool(self, batch):
    return self._pool(whole_image_boxes(batch, self.config.loss.num_boxes))

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    c = self.config.loss
    boxes = sample_view_boxes(rng, batch, c)
    pool1, pool2 = self._pool(boxes['boxes_a']), self._pool(boxes['boxes_b'])
    (o1, o2), (t1, t2), stats, tstats = self.forward_two_views(
        online_params, online_batch_stats, target_variables, batch, pool1, pool2)

    k = c.num_boxes
    q1, q2 = o1['prediction'], o2['prediction']
    z1, z2 = t1['projection'], t2['projection']
    loss, m = scrl_losses.scrl_loss(q1[:, :k], q2[:, :k], z1[:, :k], z2[:, :k],
                                    boxes['valid'], axis_name=base.AXIS)
    metrics = {f'scrl_{name}': v for name, v in m.items()}
    metrics['scrl_loss'] = loss
    if c.global_weight:
      global_loss = (byol_losses.byol_loss(q1[:, k], z2[:, k]) +
                     byol_losses.byol_loss(q2[:, k], z1[:, k]))
      loss = loss + c.global_weight * global_loss
      metrics['byol_global_loss'] = global_loss
    return loss, (stats, tstats, base.as_metrics(loss=loss, **metrics))


class SCRLObjective(compose.Objective):
  """SCRL's box term: K matched boxes per image through the shared heads."""
  name = 'scrl'
  uses_predictor = True

  def plan(self, batch, rng):
    return sample_view_boxes(rng, batch, self.config.loss)

  def init_pools(self, batch):
    boxes = whole_image_boxes(batch, self.config.loss.num_boxes)
    return {'boxes': config_box_pool(self.config.loss, boxes, with_global=False)}

  def pools(self, plan, view):
    boxes = plan['boxes_a' if view == 0 else 'boxes_b']
    return {'boxes': config_box_pool(self.config.loss, boxes, with_global=False)}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    loss, m = scrl_losses.scrl_loss(
        o1['prediction']['boxes'], o2['prediction']['boxes'],
        t1['projection']['boxes'], t2['projection']['boxes'], plan['valid'],
        axis_name=base.AXIS)
    return loss, m, state
