r"""Step-time overhead of each dense objective over plain BYOL, side by side.

  python -m benchmarks.dense_overhead                                   # CPU, demo size
  python -m benchmarks.dense_overhead --depth=50 --image_size=224 --batch_size=256

Every variant is the one method (dense_ssl/method.py) on the
same model, batch and machine: BYOL alone, and BYOL + one dense objective
(DetCon masks, LC pixels, SCRL boxes, ReSim-C4 / ReSim-FPN windows, CLoVE
context; ReSim-FPN also without its region head, as the official code
trains it). All are compiled first; then the timed steps run round-robin
(round r times every variant once, --rounds rounds of --steps steps), so
load drifts on the machine hit every variant alike; the median step is
reported. The LC paper calls its loss "minimal overhead", SCRL its boxes
"negligible"; the target here is at most +10% each. Synthetic views with
real crop geometry (random boxes, flips) and blocky masks: step time does
not depend on pixel values. Prints a markdown table and writes it to --out.
"""

import functools
import os
import platform
import time

from absl import app
from absl import flags

from benchmarks import common
from data_pipeline import tf_setup

_DEPTH = flags.DEFINE_integer('depth', 18, 'ResNet depth.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 96, 'View size.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Global batch.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per variant per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Round-robin rounds.')
_VARIANTS = flags.DEFINE_list(
    'variants', ['byol', 'detcon', 'lc', 'scrl', 'resim_c4', 'resim_fpn',
                 'resim_fpn_nohead', 'clove'],
    'byol and BYOL + these dense objectives (resim_fpn_nohead: ReSim-FPN without '
    'the region head, as the official code).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/dense_overhead.md', 'Table file.')

DENSE_WEIGHT = 0.1


def variant_config(variant):
  from configs import common  # pylint: disable=g-import-not-at-top
  name = variant.split('_')[0]
  weights = dict(byol=1.0)
  if name != 'byol':
    weights[name] = DENSE_WEIGHT
  c = common.apply_preset(common.base_config(variant, **weights), 'demo')
  if _DEPTH.value >= 50:
    # The objectives' paper-size heads from ResNet-50 on (the demo preset narrows them).
    c.objectives = common.base_config(variant, **weights).objectives
  c.model.depth = _DEPTH.value
  c.data.image_size = _IMAGE_SIZE.value
  c.batch_size = _BATCH.value
  c.data.mask = 'gt'
  if variant.startswith('resim_fpn'):
    c.objectives.resim.variant = 'fpn'
  if variant.endswith('_nohead'):
    c.objectives.resim.region_dim = 0
  return c


def synthetic_batch(num_devices, size, batch, seed=0):
  """[D, B/D, ...] views with random crops (area 0.2-1), flips, 4x4 block masks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  r = np.random.default_rng(seed)
  out = {}
  for v in ('view1', 'view2'):
    side = np.sqrt(r.uniform(0.2, 1.0, batch))
    y0, x0 = r.uniform(0, 1 - side), r.uniform(0, 1 - side)
    out[f'{v}/box'] = np.stack([y0, x0, y0 + side, x0 + side], -1).astype(np.float32)
    out[f'{v}/flip'] = r.integers(0, 2, batch).astype(np.int32)
    out[f'{v}/image'] = r.normal(size=(batch, size, size, 3)).astype(np.float32)
    ids = r.integers(0, 8, size=(batch, 4, 4))
    out[f'{v}/mask'] = np.repeat(np.repeat(ids, size // 4, 1), size // 4, 2).astype(np.int32)
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in out.items()}


def main(argv):
  del argv
  tf_setup.hide_accelerators()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim, train  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh()
  local = synthetic_batch(jax.local_device_count(), _IMAGE_SIZE.value, _BATCH.value)
  batch = train.global_batch(local, mesh)
  runs, compile_s = {}, {}
  for variant in _VARIANTS.value:
    config = variant_config(variant)
    method = method_lib.Method(config)
    schedule = optim.learning_rate_schedule(config, 1000, 10)
    tx = optim.make_optimizer(config, schedule)
    state = train.init_state(method, tx, config, local, mesh)
    compiled = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                        mesh, seed=config.seed, data_config=config.data)
    hyper = optim.step_hyperparameters(config, 1000, 10)(100)
    step = lambda s, b, f=compiled, h=hyper: f(s, b, h)  # Bound now (loop).
    t = time.perf_counter()
    for _ in range(2):  # Compile + warm-up.
      state, m = step(state, batch)
      jax.block_until_ready(m)
    compile_s[variant] = time.perf_counter() - t
    runs[variant] = [step, state, []]
    print(f'compiled {variant} in {compile_s[variant]:.1f} s', flush=True)
  for r in range(_ROUNDS.value):
    for variant, run in runs.items():
      step, state, times = run
      for _ in range(_STEPS.value):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
      run[1] = state
    print(f'round {r + 1}/{_ROUNDS.value} done', flush=True)
  med = {v: float(np.median(run[2])) for v, run in runs.items()}
  base = med.get('byol')
  rows = []
  for v, sec in med.items():
    over = f'{100 * (sec / base - 1):+.1f}%' if base and v != 'byol' else '-'
    label = 'BYOL' if v == 'byol' else f'BYOL + {v}'
    rows.append(f'| {label} | {sec:.3f} | {_BATCH.value / sec:.1f} | {over} | '
                f'{compile_s[v]:.0f} |')
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  text = '\n'.join([
      f'# Dense-objective overhead: ResNet-{_DEPTH.value}, {_IMAGE_SIZE.value} px, '
      f'global batch {_BATCH.value}',
      '',
      f'Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), '
      f'JAX devices: {device}. Median of {_ROUNDS.value} x {_STEPS.value} steps per '
      'variant, timed round-robin after compiling all.',
      '',
      '| variant | step time (s) | images/s | vs BYOL | compile + warm-up (s) |',
      '|---|---|---|---|---|',
      *rows]) + '\n'
  common.write_table(text, _OUT.value)


if __name__ == '__main__':
  app.run(main)
