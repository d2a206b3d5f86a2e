"""Several JAX processes on this machine: 2 processes x 2 CPU devices (gloo).

Checks the multi-host code paths of the trainer: global arrays built from
per-process data, cross-process BatchNorm and gathers (2 processes x 2
devices = 1 process x 4 devices), cooperative orbax checkpoints, per-process
data shards and resume, and what happens when one process dies mid-run (the
others exit; a full relaunch resumes exactly), when the latest checkpoint is
damaged (all fall back to the same step) and when one process finishes well
after the others (all still exit 0).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import detcon_b
from tests import multiprocess_worker
from tests import subprocess_env

# Several processes each: CI runs them; `-m "not slow"` skips them locally. One
# xdist group: they run one after another on one pytest worker (launch/test.sh
# uses --dist loadgroup), never two multi-process launches at once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('multiprocess')]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(commands, logs=None):
  """Starts one process per command (env: 2 CPU devices each).

  Output goes to pipes, or to the files named in `logs` (one per command).
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=subprocess_env.xla_flags(2))
  outputs = ([subprocess.PIPE] * len(commands) if logs is None
             else [open(f, 'w') for f in logs])  # pylint: disable=consider-using-with
  procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)
           for c, out in zip(commands, outputs)]
  if logs is not None:
    for f in outputs:
      f.close()  # The children hold their own descriptors.
  return procs


def wait(procs, timeout=600, expect_ok=True, logs=None):
  """Waits for processes from start(); returns their outputs (pipes or `logs`)."""
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  if logs is not None:   # The output went to files (start(..., logs)).
    outs = []
    for f in logs:
      with open(f) as fh:
        outs.append(fh.read())
  for p, out in zip(procs, outs):
    assert (p.returncode == 0) == expect_ok, out[-4000:]
  return outs


def launch(commands, timeout=600, expect_ok=True):
  """Starts one process per command (env: 2 CPU devices each); waits for all."""
  return wait(start(commands), timeout, expect_ok)


def test_processes_with_different_configs_fail_with_a_message(data_dir, tmp_path):
  port = free_port()
  outs = launch([[sys.executable, '-m', 'dense_ssl.main',
                  '--config=configs/detcon_b.py:test', f'--workdir={tmp_path}/run',
                  f'--config.data.dir={data_dir}', '--config.total_steps=1',
                  f'--config.objectives.detcon.temperature={0.1 + 0.1 * i}',
                  f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                  f'--process_id={i}', '--distributed_timeout_s=60']
                 for i in range(2)], timeout=300, expect_ok=False)
  for out in outs:
    assert 'processes [1] have a different config than process 0' in out


