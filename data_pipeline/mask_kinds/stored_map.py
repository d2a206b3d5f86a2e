"""A kind whose one map the precompute stores under the kind's own name ('gt', 'user')."""

from data_pipeline.mask_kinds import base


class SingleStoredMap(base.MaskKind):
  """The map named `name` in the records; `what` says in errors how it is made."""
  what = ''   # e.g. 'GT', for "recompute the dataset with GT masks"

  def owns(self, name):
    return name == self.name

  def choices(self, manifest, data_config):
    stored = list(manifest.get('mask_names', []))
    if self.name not in stored:
      raise ValueError(f'config key data.mask={self.name!r}, but the mask dataset'
                       f' {base.read(data_config, "dir")!r} stores only {stored};'
                       ' choose one of those (or mask=grid), or recompute the'
                       ' dataset with that map')
    return [self.name]

  def check_dataset(self, data_config, manifest):
    stored = list(manifest.get('mask_names', []))
    if self.name in stored:
      return []
    return [f'config.data.mask={self.name!r}: the mask dataset'
            f' {base.read(data_config, "dir")!r} stores no {self.name!r} map (it stores'
            f' {stored}); choose one of those, or grid, or recompute the dataset with'
            f' {self.what} masks']
