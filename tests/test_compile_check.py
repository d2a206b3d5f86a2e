"""The compile check: the trainer's step compiled by the real TPU compiler on this CPU host.

Needs libtpu (requirements-tpu.txt; launch/test.sh puts it on PYTHONPATH).
One real compile (the test preset's DetCon-B step for a v4-8 slice, ~40 s);
the batch search's logic runs against a synthetic memory model.
"""

import json
import os
import subprocess
import sys

import pytest

from configs import detcon_b, moco
from dense_ssl import compile_check as cc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name,topology,chip_config,devices,hosts', [
    ('v4-8', 'v4:2x2x1', 'megacore', 4, 1),
    ('v4-32', 'v4:2x2x4', 'megacore', 16, 4),
    ('v4-128', 'v4:4x4x4', 'megacore', 64, 16),
    ('v5p-32', 'v5:2x2x4', 'megacore', 16, 4),
    ('v5e-16', 'v5e:4x4', 'default', 16, 4),
    ('v5litepod-16', 'v5e:4x4', 'default', 16, 4),
    ('v5e-8', 'v5e:2x4', 'default', 8, 1),
    ('v6e-8', 'v6e:2x4', 'default', 8, 1),
    ('v3-8', 'v3:2x2', 'default', 8, 1),
    ('v3-32', 'v3:4x4', 'default', 32, 4),
])
def test_accelerator_names_map_to_topologies(name, topology, chip_config, devices, hosts):
  acc = cc.accelerator(name)
  assert (acc.topology, acc.chip_config, acc.num_devices, acc.num_hosts) == (
      topology, chip_config, devices, hosts)


@pytest.mark.parametrize('name', ['h100', 'v4-7', 'v4-12', 'v5e-3', 'v9-8', 'v4'])
def test_unknown_accelerator_names_list_the_known_ones(name):
  with pytest.raises(cc.CompileCheckError, match='known generations: v2, v3, v4, v5p'):
    cc.accelerator(name)


def test_collectives_are_read_from_the_hlo_with_their_sizes():
  hlo = '\n'.join([
      '  %all-reduce-start.1 = (f32[64,128]{1,0:T(8,128)}, f32[10]{0}) all-reduce-start('
      'f32[64,128]{1,0} %a, f32[10]{0} %b), replica_groups={{0,1,2,3}}, to_apply=%add',
      '  %all-reduce-done.1 = (f32[64,128]{1,0}, f32[10]{0}) all-reduce-done(%all-reduce-start.1)',
      '  %all-gather-start = (bf16[2,32]{1,0}, bf16[8,32]{1,0}) all-gather-start(bf16[2,32] %c),'
      ' dimensions={0}',
      '  ROOT %ag = f32[8,4]{1,0} all-gather(f32[2,4]{1,0} %d), dimensions={0}',
      '  %add.3 = f32[] add(f32[] %x, f32[] %y)',
  ])
  got = cc.collectives(hlo)
  assert [(c['op'], c['bytes']) for c in got] == [
      ('all-reduce', 4 * (64 * 128 + 10)), ('all-gather', 2 * 8 * 32), ('all-gather', 4 * 32)]
  summary = cc.summarise_collectives(got, params_bytes=4 * 64 * 128)
  assert summary['gradient_all_reduce']
  assert summary['by_op']['all-gather']['count'] == 2


class _Memory:

  def __init__(self, peak, args):
    self.peak_memory_in_bytes, self.generated_code_size_in_bytes = peak, 0
    self.argument_size_in_bytes = args


class _Executable:

  def __init__(self, peak, args):
    self._m = _Memory(peak, args)

  def memory_analysis(self):
    return self._m


