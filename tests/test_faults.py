"""Faults on the trainer and converter side: what a user's mistake or a damaged
workdir leads to.

  * bad config values are refused before anything starts, all at once, one
    line per problem naming the full key (config_check + objective hooks);
  * a damaged latest checkpoint (truncated array file, deleted _METADATA) is
    set aside and training falls back to the previous one and finishes; the
    converter says so in one line and uses the fallback (or --step);
  * a failed start leaves a workdir that a corrected run accepts;
  * resuming with another optimiser names the differing config keys;
  * the command lines print a few lines, no traceback, for user errors.

Runs on 4 simulated CPU devices (conftest.py), test preset (ResNet-10, 64 px).
"""

import glob
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import records
from dense_ssl import checkpoint as ckpt_lib
from dense_ssl import config_check
from dense_ssl import train
from tests import mask_records
from tests.test_train import make_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def user_lines(stderr):
  """stderr without absl/JAX/TF log lines: what the user is told."""
  noise = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages before absl|'
                     r'(INFO|WARNING):absl:)')
  return [l for l in stderr.splitlines() if l.strip() and not noise.match(l)]


@pytest.fixture(scope='module')
def fh_data_dir(tmp_path_factory):
  """4 images with one FH map, at scale 500 only."""
  out = str(tmp_path_factory.mktemp('fh_masks'))
  name = records.fh_mask_name(500, 500, 0.8)
  r = np.random.default_rng(0)
  examples = [dict(id=f'ex{i}', image=r.integers(0, 255, (64, 64, 3)).astype(np.uint8),
                   masks={name: r.integers(0, 4, (64, 64)).astype(np.int32)})
              for i in range(4)]
  mask_records.write_mask_dataset(out, examples, num_shards=1, fh=[(500, 500, 0.8)])
  return out


# ------------------------------------------------------------- validation ---

def test_every_shipped_config_and_preset_is_valid():
  import importlib  # pylint: disable=g-import-not-at-top
  for path in sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))):
    name = os.path.basename(path)[:-3]
    if name in ('__init__', 'common'):
      continue
    module = importlib.import_module(f'configs.{name}')
    for preset in ('imagenet', 'coco', 'demo', 'test'):
      found = config_check.problems(module.get_config(preset), check_data=False)
      assert not found, (name, preset, found)


def test_bad_values_are_refused_at_once_naming_the_keys(fh_data_dir, tmp_path):
  config = make_config('detcon_b', fh_data_dir, **{
      'optimizer.base_lr': -0.5, 'data.image_size': 72, 'data.grayscale_prob': 1.5,
      'data.mask': 'fh', 'data.fh_scale': 1000, 'ema.base': 1.5,
      'data.crop_area': (0.9, 0.2), 'objectives.detcon.temperature': 0.0,
      'objectives.detcon.num_samples': 0, 'data.num_local_crops': 2,
      'data.local_crop_size': 40, 'data.local_crop_area': (0.3, 0.1)})
  workdir = tmp_path / 'run'
  with pytest.raises(config_check.ConfigError) as e:
    train.train_and_evaluate(config, str(workdir))
  want = [
      'config.optimizer.base_lr=-0.5: must be > 0',
      'config.data.image_size=72: must be a multiple of 32',
      'config.data.grayscale_prob=1.5: must be in [0, 1]',
      'config.data.fh_scale=1000: the mask dataset',
      'config.ema.base=1.5: must be in [0, 1]',
      'config.data.crop_area=(0.9, 0.2): the area range is not ordered',
      'config.objectives.detcon.temperature=0.0: must be > 0',
      'config.objectives.detcon.num_samples=0: must be >= 1',
      'config.data.local_crop_size=40: must be a multiple of 32',
      'config.data.local_crop_area=(0.3, 0.1): the area range is not ordered',
  ]
  for line in want:
    assert sum(p.startswith(line) for p in e.value.problems) == 1, (line, e.value.problems)
  assert len(e.value.problems) == len(want), e.value.problems
  assert "holds FH scales ['500'] only" in str(e.value)
  assert str(e.value).count('\n') == len(want)          # A header, one line each.
  assert not workdir.exists()                            # Refused before anything.
  # The stored scale is accepted.
  ok = make_config('detcon_b', fh_data_dir, **{'data.mask': 'fh', 'data.fh_scale': 500})
  assert config_check.problems(ok) == []


