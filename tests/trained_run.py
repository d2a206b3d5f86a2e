"""One real DetCon-B training run shared by the tests that read a trained workdir.

The converter, the probe and the flip test each need a workdir that the real
trainer wrote (config.json, orbax checkpoints, an EMA target that moved away
from the online network). Training one costs ~20 s of compiling here, so the
pytest session makes it once (conftest.py's `trained_run` fixture), and a
file lock makes it once across pytest-xdist workers: the first worker trains,
the others wait for it and read what it left.

The tests that use it are in one xdist group (XDIST_GROUP; launch/test.sh
runs --dist loadgroup), so one worker trains and runs them while the other
goes on with other tests, instead of idling at the lock. Tests must not write
into it: copy it (`copy_workdir`) to change or add files.
"""

import dataclasses
import os
import shutil

import filelock
from flax import traverse_util
import numpy as np

STEPS = 2
XDIST_GROUP = 'trained_run'


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """workdir: checkpoints of steps 1 and 2; data_dir: its training data (16
  blocky 64 px images, 4 shards); encoders: {'online'|'target': (params,
  batch_stats)} of the ResNet encoder as train_and_evaluate RETURNED them
  (nested dicts of numpy), a reference independent of any checkpoint reader."""
  workdir: str
  data_dir: str
  encoders: dict


def _train(root):
  """Trains into root/{masks,run} and saves the returned encoders to root/encoders.npz."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import detcon_b  # pylint: disable=g-import-not-at-top
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(root, 'masks')
  mask_records.write_blocky_dataset(data_dir, num_examples=16, size=64, num_shards=4)
  config = detcon_b.get_config('test')
  config.data.dir = data_dir
  config.total_steps = STEPS
  config.ckpt_every_steps = 1
  out = train.train_and_evaluate(config, os.path.join(root, 'run'))
  assert out['finished'] and out['step'] == STEPS, out
  state = jax.device_get(out['state'])
  flat = traverse_util.flatten_dict(
      {net: {'params': getattr(state, f'{net}_params')['encoder'],
             'batch_stats': getattr(state, f'{net}_batch_stats')['encoder']}
       for net in ('online', 'target')}, sep='/')
  np.savez(os.path.join(root, 'encoders.tmp.npz'), **flat)
  # The marker of a finished run: written last, atomically.
  os.replace(os.path.join(root, 'encoders.tmp.npz'), os.path.join(root, 'encoders.npz'))


def get(root):
  """The run under `root` (a folder shared by the pytest workers), trained
  by whichever worker asks first."""
  os.makedirs(root, exist_ok=True)
  done = os.path.join(root, 'encoders.npz')
  # Generous: the owner compiles and trains on a machine that may be busy.
  with filelock.FileLock(os.path.join(root, 'lock'), timeout=1800):
    if not os.path.exists(done):
      for name in ('masks', 'run'):   # A worker that failed half-way.
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
      _train(root)
  with np.load(done) as f:
    tree = traverse_util.unflatten_dict(dict(f), sep='/')
  encoders = {net: (tree[net]['params'], tree[net]['batch_stats'])
              for net in ('online', 'target')}
  return TrainedRun(os.path.join(root, 'run'), os.path.join(root, 'masks'), encoders)


def copy_workdir(run, dst):
  """A private copy of the run's workdir at dst (tests that write into it)."""
  shutil.copytree(run.workdir, dst)
  return str(dst)
