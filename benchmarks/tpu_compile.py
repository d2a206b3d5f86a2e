r"""Does every paper config fit its paper's hardware? The step compiled for TPU slices, here.

  bash launch/compile_check.sh --help >/dev/null   # once: installs the compilers
  PYTHONPATH=. python -m benchmarks.tpu_compile [--jobs=2] \
      [--rows=detcon_b,byol] [--find_max_batch] [--render_only]

For each config of configs/ at its paper's batch, on the TPU slice closest
to the hardware its paper reports (the same number of devices, per-device
batch as the paper's; DetCon's own TPU runs: the launcher's default v4-32),
runs `dense_ssl.compile_check` (one process per row, --jobs at a time) and
keeps its JSON in benchmarks/results/tpu_compile/<row>.json: a re-run
compiles only the rows it lacks (delete a JSON to redo it). Then writes the
table benchmarks/results/tpu_compile.md: per-device batch, peak HBM (the
compiler's estimate) against what the compiler allows, the largest
per-device batch that fits (--find_max_batch), FLOPs per example (XLA's cost
analysis) beside the analytic count of the encoder passes, compile time;
and the FLOPs ratios DetCon-B / BYOL and DetCon-S / SimCLR beside the
paper's +11.6% and +5.3% (DetCon Sec. 3.1, "Computational cost").
A ResNet-50 compile takes 5-20 minutes on a 2-core host.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import common

GiB = 2**30
RESULTS = os.path.join('benchmarks', 'results', 'tpu_compile')

# row -> (config, overrides, accelerator, the paper's batch and hardware)
ROWS = {
    'detcon_b': ('configs/detcon_b.py:imagenet', (), 'v4-32',
                 '4096 on TPUs (DetCon); launcher default'),
    # DetCon-S's similarity matrices over the gathered negatives (both sides
    # differentiated) take 9 GiB more than SimCLR's: v4-32 runs it at 90% of
    # HBM (the _v4-32 row), so its slice is v4-64.
    'detcon_s': ('configs/detcon_s.py:imagenet', (), 'v4-64', '4096 on TPUs (DetCon)'),
    'detcon_s_v4-32': ('configs/detcon_s.py:imagenet', (), 'v4-32', '4096 on TPUs (DetCon)'),
    # What the gathered negatives cost: the same step with this device's only.
    'detcon_s_local_negatives': (
        'configs/detcon_s.py:imagenet', ('--config.objectives.detcon.gather_negatives=False',),
        'v4-32', '4096, negatives of the device only (DetCon Table 5)'),
    # Odin: DetCon-B plus the discovery pass (EMA encoder on the whole view, k-means).
    'odin': ('configs/odin.py:imagenet', (), 'v4-32',
             '4096 (Odin: DetCon-B\'s setting; ours, README Known gaps)'),
    'byol': ('configs/byol.py:imagenet', (), 'v4-32', '4096 on TPUs (DetCon\'s baseline)'),
    'simclr': ('configs/simclr.py:imagenet', (), 'v4-32', '4096 on TPUs (DetCon\'s baseline)'),
    'lc_byol': ('configs/lc_byol.py:imagenet', (), 'v4-32', '4096 = 16 GPUs x 256 (LC-loss)'),
    'detcon_b_lc': ('configs/detcon_b_lc.py:imagenet', (), 'v4-32',
                    '4096 (a composition: no paper)'),
    'scrl': ('configs/scrl.py:imagenet', (), 'v4-64', '8192 = 32 V100 x 256 (SCRL)'),
    'clove': ('configs/clove.py:imagenet', (), 'v5p-8',
              '2048 = 4 A100 x 512, 2x224 + 6x96 crops (CLoVE)'),
    'moco': ('configs/moco.py:imagenet', (), 'v4-16', '256 = 8 GPUs x 32 (MoCo-v2 / ReSim)'),
    'resim_c4': ('configs/resim.py:imagenet', (), 'v4-16', '256 = 8 V100 x 32 (ReSim)'),
    'resim_fpn': ('configs/resim.py:imagenet', ('--config.objectives.resim.variant=fpn',),
                  'v4-16', '256 = 8 V100 x 32 (ReSim-FPN)'),
}
# (row, baseline) -> the paper's FLOPs ratio - 1 (None: not stated; Odin's
# discovery pass over DetCon-B is our measure only).
PAPER_RATIOS = {('detcon_b', 'byol'): 0.116, ('detcon_s', 'simclr'): 0.053,
                ('detcon_s_local_negatives', 'simclr'): 0.053, ('odin', 'detcon_b'): None}

_ROWS = flags.DEFINE_list('rows', list(ROWS), 'Rows to compile (default: all).')
_JOBS = flags.DEFINE_integer('jobs', 2, 'Compiles at a time (each mostly one core).')
_FIND_MAX = flags.DEFINE_bool('find_max_batch', True, 'Also find the largest batch.')
_MAX_PROBES = flags.DEFINE_integer('max_probes', 4, 'Compiles per row for the search.')
_RENDER_ONLY = flags.DEFINE_bool('render_only', False, 'Only redraw the table from the JSONs.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/tpu_compile.md', 'Table file.')


def row_json(row):
  return os.path.join(RESULTS, f'{row}.json')


def command(row):
  config, overrides, acc, _ = ROWS[row]
  cmd = [sys.executable, '-m', 'dense_ssl.compile_check', f'--config={config}',
         f'--accelerator={acc}', f'--out={row_json(row)}', *overrides]
  if _FIND_MAX.value:
    cmd += ['--find_max_batch', f'--max_probes={_MAX_PROBES.value}']
  return cmd


def run_rows(rows):
  """Runs the rows' compile checks, --jobs at a time; logs beside the JSONs."""
  os.makedirs(RESULTS, exist_ok=True)
  todo = [r for r in rows if not os.path.exists(row_json(r))]
  running = []
  while todo or running:
    while todo and len(running) < _JOBS.value:
      row = todo.pop(0)
      log = open(os.path.join(RESULTS, f'{row}.log'), 'w')
      print(f'[{time.strftime("%H:%M:%S")}] compiling {row}: {" ".join(command(row)[1:])}',
            flush=True)
      running.append((row, subprocess.Popen(command(row), stdout=log,
                                            stderr=subprocess.STDOUT), log, time.time()))
    time.sleep(5)
    for item in list(running):
      row, proc, log, t0 = item
      if proc.poll() is not None:
        log.close()
        running.remove(item)
        status = {0: 'fits', 3: 'does not fit'}.get(proc.returncode,
                                                    f'FAILED (exit {proc.returncode})')
        print(f'[{time.strftime("%H:%M:%S")}] {row}: {status} after '
              f'{(time.time() - t0) / 60:.1f} min (log {RESULTS}/{row}.log)', flush=True)


