"""DetCon-B (Hénaff et al. 2021, Sec. 3.1): BYOL with the contrastive detection loss.

Per view: the mask is hard-assigned to the C5 grid (majority id per cell),
K = 16 ids are sampled among the ids present (the online and target branches
of a view share them), features are mask-pooled (h_m), projected (g) and, on
the online side, predicted (q). detcon_loss (Eqs. 1-3) contrasts each
prediction with the EMA target projections of all masks of all images in
both views.
"""

import jax

from dense_ssl.losses import detcon as detcon_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose
from dense_ssl.ops import mask_pool as mp


def sample_view_masks(rng, mask, image_size, num_samples, per_example=False):
  """mask [B, S, S] -> (cell_ids [B, S/32, S/32], ids [B, K]) for C5 (stride 32).

  `rng` is one key, or with per_example [B] keys (base.example_rngs).
  """
  grid = image_size // 32
  cell_ids = mp.downsample_masks(mask, (grid, grid))
  if per_example:
    ids = jax.vmap(lambda r, c: mp.sample_mask_ids(r, c[None], num_samples)[0])(
        rng, cell_ids)
  else:
    ids = mp.sample_mask_ids(rng, cell_ids, num_samples)
  return cell_ids, ids


def mask_pool_fn(cell_ids, ids):
  return lambda feats: mp.mask_pool(feats['c5'], cell_ids, ids)


class DetConMasks:
  """Shared by DetCon-B and DetCon-S: per-view mask sampling and pooling."""

  def view_pools(self, batch, rng):
    k = self.config.loss.num_samples
    size = batch['view1/image'].shape[1]
    rng1, rng2 = jax.random.split(rng)
    b = batch['view1/image'].shape[0]
    rng1, rng2 = base.example_rngs(rng1, b), base.example_rngs(rng2, b)
    c1, ids1 = sample_view_masks(rng1, batch['view1/mask'], size, k, True)
    c2, ids2 = sample_view_masks(rng2, batch['view2/mask'], size, k, True)
    return (mask_pool_fn(c1, ids1), ids1), (mask_pool_fn(c2, ids2), ids2)

  def init_pool(self, batch):
    size = batch['view1/image'].shape[1]
    c, ids = sample_view_masks(jax.random.key(0), jax.numpy.asarray(batch['view1/mask']),
                               size, self.config.loss.num_samples)
    return mask_pool_fn(c, ids)

  def detcon(self, pred1, pred2, target1, target2, ids1, ids2, **kw):
    return detcon_losses.detcon_loss(
        pred1, pred2, target1, target2, ids1, ids2,
        temperature=self.config.loss.temperature,
        local_negatives=self.config.loss.local_negatives,
        axis_name=self.gather_axis(), **kw)


class DetConB(DetConMasks, base.Method):
  uses_target = True
  has_predictor = True

  def loss(self, online_params, online_batch_stats, target_variables, batch, rng):
    (pool1, ids1), (pool2, ids2) = self.view_pools(batch, rng)
    (o1, o2), (t1, t2), stats, tstats = self.forward_two_views(
        online_params, online_batch_stats, target_variables, batch, pool1, pool2)
    loss, m = self.detcon(o1['prediction'], o2['prediction'],
                          t1['projection'], t2['projection'], ids1, ids2)
    return loss, (stats, tstats, base.as_metrics(
        loss=loss, **{f'detcon_{k}': v for k, v in m.items()}))


class DetConObjective(DetConMasks, compose.Objective):
  """DetCon-B's contrastive detection term on mask-pooled C5 (needs data.mask)."""
  name = 'detcon'
  uses_predictor = True

  def plan(self, batch, rng):
    (pool1, ids1), (pool2, ids2) = self.view_pools(batch, rng)
    return dict(pools=(pool1, pool2), ids=(ids1, ids2))

  def pools(self, plan, view):
    return {'masks': plan['pools'][view]}

  def init_pools(self, batch):
    return {'masks': self.init_pool(batch)}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    loss, m = self.detcon(o1['prediction']['masks'], o2['prediction']['masks'],
                          t1['projection']['masks'], t2['projection']['masks'],
                          *plan['ids'])
    return loss, m, state
