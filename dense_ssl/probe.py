"""The math of the frozen-feature dense probe: features, classifier, loss, mIoU.

Pure functions (jax.numpy, jit- and shard_map-friendly) used by
dense_ssl/evaluate.py, which runs them over the device mesh; the tests check
them against hand-built cases and a float64 numpy re-derivation.

Protocol (WORKSPACE.md, "Frozen-feature dense probe"):
  * features: one encoder map ('c2'..'c5'), or 'c4+c5' = C4 concatenated
    with C5 bilinearly upsampled to C4's grid (`combine_features`);
  * classifier: a per-pixel linear layer (a 1x1 convolution with bias) from
    the feature channels to K class logits (`probe_logits`), whose logits
    are upsampled bilinearly (half-pixel centres) to the label resolution;
  * loss: softmax cross-entropy averaged over the labelled pixels of the
    global batch (`probe_loss_sums` gives the sum and the count, so the mean
    does not depend on how the batch is split over devices). Every id in
    [0, K) is a class (the demo's 0 = background is a class); pixels whose
    label is `ignore` are left out of the loss and the metrics, and if
    `ignore` is itself in [0, K) that id is never predicted (`class_mask`);
  * metrics: the confusion matrix over labelled pixels (`confusion_matrix`),
    IoU_k = TP / (TP + FP + FN) for every class with a non-zero union
    (labelled or predicted somewhere in the eval set), mIoU = their mean,
    pixel accuracy = correct / labelled pixels (`miou_from_confusion`).
"""

import functools
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

FEATURES = ('c2', 'c3', 'c4', 'c5', 'c4+c5')
_NEG = -1e9  # logit of a class that must never be predicted (the ignore id)


def combine_features(feats: Dict[str, Any], feature: str):
  """The probe's input map from the encoder's {'c2'..'c5'} outputs.

  'c4+c5': C5 resized bilinearly (half-pixel centres, jax.image.resize) to
  C4's grid, then concatenated after C4's channels: [B, h4, w4, C4 + C5].
  """
  if feature not in FEATURES:
    raise ValueError(f'feature={feature!r}: choose one of {FEATURES}')
  if feature != 'c4+c5':
    return feats[feature]
  c4, c5 = feats['c4'], feats['c5']
  up = jax.image.resize(c5, c4.shape[:3] + c5.shape[3:], method='bilinear')
  return jnp.concatenate([c4, up.astype(c4.dtype)], axis=-1)


def init_probe(rng, in_channels: int, num_classes: int, scale: float = 0.01):
  """Linear classifier params: kernel [C, K] ~ N(0, scale^2), bias [K] = 0."""
  kernel = scale * jax.random.normal(rng, (in_channels, num_classes), jnp.float32)
  return {'kernel': kernel, 'bias': jnp.zeros((num_classes,), jnp.float32)}


def class_mask(num_classes: int, ignore: Optional[int]):
  """bool [K]: the ids that may be predicted (all but an in-range ignore id)."""
  mask = np.ones((num_classes,), bool)
  if ignore is not None and 0 <= ignore < num_classes:
    mask[ignore] = False
  return mask


@functools.lru_cache(maxsize=None)
def resize_matrix(out_size: int, in_size: int):
  """float32 [out, in]: jax.image.resize's bilinear map along one axis.

  Row i holds the weights of the input samples for output sample i
  (half-pixel centres, edge samples renormalised: the map
  jax.image.resize(x, ..., 'bilinear') applies, antialiased when shrinking).
  """
  with jax.ensure_compile_time_eval():
    eye = jnp.eye(in_size, dtype=jnp.float32)
    return np.asarray(jax.image.resize(eye, (out_size, in_size), method='bilinear'))


def probe_logits(params, feats, out_hw, allowed=None):
  """The probe's forward: feats [B, h, w, C] -> logits [B, K, H, W] (class axis 1).

  A 1x1 convolution with bias at feature resolution, then the bilinear resize
  of jax.image.resize (half-pixel centres) to out_hw = (H, W), the label
  resolution, applied as two separable matrices. (Both steps are linear, so
  this equals classifying bilinearly upsampled features.) The class axis sits
  before the pixels: the per-pixel softmax over a few classes is then ~3x
  faster on CPU than with classes last. `allowed` (bool [K], `class_mask`)
  sets the other classes' logits to -1e9.
  """
  hp = jax.lax.Precision.HIGHEST
  _, h, w, _ = feats.shape
  logits = jnp.einsum('bhwc,ck->bkhw', feats, params['kernel'], precision=hp)
  logits = logits + params['bias'][:, None, None]
  rows = resize_matrix(int(out_hw[0]), h)
  cols = resize_matrix(int(out_hw[1]), w)
  logits = jnp.einsum('Hh,bkhw->bkHw', rows, logits, precision=hp)
  logits = jnp.einsum('Ww,bkHw->bkHW', cols, logits, precision=hp)
  if allowed is not None:
    logits = jnp.where(jnp.asarray(allowed)[:, None, None], logits, _NEG)
  return logits


