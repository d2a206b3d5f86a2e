r"""The device-side colour recipe's share of the training step.

  python -m benchmarks.color_share                       # DetCon-B, demo size, CPU
  python -m benchmarks.color_share --depth=50 --image_size=224 --batch_size=256 \
      --dtype=bfloat16                                   # on an accelerator

Two compiled steps of the same config on the same views: one fed uint8
views (the step colours and normalises them first: data.color_on='device',
dense_ssl/ops/color.py) and one fed float32 views that are already
normalised (the step's colour recipe passes them through). Timed
round-robin in one run (--rounds rounds of --steps steps each, alternating),
median step; share = (t_uint8 - t_float) / t_uint8. Prints a table and
writes it to --out.
"""

import functools
import time

from absl import app
from absl import flags

from benchmarks import common
from data_pipeline import tf_setup

_CONFIG = flags.DEFINE_string('config', 'detcon_b', 'configs/<name>.py (demo preset).')
_DEPTH = flags.DEFINE_integer('depth', 18, 'ResNet depth.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 96, 'View size.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Global batch.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'config.model.dtype.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per variant per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Round-robin rounds.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/color_share.md', 'Table file.')


def main(argv):
  del argv
  tf_setup.hide_accelerators()
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim, train  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{_CONFIG.value}').get_config('demo')
  c.model.depth, c.model.dtype = _DEPTH.value, _DTYPE.value
  c.data.image_size, c.batch_size = _IMAGE_SIZE.value, _BATCH.value
  mesh = train.make_mesh()
  d, s, b = jax.local_device_count(), _IMAGE_SIZE.value, _BATCH.value
  r = np.random.default_rng(0)
  u8 = {}
  for v in ('view1', 'view2'):
    u8[f'{v}/image'] = r.integers(0, 256, (d, b // d, s, s, 3)).astype(np.uint8)
    ids = r.integers(0, 8, (d, b // d, 4, 4))
    u8[f'{v}/mask'] = np.repeat(np.repeat(ids, s // 4, 2), s // 4, 3).astype(np.uint8)
    side = np.sqrt(r.uniform(0.2, 1.0, (d, b // d)))
    y0, x0 = r.uniform(0, 1 - side), r.uniform(0, 1 - side)
    u8[f'{v}/box'] = np.stack([y0, x0, y0 + side, x0 + side], -1).astype(np.float32)
    u8[f'{v}/flip'] = r.integers(0, 2, (d, b // d)).astype(np.int32)
  f32 = common.precolored(u8)   # Already "coloured" and normalised: passed through.
  method = method_lib.Method(c)
  schedule = optim.learning_rate_schedule(c, 1000, 10)
  tx = optim.make_optimizer(c, schedule)
  runs = {}
  for name, local in (('uint8 views, colour in the step', u8),
                      ('float views, no colour in the step', f32)):
    state = train.init_state(method, tx, c, local, mesh)
    compiled = train.compile_train_step(method, functools.partial(optim.make_optimizer, c),
                                        mesh, seed=c.seed, data_config=c.data)
    hyper = optim.step_hyperparameters(c, 1000, 10)(100)
    step = lambda s, b, f=compiled, h=hyper: f(s, b, h)  # Bound now (loop).
    batch = train.global_batch(local, mesh)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    runs[name] = dict(step=step, state=state, batch=batch, times=[])
  for _ in range(_ROUNDS.value):
    for run in runs.values():
      for _ in range(_STEPS.value):
        t = time.perf_counter()
        run['state'], m = run['step'](run['state'], run['batch'])
        jax.block_until_ready(m)
        run['times'].append(time.perf_counter() - t)
  med = {k: float(np.median(v['times'])) for k, v in runs.items()}
  (a, ta), (_, tb) = list(med.items())
  lines = [f'# Colour recipe share of the {_CONFIG.value} step', '', common.machine_line(),
           f'{jax.devices()[0].device_kind}, {d} device(s); ResNet-{_DEPTH.value}, '
           f'{s} px, batch {b}, {_DTYPE.value}; median of {_ROUNDS.value} x {_STEPS.value} '
           'steps each, alternating.', '',
           '| variant | s/step | images/s |', '|---|---|---|']
  for k, t in med.items():
    lines.append(f'| {k} | {t:.4f} | {b / t:.1f} |')
  lines += ['', f'Colour recipe share of the step: {(ta - tb) / ta:.1%} ({a}).']
  common.write_table('\n'.join(lines) + '\n', _OUT.value)


if __name__ == '__main__':
  app.run(main)
