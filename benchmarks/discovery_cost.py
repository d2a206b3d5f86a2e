r"""What Odin's mask discovery adds to a DetCon-B step (dense_ssl/discovery.py).

  python -m benchmarks.discovery_cost --data_dir=out/demo/masks     # the demo's step

Compiles the trainer's step for DetCon-B on stored FH masks (configs/detcon_b.py:demo)
and for Odin (configs/odin.py:demo: the same network, loss and batch on masks
discovered in the step: the EMA encoder on the whole view, k-means, the
masks resampled into the views), plus Odin at the other discovery settings
given by --settings, then times them in alternating rounds (this machine is
shared and noisy: each round times every variant, and each ratio is the
median of the rounds' ratios to DetCon-B). Online probes off in all. Prints
a markdown table and writes it to --out.
"""

import time

from absl import app
from absl import flags

from benchmarks import common
from data_pipeline import tf_setup

_DATA_DIR = flags.DEFINE_string('data_dir', 'out/demo/masks', 'Mask dataset (demo scenes).')
_SETTINGS = flags.DEFINE_list('settings', ['c4:96', 'c3:128'],
                              'Extra discovery settings, feature:whole-view px.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Alternating rounds.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per variant per round.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/discovery_cost.md', 'Table file.')


def variants():
  """[(label, config)]: DetCon-B (FH), Odin's demo preset, Odin at --settings."""
  from configs import detcon_b, odin  # pylint: disable=g-import-not-at-top
  out = [('DetCon-B, stored FH masks', detcon_b.get_config('demo'))]
  preset = odin.get_config('demo')
  size = preset.data.discovery_view_size or preset.data.image_size
  out.append((f'Odin demo preset ({preset.discovery.feature}, {size} px whole view, '
              f'K = {preset.discovery.num_clusters})', preset))
  for setting in _SETTINGS.value:
    feature, px = setting.split(':')
    c = odin.get_config('demo')
    c.discovery.feature = feature
    c.data.discovery_view_size = int(px)
    if (feature, int(px)) != (preset.discovery.feature, size):
      out.append((f'Odin, {feature}, {px} px whole view', c))
  for _, c in out:
    c.data.dir = _DATA_DIR.value
    c.online_eval = False
  return out


def main(argv):
  del argv
  tf_setup.hide_accelerators()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  runs = []
  configs = variants()
  for label, config in configs:
    step, state, _ = common.compiled_step(config, False)
    for _ in range(2):                       # Compile, then warm up.
      state, m = step(state)
      jax.block_until_ready(m)
    runs.append([label, step, state, []])
  for _ in range(_ROUNDS.value):
    for run in runs:
      _, step, state, times = run
      t = time.perf_counter()
      for _ in range(_STEPS.value):
        state, m = step(state)
      jax.block_until_ready(m)
      times.append((time.perf_counter() - t) / _STEPS.value)
      run[2] = state
  base = np.asarray(runs[0][3])
  config = configs[0][1]
  lines = [
      f'# Mask discovery\'s cost: DetCon-B vs Odin, demo preset (ResNet-{config.model.depth}, '
      f'{config.data.image_size} px views, global batch {config.batch_size})', '',
      common.machine_line(),
      f'JAX devices: {jax.device_count()} x {jax.devices()[0].device_kind}. '
      f'{_ROUNDS.value} alternating rounds of {_STEPS.value} steps each; online probes off.',
      '', '| variant | median step (s) | / DetCon-B (median of rounds) |', '|---|---|---|']
  for label, _, _, times in runs:
    ratios = np.asarray(times) / base
    lines.append(f'| {label} | {np.median(times):.3f} | {np.median(ratios):.4f} |')
  lines += ['', 'Rounds\' ratios: ' + '; '.join(
      f'{label}: ' + ', '.join(f'{r:.3f}' for r in np.asarray(times) / base)
      for label, _, _, times in runs[1:])]
  common.write_table('\n'.join(lines) + '\n', _OUT.value)


if __name__ == '__main__':
  app.run(main)
