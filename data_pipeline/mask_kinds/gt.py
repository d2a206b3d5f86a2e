"""'gt': ground-truth instance / segment maps, stored by the precompute from the source.

Stored as map records.GT_MASK when the source has them (--gt, on by default):
0 = background / unlabelled, 1..N instances (records.py). Where the source
has semantic labels, the `class` map (records.CLASS_MASK) is stored next to
it; it is a label of the GT instances, never a view's mask. GT is what ABO
measures the other maps against (data_pipeline/masks/quality.py), so its
own row is the oracle's 1.0.
"""

import numpy as np

from data_pipeline import records
from data_pipeline.mask_kinds import stored_map


class GroundTruth(stored_map.SingleStoredMap):
  name = records.GT_MASK
  what = 'GT'
  is_reference = True   # The map ABO scores the others against.

  def record_names(self, job):
    return [records.GT_MASK] * bool(job['gt']) + [records.CLASS_MASK] * bool(job['classes'])

  def label_maps(self, item, rgb, task):
    if not task.gt or item.gt is None:
      return {}
    height, width = rgb.shape[:2]
    out = {records.GT_MASK: _read_map(item.gt, 'GT map', (height, width))}
    if records.CLASS_MASK in task.mask_names:
      out[records.CLASS_MASK] = _read_map(item.classes, 'class map', (height, width))
    return out

  def abo_names(self, mask_names):
    return []   # The reference itself, and its class labels.

  def quality_rows(self, manifest, grids):
    del manifest, grids
    return [(records.GT_MASK, {})]   # The oracle's row, always.


KIND = GroundTruth()


def _read_map(read, what, shape):
  """read() -> the map, or ImageFailure naming `what` (unreadable, absent, wrong shape)."""
  from data_pipeline.masks.errors import ImageFailure  # pylint: disable=g-import-not-at-top
  try:
    label_map = None if read is None else read()
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'{what} cannot be read: {type(e).__name__}: {e}') from None
  if label_map is None or np.shape(label_map) != shape:
    raise ImageFailure(f'{what} has shape {None if label_map is None else np.shape(label_map)}'
                       f' but the image is {shape}')
  return np.asarray(label_map)
