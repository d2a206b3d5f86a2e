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
  # The compile check runs first, with the run's --config.* overrides.
  assert ('launch/compile_check.sh --config=configs/detcon_b.py:imagenet '
          '--accelerator=v4-128 --config.seed=3') in out.stdout
  assert out.stdout.index('compile_check.sh') < out.stdout.index('tpu-vm create')
  assert "jax[tpu]==0.10.2" in out.stdout and '--worker=all' in out.stdout
  assert ('dense_ssl.main --config=configs/detcon_b.py:imagenet --workdir=gs://b/w '
          '--config.data.dir=gs://b/m --multihost --config.seed=3') in out.stdout


def test_tpu_pod_stops_before_creating_a_slice_when_the_check_fails(tmp_path):
  """A config the check refuses: no gcloud call at all (a stand-in gcloud records calls)."""
  calls = tmp_path / 'calls'
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
  gcloud.chmod(0o755)
  # 4 devices of a v4-8 cannot share a global batch of 6: the check says so.
  out = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'tpu_pod.sh'), '--config.batch_size=6'],
      capture_output=True, text=True, timeout=900,
      env=dict(os.environ, TPU_NAME='t', ZONE='z', WORKDIR='gs://b/w', MASKS='gs://b/m',
               REPO_URL='https://example.org/x.git', ACCELERATOR_TYPE='v4-8',
               CONFIG='configs/detcon_b.py:test', PATH=f'{tmp_path}:{os.environ["PATH"]}'))
  assert out.returncode == 1, out.stdout + out.stderr
  assert 'config.batch_size=6 does not divide over the 4 devices of v4-8' in out.stderr
  assert 'no slice was created or used' in out.stderr
  assert not calls.exists()


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


def _detectron2_eval(tmp_path, gpus_seen=0, **env):
  """launch/detectron2_eval.sh --dry_run against stand-ins: a Detectron2
  checkout, an importable `detectron2`, a COCO folder, an R18 .pkl, and an
  nvidia-smi that lists `gpus_seen` GPUs (first on PATH, whatever the host has)."""
  import pickle  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  d2 = tmp_path / 'd2src'
  for f in ('tools/train_net.py', 'configs/Base-RCNN-FPN.yaml'):
    (d2 / f).parent.mkdir(parents=True, exist_ok=True)
    (d2 / f).write_text('')
  stub = tmp_path / 'stub' / 'detectron2'
  stub.mkdir(parents=True, exist_ok=True)
  (stub / '__init__.py').write_text('')
  data = tmp_path / 'datasets' / 'coco'
  for p in ('annotations', 'train2017', 'val2017'):
    (data / p).mkdir(parents=True, exist_ok=True)
  for p in ('instances_train2017.json', 'instances_val2017.json'):
    (data / 'annotations' / p).write_text('{}')
  model = {'stem.conv1.weight': np.zeros((64, 3, 7, 7), np.float32)}
  for s in (2, 3, 4, 5):
    for i in (0, 1):
      model[f'res{s}.{i}.conv1.weight'] = np.zeros((1,), np.float32)
  pkl = tmp_path / 'r18.pkl'
  with open(pkl, 'wb') as f:
    pickle.dump({'model': model, 'matching_heuristics': True}, f)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  smi = bin_dir / 'nvidia-smi'
  smi.write_text('#!/bin/sh\n' + ''.join(
      f'echo "GPU {i}: Stand-in (UUID: GPU-{i})"\n' for i in range(gpus_seen)))
  smi.chmod(0o755)
  full = {k: v for k, v in os.environ.items() if k not in ('NUM_GPUS', 'TASK')}
  full.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHONPATH=str(tmp_path / 'stub'),
              PYTHON=sys.executable, DETECTRON2_DIR=str(d2), TASK='coco_1x',
              DETECTRON2_DATASETS=str(tmp_path / 'datasets'), WEIGHTS=str(pkl),
              OUT_DIR=str(tmp_path / 'eval'))
  full.update(env)
  return subprocess.run(['bash', os.path.join(REPO, 'launch', 'detectron2_eval.sh'),
                         '--dry_run', 'SOLVER.MAX_ITER', '2'],
                        capture_output=True, text=True, env=full, timeout=60)


def test_detectron2_eval_on_the_cpu(tmp_path):
  out = _detectron2_eval(tmp_path, NUM_GPUS='0')
  assert out.returncode == 0, out.stderr
  assert 'device:   CPU, one process' in out.stdout
  assert '--num-gpus 1 ' in out.stdout
  # MODEL.DEVICE before the user's opts, so that theirs win.
  assert 'MODEL.DEVICE cpu SOLVER.MAX_ITER 2' in out.stdout


def test_detectron2_eval_gpu_count(tmp_path):
  # Nothing visible and NUM_GPUS unset: refused, pointing at NUM_GPUS=0.
  out = _detectron2_eval(tmp_path)
  assert out.returncode == 1 and 'no GPU visible' in out.stderr
  assert 'NUM_GPUS=0' in out.stderr
  # Default: every GPU nvidia-smi lists; more than that is refused.
  out = _detectron2_eval(tmp_path, gpus_seen=2)
  assert out.returncode == 0, out.stderr
  assert '--num-gpus 2 ' in out.stdout and 'MODEL.DEVICE' not in out.stdout
  out = _detectron2_eval(tmp_path, gpus_seen=2, NUM_GPUS='4')
  assert out.returncode == 1 and 'sees only 2 GPUs' in out.stderr
  out = _detectron2_eval(tmp_path, NUM_GPUS='two')
  assert out.returncode == 1 and 'NUM_GPUS=two' in out.stderr
