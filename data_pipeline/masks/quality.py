"""Mask quality: DetCon's Average Best Overlap (ABO) of a mask set with GT objects.

DetCon (Henaff et al. 2021), Sec. 4.3, Fig. 7: "We compute the Average Best
Overlap (ABO) by measuring the IoU between each ground-truth mask and the
closest pretraining mask, and averaging over all ground truth instances and
images." Pure numpy, no TensorFlow: the precompute's workers (shards.py) and
the command data_pipeline/mask_quality.py share these functions.

Definitions
-----------
GT instances: the ids > 0 of a GT label map; id 0 (background, unlabelled,
  COCO's VOID) is never an instance. Or a bool stack [G, H, W] of instance
  masks (they may overlap; empty ones are dropped).
Masks of an image: every distinct id of a label map, 0 included, since the
  training pipeline uses every id as a mask (FH's segment 0, grid cell 0, the
  background region of a gt/user map). Or a bool stack [K, H, W] of masks that
  may overlap (MCG-style proposals); empty masks are dropped. A label map is a
  partition; a stack need not be: IoUs are computed from each mask's own
  pixels, never assuming a partition.
Best overlap of instance g: max over the image's masks m of IoU(g, m) =
  |g & m| / |g | m| (0 when no mask touches g).
ABO (`abo`): the mean of the best overlaps over all GT instances of the data
  set, pooled (every instance weighs the same; an image with many objects
  weighs more). This is our reading of "averaging over all ground truth
  instances and images": the paper does not say more, and the ABO of selective
  search (Uijlings et al. 2013), which the term comes from, is a mean over
  instances. The other reading is reported too: `abo_per_image`, the mean
  over images of each image's mean best overlap (every image weighs the same).
Images without GT instances have no best overlaps: they are skipped by both
  means and counted (`num_images_without_instances`).
`masks_per_image`: the mean number of (non-empty) masks over all images read,
  with or without instances.

  best, num_masks = image_best_overlaps(gt, fh)     # float64 [G], int
  average_best_overlap(gt, grid_label_map(128, 128, 2))
  stats = AboStats(); stats.add(best, num_masks); stats.summary()
"""

import numpy as np

# Joint-histogram cells above which a sparse count (np.unique) replaces the
# dense np.bincount of (gt id, mask id) pairs.
_DENSE_CELLS = 1 << 22


def grid_label_map(height, width, n):
  """DetCon's n x n grid (Sec. 3.2) as int32 [height, width], id = row * n + col.

  The numpy twin of data_pipeline/augment.grid_label_map, which the training
  pipeline lays over the original image (data.mask='grid'): row r of the image
  is in grid row r * n // height, column c in grid column c * n // width.
  """
  if n < 1:
    raise ValueError(f'grid size must be >= 1, got {n}')
  rows = np.arange(height, dtype=np.int64) * n // height
  cols = np.arange(width, dtype=np.int64) * n // width
  return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def _compact(labels):
  """int ids [N] -> (indices [N] in 0..K-1 in increasing id order, sorted ids [K])."""
  labels = np.asarray(labels).ravel()
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'a label map must hold integers, got {labels.dtype}')
  if labels.size == 0:
    return labels.astype(np.intp), labels[:0].astype(np.int64)
  lo, hi = int(labels.min()), int(labels.max())
  if lo >= 0 and hi < 4 * labels.size + 4096:  # Dense ids (FH, grids, GT): O(N).
    present = np.bincount(labels, minlength=hi + 1) > 0
    lut = np.cumsum(present) - 1
    return lut[labels], np.flatnonzero(present)
  ids, inverse = np.unique(labels, return_inverse=True)
  return inverse.ravel(), ids


def _as_stack(masks, what):
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f'{what} must be a label map [H, W] or a bool stack'
                     f' [K, H, W], got shape {masks.shape}')
  flat = masks.reshape(masks.shape[0], -1).astype(bool)
  return flat[flat.any(1)]