def labelled(labels, num_classes: int, ignore: Optional[int], weights=None):
  """float32 [B, H, W]: 1 where a pixel counts (id in [0, K), not ignore)."""
  valid = (labels >= 0) & (labels < num_classes)
  if ignore is not None:
    valid &= labels != ignore
  valid = valid.astype(jnp.float32)
  if weights is not None:  # [B]: 0 for padding examples
    valid = valid * jnp.reshape(weights, (-1,) + (1,) * (labels.ndim - 1))
  return valid


def probe_loss_sums(params, feats, labels, num_classes: int, ignore: Optional[int],
                    weights=None):
  """(sum of per-pixel softmax cross-entropy, number of labelled pixels).

  labels int [B, H, W] at the label resolution; weights [B] (0 = padding).
  The mean loss of a global batch is sum_devices(sum) / sum_devices(count).
  """
  allowed = class_mask(num_classes, ignore)
  logits = probe_logits(params, feats, labels.shape[1:3], allowed)   # [B, K, H, W]
  valid = labelled(labels, num_classes, ignore, weights)
  # log-sum-exp over classes; the shift is a constant for the gradient (2x
  # faster than jax.nn.logsumexp on CPU, same values).
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=1)) + shift[:, 0]
  target = labels[:, None] == jnp.arange(num_classes)[None, :, None, None]
  picked = jnp.sum(jnp.where(target, logits, 0.0), axis=1)
  return jnp.sum((lse - picked) * valid), jnp.sum(valid)


def probe_predict(params, feats, out_hw, num_classes: int, ignore: Optional[int]):
  """int32 [B, H, W]: argmax of the logits over the allowed classes."""
  logits = probe_logits(params, feats, out_hw, class_mask(num_classes, ignore))
  return jnp.argmax(logits, axis=1).astype(jnp.int32)


def confusion_matrix(pred, label, num_classes: int, ignore: Optional[int] = None,
                     weights=None):
  """int32 [K, K] counts: row = true class, column = predicted class.

  Pixels whose label is `ignore` or outside [0, K) are not counted, nor those
  of examples with weight 0 (weights [B], for padding). Predictions are
  expected in [0, K). Works on numpy or jax arrays (jit-able; exact integer
  scatter-add, so the same counts whatever the device split).
  """
  label = jnp.asarray(label)
  pred = jnp.asarray(pred)
  valid = labelled(label, num_classes, ignore, weights) > 0
  index = (jnp.clip(label, 0, num_classes - 1) * num_classes
           + jnp.clip(pred, 0, num_classes - 1))
  cm = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index.ravel()].add(
      valid.ravel().astype(jnp.int32))
  return cm.reshape(num_classes, num_classes)


def miou_from_confusion(cm, ignore: Optional[int] = None) -> Dict[str, Any]:
  """Metrics of a confusion matrix (rows true, columns predicted), in float64.

  Returns dict(
    miou: mean IoU over the classes with a non-zero union (TP + FP + FN > 0:
      labelled or predicted somewhere), excluding an in-range `ignore` id;
      NaN if there are none,
    pixel_accuracy: trace / total (NaN for an empty matrix),
    iou: [K] per-class IoU, None for classes that are absent (zero union) or
      ignored,
    present: the class ids averaged in mIoU,
    num_pixels: total counted pixels).
  """
  cm = np.asarray(cm, np.float64)
  k = cm.shape[0]
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  present = union > 0
  if ignore is not None and 0 <= ignore < k:
    present[ignore] = False
  iou = np.where(present, tp / np.where(present, union, 1.0), np.nan)
  total = cm.sum()
  return dict(
      miou=float(np.mean(iou[present])) if present.any() else float('nan'),
      pixel_accuracy=float(tp.sum() / total) if total > 0 else float('nan'),
      iou=[float(v) if p else None for v, p in zip(iou, present)],
      present=[int(i) for i in np.flatnonzero(present)],
      num_pixels=int(total))


def channel_stats(feats, chunk: int = 256):
  """Per-channel mean and std (float64) of feats [N, h, w, C], in chunks."""
  n = feats.shape[0]
  c = feats.shape[-1]
  total = np.zeros(c)
  sq = np.zeros(c)
  count = 0
  for i in range(0, n, chunk):
    x = np.asarray(feats[i:i + chunk], np.float64).reshape(-1, c)
    total += x.sum(0)
    sq += np.square(x).sum(0)
    count += x.shape[0]
  mean = total / max(count, 1)
  var = np.maximum(sq / max(count, 1) - np.square(mean), 0.0)
  return mean, np.sqrt(var)


def standardise(feats, mean, std, eps: float = 1e-6):
  """(feats - mean) / max(std, eps) as float32: an affine reparametrisation of
  the linear classifier (same function class) that lets one learning rate
  suit every encoder's feature scale."""
  return ((np.asarray(feats, np.float32) - mean.astype(np.float32))
          / np.maximum(std, eps).astype(np.float32))
