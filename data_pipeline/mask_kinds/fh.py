"""'fh': Felzenszwalb-Huttenlocher maps (DetCon Sec. 3.2), precomputed at one or several scales.

The precompute stores one map per (--fh_scales[i], --fh_min_sizes[i]) pair,
named records.fh_mask_name(scale, min_size, sigma) and listed in the
manifest's "fh" entries. config.data.fh_scale picks the stored map of that
scale; -1 draws one stored map per example (DetCon's COCO setting).
"""

import re

from data_pipeline.mask_kinds import base

_NAME = re.compile(r'^fh_s([0-9.e+-]+)_m([0-9.e+-]+)_sig([0-9.e+-]+)$')


def stored_maps(manifest):
  """[(scale, min_size, sigma, name)] of the FH maps a manifest lists."""
  out = []
  if manifest.get('fh'):
    for e in manifest['fh']:
      out.append((float(e['scale']), float(e['min_size']), float(e['sigma']), e['name']))
  else:  # Older manifests: the scales are in the names.
    for name in manifest.get('mask_names', []):
      m = _NAME.match(name)
      if m:
        out.append((float(m[1]), float(m[2]), float(m[3]), name))
  stored = set(manifest.get('mask_names', []))
  return [e for e in out if e[3] in stored]


class Felzenszwalb(base.MaskKind):
  name = 'fh'
  expensive = True   # Seconds per ImageNet image; the other maps are read.

  def record_names(self, job):
    return [name for _, _, name in job['fh']]

  def label_maps(self, item, rgb, task):
    from data_pipeline.masks import label_maps  # pylint: disable=g-import-not-at-top
    return label_maps.fh_label_maps(rgb, task.fh, task.fh_sigma)

  def owns(self, name):
    return name.startswith('fh_')

  def choices(self, manifest, data_config):
    stored = list(manifest.get('mask_names', []))
    fh = stored_maps(manifest)
    data_dir = base.read(data_config, 'dir')
    if not fh:
      raise ValueError(f'config key data.mask=\'fh\', but the mask dataset'
                       f' {data_dir!r} stores no FH map (it'
                       f' stores {stored}); use data.mask=gt/user/grid or recompute'
                       ' it with FH scales')
    given = base.read(data_config, 'fh_scale')
    scale = float(given)
    if scale == -1:
      return sorted({e[3] for e in fh})
    match = [e for e in fh if e[0] == scale]
    if len(match) > 1:  # Prefer DetCon's min_size = scale.
      match = [e for e in match if e[1] == scale] or match
    if not match:
      raise ValueError(f'config key data.fh_scale={given}'
                       f' is not stored in {data_dir!r}; stored FH'
                       f' maps: {[e[3] for e in fh]} (scales'
                       f' {sorted({e[0] for e in fh})}); set data.fh_scale to one of'
                       ' those, or -1 to pick one per example')
    if len(match) > 1:
      raise ValueError(f'config key data.fh_scale={scale} matches several stored'
                       f' FH maps {[e[3] for e in match]}; cannot choose')
    return [match[0][3]]

  def check(self, data_config):
    scale = base.read(data_config, 'fh_scale')
    if not (base.is_number(scale) and (scale > 0 or scale == -1)):
      return [f'config.data.fh_scale={scale!r}: must be a stored FH scale (> 0), or -1 '
              '(one stored scale per example)']
    return []

  def check_dataset(self, data_config, manifest):
    data_dir = base.read(data_config, 'dir')
    fh = stored_maps(manifest)
    scale = base.read(data_config, 'fh_scale')
    scales = sorted({e[0] for e in fh})
    if not fh:
      stored = list(manifest.get('mask_names', []))
      return [f'config.data.mask=\'fh\': the mask dataset {data_dir!r} stores no FH '
              f'map (it stores {stored}); use config.data.mask=gt|user|grid, or '
              'recompute it with --fh_scales']
    if base.is_number(scale) and scale != -1 and float(scale) not in scales:
      return [f'config.data.fh_scale={scale!r}: the mask dataset {data_dir!r} holds FH '
              f'scales {[f"{s:g}" for s in scales]} only; set config.data.fh_scale to '
              'one of them (or -1: one per example), or recompute the masks at that '
              'scale']
    return []

  def quality_rows(self, manifest, grids):
    del grids
    fh = {e['name']: e for e in manifest.get('fh') or []}
    rows = []
    for name in self.abo_names(manifest.get('mask_names', [])):
      e = fh.get(name)
      rows.append((name, {} if e is None else {
          'scale': e['scale'], 'min_size': e['min_size'], 'sigma': e['sigma']}))
    return rows


KIND = Felzenszwalb()
