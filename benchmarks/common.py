"""What the benchmark scripts share: test photos, the machine line, the table file, a compiled step."""

import functools
import os
import platform
import sys

import numpy as np

# scikit-image's bundled RGB photos (some may be missing offline) and
# ImageNet-like sizes (height, width) to resize them to.
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
          'hubble_deep_field', 'motorcycle', 'retina')
SHAPES = ((375, 500), (500, 375), (333, 500), (375, 500), (400, 500), (500, 400))


def photos():
  """The bundled RGB photos as uint8 arrays, in PHOTOS order."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  out = []
  for name in PHOTOS:
    try:
      img = (skimage.data.stereo_motorcycle()[0] if name == 'motorcycle'
             else getattr(skimage.data, name)())
    except Exception:  # pylint: disable=broad-except  # Not bundled offline.
      continue
    if img.ndim == 3 and img.shape[-1] == 3:
      out.append(np.asarray(img, np.uint8))
  return out


def machine_line():
  return (f'Machine: {platform.node()} ({platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPU cores), Python {platform.python_version()}.')


def write_table(text, out):
  """Prints the table and writes it to `out` (if given), creating its folder."""
  print(text)
  if out:
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
      f.write(text)


def own_flags_parser(flag_values):
  """app.run's flags_parser for a script with its own FlagValues.

  The script's flags first (so tests can import it beside modules that
  define the same names on absl's global FLAGS), then absl's own (logging)
  from what is left; --help prints the script's flags.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  def parse(argv):
    rest = flag_values(argv, known_only=True)
    if {'-h', '--help', '--helpshort', '--helpfull'} & set(rest[1:]):
      print(flag_values.main_module_help())
      sys.exit(0)
    return app.parse_flags_with_usage(rest)

  return parse


def precolored(batch):
  """The batch with float views already ImageNet-normalised, as color_on='host' ships them.

  The step's colour recipe passes float views through, so timing a step fed
  these against one fed the uint8 views gives the recipe's cost.
  """
  from dense_ssl.ops import color  # pylint: disable=g-import-not-at-top
  mean, std = np.asarray(color.IMAGENET_MEAN), np.asarray(color.IMAGENET_STD)
  return {k: ((v.astype(np.float32) / 255 - mean) / std).astype(np.float32)
          if k.endswith('/image') else v for k, v in batch.items()}


def compiled_step(config, with_probes):
  """(step(state) -> state, state, probes) of the trainer's step on one fixed batch."""
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import online_eval, optim, train  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh()
  method = method_lib.Method(config)
  probes = None
  if with_probes:
    probes = online_eval.OnlineProbes.from_config(
        config, input_pipeline.read_manifest(config.data.dir), method.passes)
    if probes is None:
      raise SystemExit(f'{config.data.dir} offers no probe target (labels or class maps)')
  tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 1000, 10))
  local = next(input_pipeline.make_pretrain_iterator(
      config.data, global_batch_size=config.batch_size, seed=0, start_step=0,
      process_index=0, process_count=1, num_local_devices=jax.local_device_count(),
      probe_targets=with_probes))
  state = train.init_state(method, tx, config, local, mesh, probes=probes)
  step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh, seed=config.seed, data_config=config.data,
                                  probes=probes)
  hyper = optim.step_hyperparameters(config, 1000, 10)(100)
  batch = train.global_batch(local, mesh)
  return (lambda s: step(s, batch, hyper)), state, probes