def overlaps(gt, masks):
  """The overlap counts of GT instances with masks.

  Args:
    gt: int label map [H, W] (instances = ids > 0) or bool stack [G, H, W].
    masks: int label map [H, W] (every id a mask) or bool stack [K, H, W]
      (may overlap), of the same H, W.
  Returns:
    (inter int64 [G, K], gt_area int64 [G], mask_area int64 [K]): pixels in
    instance g and mask k, in g, in k. Instances in increasing id order (stack
    order for a stack); empty instances and masks are dropped.
  """
  gt, masks = np.asarray(gt), np.asarray(masks)
  if gt.shape[-2:] != masks.shape[-2:]:
    raise ValueError(f'gt {gt.shape} and masks {masks.shape} differ in size')
  if gt.ndim == 2 and masks.ndim == 2:  # Two partitions: one joint histogram.
    g, gt_ids = _compact(gt)
    m, mask_ids = _compact(masks)
    num_g, num_k = len(gt_ids), len(mask_ids)
    if num_g * num_k <= _DENSE_CELLS:
      inter = np.bincount(g * num_k + m, minlength=num_g * num_k).reshape(num_g, num_k)
    else:  # Many ids: count only the pairs that occur.
      pairs, counts = np.unique(g.astype(np.int64) * num_k + m, return_counts=True)
      inter = np.zeros((num_g, num_k), np.int64)
      inter[pairs // num_k, pairs % num_k] = counts
    mask_area = inter.sum(0)
    keep = gt_ids > 0
    inter = inter[keep]
    return inter.astype(np.int64), inter.sum(1).astype(np.int64), mask_area.astype(np.int64)
  # A stack on either side: instance by instance (masks may overlap).
  if gt.ndim == 2:
    g, gt_ids = _compact(gt)
    instances = [g == i for i in np.flatnonzero(gt_ids > 0)]
  else:
    instances = list(_as_stack(gt, 'gt'))
  if masks.ndim == 2:
    m, mask_ids = _compact(masks)
    num_k = len(mask_ids)
    mask_area = np.bincount(m, minlength=num_k)
    rows = [np.bincount(m[sel], minlength=num_k) for sel in instances]
  else:
    stack = _as_stack(masks, 'masks')
    num_k = stack.shape[0]
    mask_area = stack.sum(1)
    rows = [stack[:, sel].sum(1) for sel in instances]
  inter = np.array(rows, np.int64).reshape(len(instances), num_k)
  gt_area = np.array([sel.sum() for sel in instances], np.int64)
  return inter, gt_area, np.asarray(mask_area, np.int64)


def iou_matrix(gt, masks):
  """float64 [G, K]: IoU of each GT instance with each mask (see `overlaps`)."""
  inter, gt_area, mask_area = overlaps(gt, masks)
  union = gt_area[:, None] + mask_area[None, :] - inter
  return inter / np.maximum(union, 1)


def image_best_overlaps(gt, masks):
  """(best overlaps float64 [G], number of masks K) of one image.

  best[g] = max_k IoU(instance g, mask k), instances as in `overlaps` (ids > 0
  in increasing order); [G] = [0] when the image has no GT instance.
  """
  iou = iou_matrix(gt, masks)
  best = iou.max(1) if iou.shape[1] else np.zeros(iou.shape[0])
  return best, int(iou.shape[1])


def average_best_overlap(gt, masks):
  """The ABO of one image: mean best overlap of its GT instances (nan if none)."""
  best, _ = image_best_overlaps(gt, masks)
  return float(best.mean()) if best.size else float('nan')


class AboStats:
  """Running sums of one mask set's ABO over images (mergeable, JSON-able).

  add() one image at a time, merge() another AboStats (e.g. a shard's); the
  same images added and merged in the same order give the same floats.
  """

  FIELDS = ('num_images', 'num_images_without_instances', 'num_instances',
            'sum_best_overlap', 'sum_image_abo', 'sum_masks')

  def __init__(self):
    self.num_images = 0
    self.num_images_without_instances = 0
    self.num_instances = 0
    self.sum_best_overlap = 0.0   # over instances
    self.sum_image_abo = 0.0      # over images with instances
    self.sum_masks = 0            # over all images

  def add(self, best, num_masks):
    """One image: its best overlaps [G] (image_best_overlaps) and mask count."""
    best = np.asarray(best, np.float64)
    self.num_images += 1
    self.sum_masks += int(num_masks)
    if best.size == 0:
      self.num_images_without_instances += 1
      return
    self.num_instances += int(best.size)
    self.sum_best_overlap += float(best.sum())
    self.sum_image_abo += float(best.mean())

  def add_image(self, gt, masks):
    """add(*image_best_overlaps(gt, masks))."""
    self.add(*image_best_overlaps(gt, masks))

  def merge(self, other):
    """Adds another AboStats' sums into this one; returns self."""
    for f in self.FIELDS:
      setattr(self, f, getattr(self, f) + getattr(other, f))
    return self

  def to_json(self):
    return {f: getattr(self, f) for f in self.FIELDS}

  @classmethod
  def from_json(cls, obj):
    out = cls()
    for f in cls.FIELDS:
      setattr(out, f, obj[f])
    return out

  def summary(self):
    """{abo, abo_per_image, masks_per_image, num_*}; a mean is None without data."""
    with_instances = self.num_images - self.num_images_without_instances
    return {
        'abo': self.sum_best_overlap / self.num_instances if self.num_instances else None,
        'abo_per_image': self.sum_image_abo / with_instances if with_instances else None,
        'masks_per_image': self.sum_masks / self.num_images if self.num_images else None,
        'num_images': self.num_images,
        'num_images_without_instances': self.num_images_without_instances,
        'num_instances': self.num_instances,
    }
