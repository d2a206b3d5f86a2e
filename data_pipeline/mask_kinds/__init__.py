"""The mask kinds: the values of config.data.mask, one module each.

  mask_kinds.names()                      # ('fh', 'gt', 'user', 'grid', 'discovered')
  kind = mask_kinds.get(config.data)      # the kind config.data.mask names
  kind.choices(manifest, config.data)     # stored maps a view draws from
  mask_kinds.check(config.data)           # config problems, one line each

A kind owns everything the code base does with its masks (the interface is
documented once, in base.MaskKind): whether the precompute stores its maps,
under which names (`record_names`, written by `label_maps`); which stored
maps a view draws from (`choices`, whose errors name the config key and
data.dir); how many ids its maps can hold (`num_ids`: the view masks'
dtype); how a view gets its labels (`labels_fn`: the stored map, or made on
the fly like 'grid'); what the batch carries for it (`ships_view_masks`,
`ships_whole_view`: 'discovered' ships no view masks but the whole image,
whole/image, from which the training step discovers them); its config
checks (`check`, `check_dataset`, called by dense_ssl/config_check.py and
DetCon's validate) and its part in the mask quality table (`abo_names`,
`quality_rows`, `quality_labels`; a kind with nothing stored and no map
made on the host, like 'discovered', has no row).

Adding a kind
-------------
  1. One module here: a base.MaskKind subclass and `KIND = MyKind()`. A kind
     made on the fly sets `stored = False` and overrides `labels_fn` and
     `num_ids` (see grid.py; discovered.py makes none on the host and
     ships the whole image instead); a stored kind overrides `record_names`,
     `label_maps`, `owns` and `choices` (see user.py).
  2. Its line in REGISTRY below (the order is the order its maps are
     stored in a record and listed in the manifest).
  3. Its tests: its check rejects a bad value naming the config key, and a
     batch of it comes out of input_pipeline.make_pretrain_dataset.
A stored kind also needs the precompute flag that asks for it
(data_pipeline/precompute_masks.py, masks/plan.Params) and its entry in the
`job` dict that plan.plan_job hands to `record_names`.
"""

from data_pipeline.mask_kinds import discovered
from data_pipeline.mask_kinds import fh
from data_pipeline.mask_kinds import grid
from data_pipeline.mask_kinds import gt
from data_pipeline.mask_kinds import user
from data_pipeline import view_config

read = view_config.read

# name -> kind, in the order a record stores the maps (fh, gt (+ class), user);
# the kinds that store nothing after them.
REGISTRY = {k.name: k for k in (fh.KIND, gt.KIND, user.KIND, grid.KIND, discovered.KIND)}


def names():
  """The values config.data.mask may take."""
  return tuple(REGISTRY)


def get(data_config):
  """The kind config.data.mask names; ValueError naming the key otherwise."""
  kind = read(data_config, 'mask')
  if kind not in REGISTRY:
    raise ValueError(f'config key data.mask={kind!r}: use one of {names()}')
  return REGISTRY[kind]


def stored():
  """The kinds whose maps the precompute stores, in record order."""
  return [k for k in REGISTRY.values() if k.stored]


def owner(name):
  """The kind a stored map `name` belongs to, or None (e.g. 'class')."""
  for k in stored():
    if k.owns(name):
      return k
  return None


def check(data_config):
  """The problems of config.data.mask and its kind's keys, one line each."""
  try:
    kind = read(data_config, 'mask')
    if kind not in REGISTRY:
      return [f'config.data.mask={kind!r}: choose one of {"|".join(names())}']
    return REGISTRY[kind].check(data_config)
  except view_config.MissingConfigKey as e:   # A problem like the others.
    return [str(e)]


def check_dataset(data_config, manifest):
  """The problems of the masks config.data asks for, against the dataset's manifest."""
  kind = REGISTRY.get(read(data_config, 'mask'))
  return [] if kind is None else kind.check_dataset(data_config, manifest)
