"""Checks a pretraining config before anything starts; reports every problem at once.

  problems = config_check.problems(config)          # [] when the config is fine
  config_check.validate(config)                     # raises ConfigError listing them

One line per problem, each naming the full config key and what to do:

  config.optimizer.base_lr=-0.5: must be > 0
  config.data.image_size=72: must be a multiple of 32 (the ResNet's C5 stride), e.g. 64
  config.data.fh_scale=1000: the mask dataset '/data/masks' holds FH scales [500.0] only; ...

What is checked: the optimiser (learning rate > 0, weight decay >= 0, ...),
the EMA, the schedule and batch, the model, the data (image sizes the ResNet
can take, crop ranges, every probability in [0, 1], ...), the objectives
(unknown names, weights, at most one global objective) and each ACTIVE
objective's own subtree through its `validate` hook
(`Objective.validate` of dense_ssl/objectives/base.py, overridden in the objective's
file: adding an objective stays one file). With `check_data` (default), the
mask dataset at config.data.dir is read (its manifest only) and the masks the
config asks for (data.mask, data.fh_scale) must be stored there. The mask
checks are the kinds' own (data_pipeline/mask_kinds/: `check`,
`check_dataset`).

dense_ssl.main calls it before joining other processes or touching devices or
data; dense_ssl.train.train_and_evaluate calls it first thing too (also with
the device count).
"""

from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline import view_config
from data_pipeline.view_config import VIEW_MODES
from dense_ssl import discovery
from dense_ssl import objectives as objectives_lib
from dense_ssl import optim
from data_pipeline import config_rules
from data_pipeline.config_rules import check, is_number
from dense_ssl.models import resnet

DTYPES = ('float32', 'bfloat16', 'float16')
C5_STRIDE = resnet.C5_STRIDE


class ConfigError(ValueError):
  """The config has problems; `problems` holds one line each."""

  def __init__(self, problems):
    self.problems = list(problems)
    n = len(self.problems)
    super().__init__(
        f'the config has {n} problem{"s" * (n != 1)} (fix the --config.* '
        'overrides or the config file):\n' + '\n'.join(f'  {p}' for p in self.problems))


def _value(config, dotted, default=None):
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return default
  return node


def _pair(key, value, *, low, high=None, what='range'):
  """A (lo, hi) range: two numbers, lo <= hi, both > low (and <= high)."""
  try:
    lo, hi = value
  except (TypeError, ValueError):
    return [f'config.{key}={value!r}: must be a pair (lo, hi)']
  if not (is_number(lo) and is_number(hi)):
    return [f'config.{key}={value!r}: must be a pair of numbers (lo, hi)']
  if lo > hi:
    return [f'config.{key}={value!r}: {what} is not ordered: needs lo <= hi']
  if lo <= low or (high is not None and hi > high):
    bounds = f'in ({low:g}, {high:g}]' if high is not None else f'> {low:g}'
    return [f'config.{key}={value!r}: both ends must be {bounds}']
  return []


def _choice(key, value, choices):
  if value not in choices:
    return [f'config.{key}={value!r}: choose one of {"|".join(map(str, choices))}']
  return []


def _image_size(key, value):
  return config_rules.image_size(key, value, C5_STRIDE)