def test_objective_hooks_and_data_requirements(data_dir):
  config = make_config('byol', data_dir, **{
      'objectives.moco.weight': 0.0, 'objectives.scrl.weight': 1.0,
      'objectives.scrl.num_boxes': 0, 'objectives.clove.weight': 1.0,
      'objectives.clove.dim': 30, 'objectives.clove.top_k': 0,
      'objectives.lc.weight': -1.0, 'data.mask': 'user'})
  found = config_check.problems(config)
  assert 'config.objectives.scrl.num_boxes=0: must be >= 1 (an integer)' in found
  assert any(p.startswith('config.objectives.clove.dim=30: must be a multiple of '
                          'config.objectives.clove.attention_heads=8') for p in found)
  assert 'config.objectives.clove.top_k=0: must be >= 1 (an integer)' in found
  assert 'config.objectives.lc.weight=-1.0: must be >= 0 (0 = off)' in found
  assert any(p.startswith("config.data.mask='user': the mask dataset") for p in found)
  # MoCo's queue takes whole batches; the hook runs only when MoCo is on.
  moco = make_config('byol', data_dir, **{'objectives.byol.weight': 0.0,
                                          'objectives.moco.weight': 1.0,
                                          'objectives.moco.queue_size': 60})
  assert config_check.problems(moco) == [
      'config.objectives.moco.queue_size=60: must be a multiple of '
      'config.batch_size=8 (the queue takes whole global batches)']
  # A missing dataset is one problem among the others, naming config.data.dir.
  gone = make_config('byol', '/no/such/masks', **{'optimizer.weight_decay': -1.0})
  found = config_check.problems(gone)
  assert found[0] == 'config.optimizer.weight_decay=-1.0: must be >= 0'
  assert found[1].startswith("config.data.dir='/no/such/masks': no such directory")
  assert len(found) == 2


# ------------------------------------------------- a failed start, corrected ---

def test_a_failed_start_leaves_a_workdir_a_corrected_run_accepts(data_dir, tmp_path,
                                                                 monkeypatch):
  workdir = str(tmp_path / 'run')
  # 1. A wrong data dir: refused before anything is written.
  with pytest.raises(config_check.ConfigError, match='config.data.dir'):
    train.train_and_evaluate(make_config('simclr', str(tmp_path / 'nope')), workdir)
  # 2. A start of another run that fails after the setup (here: at init).
  def boom(*args, **kwargs):
    raise RuntimeError('simulated failure at init')
  monkeypatch.setattr(train, 'init_state', boom)
  with pytest.raises(RuntimeError, match='simulated'):
    train.train_and_evaluate(make_config('simclr', data_dir, total_steps=1), workdir)
  monkeypatch.undo()
  # 3. Even a config.json of another run, with no checkpoint, binds nothing.
  ckpt_lib.save_config(workdir, make_config('simclr', data_dir))
  out = train.train_and_evaluate(make_config('byol', data_dir, total_steps=1), workdir)
  assert out['finished'] and out['step'] == 1
  assert ckpt_lib.read_config(workdir)['objectives']['byol']['weight'] == 1.0
  # Once checkpoints exist, another run is refused as before.
  with pytest.raises(ValueError, match='holds checkpoints of a different run'):
    train.train_and_evaluate(make_config('simclr', data_dir, total_steps=2), workdir)


# --------------------------------------------- a damaged latest checkpoint ---

# The tests that read three_steps run on one pytest-xdist worker (launch/test.sh:
# --dist loadgroup): each worker would otherwise train its own.
THREE_STEPS = pytest.mark.xdist_group('faults_three_steps')


@pytest.fixture(scope='module')
def three_steps(data_dir, tmp_path_factory):
  """A BYOL workdir with complete checkpoints of steps 2 and 3 (of 4)."""
  workdir = str(tmp_path_factory.mktemp('three_steps') / 'run')
  config = make_config('byol', data_dir, total_steps=4, ckpt_every_steps=1)
  out = train.train_and_evaluate(config, workdir, stop_after_steps=3)
  assert out['step'] == 3
  assert ckpt_lib.available_steps(workdir) == [2, 3]
  return workdir, config


def truncate_largest_array_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', '*'),
                                recursive=True)
           if os.path.isfile(f) and '/d/' in f]
  largest = max(files, key=os.path.getsize)
  # To an odd size: the damage report names the file whose size the error
  # states, and OCDBT's files are whole 4 KiB pages, so half of one can equal
  # another's size (then the report can only say "an array file under
  # state", which is right but not what this test pins).
  os.truncate(largest, os.path.getsize(largest) // 2 | 1)
  return os.path.relpath(largest, step_dir)


def damaged_copy(three_steps, tmp_path, how):
  workdir = str(tmp_path / 'run')
  shutil.copytree(three_steps[0], workdir)
  step_dir = os.path.join(workdir, 'checkpoints', '3')
  if how == 'truncated':
    return workdir, truncate_largest_array_file(step_dir) + ' is truncated'
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))
  return workdir, 'state/_METADATA is missing'


