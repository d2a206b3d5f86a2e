"""'discovered': Odin's masks (Hénaff et al. 2022), found by the training step; nothing stored.

The pipeline ships no view masks for this kind. It ships, beside the views,
the whole image: `whole/image`, resized to S_d x S_d
(view_config.discovery_view_size: data.discovery_view_size, or
data.image_size when 0), not cropped, not flipped, not coloured. In the step
(dense_ssl/discovery.py) the EMA network embeds it, k-means clusters its
feature map into config.discovery.num_clusters int32 ids, and each view's
mask is that cluster map carried through the view's `box` and `flip` (the
whole view's box is (0, 0, 1, 1) by construction, so none is shipped).

Any dataset with images works (check_dataset: nothing asked of the
manifest; the records' stored maps are not read). The mask quality table
has no row for it: nothing is stored and no map is made on the host; the
training run scores its masks itself (config.discovery.quality_every_steps).
"""

from data_pipeline import config_rules
from data_pipeline.mask_kinds import base

# The ResNet's C5 stride: dense_ssl/models/resnet.C5_STRIDE, which
# data_pipeline cannot import (tests/test_mask_kinds.py pins them equal).
C5_STRIDE = 32


class Discovered(base.MaskKind):
  name = 'discovered'
  stored = False
  ships_view_masks = False
  ships_whole_view = True

  def num_ids(self, manifest, data_config):
    # No view{k}/mask is shipped, so no dtype is chosen from this; None
    # (int32) is the type of the step's cluster ids (< discovery.num_clusters).
    del manifest, data_config
    return None

  def check(self, data_config):
    # A multiple of the C5 stride: the whole view's feature map then has only
    # whole cells, so cell (i, j) of an n x n map covers exactly [i/n, (i+1)/n]
    # of the image, the geometry the step uses to carry it into the views.
    return config_rules.image_size('data.discovery_view_size',
                                   base.read(data_config, 'discovery_view_size'), C5_STRIDE,
                                   zero_means='data.image_size')


KIND = Discovered()