def _training_problems(config, num_devices):
  p = []
  batch = config.get('batch_size')
  p += check('batch_size', batch, '>= 1', integer=True)
  if num_devices and not p and batch % num_devices:
    p.append(f'config.batch_size={batch}: must be divisible by the {num_devices} '
             f'devices; choose a multiple of {num_devices}')
  total_steps = config.get('total_steps')
  p += check('total_steps', total_steps, '>= 0', integer=True)
  if is_number(total_steps) and total_steps == 0:
    p += check('total_epochs', config.get('total_epochs'), '> 0')
  p += check('warmup_epochs', config.get('warmup_epochs'), '>= 0')
  for key in ('log_every_steps', 'ckpt_every_steps', 'keep_checkpoints'):
    if key in config:
      p += check(key, config[key], '>= 1', integer=True)
  if 'seed' in config and not is_number(config.seed, integer=True):
    p.append(f'config.seed={config.seed!r}: must be an integer')

  o = config.get('optimizer') or {}
  p += _choice('optimizer.name', o.get('name'), optim.OPTIMIZERS)
  p += check('optimizer.base_lr', o.get('base_lr'), '> 0')
  p += check('optimizer.weight_decay', o.get('weight_decay'), '>= 0')
  if o.get('name') in ('lars', 'sgd'):
    p += check('optimizer.momentum', o.get('momentum'), 'in [0, 1)')
  if o.get('name') == 'lars':
    p += check('optimizer.eta', o.get('eta'), '> 0')
  if o.get('name') == 'adamw':
    p += check('optimizer.b1', o.get('b1'), 'in [0, 1)')
    p += check('optimizer.b2', o.get('b2'), 'in [0, 1)')

  ema = config.get('ema') or {}
  p += check('ema.base', ema.get('base'), 'in [0, 1]')
  p += _choice('ema.schedule', ema.get('schedule'), optim.EMA_SCHEDULES)

  m = config.get('model') or {}
  p += _choice('model.depth', m.get('depth'), sorted(resnet.RESNET_SPECS))
  for key in ('width_multiplier', 'projector_hidden', 'projector_dim', 'predictor_hidden'):
    p += check(f'model.{key}', m.get(key), '>= 1', integer=True)
  p += _choice('model.dtype', m.get('dtype'), DTYPES)
  return p


def _eval_problems(config):
  """The online probes' optimiser and the held-out evaluation (dense_ssl/online_eval.py)."""
  p = []
  if not isinstance(config.get('online_eval'), bool):
    p.append(f'config.online_eval={config.get("online_eval")!r}: must be True or False')
  o = config.get('probe_optimizer') or {}
  p += check('probe_optimizer.lr', o.get('lr'), '> 0')
  p += check('probe_optimizer.weight_decay', o.get('weight_decay'), '>= 0')
  every = config.get('eval_every_steps')
  p += check('eval_every_steps', every, '>= 0', integer=True)
  if is_number(every) and every > 0:
    if not config.get('eval_data_dir'):
      p.append(f'config.eval_every_steps={every}: needs config.eval_data_dir, a held-out '
               'mask dataset with class maps or image labels (python -m '
               'data_pipeline.precompute_masks --split_name=val ...), or set it to 0')
    e = config.get('eval') or {}
    p += _choice('eval.feature', e.get('feature'), ('c2', 'c3', 'c4', 'c5', 'c4+c5'))
    for key in ('probe_steps', 'batch_size', 'probe_train_images', 'knn_k'):
      p += check(f'eval.{key}', e.get(key), '>= 1', integer=True)
    for key in ('probe_lr', 'knn_temperature'):
      p += check(f'eval.{key}', e.get(key), '> 0')
  return p