@THREE_STEPS
@pytest.mark.parametrize('how', ['truncated', 'no_metadata'])
def test_damaged_latest_checkpoint_falls_back_and_training_finishes(
    three_steps, tmp_path, caplog, capfd, how):
  workdir, why = damaged_copy(three_steps, tmp_path, how)
  with caplog.at_level(logging.INFO):
    out = train.train_and_evaluate(three_steps[1], workdir)
  assert out['finished'] and out['step'] == 4
  text = caplog.text
  assert f'checkpoint of step 3 cannot be restored: {why}' in text, text[-3000:]
  assert 'resuming from step 2 ' in text
  assert 'falling back to step 2' in text
  # Kept aside, not deleted, and no longer one of orbax's steps.
  aside = glob.glob(os.path.join(workdir, 'checkpoints_corrupt', '3.*'))
  assert len(aside) == 1 and os.path.isdir(os.path.join(aside[0], 'state'))
  assert ckpt_lib.available_steps(workdir) == [3, 4]   # Step 3 again, then 4.
  # The asyncio echoes of the failed reads are gone.
  assert 'Event loop is closed' not in capfd.readouterr().err


@THREE_STEPS
def test_resuming_with_another_optimiser_names_the_differing_keys(three_steps, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(three_steps[0], workdir)
  config = make_config('byol', three_steps[1].data.dir, total_steps=4,
                       ckpt_every_steps=1, **{'optimizer.name': 'sgd'})
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "config.optimizer.name: 'lars' in the checkpoint's run, 'sgd' now" in message
  assert 'partial_restore' not in message
  assert ckpt_lib.available_steps(workdir) == [2, 3]      # Nothing set aside.
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))


# ------------------------------------------------------------- converter ---

def convert_cli(*args):
  return subprocess.run([sys.executable, '-m', 'dense_ssl.convert', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


@THREE_STEPS
def test_converter_skips_a_damaged_latest_checkpoint_in_one_line(three_steps, tmp_path):
  workdir, why = damaged_copy(three_steps, tmp_path, 'truncated')
  out = str(tmp_path / 'r10.pkl')
  common = ['--to=detectron2', '--noverify', '--allow_custom_detectron2_depth']
  run = convert_cli(f'--workdir={workdir}', f'--out={out}', *common)
  assert run.returncode == 0, run.stderr[-3000:]
  said = [l for l in run.stdout.splitlines() if 'cannot be restored' in l]
  assert len(said) == 1 and said[0].startswith(
      f'dense_ssl.convert: step 3 cannot be restored ({why}')
  assert 'using step 2, the newest checkpoint that restores' in said[0]
  assert 'online encoder of step 2' in run.stdout
  assert 'Traceback' not in run.stderr and 'Event loop is closed' not in run.stderr
  # The other tools' one encoder loader (dense_ssl.evaluate, .flip_test) says
  # the same, in the same words (it used to fall back silently).
  from dense_ssl import evaluate  # pylint: disable=g-import-not-at-top
  lines = []
  _, _, info = evaluate.build_encoder(workdir=workdir, log=lines.append)
  assert info['step'] == 2 and info['skipped_steps'] == [3]
  # (Which array's read fails first varies from run to run: not compared.)
  unnamed = lambda l: re.sub(r'reading array \S+', 'reading array A', l)
  assert [unnamed('dense_ssl.convert: ' + l) for l in lines] == [unnamed(l) for l in said]
  # --step chooses; the damaged one asked for by name is one line.
  run = convert_cli(f'--workdir={workdir}', f'--out={out}', '--step=3', *common)
  assert run.returncode == 1
  lines = user_lines(run.stderr)
  assert len(lines) == 1, run.stderr[-3000:]
  assert lines[0].startswith('dense_ssl.convert: ERROR: --step=3: the checkpoint '
                             f'cannot be restored: {why}')
  assert lines[0].endswith('other steps: [2].')
  # An existing directory as --out: one line, before any work.
  run = convert_cli(f'--workdir={workdir}', f'--out={tmp_path}', *common)
  assert run.returncode == 1
  assert user_lines(run.stderr) == [
      f'dense_ssl.convert: ERROR: --out={tmp_path} is a directory: give the file to '
      f'write, e.g. --out={os.path.join(str(tmp_path), "model.pth")}.']
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))  # Read-only tool.