def test_find_max_batch_brackets_the_largest_batch_that_fits(monkeypatch):
  """Against a synthetic compiler: peak = state + per-example bytes x batch, in steps."""
  acc = cc.accelerator('v4-8')
  state, per_example, available = 3 * 2**30, 37 * 2**20, 30 * 2**30
  compiled = []

  def fake(b):
    peak = state + per_example * b + (b // 64) * 2**24   # Slightly super-linear.
    if peak <= available:
      return cc.Compiled(per_device_batch=b, seconds=1.0, compiled=_Executable(peak, state))
    return cc.Compiled(per_device_batch=b, seconds=1.0,
                       oom=cc.OutOfMemory(peak, available, 'HLO temporaries', 'oom'))

  def compile_step(config, acc, **_):
    b = config.batch_size // acc.num_devices
    compiled.append(b)
    return fake(b)

  monkeypatch.setattr(cc, 'compile_step', compile_step)
  config = cc.configure(detcon_b.get_config('test'), acc, 64)
  result = cc.find_max_batch(config, acc, fake(64), available=available, max_probes=12,
                             log=lambda _: None)
  truth = max(b for b in range(8, 4097, 8)
              if state + per_example * b + (b // 64) * 2**24 <= available)
  assert result['per_device'] == truth
  assert result['smallest_failing'] == truth + 8 and result['bracketed']
  assert result['global_batch'] == truth * acc.num_devices
  assert len(compiled) <= 6, compiled          # The model guides: few compiles.


def test_find_max_batch_keeps_to_batches_the_config_accepts():
  """MoCo's queue holds whole global batches: only batches dividing 65,536 are tried."""
  acc = cc.accelerator('v4-8')
  cands = cc.candidate_batches(moco.get_config('imagenet'), acc, 8, 1024)
  assert cands == [8, 16, 32, 64, 128, 256, 512, 1024]


def test_the_hbm_probe_reads_the_compilers_refusal():
  """Pins the wording of libtpu's out-of-memory error that the check parses."""
  assert cc.available_hbm(cc.accelerator('v4-8')) == int(30.75 * 2**30)
  assert cc.available_hbm(cc.accelerator('v5e-4')) == int(15.75 * 2**30)
  text = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for '
          'HLO temporaries (63.10G) exceeds available HBM (15.25G).')
  required, available, what = cc.parse_out_of_memory(text)
  assert (required, available, what) == (63.10 * 2**30, 15.25 * 2**30, 'HLO temporaries')


def test_compile_check_of_the_test_preset_on_a_v4_8(tmp_path):
  """The CLI end to end: the trainer's step compiled for 4 TPU v4 chips, report in JSON."""
  out = tmp_path / 'report.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.compile_check', '--config=configs/detcon_b.py:test',
       '--accelerator=v4-8', f'--out={out}'],
      cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'fits' in proc.stdout and 'HBM per device' in proc.stdout
  rep = json.loads(out.read_text())
  assert rep['accelerator']['name'] == 'v4-8' and rep['accelerator']['num_devices'] == 4
  assert rep['batch']['per_device'] == 2 and rep['compute_dtype'] == 'float32'
  # The batch as the pipeline ships it: uint8 views, a small mask type.
  assert rep['batch']['per_example']['view1/image'] == dict(shape=[64, 64, 3], dtype='uint8')
  mem = rep['step']['memory']
  assert mem['fits'] and 0 < mem['peak_bytes'] <= mem['available_bytes']
  assert mem['arguments_bytes'] >= rep['params_bytes']      # The state is an argument.
  assert mem['aliased_bytes'] > 0                          # The donated state.
  flops = rep['step']['flops']
  assert flops['per_example'] > 0
  # The compiled step costs more than the encoder passes alone (heads, losses,
  # colour), but not many times more.
  assert 1.0 < flops['compiled_over_analytic'] < 3.0
  col = rep['step']['collectives']
  assert col['gradient_all_reduce']                       # Gradients pmean'ed.
  assert col['by_op']['all-reduce']['bytes'] >= rep['params_bytes']
  assert col['by_op']['all-gather']['count'] >= 1         # DetCon's gathered negatives.


def test_a_bad_accelerator_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.compile_check', '--config=configs/detcon_b.py:test',
       '--accelerator=v4-7'],
      cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if 'ERROR' in l]
  assert lines and lines[0].startswith('dense_ssl.compile_check: ERROR: --accelerator=')
  assert 'Traceback' not in proc.stderr
