"""The label maps stored with an image: FH, GT (panoptic / instances) and user maps.

What each map is: data_pipeline/precompute_masks.py's docstring ("Label
maps"). Every function returns integer ids [H, W] (0 = unlabelled for GT);
data_pipeline/records.py encodes them losslessly.
"""

import io
import os

import numpy as np
from PIL import Image

from data_pipeline.masks.decode import MODES_16BIT
from data_pipeline.masks.errors import ImageFailure


def fh_label_maps(rgb, fh, sigma):
  """{name: felzenszwalb labels} for each (scale, min_size, name) in `fh`."""
  import skimage.segmentation
  return {name: skimage.segmentation.felzenszwalb(rgb, scale=scale, sigma=sigma,
                                                  min_size=min_size)
          for scale, min_size, name in fh}


def label_map_from_pil(img):
  """A PIL label-map image -> int [H, W] ids, or raises ValueError for its mode."""
  mode = img.mode
  if mode in ('L', 'P', '1') or mode in MODES_16BIT:
    return np.asarray(img).astype(np.int64)
  if mode == 'RGB':
    a = np.asarray(img).astype(np.int64)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
  raise ValueError(f'pixel mode {mode!r}; use a greyscale, palette, 16-bit or RGB'
                   ' PNG of integer ids')


def read_user_mask(path, height, width):
  """Loads a user label map and checks that it is aligned with the image."""
  if not os.path.isfile(path):
    raise ImageFailure(f'no user mask {path}')
  try:
    with Image.open(path) as img:
      img.load()
      labels = label_map_from_pil(img)
  except Exception as e:  # pylint: disable=broad-except
    raise ImageFailure(f'user mask {path} cannot be read: {e}') from None
  if labels.shape != (height, width):
    raise ImageFailure(f'user mask {path} is {labels.shape[1]}x{labels.shape[0]} but'
                       f' the image is {width}x{height}')
  if labels.size and labels.min() < 0:
    raise ImageFailure(f'user mask {path} has negative ids')
  return labels


def _panoptic_ids(png):
  """COCO panoptic PNG bytes -> int64 [H, W] segment ids R + 256 G + 65536 B."""
  with Image.open(io.BytesIO(png)) as img:
    rgb = np.asarray(img.convert('RGB')).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def panoptic_to_instances(png):
  """COCO panoptic PNG bytes -> int32 [H, W]: 0 = VOID, 1..N one per segment."""
  ids = _panoptic_ids(png)
  uniq, inverse = np.unique(ids, return_inverse=True)
  labels = inverse.reshape(ids.shape) + (0 if uniq[0] == 0 else 1)
  return labels.astype(np.int32)


def panoptic_to_classes(png, segment_ids, labels):
  """COCO panoptic PNG bytes + its segments' categories -> int32 [H, W] class map.

  Args:
    png: the panoptic PNG (segment id = R + 256 G + 65536 B, 0 = VOID).
    segment_ids: int [S], TFDS panoptic_objects/id: each segment's panoptic id.
    labels: int [S], TFDS panoptic_objects/label: each segment's category index
      (0-based, into the dataset's ClassLabel).
  Returns:
    int32 [H, W]: label + 1 on each listed segment's pixels, 0 on VOID and on
    segments the list does not hold (records.py: the `class` map). Pixel-aligned
    with panoptic_to_instances(png): one class per instance.
  """
  ids = _panoptic_ids(png)
  uniq, inverse = np.unique(ids, return_inverse=True)
  lut = dict(zip(np.asarray(segment_ids, np.int64).tolist(),
                 (np.asarray(labels, np.int64) + 1).tolist()))
  lut[0] = 0  # VOID, even if listed.
  per_id = np.array([lut.get(int(u), 0) for u in uniq], np.int32)
  return per_id[inverse.reshape(ids.shape)]


def paint_instances(masks):
  """Binary instance masks [N][H, W] -> int32 [H, W], 0 = none, i + 1 = masks[i].

  Painted largest first, so that a small instance on top of a large one stays.
  """
  masks = [np.asarray(m).reshape(np.shape(m)[:2]) > 0 for m in masks]
  if not masks:
    return None
  labels = np.zeros(masks[0].shape, np.int32)
  for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
    labels[masks[i]] = i + 1
  return labels


def png_masks_to_instances(pngs):
  """PNG-encoded binary instance masks (TFDS objects/...) -> paint_instances'."""
  masks = []
  for png in pngs:
    with Image.open(io.BytesIO(png)) as img:
      masks.append(np.asarray(img.convert('L')))
  return paint_instances(masks)
