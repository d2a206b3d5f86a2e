"""'user': label maps the user supplies (--user_masks=DIR), stored by the precompute.

DIR/<image id without extension>.png, aligned with the image; stored as map
records.USER_MASK (data_pipeline/masks/label_maps.read_user_mask reads it).
"""

import os

from data_pipeline import records
from data_pipeline.mask_kinds import stored_map


class UserMaps(stored_map.SingleStoredMap):
  name = records.USER_MASK
  what = 'user'

  def record_names(self, job):
    return [records.USER_MASK] * bool(job['user_masks'])

  def label_maps(self, item, rgb, task):
    from data_pipeline.masks import label_maps  # pylint: disable=g-import-not-at-top
    if not task.user_masks:
      return {}
    path = os.path.join(task.user_masks, os.path.splitext(item.id)[0] + '.png')
    return {records.USER_MASK: label_maps.read_user_mask(path, *rgb.shape[:2])}


KIND = UserMaps()
