"""How the views are made, read from config.data: pure Python, no TensorFlow.

Shared by the host pipeline (input_pipeline.py: crops, sizes) and the
device-side colour recipe (dense_ssl/ops/color.py), so both read the same
keys with the same defaults and the same per-view checks.
"""

import dataclasses

VIEW_MODES = ('crop', 'color_only')
# Every view is normalised with ImageNet's per-channel statistics (of RGB in
# [0, 1]), on the host (augment.normalize) or in the step (ops/color.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_KINDS = ('fh', 'gt', 'user', 'grid')
COLOR_ON = ('host', 'device')


def get(cfg, key, default):
  """cfg.key, or default when absent (ConfigDict or dict)."""
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


# Multi-crop (SwAV, Caron et al. 2020; DINO, Caron et al. 2021), used by
# CLoVE (Sec. 5.1, Table 8: "2 global 224 px + 6 local 96 px" in its public
# code). The local crops' area range is SwAV's (0.05, 0.14); their colour is
# DINO's local-crop recipe (blur with p = 0.5, no solarisation). CLoVE's paper
# states neither: both are assumptions, set by config.data.local_*.
LOCAL_DEFAULTS = dict(num_local_crops=0, local_crop_size=96, local_crop_area=(0.05, 0.14),
                      local_blur_prob=0.5, local_solarize_prob=0.0)


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
  return len(tuple(get(data_config, 'view_modes', ('crop', 'crop'))))


def num_local_crops(data_config):
  """data.num_local_crops (0 without multi-crop)."""
  return int(get(data_config, 'num_local_crops', 0) or 0)


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
  with p = data.local_solarize_prob (LOCAL_DEFAULTS).
  """
  modes = tuple(get(data_config, 'view_modes', ('crop', 'crop')))
  n = len(modes)
  size = int(get(data_config, 'image_size', 224))
  crop_area = tuple(get(data_config, 'crop_area', (0.08, 1.0)))
  crop_aspect = tuple(get(data_config, 'crop_aspect', (3. / 4., 4. / 3.)))

  def per_view(key, default):
    v = get(data_config, key, None)
    v = default if v is None else tuple(v)
    if len(v) < n:
      raise ValueError(f'config key data.{key}={v} has {len(v)} entries but'
                       f' data.view_modes={modes} asks for {n} views; give one'
                       ' per view')
    return v

  sizes = per_view('view_sizes', (size,) * n)
  areas = per_view('view_crop_areas', (crop_area,) * n)
  blur = per_view('blur_prob', (1.0, 0.1))
  sol = per_view('solarize_prob', (0.0, 0.2))
  specs = []
  for i, mode in enumerate(modes):
    if mode not in VIEW_MODES:
      raise ValueError(f'config key data.view_modes[{i}]={mode!r}: use one of'
                       f' {VIEW_MODES}')
    specs.append(ViewSpec(mode=mode, size=int(sizes[i]), crop_area=tuple(areas[i]),
                          crop_aspect=crop_aspect, blur_prob=float(blur[i]),
                          solarize_prob=float(sol[i])))
  local = lambda key: get(data_config, key, LOCAL_DEFAULTS[key])
  for _ in range(num_local_crops(data_config)):
    specs.append(ViewSpec(mode='crop', size=int(local('local_crop_size')),
                          crop_area=tuple(local('local_crop_area')), crop_aspect=crop_aspect,
                          blur_prob=float(local('local_blur_prob')),
                          solarize_prob=float(local('local_solarize_prob')), local=True))
  return specs


def color_kwargs(data_config):
  """Keyword arguments of augment.byol_color_augment shared by all views."""
  return dict(
      color_jitter_prob=float(get(data_config, 'color_jitter_prob', 0.8)),
      brightness=float(get(data_config, 'brightness', 0.4)),
      contrast=float(get(data_config, 'contrast', 0.4)),
      saturation=float(get(data_config, 'saturation', 0.2)),
      hue=float(get(data_config, 'hue', 0.1)),
      grayscale_prob=float(get(data_config, 'grayscale_prob', 0.2)),
      blur_sigma=tuple(get(data_config, 'blur_sigma', (0.1, 2.0))))
