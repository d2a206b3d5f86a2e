"""'grid': DetCon's n x n spatial heuristic (Sec. 3.2), made in the pipeline; nothing stored.

The grid "divide[s] the image" (n = config.data.grid_size) and, like any
mask, is then transformed with the view's crop (Sec. 3.1), so it is laid
over the ORIGINAL image at full resolution (augment.grid_label_map) and a
crop shows only some cells. mask_quality.py scores grids of several sizes
on the fly (--grids; quality.grid_label_map, its numpy twin).
"""

import functools

from data_pipeline.mask_kinds import base


class Grid(base.MaskKind):
  name = 'grid'
  stored = False
  num_ids_without_manifest = 'data.grid_size'

  def num_ids(self, manifest, data_config):
    del manifest
    return int(base.read(data_config, 'grid_size')) ** 2

  def labels_fn(self, data_config):
    from data_pipeline import augment  # pylint: disable=g-import-not-at-top  # TensorFlow.
    from data_pipeline import tf_setup  # pylint: disable=g-import-not-at-top
    tf = tf_setup.import_tensorflow()
    n = int(base.read(data_config, 'grid_size'))

    def fn(image, labels):
      del labels
      shape = tf.shape(image)
      return augment.grid_label_map(shape[0], shape[1], n)
    return fn

  def check(self, data_config):
    n = base.read(data_config, 'grid_size')
    if not base.is_number(n, integer=True) or n < 1:
      return [f'config.data.grid_size={n!r}: must be >= 1 (an integer)']
    return []

  def quality_rows(self, manifest, grids):
    del manifest
    return [(f'grid_{n}x{n}', {'grid_size': n}) for n in grids]

  def quality_labels(self, name, extra, maps, shape):
    del name, maps
    return _grid(tuple(shape), extra['grid_size'])


@functools.lru_cache(maxsize=64)
def _grid(shape, n):
  from data_pipeline.masks import quality  # pylint: disable=g-import-not-at-top
  return quality.grid_label_map(*shape, n)


KIND = Grid()
