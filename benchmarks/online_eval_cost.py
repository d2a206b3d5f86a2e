r"""What the online probes add to a training step: DetCon-B with and without them.

  python -m benchmarks.online_eval_cost --data_dir=out/demo/masks     # the demo's step

Compiles the trainer's step twice for the same config, model, batch and
machine: without probes (config.online_eval=False) and with every probe the
dataset offers (dense_ssl/online_eval.py; the demo scenes: the dense probe
of their class maps), then times them in alternating rounds (this machine is
shared and noisy: each round times both, and the ratio is the median of the
rounds' ratios). Prints a markdown table and writes it to --out.
"""

import os
import platform
import time

from absl import app
from absl import flags

from benchmarks import common
from data_pipeline import tf_setup

_DATA_DIR = flags.DEFINE_string('data_dir', 'out/demo/masks', 'Mask dataset.')
_CONFIG = flags.DEFINE_string('config', 'detcon_b', 'configs/<name>.py, demo preset.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Alternating rounds.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per variant per round.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/online_eval_cost.md', 'Table file.')


def main(argv):
  del argv
  tf_setup.hide_accelerators()
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{_CONFIG.value}').get_config('demo')
  config.data.dir = _DATA_DIR.value
  variants = {}
  for name, on in (('off', False), ('on', True)):
    step, state, probes = common.compiled_step(config, on)
    for _ in range(2):                       # Compile, then warm up.
      state, m = step(state)
      jax.block_until_ready(m)
    variants[name] = [step, state, probes]
  times = {'off': [], 'on': []}
  for _ in range(_ROUNDS.value):
    for name in ('off', 'on'):
      step, state, _ = variants[name]
      t = time.perf_counter()
      for _ in range(_STEPS.value):
        state, m = step(state)
      jax.block_until_ready(m)
      times[name].append((time.perf_counter() - t) / _STEPS.value)
      variants[name][1] = state
  ratios = np.asarray(times['on']) / np.asarray(times['off'])
  probes = variants['on'][2]
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  lines = [
      f'# Online probes\' cost: {config.name} demo preset (ResNet-{config.model.depth}, '
      f'{config.data.image_size} px, global batch {config.batch_size})',
      '',
      f'Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), '
      f'JAX devices: {device}. Probes: {", ".join(probes.targets)} '
      f'({probes.num_classes} map classes, {probes.num_labels} labels).',
      f'{_ROUNDS.value} alternating rounds of {_STEPS.value} steps each.',
      '',
      '| variant | median step (s) |',
      '|---|---|',
      f'| probes off | {np.median(times["off"]):.3f} |',
      f'| probes on | {np.median(times["on"]):.3f} |',
      '',
      f'Probes on / off: median of the rounds\' ratios {np.median(ratios):.4f} '
      f'(rounds: {", ".join(f"{r:.3f}" for r in ratios)}).',
  ]
  text = '\n'.join(lines) + '\n'
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    f.write(text)


if __name__ == '__main__':
  app.run(main)