def render(rows):
  reports = {}
  for r in rows:
    if os.path.exists(row_json(r)):
      with open(row_json(r)) as f:
        reports[r] = json.load(f)
  lines = [
      '# Every paper config compiled for TPU (benchmarks/tpu_compile.py)', '',
      'The trainer\'s step compiled by the TPU compiler (libtpu '
      f'{next((x["libtpu"] for x in reports.values()), "?")}, jax '
      f'{next((x["jax"] for x in reports.values()), "?")}) on a host without a TPU '
      '(`dense_ssl.compile_check`). HBM: the compiler\'s buffer assignment per device '
      '(peak incl. code) against the HBM it allows; FLOPs: XLA\'s cost analysis of '
      'the per-device program / per-device batch, beside the encoder passes '
      'counted analytically (2 FLOPs per MAC; online passes x3 for the backward). '
      'Estimates, not timings: nothing here ran on a TPU.', '',
      '| config | paper batch (hardware) | slice | per-device batch | dtype | peak HBM '
      '/ allowed | fits | largest per-device batch | GFLOP / example (compiled) | '
      'encoder GFLOP (analytic) | compile |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    if r not in reports:
      lines.append(f'| {r} | {ROWS[r][3]} | {ROWS[r][2]} | not compiled yet | | | | | | | |')
      continue
    rep = reports[r]
    step, mem = rep['step'], rep['step']['memory']
    if 'peak_bytes' in mem:
      hbm = (f'{mem["peak_bytes"] / GiB:.1f} / {mem["available_bytes"] / GiB:.2f} GiB '
             f'({100 * mem["fraction"]:.0f}%)')
    else:
      hbm = (f'needs {mem["required_temporaries_bytes"] / GiB:.1f} GiB temporaries / '
             f'{mem["available_bytes"] / GiB:.2f} GiB')
    fits = ('**no**' if not mem['fits'] else
            'yes, within 10% of the limit' if mem.get('fraction', 0) > 0.9 else 'yes')
    mb = rep.get('max_batch')
    if mb and mb.get('per_device'):
      largest = f'{mb["per_device"]}' + ('' if mb['bracketed'] else
                                         f' (>=; {mb["smallest_failing"] or "no"} fails)')
    elif mb:
      largest = 'none found'
    elif 'peak_bytes' in mem:
      # Not searched: the state is fixed and the rest grows about linearly
      # with the batch, so one compile predicts where the peak meets the
      # limit (a model, not a compile: marked as an estimate).
      b = rep['batch']['per_device']
      fixed = mem['arguments_bytes']     # The state (and this batch: small).
      per_example = (mem['peak_bytes'] - fixed) / b
      largest = f'~{int((mem["available_bytes"] - fixed) / per_example) // 8 * 8} (estimate)'
    else:
      largest = '-'
    f = step.get('flops', {})
    flops = f'{f["per_example"] / 1e9:.1f}' if f else '-'
    enc = f'{f["analytic_encoder_per_example"] / 1e9:.1f}' if f else '-'
    probes = len(mb['probes']) if mb else 1
    lines.append(
        f'| {r} | {ROWS[r][3]} | {rep["accelerator"]["name"]} | {rep["batch"]["per_device"]} '
        f'| {rep["compute_dtype"]} | {hbm} | {fits} | {largest} '
        f'| {flops} | {enc} | {step["compile_seconds"] / 60:.1f} min'
        + (f' (+{probes - 1} for the search)' if probes > 1 else '') + ' |')
  lines += ['', '## FLOPs of DetCon against its baselines (and of Odin\'s discovery)', '',
            '| pair | compiled GFLOP / example | ratio | paper (Sec. 3.1) |', '|---|---|---|---|']
  for (a, b), ratio in PAPER_RATIOS.items():
    paper = '-' if ratio is None else f'+{100 * ratio:.1f}%'
    if a in reports and b in reports and reports[a]['step'].get('flops') \
        and reports[b]['step'].get('flops'):
      fa = reports[a]['step']['flops']['per_example']
      fb = reports[b]['step']['flops']['per_example']
      lines.append(f'| {a} / {b} | {fa / 1e9:.1f} / {fb / 1e9:.1f} | +{100 * (fa / fb - 1):.1f}% '
                   f'| {paper} |')
    else:
      lines.append(f'| {a} / {b} | not compiled yet | | {paper} |')
  lines += ['', 'Where the compiled ratios come from (the heads on 16 mask vectors, the '
            'similarity matrices over the gathered negatives, and why DetCon-S differs '
            'from the paper): WORKSPACE.md section 5, "Will it fit?".',
            '', common.machine_line(), '']
  common.write_table('\n'.join(lines), _OUT.value)


def main(argv):
  del argv
  unknown = [r for r in _ROWS.value if r not in ROWS]
  if unknown:
    raise app.UsageError(f'--rows: unknown {unknown}; known: {list(ROWS)}')
  if not _RENDER_ONLY.value:
    run_rows(_ROWS.value)
  render([r for r in ROWS if r in _ROWS.value or os.path.exists(row_json(r))])


if __name__ == '__main__':
  app.run(main)
