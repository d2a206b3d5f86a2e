"""LC-loss's flip test tool: the accuracy on hand-built features, and the CLI path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dense_ssl import flip_test
from tests import mask_records
from tests import trained_run as trained_run_lib


def test_accuracy_is_one_for_mirrored_features_and_zero_without_the_mirror():
  r = np.random.default_rng(0)
  a = r.normal(size=(3, 4, 6, 8))
  acc, err = flip_test.correspondence_accuracy(a, a[:, :, ::-1])
  assert (acc, err) == (1.0, 0.0)
  # Flip-invariant features (what a global loss can settle for) match the
  # same cell, never its mirror when the width is even.
  acc, err = flip_test.correspondence_accuracy(a, a)
  assert acc == 0.0 and err > 0
  # Mirrored but with the two rows swapped: every match is on the wrong row.
  mirrored = a[:, :2, ::-1]
  acc, err = flip_test.correspondence_accuracy(a[:, :2], mirrored[:, ::-1])
  assert acc == 0.0 and err == 1.0


@pytest.mark.xdist_group(trained_run_lib.XDIST_GROUP)
def test_flip_test_on_a_trained_checkpoint(trained_run, tmp_path):
  # The real trainer's 2-step DetCon-B workdir (conftest's shared run): the
  # tool reads any method's encoder.
  data = str(tmp_path / 'masks')
  mask_records.write_blocky_dataset(data, num_examples=8, size=64, num_shards=2)
  workdir = str(tmp_path / 'run')   # The CLI below takes it relative to tmp_path.
  os.symlink(trained_run.workdir, workdir)
  result = flip_test.run(workdir, data, feature='c4', num_images=6, image_size=64,
                         batch_size=4)
  assert result['grid'] == [4, 4] and result['num_images'] == 6
  assert 0.0 <= result['accuracy'] <= 1.0 and result['chance'] == 1 / 16
  assert result['step'] == 2 and result['network'] == 'online'
  # The EMA target, read from its fixed place in the TrainState too.
  target = flip_test.run(workdir, data, network='target', feature='c4',
                         num_images=2, image_size=64, batch_size=2)
  assert target['network'] == 'target' and target['num_images'] == 2
  out = tmp_path / 'flip.json'
  # The CLI with paths relative to the working directory (as in README).
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo)
  run = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.flip_test', '--workdir=run',
       '--data_dir=masks', '--num_images=4', '--image_size=64', '--feature=c4',
       '--out=flip.json'], capture_output=True, text=True, check=True,
      cwd=tmp_path, env=env)
  assert 'correspondence accuracy' in run.stdout
  assert json.loads(out.read_text())['num_images'] == 4


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  run = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.flip_test', f'--workdir={tmp_path / "none"}',
       f'--data_dir={tmp_path}'], capture_output=True, text=True)
  assert run.returncode != 0
  assert 'dense_ssl.flip_test: ERROR: --workdir=' in run.stderr and 'no checkpoints' in run.stderr
