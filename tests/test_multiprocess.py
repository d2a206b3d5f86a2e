"""Several JAX processes on this machine: 2 processes x 2 CPU devices (gloo).

Checks the multi-host code paths of the trainer: global arrays built from
per-process data, cross-process BatchNorm and gathers, cooperative orbax
checkpoints, per-process data shards and resume.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import mask_records
from tests import multiprocess_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(commands, timeout=600, expect_ok=True):
  """Starts one process per command (env: 2 CPU devices each); waits for all."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert (p.returncode == 0) == expect_ok, out[-4000:]
  return outs


def test_two_processes_equal_one_process_with_four_devices(tmp_path):
  port = free_port()
  launch([[sys.executable, '-m', 'tests.multiprocess_worker', f'--process_id={i}',
           '--num_processes=2', f'--port={port}', '--devices=2', '--steps=2',
           f'--out={tmp_path}/p{i}.npz'] for i in range(2)])
  p0, p1 = np.load(tmp_path / 'p0.npz'), np.load(tmp_path / 'p1.npz')
  # This pytest process has 4 simulated devices (conftest): the same global
  # batch over 4 devices of 1 process.
  losses, params = multiprocess_worker.run(2)
  np.testing.assert_array_equal(p0['losses'], p1['losses'])
  np.testing.assert_allclose(p0['losses'], losses, rtol=1e-5)
  for name, value in params.items():
    np.testing.assert_array_equal(p0[name], p1[name])    # Replicas agree.
    np.testing.assert_allclose(p0[name], value, rtol=2e-4, atol=2e-5)


@pytest.fixture
def data_dir(tmp_path):
  out = str(tmp_path / 'masks')
  mask_records.write_blocky_dataset(out, num_examples=16, size=64, num_shards=4)
  return out


def test_two_process_trainer_checkpoints_and_resumes(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')

  def main(steps):
    port = free_port()
    return launch([[sys.executable, '-m', 'dense_ssl.main',
                    '--config=configs/detcon_b.py:test', f'--workdir={workdir}',
                    f'--config.data.dir={data_dir}', f'--config.total_steps={steps}',
                    f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                    f'--process_id={i}', '--distributed_timeout_s=120']
                   for i in range(2)])

  outs = main(2)
  assert 'JAX 0.10' in outs[0] and '2 processes, 4 devices (2 local)' in outs[0]
  assert 'finished: step 2' in outs[0] and 'finished: step 2' in outs[1]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if s.isdigit())
  assert steps[-1] == 2
  # Relaunching both with a longer schedule continues from the checkpoint.
  outs = main(3)
  assert 'resuming from step 2' in outs[0]
  assert 'finished: step 3' in outs[0] and 'finished: step 3' in outs[1]


def test_processes_with_different_configs_fail_with_a_message(data_dir, tmp_path):
  port = free_port()
  outs = launch([[sys.executable, '-m', 'dense_ssl.main',
                  '--config=configs/detcon_b.py:test', f'--workdir={tmp_path}/run',
                  f'--config.data.dir={data_dir}', '--config.total_steps=1',
                  f'--config.loss.temperature={0.1 + 0.1 * i}',
                  f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                  f'--process_id={i}', '--distributed_timeout_s=60']
                 for i in range(2)], timeout=300, expect_ok=False)
  for out in outs:
    assert 'processes [1] have a different config than process 0' in out


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
  run = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.main', '--config=configs/detcon_b.py:test',
       f'--workdir={tmp_path}', f'--coordinator_address=127.0.0.1:{free_port()}',
       '--num_processes=2', '--process_id=1', '--distributed_timeout_s=3'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 1
  assert 'cannot reach the coordinator 127.0.0.1:' in run.stderr
