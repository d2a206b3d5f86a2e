"""SCRL (Roh et al. 2021): BYOL on boxes that cover the same region in both views.

Per image, K random boxes are drawn in the intersection IS(v1, v2) of the two
views (geometry.sample_boxes_in_overlap: Eq. 1, >= min_box_size px in both
views, IoU < box_iou_threshold with the image's earlier boxes), mapped into
each view (flip-aware), and pooled from C5 with 1x1 RoIAlign:
p_i^k = RoIAlign(B_i^k, m_i). The shared projector g and predictor q and the
EMA target projector run on every pooled box; scrl_loss (Eqs. 2-3) pulls the
online prediction of box k in one view to the target projection of box k in
the other view, both directions.

RoIAlign: SCRL's code calls torchvision's roi_align on C5 with
spatial_scale 1/32, aligned=False and adaptive sampling (sampling_ratio -1:
ceil(box size in cells) samples per axis, 1..7 for 32..224 px boxes at
224 px). Adaptive sampling has data-dependent shapes under jit, so
`sampling_ratio` fixes n (0: image_size / 32, the adaptive count of the
largest possible box; smaller boxes get more samples than adaptive, i.e. a
closer estimate of the same bilinear box mean). `roi_aligned` defaults to
True: without the half-cell shift a box is read half a C5 cell (16 px)
down-right of where it is, and mirrored in a flipped view, so the "same"
box of a flipped and an unflipped view is pooled up to a cell apart
(tests/test_scrl.py); False reproduces SCRL's code.

Global term: SCRL's code trains with the box loss alone (FACTS.md §5); BYOL's
global term is objectives.byol (its global vector then goes through the
same projector and predictor pass as the boxes).

Config (config.objectives.scrl): weight, num_boxes (K = 10), min_box_size
(0: 32 px at 224 px views, i.e. 32 x image_size / 224), box_iou_threshold
(0.5), sampling_ratio (0: image_size / 32), roi_aligned (True).
"""

import jax
import jax.numpy as jnp

from data_pipeline import config_rules
from dense_ssl.losses import scrl as scrl_losses
from dense_ssl.models import resnet
from dense_ssl.objectives import base
from dense_ssl.ops import geometry
from dense_ssl.ops import roi

C5_STRIDE = resnet.C5_STRIDE


def box_pool(boxes, *, sampling_ratio, aligned):
  """A pool for the network: C5 -> [B, K, C] RoIAlign'ed boxes ([B, K, 4] x1, y1, x2, y2 px)."""
  def pool(feats):
    pooled = roi.roi_align(feats['c5'], boxes, output_size=1, spatial_scale=1.0 / C5_STRIDE,
                           sampling_ratio=sampling_ratio, aligned=aligned)
    return pooled[:, :, 0, 0, :]
  return pool


def whole_image_boxes(batch, num_boxes):
  """[B, K, 4] boxes covering view 1: the shapes for init (no RNG, no axis)."""
  images = batch['view1/image']
  whole = jnp.array([0.0, 0.0, images.shape[2], images.shape[1]], jnp.float32)
  return jnp.broadcast_to(whole, (images.shape[0], num_boxes, 4))


def sample_view_boxes(rng, batch, *, num_boxes, min_box_size, iou_threshold):
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
        size_a=size, size_b=batch['view2/image'].shape[1], num_boxes=num_boxes,
        min_size=float(min_box_size), iou_threshold=float(iou_threshold))
    return {k: v[0] for k, v in out.items()}

  return jax.vmap(one_image)(keys, jnp.asarray(batch['view1/box']),
                             jnp.asarray(batch['view1/flip']),
                             jnp.asarray(batch['view2/box']),
                             jnp.asarray(batch['view2/flip']))


class SCRL(base.Objective):
  name = 'scrl'
  uses_predictor = True

  @classmethod
  def default_config(cls):
    return base.objective_config(num_boxes=10, min_box_size=0.0, box_iou_threshold=0.5,
                                 sampling_ratio=0, roi_aligned=True)

  @classmethod
  def validate(cls, config):
    c, p = config.objectives.scrl, 'objectives.scrl'
    problems = (super().validate(config)
                + config_rules.check(f'{p}.num_boxes', c.num_boxes, '>= 1', integer=True)
                + config_rules.check(f'{p}.min_box_size', c.min_box_size, '>= 0')
                + config_rules.check(f'{p}.box_iou_threshold', c.box_iou_threshold, 'in (0, 1]')
                + config_rules.check(f'{p}.sampling_ratio', c.sampling_ratio, '>= 0', integer=True))
    size = config.data.get('image_size')
    if (config_rules.is_number(c.min_box_size) and config_rules.is_number(size)
        and c.min_box_size >= size > 0):
      problems.append(f'config.{p}.min_box_size={c.min_box_size!r}: must be smaller '
                      f'than config.data.image_size={size} (0: 32 px at 224 px)')
    return problems

  def _pool(self, boxes):
    size = self.config.data.image_size
    return box_pool(boxes, sampling_ratio=int(self.c.sampling_ratio) or max(1, size // 32),
                    aligned=bool(self.c.roi_aligned))

  def plan(self, batch, rng):
    size = self.config.data.image_size
    return sample_view_boxes(rng, batch, num_boxes=self.c.num_boxes,
                             min_box_size=self.c.min_box_size or 32.0 * size / 224,
                             iou_threshold=self.c.box_iou_threshold)

  def init_pools(self, batch):
    return {'boxes': self._pool(whole_image_boxes(batch, self.c.num_boxes))}

  def pools(self, plan, view):
    return {'boxes': self._pool(plan['boxes_a' if view == 0 else 'boxes_b'])}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    loss, m = scrl_losses.scrl_loss(
        o1['prediction']['boxes'], o2['prediction']['boxes'],
        t1['projection']['boxes'], t2['projection']['boxes'], plan['valid'],
        axis_name=base.AXIS)
    return loss, m, state
