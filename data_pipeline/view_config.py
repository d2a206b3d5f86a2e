"""How the views are made, read from config.data: pure Python, no TensorFlow.

Shared by the host pipeline (input_pipeline.py: crops, sizes) and the
device-side colour recipe (dense_ssl/ops/color.py), so both read the same
keys with the same per-view checks. Every key's default lives in one place,
configs/common.py base_config (its data subtree): `read` takes a key and
refuses a config without it, so no reader states a default a second time.
"""

import dataclasses

VIEW_MODES = ('crop', 'color_only')
# Every view is normalised with ImageNet's per-channel statistics (of RGB in
# [0, 1]), on the host (augment.normalize) or in the step (ops/color.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_ON = ('host', 'device')


class MissingConfigKey(KeyError):
  """config.data lacks a key that configs/common.py base_config defines."""

  def __str__(self):
    return self.args[0]


def read(cfg, key):
  """cfg[key] of config.data (ConfigDict or dict); MissingConfigKey naming it if absent."""
  try:
    return cfg[key]
  except (KeyError, AttributeError, TypeError):
    raise MissingConfigKey(
        f'config key data.{key} is missing: configs/common.py base_config defines'
        ' every data key; build the config from a configs/ file (tests:'
        ' tests/fake_data.data_config)') from None


# The keys of config.data that base_config leaves out on purpose: their
# absence means something other than a value (view_sizes / view_crop_areas:
# every view uses data.image_size / data.crop_area; num_parallel: tf.data's
# AUTOTUNE, which tools and tests may pin).
OPTIONAL_KEYS = ('view_sizes', 'view_crop_areas', 'num_parallel')


def optional(cfg, key):
  """cfg[key], or None when absent, for the OPTIONAL_KEYS only."""
  if key not in OPTIONAL_KEYS:
    raise ValueError(f'data.{key} is not optional: read it with view_config.read')
  try:
    return cfg[key]
  except (KeyError, AttributeError, TypeError):
    return None


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How one view is made. `mode`: 'crop' (crop + flip + colour) or 'color_only'.

  `local`: a multi-crop local view (config.data.num_local_crops): always
  'crop', its own flip (never data.shared_flip), read only by objectives
  that use local crops (Objective.uses_local_crops).
  """
  mode: str
  size: int
  crop_area: tuple
  crop_aspect: tuple
  blur_prob: float
  solarize_prob: float
  local: bool = False


def num_global_views(data_config):
  """How many global views there are: the entries of data.view_modes."""
  return len(tuple(read(data_config, 'view_modes')))


def num_local_crops(data_config):
  """data.num_local_crops (0 without multi-crop)."""
  return int(read(data_config, 'num_local_crops'))


def local_view_names(data_config):
  """Batch prefixes of the local crops: view{G+1} ... view{G+N}, after the G global views."""
  g = num_global_views(data_config)
  return tuple(f'view{g + i + 1}' for i in range(num_local_crops(data_config)))


def view_specs(data_config):
  """One ViewSpec per entry of data.view_modes, then one per local crop.

  The batch names view k (1-based) `view{k}`: the global views first
  (data.view_modes), then data.num_local_crops local crops, each
  data.local_crop_size px from an Inception crop of area
  data.local_crop_area, blurred with p = data.local_blur_prob and solarised
  with p = data.local_solarize_prob.
  """
  modes = tuple(read(data_config, 'view_modes'))
  n = len(modes)
  size = int(read(data_config, 'image_size'))
  crop_area = tuple(read(data_config, 'crop_area'))
  crop_aspect = tuple(read(data_config, 'crop_aspect'))

  def per_view(key, absent=None):
    # `absent`: what an optional key (view_sizes, view_crop_areas) means when unset.
    v = read(data_config, key) if absent is None else optional(data_config, key)
    v = absent if v is None else tuple(v)
    if len(v) < n:
      raise ValueError(f'config key data.{key}={v} has {len(v)} entries but'
                       f' data.view_modes={modes} asks for {n} views; give one'
                       ' per view')
    return v

  sizes = per_view('view_sizes', (size,) * n)
  areas = per_view('view_crop_areas', (crop_area,) * n)
  blur = per_view('blur_prob')
  sol = per_view('solarize_prob')
  specs = []
  for i, mode in enumerate(modes):
    if mode not in VIEW_MODES:
      raise ValueError(f'config key data.view_modes[{i}]={mode!r}: use one of'
                       f' {VIEW_MODES}')
    specs.append(ViewSpec(mode=mode, size=int(sizes[i]), crop_area=tuple(areas[i]),
                          crop_aspect=crop_aspect, blur_prob=float(blur[i]),
                          solarize_prob=float(sol[i])))
  local = lambda key: read(data_config, key)
  for _ in range(num_local_crops(data_config)):
    specs.append(ViewSpec(mode='crop', size=int(local('local_crop_size')),
                          crop_area=tuple(local('local_crop_area')), crop_aspect=crop_aspect,
                          blur_prob=float(local('local_blur_prob')),
                          solarize_prob=float(local('local_solarize_prob')), local=True))
  return specs


def discovery_view_size(data_config):
  """S_d, the side of whole/image (data.mask='discovered'): data.discovery_view_size,
  or data.image_size when it is 0."""
  size = int(read(data_config, 'discovery_view_size'))
  return size or int(read(data_config, 'image_size'))


def color_kwargs(data_config):
  """Keyword arguments of augment.byol_color_augment shared by all views."""
  return dict(
      color_jitter_prob=float(read(data_config, 'color_jitter_prob')),
      brightness=float(read(data_config, 'brightness')),
      contrast=float(read(data_config, 'contrast')),
      saturation=float(read(data_config, 'saturation')),
      hue=float(read(data_config, 'hue')),
      grayscale_prob=float(read(data_config, 'grayscale_prob')),
      blur_sigma=tuple(read(data_config, 'blur_sigma')))