# --------------------------------------------------------- the main command ---

def main_cli(*args):
  return subprocess.run([sys.executable, '-m', 'dense_ssl.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_main_config_typo_is_one_line(tmp_path):
  run = main_cli('--config=configs/detcon_b.py:test', f'--workdir={tmp_path}',
                 '--config.objectives.detcon.temprature=0.2')
  assert run.returncode == 2   # A flag error (data_pipeline/cli.py).
  assert 'Traceback' not in run.stderr
  # Nothing else: no TensorFlow start-up notices (data_pipeline/tf_setup.py).
  assert run.stderr.splitlines() == [
      'dense_ssl.main: ERROR: --config.objectives.detcon.temprature: '
      'config.objectives.detcon.temprature is not a config key (did you mean '
      "'temperature'?); see the config file for the keys there are."]
  assert not os.path.exists(tmp_path / 'checkpoints')   # Refused before anything.
  # --verbose keeps the traceback for whoever wants it.
  run = main_cli('--config=configs/detcon_b.py:test', f'--workdir={tmp_path}',
                 '--config.objectives.detcon.temprature=0.2', '--verbose')
  assert run.returncode != 0 and 'Traceback' in run.stderr


def test_tensorflow_start_up_notices_are_dropped_and_real_lines_kept(tmp_path):
  """The first TensorFlow import (tf_setup) drops the native notices it prints
  on import and passes anything else on: a stand-in 'tensorflow' package that
  writes both to file descriptor 2, as the real one's C++ logging does."""
  fake = tmp_path / 'tensorflow'
  fake.mkdir()
  (fake / '__init__.py').write_text(
      'import os\n'
      'os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called '
      'are written to STDERR\\n"\n'
      '          b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. '
      'You may see ...\\n"\n'
      '          b"E0000 00:00:1.0 1 something.cc:1] a real error\\n")\n'
      'class config:\n'
      '  @staticmethod\n'
      '  def set_visible_devices(devices, kind):\n'
      '    pass\n')
  run = subprocess.run(
      [sys.executable, '-c', 'from data_pipeline import tf_setup\n'
       'tf = tf_setup.hide_accelerators()\nprint(tf.__file__)'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}'))
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == str(fake / '__init__.py')
  assert run.stderr.splitlines() == ['E0000 00:00:1.0 1 something.cc:1] a real error']


@pytest.mark.parametrize('module,args,expect', [
    ('dense_ssl.convert', ['--workdir=/nowhere', '--out=/tmp/x.pth'],
     'dense_ssl.convert: ERROR: flag --to=None: Flag --to must have a value other than None.'),
    ('dense_ssl.evaluate', ['--data_dir=/nowhere', '--probe_stepz=3'],
     "dense_ssl.evaluate: ERROR: Unknown command line flag 'probe_stepz'"),
])
def test_flag_errors_are_one_line_and_exit_2(module, args, expect):
  """The convention of every entry point (data_pipeline/cli.py): a flag error is
  `<tool>: ERROR: ... (--help lists the flags)` and exit status 2, nothing else."""
  run = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 2, run.stderr
  lines = run.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(expect), run.stderr
  assert lines[0].endswith('(--help lists the flags)')


@pytest.mark.parametrize('module,flag', [('dense_ssl.evaluate', '--data_dir'),
                                         ('dense_ssl.compile_check', '--accelerator')])
def test_help_exits_0_and_lists_the_flags(module, flag):
  """--help is not an error, also where required flags are missing (a tool's own
  FlagValues: evaluate's; compile_check's, parsed before absl's)."""
  run = subprocess.run([sys.executable, '-m', module, '--help'], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr
  assert flag in run.stdout and 'ERROR' not in run.stderr


def test_main_bad_values_are_a_few_lines(data_dir, tmp_path):
  run = main_cli('--config=configs/detcon_b.py:test', f'--workdir={tmp_path}/run',
                 f'--config.data.dir={data_dir}', '--config.optimizer.base_lr=-0.5',
                 '--config.data.image_size=72')
  assert run.returncode == 1
  assert 'Traceback' not in run.stderr
  lines = user_lines(run.stderr)
  assert len(lines) == 3 and len(lines) <= 5, run.stderr
  assert lines[0].startswith('dense_ssl.main: ERROR: the config has 2 problems')
  assert lines[1].strip() == 'config.optimizer.base_lr=-0.5: must be > 0'
  assert lines[2].strip().startswith('config.data.image_size=72: must be a multiple of 32')
  assert not os.path.exists(tmp_path / 'run')