def _data_problems(config):
  d = config.get('data') or {}
  p = []
  p += _image_size('data.image_size', d.get('image_size'))
  modes = d.get('view_modes')
  if modes is None or isinstance(modes, str) or len(modes) < 2:
    p.append(f'config.data.view_modes={modes!r}: give (at least) two views, e.g. '
             "('crop', 'crop')")
    n_views = 2
  else:
    n_views = len(modes)
    for i, mode in enumerate(modes):
      if mode not in VIEW_MODES:
        p.append(f'config.data.view_modes={tuple(modes)!r}: entry {i} ({mode!r}) must '
                 f'be one of {"|".join(VIEW_MODES)}')
  if d.get('view_sizes') is not None:
    for i, size in enumerate(d.view_sizes):
      p += _image_size(f'data.view_sizes[{i}]', size)
  p += _pair('data.crop_area', d.get('crop_area'), low=0, high=1,
             what='the area range')
  if d.get('view_crop_areas') is not None:
    for i, area in enumerate(d.view_crop_areas):
      p += _pair(f'data.view_crop_areas[{i}]', area, low=0, high=1,
                 what='the area range')
  p += _pair('data.crop_aspect', d.get('crop_aspect'), low=0,
             what='the aspect-ratio range')
  p += _pair('data.blur_sigma', d.get('blur_sigma'), low=0,
             what='the sigma range')
  for key in ('color_jitter_prob', 'grayscale_prob'):
    if key in d:
      p += check(f'data.{key}', d[key], 'in [0, 1]')
  for key in ('blur_prob', 'solarize_prob'):
    if key not in d:
      continue
    values = d[key]
    if is_number(values):
      values = (values,) * n_views
    try:
      values = tuple(values)
    except TypeError:
      p.append(f'config.data.{key}={d[key]!r}: give one probability per view')
      continue
    if len(values) < n_views:
      p.append(f'config.data.{key}={values!r}: has {len(values)} entries for '
               f'{n_views} views (config.data.view_modes); give one per view')
    for i, v in enumerate(values):
      p += check(f'data.{key}[{i}]', v, 'in [0, 1]')
  for key in ('brightness', 'contrast', 'saturation'):
    if key in d:
      p += check(f'data.{key}', d[key], '>= 0')
  if 'hue' in d and not (is_number(d.hue) and 0 <= d.hue <= 0.5):
    p.append(f'config.data.hue={d.hue!r}: must be in [0, 0.5]')
  p += mask_kinds.check(d)   # data.mask and its kind's own keys.
  for key in ('shuffle_buffer', 'file_parallel_reads'):
    if key in d:
      p += check(f'data.{key}', d[key], '>= 1', integer=True)
  n_local = d.get('num_local_crops')
  p += check('data.num_local_crops', n_local, '>= 0', integer=True)
  if is_number(n_local, integer=True) and n_local > 0:
    local = d.get
    p += _image_size('data.local_crop_size', local('local_crop_size'))
    p += _pair('data.local_crop_area', local('local_crop_area'), low=0, high=1,
               what='the area range')
    for key in ('local_blur_prob', 'local_solarize_prob'):
      p += check(f'data.{key}', local(key), 'in [0, 1]')
  return p


