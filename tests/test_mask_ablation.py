"""The mask study's wiring (benchmarks/mask_ablation.py), without training.

The study itself is a benchmark; here: every variant's config is valid for
every preset, and the report drawn from a study's JSON is right.
"""

import os

import pytest

from benchmarks import mask_ablation
from dense_ssl import config_check


@pytest.mark.parametrize('preset', sorted(mask_ablation.PRESETS))
def test_every_variant_config_is_valid(preset):
  p = mask_ablation.PRESETS[preset]
  for name, (config_name, mask, arg, _) in mask_ablation.VARIANTS.items():
    c = mask_ablation.variant_config(name, 1, p, '/nonexistent')
    config_check.validate(c, num_devices=1, check_data=False)
    assert c.name == config_name and c.data.mask == mask
    assert c.total_steps == p['steps'] and c.batch_size == p['batch_size'] and c.seed == 1
    if mask == 'grid':
      assert c.data.grid_size == arg
    elif mask == 'fh':
      assert c.data.fh_scale == arg


def _summary(values):
  return mask_ablation.summarise(values)


def test_report_from_json(tmp_path):
  def run(seed, miou):
    return dict(seed=seed, miou=miou, seconds=60.0, final_loss=1.0)

  # Rows in run order (GT first); the report lists them in the canonical order.
  rows = [dict(variant='detcon_s_gt', config='detcon_s', mask='gt', mask_set='gt', abo=1.0,
               miou=_summary([0.20, 0.22]), runs=[run(0, 0.20), run(1, 0.22)]),
          dict(variant='detcon_s_grid1', config='detcon_s', mask='grid', mask_set='grid_1x1',
               abo=0.04, miou=_summary([0.16, 0.18]), runs=[run(0, 0.16), run(1, 0.18)]),
          dict(variant='byol', config='byol', mask='grid', mask_set=None, abo=None,
               miou=_summary([0.17, 0.17]), runs=[run(0, 0.17), run(1, 0.17)]),
          dict(variant='odin', config='odin', mask='discovered', mask_set='discovered',
               abo=0.3, miou=_summary([0.19, 0.19]),
               runs=[dict(run(s, 0.19), discovery_abo=[[0, 0.2], [4, 0.3]],
                          discovery_abo_fh=0.6) for s in (0, 1)])]
  result = dict(preset='smoke', scenes='class_texture', machine='Machine: test.',
                sizes=mask_ablation.PRESETS['smoke'], seeds=[0, 1], abo={},
                floor=_summary([0.15, 0.15]), rows=rows, wall_seconds=600.0,
                probe_seconds=120.0, kept_from_earlier=['detcon_s_gt'])
  prefix = str(tmp_path / 'study')
  mask_ablation.report(result, prefix)
  md = open(prefix + '.md').read()
  assert 'scenes class_texture' in md and 'Machine: test.' in md
  assert 'Pretraining 8.0 min + probes 2.0 min' in md
  assert 'Rows detcon_s_gt: from an earlier invocation' in md
  # Odin's ABO is its run's own, with the curve and FH's on the same scenes.
  assert 'at steps [0, 4]: seed 0: 0.200, 0.300 (FH on the same scenes: 0.600)' in md
  table = [l for l in md.splitlines() if l.startswith('| ') and 'variant' not in l]
  assert [l.split(' | ')[0][2:] for l in table] == [
      'random init (floor)', 'detcon_s_grid1', 'detcon_s_gt', 'byol', 'odin']
  gt = table[2].split(' | ')
  assert gt[2:5] == ['1.000', '0.2100', '+0.0600']   # ABO, mean, over the floor.
  assert os.path.getsize(prefix + '.png') > 1000
