r"""Step time of DetCon-B vs BYOL, and the share of step time spent on data.

  python -m benchmarks.step_time --data_dir=out/demo/masks            # CPU demo size
  python -m benchmarks.step_time --data_dir=MASKS --depth=50 --image_size=224 \
      --batch_size=256                                                # accelerator

Part 1 times the compiled train step alone (the same device-resident batch
every step, after compile and warm-up) for each method on the same model,
batch and machine; DetCon-B / BYOL is the price of mask pooling, 16 ids per
view and the gathered contrastive loss (the paper counts +11.6% FLOPs).
Part 2 runs the real trainer (real tf.data pipeline) for --trainer_steps
steps with DetCon-B and reports the fraction of wall time it waited for
data. Prints a markdown table and writes it to --out.
"""

import functools
import os
import platform
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import common
from data_pipeline import tf_setup

_DATA_DIR = flags.DEFINE_string('data_dir', 'out/demo/masks', 'Mask dataset.')
_DEPTH = flags.DEFINE_integer('depth', 18, 'ResNet depth.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 96, 'View size.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Global batch.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per method (part 1).')
_TRAINER_STEPS = flags.DEFINE_integer('trainer_steps', 12, 'Steps of part 2 (0: skip).')
_METHODS = flags.DEFINE_list('methods', ['byol', 'detcon_b'], 'Configs (configs/<name>.py) to time.')
_MASK = flags.DEFINE_string('mask', 'fh', 'config.data.mask (fh | gt | user | grid).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/step_time.md', 'Table file.')


def bench_config(name):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{name}').get_config('demo')
  config.data.dir = _DATA_DIR.value
  config.data.mask = _MASK.value
  config.model.depth = _DEPTH.value
  config.data.image_size = _IMAGE_SIZE.value
  config.batch_size = _BATCH.value
  return config


def time_step(name):
  """Seconds per compiled step on a fixed batch (median of --steps)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim, train  # pylint: disable=g-import-not-at-top
  config = bench_config(name)
  mesh = train.make_mesh()
  method = method_lib.Method(config)
  schedule = optim.learning_rate_schedule(config, 1000, 10)
  tx = optim.make_optimizer(config, schedule)
  local = next(input_pipeline.make_pretrain_iterator(
      config.data, global_batch_size=config.batch_size, seed=0, start_step=0,
      process_index=0, process_count=1, num_local_devices=jax.local_device_count()))
  state = train.init_state(method, tx, config, local, mesh)
  compiled = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                      mesh, seed=config.seed, data_config=config.data)
  hyper = optim.step_hyperparameters(config, 1000, 10)(100)
  step = lambda s, b: compiled(s, b, hyper)
  batch = train.global_batch(local, mesh)
  t = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  state, m = step(state, batch)  # Warm-up.
  jax.block_until_ready(m)
  times = []
  for _ in range(_STEPS.value):
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return float(np.median(times)), compile_s


def data_wait_share():
  """Runs the real trainer briefly; returns its perf scalars."""
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  config = bench_config('detcon_b')
  config.total_steps = _TRAINER_STEPS.value
  config.log_every_steps = _TRAINER_STEPS.value
  config.ckpt_every_steps = 10**9
  with tempfile.TemporaryDirectory() as workdir:
    return train.train_and_evaluate(config, workdir)['metrics']


def main(argv):
  del argv
  tf_setup.hide_accelerators()
  import jax  # pylint: disable=g-import-not-at-top
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  rows, results = [], {}
  for name in _METHODS.value:
    sec, compile_s = time_step(name)
    results[name] = sec
    rows.append(f'| {name} | {sec:.3f} | {_BATCH.value / sec:.1f} | {compile_s:.1f} |')
    print(rows[-1], flush=True)
  lines = [
      f'# Step time: ResNet-{_DEPTH.value}, {_IMAGE_SIZE.value} px, global batch '
      f'{_BATCH.value}',
      '',
      f'Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), '
      f'JAX devices: {device}.',
      '',
      '| method | step time (s) | images/s | compile (s) |',
      '|---|---|---|---|',
      *rows,
  ]
  if 'byol' in results and 'detcon_b' in results:
    ratio = results['detcon_b'] / results['byol']
    lines += ['', f'DetCon-B / BYOL step time: **{ratio:.3f}** '
              f'({100 * (ratio - 1):+.1f}%; the paper counts +11.6% FLOPs).']
  if _TRAINER_STEPS.value:
    m = data_wait_share()
    if 'perf/data_wait_fraction' in m:
      lines += ['', f'Real trainer, DetCon-B, {_TRAINER_STEPS.value} steps: '
                f'{m["perf/step_time_s"]:.3f} s/step, '
                f'{m["perf/images_per_s"]:.1f} images/s, data wait '
                f'**{100 * m["perf/data_wait_fraction"]:.1f}%** of wall time.']
  text = '\n'.join(lines) + '\n'
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