def _discovery_problems(config, objective_problems):
  """config.discovery, when data.mask='discovered' (dense_ssl/discovery.py)."""
  d, data = config.get('discovery') or {}, config.get('data') or {}
  if data.get('mask') != discovery.MASK_KIND:
    return []
  p = check('discovery.num_clusters', d.get('num_clusters'), '>= 2', integer=True)
  p += check('discovery.num_iterations', d.get('num_iterations'), '>= 1', integer=True)
  p += _choice('discovery.feature', d.get('feature'), sorted(resnet.FEATURE_STRIDES))
  p += check('discovery.quality_every_steps', d.get('quality_every_steps'), '>= 0',
             integer=True)
  p += check('discovery.quality_images', d.get('quality_images'), '>= 1', integer=True)
  stride = resnet.FEATURE_STRIDES.get(d.get('feature'))
  sizes_ok = all(is_number(data.get(k), integer=True)
                 for k in ('discovery_view_size', 'image_size'))
  size = view_config.discovery_view_size(data) if sizes_ok else None
  if not p and size and stride and (size // stride) ** 2 < d.num_clusters:
    p.append(f'config.discovery.num_clusters={d.num_clusters}: the {d.feature} map of the '
             f'{size} px whole view has only {(size // stride) ** 2} cells; lower it or '
             'raise config.data.discovery_view_size')
  if not objective_problems and not any(
      o.uses_target for o, _ in objectives_lib.active(config)):
    p.append("config.data.mask='discovered': the discovery network is the EMA target "
             'network, and no active objective has one (DetCon-S, SimCLR); use DetCon-B '
             '(configs/odin.py) or another objective with a target, or another data.mask')
  return p


def _objective_problems(config):
  subtrees = config.get('objectives') or {}
  registry = objectives_lib.REGISTRY
  p = []
  unknown = sorted(set(subtrees) - set(registry))
  for name in unknown:
    p.append(f'config.objectives.{name}: unknown objective; known: '
             f'{"|".join(sorted(registry))}')
  active = []
  for name in registry:
    if name not in subtrees:
      continue
    weight = _value(subtrees[name], 'weight')
    bad = check(f'objectives.{name}.weight', weight, '>= 0')
    if bad:
      p += [bad[0] + ' (0 = off)']
    elif weight:
      active.append(name)
  if not active and not p:
    p.append('config.objectives: every weight is 0; give at least one objective a '
             'weight, e.g. --config.objectives.byol.weight=1.0')
  globals_on = [n for n in active if registry[n].is_global]
  if len(globals_on) > 1:
    p.append(f'config.objectives: {len(globals_on)} global objectives are on '
             f'({", ".join(globals_on)}); at most one: set the weight of the others to 0')
  for name in active:
    p += registry[name].validate(config)
  return p


def _dataset_problems(config):
  """The masks the config asks for, against the dataset's manifest."""
  # Imported here: it brings TensorFlow, which the pure checks do not need.
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  d = config.get('data') or {}
  data_dir = d.get('dir')
  if not data_dir:
    return [f'config.data.dir={data_dir!r}: set it to a mask dataset directory (written '
            'by python -m data_pipeline.precompute_masks)']
  try:
    if not input_pipeline.tf.io.gfile.isdir(data_dir):
      return [f'config.data.dir={data_dir!r}: no such directory; point it at a mask '
              'dataset (written by python -m data_pipeline.precompute_masks)']
    manifest = input_pipeline.read_manifest(data_dir)
  except (ValueError, OSError) as e:
    return [f'config.data.dir={data_dir!r}: {e}']
  except Exception as e:  # pylint: disable=broad-except  # tf.errors on gs://
    return [f'config.data.dir={data_dir!r}: cannot read its manifest.json '
            f'({type(e).__name__}: {e})']
  p = []
  if not int(manifest.get('num_examples', 0) or 0):
    p.append(f'config.data.dir={data_dir!r}: the mask dataset has no examples')
  split = d.get('split')
  if manifest.get('split', split) != split:
    p.append(f'config.data.split={split!r}: {data_dir} holds split '
             f'{manifest["split"]!r}')
  p += mask_kinds.check_dataset(d, manifest)
  quality = _value(config, 'discovery.quality_every_steps')
  if (d.get('mask') == discovery.MASK_KIND and is_number(quality) and quality > 0
      and records.GT_MASK not in (manifest.get('mask_names') or [])):
    p.append(f'config.discovery.quality_every_steps={quality}: the discovered masks are '
             f'scored against GT instances, and config.data.dir={data_dir!r} stores none '
             '(a demo or coco/2017_panoptic precompute does); set it to 0')
  every, eval_dir = config.get('eval_every_steps'), config.get('eval_data_dir')
  if is_number(every) and every > 0 and eval_dir:
    # The held-out dense probe trains on data.dir's class maps, scores on eval_data_dir's.
    try:
      eval_manifest = input_pipeline.read_manifest(eval_dir)
    except Exception as e:  # pylint: disable=broad-except  # OSError, tf.errors, ValueError
      return p + [f'config.eval_data_dir={eval_dir!r}: cannot read its manifest.json '
                  f'({type(e).__name__}: {e})']
    # The dense probe needs class maps in both, kNN image labels in both.
    both = lambda f: f(manifest) and f(eval_manifest)
    if not (both(lambda m: 'class' in (m.get('mask_names') or []))
            or both(lambda m: m.get('label_names'))):
      p.append(f'config.eval_data_dir={eval_dir!r}: the held-out evaluation '
               '(config.eval_every_steps) needs class maps (the dense probe) or image '
               f'labels (kNN) in both it and config.data.dir={data_dir!r}, and they '
               'share neither; use such datasets or set config.eval_every_steps=0')
  return p


def problems(config, *, num_devices=None, check_data=True):
  """Every problem of `config`, one line each ([] if none).

  num_devices: also check that the batch divides over them. check_data: read
  the manifest of config.data.dir and check the masks asked for are there.
  """
  p = _training_problems(config, num_devices) + _eval_problems(config)
  from_objectives = _objective_problems(config)
  # An objective's hook may say more about a shared key (DetCon on data.mask):
  # its line replaces the general one.
  said = {line.split(':', 1)[0].split('=', 1)[0] for line in from_objectives}
  p += [line for line in _data_problems(config)
        if line.split(':', 1)[0].split('=', 1)[0] not in said]
  p += from_objectives
  p += _discovery_problems(config, from_objectives)
  if check_data:
    p += _dataset_problems(config)
  # One line per problem: drop exact repeats (two rules can meet on one key).
  return list(dict.fromkeys(p))


def validate(config, **kwargs):
  """Raises ConfigError (a ValueError) listing every problem; see `problems`."""
  found = problems(config, **kwargs)
  if found:
    raise ConfigError(found)
