"""The DetCon contrastive detection loss (Hénaff et al. 2021, Eqs. 1 and 3).

Written from the paper and FACTS.md §6 ("DetCon's mask pooling and loss"):
latents are L2-normalised and divided by the temperature (norm 1/sqrt(tau)
in the paper); a prediction of mask m in one view is classified against the
targets of every mask of every image of the (global) batch in both views
(Eq. 1 with 16 negatives per image); positives are the targets of the same
image with the same id in the other view (the indicator of Eq. 3).
"""

import jax
import jax.numpy as jnp

from dense_ssl.ops.mask_pool import duplicate_counts

# Logit of a removed entry: exp() underflows to exactly 0 in float32, and a
# finite value keeps 0 * log_softmax finite where labels are 0.
_REMOVED_LOGIT = -1e9


def l2_normalize(x, axis=-1, eps=1e-12):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps))


def _one_direction(pred, tgt_other, tgt_same, ids_pred, ids_other, same_image,
                   temperature, local_negatives):
  """Cross-entropy of view a's predictions against both views' targets.

  pred: [B, K, D] normalised; tgt_other, tgt_same: [N, K, D] normalised targets
  of the other view / this view over the (gathered) batch of N images;
  ids_pred, ids_other: [B, K]; same_image: [B, N] bool.
  Returns (mean weighted CE, number of positives [B, K], correct [B, K]).
  """
  b, k, _ = pred.shape
  hi = jax.lax.Precision.HIGHEST
  logits_other = jnp.einsum('bkd,nld->bknl', pred, tgt_other,
                            precision=hi) / temperature
  logits_same = jnp.einsum('bkd,nld->bknl', pred, tgt_same,
                           precision=hi) / temperature
  img = same_image[:, None, :, None]                                # [B,1,N,1]
  obj_other = (ids_pred[:, :, None] == ids_other[:, None, :])[:, :, None, :]
  obj_same = (ids_pred[:, :, None] == ids_pred[:, None, :])[:, :, None, :]
  positives = img & obj_other                                       # [B,K,N,K]
  # The same-view target of the same id (the ROI's own target included) is
  # not a negative: remove it from the softmax.
  removed_same = img & obj_same
  removed_other = jnp.zeros_like(positives)
  if not local_negatives:
    # Other masks of the same image are not negatives either (positives stay).
    removed_same = jnp.broadcast_to(img, logits_same.shape)
    removed_other = img & ~obj_other
  logits_other = jnp.where(removed_other, _REMOVED_LOGIT, logits_other)
  logits_same = jnp.where(removed_same, _REMOVED_LOGIT, logits_same)
  logits = jnp.concatenate(
      [logits_other.reshape(b, k, -1), logits_same.reshape(b, k, -1)], -1)
  labels = jnp.concatenate(
      [positives.reshape(b, k, -1),
       jnp.zeros(logits_same.shape, bool).reshape(b, k, -1)], -1)
  labels = labels.astype(jnp.float32)
  num_pos = labels.sum(-1)
  labels = labels / jnp.maximum(num_pos, 1.0)[..., None]
  # No positive: weight 0. Duplicated samples share the weight of one ROI.
  weight = (num_pos > 0).astype(jnp.float32) / duplicate_counts(ids_pred)
  ce = -weight * jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), -1)
  best = jnp.argmax(logits, axis=-1)
  correct = jnp.take_along_axis(labels, best[..., None], -1)[..., 0] > 0
  return jnp.mean(ce), num_pos, correct


def detcon_loss(pred1, pred2, target1, target2, ids1, ids2, *,
                temperature=0.1, local_negatives=True, axis_name=None,
                stop_gradient_targets=True):
  """Symmetric DetCon loss, loss(1 -> 2) + loss(2 -> 1) (Eqs. 1 and 3).

  Per ROI (b, k) of view 1 the softmax runs over the targets of all K masks of
  all images of the global batch in both views, with:
    positives: view-2 targets of image b whose id equals ids1[b, k]; labels
      spread evenly over them;
    removed: view-1 targets of image b with id ids1[b, k] (itself included);
      if not local_negatives, also every other mask of image b in both views
      (positives are kept);
    weight: 0 if the ROI has no positive, else 1 / (number of view-1 samples
      of image b sharing its id).
  The weighted cross-entropy is averaged over B and K (not normalised by the
  sum of weights), then the same with the views swapped is added.

  Args:
    pred1, pred2: [B, K, D] predictions (online branch) of views 1 and 2.
    target1, target2: [B, K, D] targets of views 1 and 2.
    ids1, ids2: [B, K] int32 mask ids sampled in views 1 and 2 (shared by the
      prediction and the target of a view).
    temperature: tau; logits are cos / tau (latent norm 1/sqrt(tau)).
    local_negatives: other masks of the same image are negatives.
    axis_name: mapped axis (shard_map / pmap). Targets are all_gather'ed over
      it and image b of this device is image axis_index * B + b of the global
      batch. None: negatives from this device only (paper Table 5).
    stop_gradient_targets: stop gradients into the targets (DetCon-B: they
      come from the EMA network anyway). DetCon-S passes False: targets are
      projections of the same network and gradients flow through both, as in
      SimCLR (through the all_gather too, whose transpose sums over devices).

  Returns:
    (loss scalar, metrics dict): metrics 'loss_1to2', 'loss_2to1',
    'positives_per_roi' (mean number of positives per ROI), 'rois_with_positive'
    (fraction), 'accuracy' (fraction of ROIs whose top logit is a positive).
    All are per-device values; pmean them over axis_name to get global ones.
  """
  if stop_gradient_targets:
    target1 = jax.lax.stop_gradient(target1)
    target2 = jax.lax.stop_gradient(target2)
  pred1, pred2 = l2_normalize(pred1), l2_normalize(pred2)
  target1, target2 = l2_normalize(target1), l2_normalize(target2)
  b = pred1.shape[0]
  if axis_name is not None:
    target1 = jax.lax.all_gather(target1, axis_name, tiled=True)
    target2 = jax.lax.all_gather(target2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * b
  else:
    offset = 0
  n = target1.shape[0]
  same_image = (jnp.arange(n)[None, :] == (offset + jnp.arange(b))[:, None])
  loss12, npos1, corr1 = _one_direction(pred1, target2, target1, ids1, ids2,
                                        same_image, temperature,
                                        local_negatives)
  loss21, npos2, corr2 = _one_direction(pred2, target1, target2, ids2, ids1,
                                        same_image, temperature,
                                        local_negatives)
  has_pos = jnp.concatenate([npos1 > 0, npos2 > 0]).astype(jnp.float32)
  correct = jnp.concatenate([corr1, corr2]).astype(jnp.float32)
  metrics = {
      'loss_1to2': loss12,
      'loss_2to1': loss21,
      'positives_per_roi': jnp.mean(jnp.concatenate([npos1, npos2])),
      'rois_with_positive': jnp.mean(has_pos),
      'accuracy': jnp.sum(correct * has_pos) / jnp.maximum(has_pos.sum(), 1.0),
  }
  return loss12 + loss21, metrics
