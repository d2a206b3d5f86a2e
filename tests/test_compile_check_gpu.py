"""The compile check for NVIDIA GPUs: the trainer's step compiled by XLA's GPU compiler here.

  bash launch/test.sh tests/test_compile_check_gpu.py

Needs the CUDA plugin's compiler (requirements-gpu-compile.txt), which
launch/test.sh installs into .venv/gpu_compiler and names in
DENSE_SSL_GPU_COMPILER; no GPU and no CUDA libraries. One real compile (the
test preset's DetCon-B step for 8 H100s, plus its FLOPs lowered for one CPU).
"""

import json
import os
import subprocess
import sys

import pytest

from dense_ssl import compile_check as cc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# totalGlobalMem of an H100 SXM5 80GB, as gpu_targets/h100_80gb.txtpb states it.
H100_MEMORY = 84942979072


def require_gpu_compiler():
  """Fails (not skips) the test when the CUDA plugin is missing: the check would be untested."""
  try:
    cc.require_compiler(cc.accelerator('h100-80gb-8'))
  except cc.CompileCheckError as e:
    pytest.fail(f'{e}. Run the tests with `bash launch/test.sh` (installs it into '
                '.venv/gpu_compiler and names it in DENSE_SSL_GPU_COMPILER).', pytrace=False)


@pytest.mark.parametrize('name,topology,devices,hosts', [
    ('h100-80gb-1', '1x1x1', 1, 1),
    ('h100-80gb-2', '1x1x2', 2, 1),
    ('h100-80gb-4', '1x1x4', 4, 1),
    ('h100-80gb-8', '1x1x8', 8, 1),
    ('H100-80GB-16', '2x1x8', 16, 2),
    ('h100-80gb-32', '4x1x8', 32, 4),
])
def test_gpu_names_map_to_topologies(name, topology, devices, hosts):
  acc = cc.accelerator(name)
  assert (acc.platform, acc.topology, acc.num_devices, acc.num_hosts) == (
      'cuda', topology, devices, hosts)
  assert acc.target_config == 'h100_80gb.txtpb' and acc.nominal_hbm_bytes == H100_MEMORY


@pytest.mark.parametrize('name', ['h100-80gb-3', 'h100-80gb-12', 'h100-80gb-0', 'h100-40gb-8',
                                  'h100-80gb'])
def test_bad_gpu_names_say_which_are_known(name):
  with pytest.raises(cc.CompileCheckError, match='h100-80gb-1, h100-80gb-8, h100-80gb-32'):
    cc.accelerator(name)


def test_gpu_memory_allowed_is_the_clients_share(monkeypatch):
  """The GPU compiler does not refuse what does not fit: the client's share of memory decides."""
  acc = cc.accelerator('h100-80gb-8')
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  assert cc.available_hbm.__wrapped__(acc) == int(0.75 * H100_MEMORY)
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  assert cc.available_hbm.__wrapped__(acc) == int(0.9 * H100_MEMORY)


def test_compile_check_of_the_test_preset_on_8_h100s(tmp_path):
  """The CLI end to end: the trainer's step compiled for 8 H100s, report in JSON."""
  require_gpu_compiler()
  out = tmp_path / 'report.json'
  env = dict(os.environ)
  env.pop('XLA_PYTHON_CLIENT_MEM_FRACTION', None)
  proc = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.compile_check', '--config=configs/detcon_b.py:test',
       '--accelerator=h100-80gb-8', f'--out={out}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'fits' in proc.stdout and 'XLA_PYTHON_CLIENT_MEM_FRACTION' in proc.stdout
  rep = json.loads(out.read_text())
  acc = rep['accelerator']
  assert (acc['name'], acc['platform'], acc['topology'], acc['num_devices']) == (
      'h100-80gb-8', 'cuda', '1x1x8', 8)
  assert rep['batch']['per_device'] == 1 and rep['jax_cuda12_pjrt']
  mem = rep['step']['memory']
  assert mem['device_memory_bytes'] == H100_MEMORY and mem['allowed_fraction'] == 0.75
  assert mem['available_bytes'] == int(0.75 * H100_MEMORY)
  assert mem['fits'] and 0 < mem['peak_bytes'] <= mem['available_bytes']
  assert mem['arguments_bytes'] >= rep['params_bytes']      # The state is an argument.
  assert mem['aliased_bytes'] > 0                          # The donated state.
  assert mem['temporaries_bytes'] > 0
  flops = rep['step']['flops']
  # No cost analysis on GPU: counted on the same per-device step for one CPU.
  assert 'one CPU device' in flops['source'] and flops['source_seconds'] > 0
  assert flops['per_example'] > 0
  assert 0.5 < flops['compiled_over_analytic'] < 3.0
  col = rep['step']['collectives']
  assert col['gradient_all_reduce']                       # Gradients pmean'ed.
  assert col['by_op']['all-reduce']['bytes'] >= rep['params_bytes']
  assert col['by_op']['all-gather']['count'] >= 1         # DetCon's gathered negatives.
