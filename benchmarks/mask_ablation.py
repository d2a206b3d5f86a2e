r"""DetCon's mask study in miniature (Hénaff et al. 2021, Sec. 4.3, Fig. 7).

  python -m benchmarks.mask_ablation                    # the CPU study (1.6-2 h on 2 cores)
  python -m benchmarks.mask_ablation --preset=gpu       # larger, for an accelerator
  python -m benchmarks.mask_ablation --preset=smoke     # minutes: checks the mechanics
  python -m benchmarks.mask_ablation --scenes=class_texture   # classes with a surface
  python -m benchmarks.mask_ablation --render_only      # redraw .md/.png from the .json

On the demo scenes (data_pipeline/demo_dataset.py, which carry GT instances
and a semantic class map): pretrains DetCon-S with masks of increasing
quality -- a 1x1 grid (= SimCLR, the paper's orange point), 2x2 and 5x5
grids, FH at two scales, GT -- plus BYOL and DetCon-B with FH (the paper's
headline comparison), all with the same budget and for --seeds seeds; scores
each encoder with the frozen-feature dense probe (dense_ssl/evaluate.py:
per-pixel linear classifier on C4, mIoU on the held-out val scenes) next to
the random-init floor; measures each mask set's Average Best Overlap with
the GT instances (data_pipeline/mask_quality.py). Writes
benchmarks/results/mask_ablation.md (the table: ABO, probe mIoU mean +-
spread over seeds), .json (every number) and .png (Fig. 7 redrawn: x ABO,
y probe mIoU, one point per mask set, SimCLR marked).

--scenes=class_texture runs the same study on demo scenes whose shape kinds
draw their textures from their own pools (demo_dataset.py, "Appearance"), so
a class has a surface as well as an outline; results go to
benchmarks/results/mask_ablation_class_texture.*, work to
WORK_DIR/<preset>_class_texture. The default scenes ('random') tell a class
by its outline only.

The evaluation is fixed before any result is seen (probe protocol and its
hyper-parameters below); nothing here is tuned to produce an ordering.
Runs resume: a finished pretraining (its workdir says so) or probe (its
JSON exists) is not redone, so an interrupted study continues where it was.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import common

# Its own FlagValues: tests import this module beside others that define
# --out etc. on absl's global FLAGS.
FLAGS = flags.FlagValues()
_PRESET = flags.DEFINE_enum('preset', 'cpu', ['cpu', 'gpu', 'smoke'], 'Study size.',
                            flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per variant (default: the preset\'s).',
                              flag_values=FLAGS)
_VARIANTS = flags.DEFINE_list('variants', None, 'Subset of variants (default: all).',
                              flag_values=FLAGS)
_WORK = flags.DEFINE_string('work_dir', 'out/mask_ablation', 'Data, runs and probes.',
                            flag_values=FLAGS)
_SCENES = flags.DEFINE_enum('scenes', 'random', ['random', 'class_texture'],
                            'Demo scene appearance (demo_dataset.APPEARANCES).',
                            flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'Result files prefix (default: '
                           'benchmarks/results/mask_ablation[_class_texture]).',
                           flag_values=FLAGS)
_RENDER_ONLY = flags.DEFINE_bool('render_only', False, 'Only redraw OUT.md and OUT.png '
                                 'from an earlier study\'s OUT.json; trains nothing.',
                                 flag_values=FLAGS)

# Preset -> sizes. cpu: 16 pretrainings of 5-7 min + probes, 1.6-2 h on 2 cores.
PRESETS = {
    'smoke': dict(depth=10, image_size=64, batch_size=16, steps=4, train_scenes=64,
                  val_scenes=32, seeds=1, probe_steps=20, probe_size=64, fh=(250, 500)),
    'cpu': dict(depth=18, image_size=96, batch_size=32, steps=250, train_scenes=2000,
                val_scenes=500, seeds=2, probe_steps=500, probe_size=128, fh=(250, 500)),
    'gpu': dict(depth=50, image_size=160, batch_size=256, steps=2000, train_scenes=20000,
                val_scenes=2000, seeds=3, probe_steps=1000, probe_size=160, fh=(250, 500)),
}
FH_MIN_SIZE = {250: 50, 500: 100}   # The demo's FH settings (launch/demo.sh).

# name -> (config, data.mask, grid size or FH scale, the mask set it is plotted at)
VARIANTS = {
    'detcon_s_grid1': ('detcon_s', 'grid', 1, 'grid_1x1'),    # = SimCLR (orange).
    'detcon_s_grid2': ('detcon_s', 'grid', 2, 'grid_2x2'),
    'detcon_s_grid5': ('detcon_s', 'grid', 5, 'grid_5x5'),
    'detcon_s_fh250': ('detcon_s', 'fh', 250, 'fh_s250_m50_sig0.8'),
    'detcon_s_fh500': ('detcon_s', 'fh', 500, 'fh_s500_m100_sig0.8'),
    'detcon_s_gt': ('detcon_s', 'gt', None, 'gt'),
    'byol': ('byol', 'grid', 1, None),
    'detcon_b_fh250': ('detcon_b', 'fh', 250, 'fh_s250_m50_sig0.8'),
    # Odin: DetCon-B on masks discovered in the step (configs/odin.py); its
    # ABO is the run's own (discovery/abo at the last step, first
    # ODIN_QUALITY_SCENES train scenes).
    'odin': ('odin', 'discovered', None, 'discovered'),
}
ODIN_QUALITY_SCENES = 500


def precompute(split, num, out_dir, fh, scenes='random'):
  """The demo scenes of `split` with FH, GT and class maps (resumes if there)."""
  if os.path.exists(os.path.join(out_dir, 'manifest.json')):
    return
  cmd = [sys.executable, '-m', 'data_pipeline.precompute_masks', '--source=demo',
         f'--split_name={split}', f'--num_examples={num}', f'--out_dir={out_dir}',
         f'--demo_appearance={scenes}',
         '--fh_scales=' + ','.join(str(s) for s in fh),
         '--fh_min_sizes=' + ','.join(str(FH_MIN_SIZE[s]) for s in fh),
         '--examples_per_shard=250']
  subprocess.run(cmd, check=True)


def variant_config(name, seed, p, data_dir):
  import importlib  # pylint: disable=g-import-not-at-top
  config_name, mask, arg, _ = VARIANTS[name]
  c = importlib.import_module(f'configs.{config_name}').get_config('demo')
  c.seed = seed
  c.model.depth = p['depth']
  c.data.update(dir=data_dir, image_size=p['image_size'], mask=mask)
  if mask == 'grid':
    c.data.grid_size = arg
  elif mask == 'fh':
    c.data.fh_scale = arg
  c.batch_size = p['batch_size']
  c.total_steps = p['steps']
  c.warmup_epochs = 0.1 * p['steps'] * p['batch_size'] / p['train_scenes']
  c.log_every_steps = max(1, p['steps'] // 10)
  c.ckpt_every_steps = p['steps']
  if mask == 'discovered':   # The discovery's ABO five times over the run.
    c.discovery.update(quality_every_steps=max(1, p['steps'] // 5),
                       quality_images=min(ODIN_QUALITY_SCENES, p['train_scenes']))
  return c


def _load(path):
  with open(path) as f:
    return json.load(f)


def _dump(obj, path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(path + '.tmp', path)


def pretrain(name, seed, p, data_dir, workdir):
  """Pretrains one variant; its time and final loss are kept in WORKDIR/study_run.json."""
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  record = os.path.join(workdir, 'study_run.json')
  if os.path.exists(record):   # Finished earlier: a re-run would report 0 s and no loss.
    return _load(record)
  t = time.perf_counter()
  out = train.train_and_evaluate(variant_config(name, seed, p, data_dir), workdir)
  run = dict(seconds=time.perf_counter() - t,
             final_loss=out['metrics'].get('train/loss') if out['metrics'] else None)
  if VARIANTS[name][1] == 'discovered':
    # The discovered masks' ABO as the run went ([(step, ABO)]) and FH's on the same scenes.
    from dense_ssl import plot_curves  # pylint: disable=g-import-not-at-top
    scalars = plot_curves.read_scalars(workdir)
    run['discovery_abo'] = [[int(k), float(v)] for k, v in scalars.get('discovery/abo', [])]
    fh = scalars.get('discovery/abo_fh') or [[0, None]]
    run['discovery_abo_fh'] = fh[-1][1]
  _dump(run, record)
  return run


def probe(p, train_dir, val_dir, seed, workdir=None, floor_dir=None):
  """The frozen-feature probe (C4) of a workdir's encoder, or of a random one.

  The result JSON is kept (WORKDIR/probe_c4_online.json, or
  FLOOR_DIR/probe_c4_random_seed<seed>.json) and reused by a re-run.
  """
  from dense_ssl import evaluate  # pylint: disable=g-import-not-at-top
  out = (os.path.join(workdir, 'probe_c4_online.json') if workdir
         else os.path.join(floor_dir, f'probe_c4_random_seed{seed}.json'))
  if os.path.exists(out):
    return _load(out)
  kw = dict(data_dir=train_dir, eval_data_dir=val_dir, feature='c4',
            image_size=p['probe_size'], steps=p['probe_steps'], seed=seed, out=out)
  if workdir:
    return evaluate.evaluate_probe(workdir=workdir, **kw)
  os.makedirs(floor_dir, exist_ok=True)
  return evaluate.evaluate_probe(init='random', depth=p['depth'], width_multiplier=1, **kw)


def summarise(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  v = np.asarray(values, np.float64)
  return dict(mean=float(v.mean()), min=float(v.min()), max=float(v.max()),
              std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, n=len(v))


def plot(rows, floor, path, title='DetCon Fig. 7 in miniature (demo scenes)'):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for r in rows:
    if r['abo'] is None:
      continue
    m = r['miou']
    simclr = r['variant'] == 'detcon_s_grid1'
    colour = ('tab:orange' if simclr else 'tab:green' if r['config'] == 'detcon_b'
              else 'tab:red' if r['config'] == 'odin' else 'tab:blue')
    ax.errorbar(r['abo'], m['mean'], yerr=[[m['mean'] - m['min']], [m['max'] - m['mean']]],
                fmt='o', color=colour, capsize=3)
    label = r['variant'].replace('detcon_s_', 'DetCon-S ').replace('detcon_b_', 'DetCon-B ')
    label = 'Odin (discovered)' if r['config'] == 'odin' else label
    ax.annotate('SimCLR (DetCon-S 1x1)' if simclr else label,
                (r['abo'], m['mean']), textcoords='offset points', xytext=(4, 4), fontsize=7)
  byol = [r for r in rows if r['variant'] == 'byol']
  if byol:
    ax.axhline(byol[0]['miou']['mean'], color='tab:purple', ls='--', lw=1, label='BYOL')
  ax.axhline(floor['mean'], color='grey', ls=':', lw=1, label='random init')
  ax.set_xlabel('mask quality: Average Best Overlap with GT instances')
  ax.set_ylabel('frozen C4 linear probe mIoU (val)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  from data_pipeline import mask_quality, tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators()
  p = dict(PRESETS[_PRESET.value])
  seeds = list(range(_SEEDS.value or p['seeds']))
  variants = _VARIANTS.value or list(VARIANTS)
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants: unknown {unknown}; choose from {list(VARIANTS)}')
  scenes = _SCENES.value
  suffix = '' if scenes == 'random' else f'_{scenes}'
  out_prefix = _OUT.value or f'benchmarks/results/mask_ablation{suffix}'
  if _RENDER_ONLY.value:
    if not os.path.exists(out_prefix + '.json'):
      raise app.UsageError(f'--render_only: {out_prefix}.json does not exist; run the study '
                           'first, or point --out (or --scenes) at its result files.')
    try:
      report(_load(out_prefix + '.json'), out_prefix)
    except (ValueError, KeyError, TypeError) as e:   # JSONDecodeError is a ValueError.
      raise app.UsageError(f'--render_only: {out_prefix}.json is not a study\'s result '
                           f'file ({type(e).__name__}: {e}); re-run the study to rewrite '
                           'it (finished runs and probes are reused).') from e
    return
  work = os.path.abspath(os.path.join(_WORK.value, _PRESET.value + suffix))
  train_dir, val_dir = os.path.join(work, 'data', 'train'), os.path.join(work, 'data', 'val')
  t_start = time.perf_counter()
  precompute('train', p['train_scenes'], train_dir, p['fh'], scenes)
  precompute('val', p['val_scenes'], val_dir, p['fh'], scenes)
  abo = {r['name']: r['abo'] for r in mask_quality.measure(train_dir, grids=(1, 2, 5))['rows']}
  print('ABO on the train scenes:',
        ', '.join(f'{k} {v:.3f}' for k, v in abo.items() if v is not None), flush=True)

  floor_runs = [probe(p, train_dir, val_dir, s, floor_dir=os.path.join(work, 'floor'))
                for s in seeds]
  floor = summarise([r['miou'] for r in floor_runs])
  probe_seconds = sum(r['timing']['total_s'] for r in floor_runs)
  print(f'random init (floor): probe mIoU {floor["mean"]:.4f} '
        f'({floor["min"]:.4f}-{floor["max"]:.4f})', flush=True)
  rows = []
  for name in variants:
    runs = []
    for seed in seeds:
      workdir = os.path.join(work, 'runs', f'{name}_seed{seed}')
      run = pretrain(name, seed, p, train_dir, workdir)
      result = probe(p, train_dir, val_dir, seed, workdir)
      probe_seconds += result['timing']['total_s']
      runs.append(dict(run, seed=seed, miou=result['miou'],
                       pixel_accuracy=result['pixel_accuracy'],
                       per_class_iou=result['per_class_iou']))
      print(f'{name} seed {seed}: probe mIoU {result["miou"]:.4f}', flush=True)
    config_name, mask, _, mask_set = VARIANTS[name]
    row_abo = abo.get(mask_set) if mask_set else None
    if mask == 'discovered':   # The run's own: the mean over seeds of the last ABO.
      row_abo = summarise([r['discovery_abo'][-1][1] for r in runs])['mean']
    rows.append(dict(variant=name, config=config_name, mask=mask, mask_set=mask_set,
                     abo=row_abo, miou=summarise([r['miou'] for r in runs]), runs=runs))
  wall = time.perf_counter() - t_start
  # A study of some variants adds their rows to an earlier study's result
  # with the same preset, scenes and seeds (same data, budget and floor
  # protocol): its other rows are kept, and the file says which came from it.
  kept = []
  earlier = os.path.abspath(out_prefix + '.json')
  if os.path.exists(earlier):
    old = _load(earlier)
    if (old.get('preset'), old.get('scenes', 'random'), old.get('seeds')) == (
        _PRESET.value, scenes, seeds):
      kept = [r for r in old['rows'] if r['variant'] not in variants]
      rows = kept + rows
  result = dict(
      preset=_PRESET.value, scenes=scenes, machine=common.machine_line(), sizes=p,
      seeds=seeds, abo=abo, floor=floor,
      floor_runs=[dict(seed=s, miou=r['miou'], pixel_accuracy=r['pixel_accuracy'],
                       per_class_iou=r['per_class_iou']) for s, r in zip(seeds, floor_runs)],
      rows=rows, wall_seconds=wall, probe_seconds=probe_seconds,
      kept_from_earlier=[r['variant'] for r in kept])
  _dump(result, os.path.abspath(out_prefix + '.json'))
  report(result, out_prefix)


def report(result, out_prefix):
  """Writes OUT_PREFIX.md (the table) and .png (Fig. 7) from the study's JSON."""
  p, floor, seeds = result['sizes'], result['floor'], result['seeds']
  order = list(VARIANTS)
  rows = sorted(result['rows'], key=lambda r: order.index(r['variant']))
  scenes = result.get('scenes', 'random')
  # A resumed study's wall time covers only its last invocation; the runs'
  # and probes' own times add up the work wherever it was done.
  pretrain_min = sum(run['seconds'] for r in rows for run in r['runs']) / 60
  probe_min = result.get('probe_seconds')
  times = (f'Pretraining {pretrain_min:.1f} min'
           + (f' + probes {probe_min / 60:.1f} min' if probe_min is not None else '')
           + f'; the last invocation\'s wall time {result["wall_seconds"] / 60:.1f} min.')
  lines = [f'# DetCon mask study in miniature (preset {result["preset"]}, scenes {scenes})', '',
           result.get('machine') or common.machine_line(),
           f'ResNet-{p["depth"]}, {p["image_size"]} px views, batch {p["batch_size"]}, '
           f'{p["steps"]} steps per pretraining, {p["train_scenes"]} train / '
           f'{p["val_scenes"]} val demo scenes, seeds {seeds}; probe: frozen C4, '
           f'linear, {p["probe_steps"]} Adam steps, {p["probe_size"]} px, mIoU on val '
           f'(6 classes: background + 5 shapes). ABO on the train scenes. {times}', '',
           '| variant | masks | ABO | probe mIoU mean | - floor | min | max | std | n |',
           '|---|---|---|---|---|---|---|---|---|',
           f'| random init (floor) | - | - | {floor["mean"]:.4f} | - | {floor["min"]:.4f} | '
           f'{floor["max"]:.4f} | {floor["std"]:.4f} | {floor["n"]} |']
  for r in rows:
    m = r['miou']
    abo_s = f'{r["abo"]:.3f}' if r['abo'] is not None else '-'
    lines.append(f'| {r["variant"]} | {r["mask_set"] or "-"} | {abo_s} | {m["mean"]:.4f} | '
                 f'{m["mean"] - floor["mean"]:+.4f} | {m["min"]:.4f} | {m["max"]:.4f} | '
                 f'{m["std"]:.4f} | {m["n"]} |')
  kept = result.get('kept_from_earlier') or []
  if kept:
    lines += ['', f'Rows {", ".join(kept)}: from an earlier invocation with the same '
              'preset, scenes and seeds (kept in the .json); the floor and the other rows '
              'from the last one.']
  for r in rows:
    if r['mask'] == 'discovered':
      curves = '; '.join(
          f'seed {run["seed"]}: ' + ', '.join(f'{a:.3f}' for _, a in run['discovery_abo'])
          + (f' (FH on the same scenes: {run["discovery_abo_fh"]:.3f})'
             if run.get('discovery_abo_fh') is not None else '')
          for run in r['runs'])
      steps = [k for k, _ in r['runs'][0]['discovery_abo']]
      lines += ['', f'{r["variant"]}: the masks are discovered in the step (configs/odin.py); '
                f'its ABO is the run\'s own, on the first {ODIN_QUALITY_SCENES} train scenes '
                f'(dense_ssl/discovery.py DiscoveryQuality), at steps {steps}: {curves}.']
  common.write_table('\n'.join(lines) + '\n', out_prefix + '.md')
  plot(rows, floor, out_prefix + '.png',
       f'DetCon Fig. 7 in miniature (demo scenes: {scenes}, preset {result["preset"]})')
  print('written:', out_prefix + '.{md,json,png}')


if __name__ == '__main__':
  app.run(main, flags_parser=common.own_flags_parser(FLAGS))
