"""Launch scripts for TPU pods and SLURM: early checks and the commands they print."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, **env):
  full = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  full.update(env)
  return subprocess.run(['bash', os.path.join(REPO, 'launch', script), '--config.seed=3'],
                        capture_output=True, text=True, env=full, timeout=60)


def test_tpu_pod_checks_variables_and_prints_commands():
  out = run('tpu_pod.sh')
  assert out.returncode == 1 and 'set TPU_NAME' in out.stderr
  out = run('tpu_pod.sh', TPU_NAME='t', ZONE='z', WORKDIR='/local', MASKS='gs://b/m')
  assert out.returncode == 1 and 'must be gs:// paths' in out.stderr
  out = run('tpu_pod.sh', DRY_RUN='1', TPU_NAME='t', ZONE='z', WORKDIR='gs://b/w',
            MASKS='gs://b/m', REPO_URL='https://example.org/x.git',
            ACCELERATOR_TYPE='v4-128')
  assert out.returncode == 0, out.stderr
  assert 'tpu-vm create t --zone=z --accelerator-type=v4-128' in out.stdout
  assert "jax[tpu]==0.10.2" in out.stdout and '--worker=all' in out.stdout
  assert ('dense_ssl.main --config=configs/detcon_b.py:imagenet --workdir=gs://b/w '
          '--config.data.dir=gs://b/m --multihost --config.seed=3') in out.stdout


def test_slurm_gpu_single_host_and_multi_host():
  out = run('slurm_gpu.sh', DRY_RUN='1')
  assert out.returncode == 1 and 'set WORKDIR' in out.stderr
  out = run('slurm_gpu.sh', DRY_RUN='1', WORKDIR='/w', MASKS='/m')
  assert out.returncode == 0, out.stderr
  assert '--workdir=/w --config.data.dir=/m --config.seed=3' in out.stdout
  assert 'coordinator_address' not in out.stdout
  out = run('slurm_gpu.sh', DRY_RUN='1', WORKDIR='/w', MASKS='/m', SLURM_JOB_ID='7',
            SLURM_NTASKS='4', SLURM_JOB_NODELIST='gpu1,gpu2,gpu3,gpu4')
  assert out.returncode == 0, out.stderr
  assert 'srun --ntasks=4' in out.stdout
  assert ('--coordinator_address=gpu1:12345 --num_processes=4 '
          '--process_id=$SLURM_PROCID') in out.stdout