def test_unreachable_coordinator_is_a_clear_error(data_dir, tmp_path):
  # A valid config (main checks it before joining the other processes).
  run = subprocess.run(
      [sys.executable, '-m', 'dense_ssl.main', '--config=configs/detcon_b.py:test',
       f'--workdir={tmp_path}/run', f'--config.data.dir={data_dir}',
       f'--coordinator_address=127.0.0.1:{free_port()}',
       '--num_processes=2', '--process_id=1', '--distributed_timeout_s=3'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 1
  assert 'cannot reach the coordinator 127.0.0.1:' in run.stderr


def test_losing_a_process_then_a_damaged_checkpoint_and_a_late_finisher(
    data_dir, tmp_path):
  """One 2-process workdir through what can go wrong, resumed exactly.

  Each 2-process launch costs about a minute here (imports, compiling,
  orbax), so one workdir takes three launches (it took five in two tests),
  and the third runs beside the second:

  1. A host dies mid-run: process 1 is SIGKILLed once two checkpoints are on
     disk. Process 0 then fails in its next collective (gloo: connection
     reset) and, at the latest after --heartbeat_timeout_s, JAX's
     coordination service declares task 1 dead and terminates it ("the JAX
     distributed service detected fatal errors"): it exits non-zero by
     itself, without finishing.
  2. The killed run's latest checkpoint, step K, is then damaged (an array
     file truncated) and BOTH processes are relaunched on the workdir: they
     take ONE decision: both fall back to step K - 1 (a cooperative
     multi-process restore of a checkpoint the killed run wrote), the damaged
     folder is moved aside once, and training finishes. Process 1 finishes
     10 s after process 0, and both still exit 0: a finished process waits
     for the others at a barrier of the coordination service
     (--shutdown_timeout_s, generous by default) and only then leaves the
     distributed service, whose shutdown barrier has the same timeout;
     before, a process that finished late (a loaded machine) made process 0
     die with "Shutdown barrier has failed ... DEADLINE_EXCEEDED".
  3. An uninterrupted run of the same config (total_steps included: it sets
     the learning-rate and EMA schedules) ends in the same state as the
     killed, damaged and resumed one. Its processes then run
     tests.multiprocess_worker's fixed-batch steps (the run's own step
     program, from the compilation cache), which must equal the same global
     batch over this pytest process's 4 devices (the
     same loss and update with 2 processes x 2 devices as with 1 x 4).
  Resuming the latest checkpoint directly is checked in one process
  (tests/test_train.py). No wall-time assertion (timeouts are generous):
  only that everything ends well.
  """
  # A checkpoint at every step, keep_checkpoints=2 (test preset); 6 steps
  # leave room for the kill to land well before the end.
  steps = 6
  late_s = 10
  workdir = tmp_path / 'run'
  ckpts = workdir / 'checkpoints'
  common = ['--config=configs/detcon_b.py:test', f'--config.data.dir={data_dir}',
            f'--config.total_steps={steps}', '--num_processes=2',
            '--distributed_timeout_s=300']

  def commands(workdir, record=None, late=None, fixed=False, ckpt_every=1, extra=()):
    """One command per process; record: through tests.multiprocess_worker,
    which runs dense_ssl.main unchanged and saves each process's final step,
    loss and parameters to {record}{i}.npz; late: process 1 finishes that
    many seconds after process 0; fixed: the processes then run the
    fixed-batch steps into fixed{i}.npz."""
    port = free_port()

    def entry(i):
      if not record:
        return [sys.executable, '-m', 'dense_ssl.main']
      return ([sys.executable, '-m', 'tests.multiprocess_worker',
               f'--record={tmp_path}/{record}{i}.npz']
              + ([f'--late_exit_s={late}'] if i and late else [])
              + ([f'--fixed_batch_out={tmp_path}/fixed{i}.npz'] if fixed else []))

    return [entry(i) + common + [f'--config.ckpt_every_steps={ckpt_every}'] + list(extra)
            + [f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{port}',
               f'--process_id={i}'] for i in range(2)]

  def read(path):
    with open(path) as f:
      return f.read()

  def tail(path):
    return read(path)[-3000:]

  def finished_steps():
    names = os.listdir(ckpts) if os.path.isdir(ckpts) else []
    return sorted(int(n) for n in names if n.isdigit())   # tmp folders aren't.

  def load(name):
    return [np.load(tmp_path / f'{name}{i}.npz') for i in range(2)]

  # 1. Train until two checkpoints are on disk, then kill process 1.
  logs = [str(tmp_path / f'killed{i}.log') for i in range(2)]
  procs = start(commands(workdir, extra=['--heartbeat_timeout_s=10']), logs)
  try:
    deadline = time.monotonic() + 600
    while len(finished_steps()) < 2:
      assert all(p.poll() is None for p in procs), (
          'a process exited before the second checkpoint:\n'
          + '\n'.join(tail(f) for f in logs))
      assert time.monotonic() < deadline, 'no second checkpoint after 600 s'
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    try:
      # About 10 s (the heartbeat timeout) when idle; generous for a busy machine.
      procs[0].wait(timeout=300)
    except subprocess.TimeoutExpired:
      pytest.fail('process 0 still runs 300 s after process 1 died:\n'
                  + tail(logs[0]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  survivor_log = read(logs[0])
  assert procs[1].returncode == -signal.SIGKILL
  assert procs[0].returncode != 0, survivor_log[-3000:]
  assert 'finished: step' not in survivor_log
  assert ('detected fatal errors' in survivor_log
          or 'heartbeat timeout' in survivor_log), survivor_log[-3000:]
  last = finished_steps()[-1]
  assert 1 < last < steps, finished_steps()

  # 2. Damage step `last` (the latest), relaunch both: they fall back to the
  # step before and finish; process 1 finishes late_s seconds after process 0.
  files = [os.path.join(root, f)
           for root, _, names in os.walk(ckpts / str(last) / 'state')
           for f in names if os.sep + 'd' + os.sep in os.path.join(root, f)]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  # 3.'s uninterrupted run starts now, beside 2.: it shares nothing with it
  # (its own workdir and coordinator) and fills the time 2. spends waiting
  # (its late finisher, the barriers).
  ref_logs = [str(tmp_path / f'reference{i}.log') for i in range(2)]
  reference = start(commands(tmp_path / 'reference', 'reference', fixed=True,
                             ckpt_every=steps), ref_logs)
  try:
    outs = launch(commands(workdir, 'resumed', late=late_s,
                           extra=['--shutdown_timeout_s=600']), timeout=900)
  except BaseException:
    for p in reference:
      p.kill()
    raise
  for i, out in enumerate(outs):
    assert f'checkpoint of step {last} cannot be restored' in out, (i, out[-3000:])
    assert 'is truncated' in out, (i, out[-3000:])
    assert f'resuming from step {last - 1} ' in out, (i, out[-3000:])
    assert f'finished: step {steps}' in out, (i, out[-3000:])
    assert 'Shutdown barrier has failed' not in out, (i, out[-3000:])
  assert f'test hook: finishing {late_s} s late' in outs[1], outs[1][-3000:]
  assert 'waiting up to 600 s (--shutdown_timeout_s) for all 2 processes' in outs[0]
  aside = os.listdir(workdir / 'checkpoints_corrupt')
  assert len(aside) == 1 and aside[0].startswith(f'{last}.'), aside
  assert finished_steps() == [steps - 1, steps]

  # 3. An uninterrupted run of the same config ends in the same state (its
  # only checkpoint the last: they do not change the training).
  outs = wait(reference, timeout=900, logs=ref_logs)
  assert 'JAX 0.10' in outs[0] and '2 processes, 4 devices (2 local)' in outs[0]
  ref, _ = load('reference')
  r0, r1 = load('resumed')
  assert int(r0['step']) == int(r1['step']) == int(ref['step']) == steps
  np.testing.assert_allclose(r0['loss'], ref['loss'], rtol=1e-5)
  assert set(r0.files) == set(ref.files)
  for name in ref.files:
    np.testing.assert_array_equal(r0[name], r1[name])    # Replicas agree.
    np.testing.assert_allclose(r0[name], ref[name], rtol=2e-4, atol=2e-5)

  # 2 processes x 2 devices = 1 process x 4 devices (this pytest process,
  # conftest) on the same global batch, through the run's own step.
  f0, f1 = [np.load(tmp_path / f'fixed{i}.npz') for i in range(2)]
  config = detcon_b.get_config('test')
  config.data.dir = data_dir
  config.total_steps = steps
  losses, params = multiprocess_worker.run(config, multiprocess_worker.FIXED_BATCH_STEPS)
  np.testing.assert_array_equal(f0['losses'], f1['losses'])
  np.testing.assert_allclose(f0['losses'], losses, rtol=1e-5)
  for name, value in params.items():
    np.testing.assert_array_equal(f0[name], f1[name])    # Replicas agree.
    np.testing.assert_allclose(f0[name], value, rtol=2e-4, atol=2e-5)
