"""The interface of a mask kind (config.data.mask), documented once.

Pure Python at import time: the config checks and the objectives import the
registry without TensorFlow. A kind that makes its maps in the pipeline
imports TensorFlow inside `labels_fn`.
"""

from data_pipeline import config_rules
from data_pipeline import view_config

read = view_config.read   # The kinds read config.data through the one reader.
is_number = config_rules.is_number   # config_check's rule, for the kinds' checks.


class MaskKind:
  """One value of config.data.mask: what is stored, read, checked and scored.

  Subclasses set `name` and `stored` and override what differs:
    stored            True: the precompute writes its maps into the records
                      (record_names / label_maps); False: `labels_fn` makes
                      them on the fly and nothing is stored.
    record_names      the names of the maps the precompute stores for it.
    label_maps        the precompute's maps of one input, {name: int [H, W]}.
    expensive         computed last by the precompute (a cheap map that is
                      missing fails the input first).
    choices           the stored maps a view draws from (one picked per example).
    num_ids           how many ids its maps can hold (the view masks' dtype).
    labels_fn         in the pipeline: (image, stored labels) -> the labels.
    ships_view_masks  True: every view ships view{k}/mask (its labels
                      cropped with it); False: the views carry no mask
                      (the training step makes them: 'discovered').
    ships_whole_view  True: the batch also holds whole/image, the whole
                      image resized to view_config.discovery_view_size, no
                      crop, flip or colour (Odin's view for mask discovery).
    check             the config's problems with this kind (no data read).
    check_dataset     the config's problems against a dataset's manifest.
    abo_names         its stored maps that are scored against GT (ABO).
    quality_rows      its rows of data_pipeline/mask_quality.py's table.
    quality_labels    the label map a quality row scores, from the record's maps.
  """
  name = None
  stored = True
  expensive = False
  ships_view_masks = True
  ships_whole_view = False

  # ---------------------------------------------------------- precompute ---

  def record_names(self, job):
    """Names of the maps the precompute stores for this kind.

    `job`: what the precompute's flags ask to store (plan.plan_job): dict(fh=
    ((scale, min_size, name), ...), gt=bool, classes=bool, user_masks=str).
    """
    del job
    return []

  def label_maps(self, item, rgb, task):
    """{name: int label map [H, W]} of one input (`task`: a shards.ShardTask).

    Raises ImageFailure when the input cannot have its maps.
    """
    del item, rgb, task
    return {}

  def owns(self, name):
    """True when the stored map `name` belongs to this kind."""
    del name
    return False

  # ------------------------------------------------------------ pipeline ---

  def choices(self, manifest, data_config):
    """The stored map names a view draws from ([] when made on the fly)."""
    del manifest, data_config
    return []

  def num_ids(self, manifest, data_config):
    """Ids its maps can hold (largest + 1), or None when unknown (int32)."""
    del data_config
    if manifest.get('max_label_id') is None:
      return None
    return int(manifest['max_label_id']) + 1

  # Where num_ids comes from when no manifest can be read ('' : it cannot).
  num_ids_without_manifest = ''

  def labels_fn(self, data_config):
    """fn(image uint8 [H, W, 3], stored labels int32 [H, W] or None) -> int32 [H, W]."""
    del data_config
    return lambda image, labels: labels

  # -------------------------------------------------------------- checks ---

  def check(self, data_config):
    """Problems of config.data for this kind, one line each (config_check's style)."""
    del data_config
    return []

  def check_dataset(self, data_config, manifest):
    """Problems of config.data against the manifest of data.dir, one line each."""
    del data_config, manifest
    return []

  # ------------------------------------------------------------- quality ---

  def abo_names(self, mask_names):
    """Its stored maps among `mask_names` whose ABO with GT is measured."""
    return [n for n in mask_names if self.owns(n)]

  def quality_rows(self, manifest, grids):
    """[(row name, extra fields)] of mask_quality.py's table for this kind."""
    del grids
    return [(n, {}) for n in self.abo_names(manifest.get('mask_names', []))]

  def quality_labels(self, name, extra, maps, shape):
    """The int label map [H, W] row `name` scores: the stored map by default."""
    del extra, shape
    return maps[name]
