"""Faults of the mask precompute, each test a reproduction of one.

A damaged shard is found by a re-run (size; checksum with --verify) and
recomputed, and the training input pipeline names it with the repair command;
ambiguous user label maps, symlinked folders, unsupported and undecodable file
names are reported, not dropped; SIGINT leaves a partial manifest and a
resumable folder; workers die with a SIGKILLed main process; one job per
--out_dir (lock file, stale locks taken over). Demo scenes of 64 px; the
signal tests run the command as a subprocess and wait for its first progress
line (no fixed sleeps, no wall-time assertions).
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest

from data_pipeline import input_pipeline as ip
from data_pipeline import tf_setup
from data_pipeline.masks import lock as lock_lib
from tests import fake_data
from tests import test_precompute_masks as tpm

tf = tf_setup.hide_accelerators()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ('--source=demo', '--num_examples=24', '--image_size=64', '--num_shards=4',
         *tpm.FAST)
# Long enough that 2 workers are still busy when the first progress line comes.
LONG = ('--source=demo', '--num_examples=160', '--image_size=64', '--num_shards=8',
        *tpm.FAST)
LOCK = lock_lib.LOCK_NAME


def shard_bytes(out_dir):
  return {f: (out_dir / f).read_bytes() for f in tpm.shard_files(out_dir)}


def sidecar(out_dir, file):
  return json.loads((out_dir / f'{file}.json').read_text())


def iterator(out_dir):
  cfg = fake_data.data_config(dir=str(out_dir), image_size=32, mask='gt', shuffle_buffer=8,
                              color_on='host')
  return ip.make_pretrain_iterator(cfg, global_batch_size=4, seed=0, start_step=0,
                                   process_index=0, process_count=1,
                                   num_local_devices=1)


# --------------------------------------------------------- damaged shards ---

def test_damaged_shard_is_recomputed_and_named_by_the_input_pipeline(tmp_path, capsys):
  out = tmp_path / 'out'
  assert tpm.run(out, *SMALL) == 0
  before = shard_bytes(out)
  files = sorted(before)
  bad = out / files[1]
  good = before[files[1]]
  assert sidecar(out, files[1])['num_bytes'] == len(good)
  assert re.fullmatch(r'crc32:[0-9a-f]{8}', sidecar(out, files[1])['checksum'])

  # Truncated: training refuses to start, naming the shard and the repair.
  bad.write_bytes(good[:len(good) // 2])
  with pytest.raises(tf.errors.DataLossError) as e:
    iterator(out)
  msg = e.value.message
  assert str(bad) in msg and 'truncated or changed' in msg
  assert f'python -m data_pipeline.precompute_masks --source=demo --out_dir={out}' in msg
  assert msg.endswith('--verify')
  # The re-run finds it by its size and recomputes it, one line.
  capsys.readouterr()
  assert tpm.run(out, *SMALL) == 0
  log = capsys.readouterr().out
  assert (f'shard {files[1]}: {len(good) // 2:,} bytes but its sidecar says'
          f' {len(good):,} (truncated or changed): recomputing it') in log
  assert 'resuming: 3 of 4 shards already complete' in log
  assert shard_bytes(out) == before

  # Same size, one byte changed: the input pipeline's read error names it.
  flipped = bytearray(good)
  flipped[len(good) // 2] ^= 0xFF
  bad.write_bytes(bytes(flipped))
  it = iterator(out)
  with pytest.raises(tf.errors.DataLossError) as e:
    for _ in range(20):  # 6 batches per epoch: every record is read.
      next(it)
  msg = e.value.message
  assert f'damaged shard {bad} (corrupted record at' in msg, msg
  assert '--verify' in msg and f'--out_dir={out}' in msg
  # The size matches: only --verify (the checksum) finds it.
  capsys.readouterr()
  assert tpm.run(out, *SMALL) == 0
  assert 'resuming: 4 of 4 shards already complete' in capsys.readouterr().out
  assert tpm.run(out, *SMALL, '--verify') == 0
  log = capsys.readouterr().out
  assert re.search(rf'shard {files[1]}: checksum crc32:\w+ but its sidecar says'
                   r' crc32:\w+ \(corrupt or changed\): recomputing it', log), log
  assert 'resuming: 3 of 4 shards already complete (sizes and checksums checked' in log
  assert shard_bytes(out) == before

  # Sidecars of an older version (no size, no checksum): checked by reading.
  for f in files:
    old = sidecar(out, f)
    del old['num_bytes'], old['checksum']
    (out / f'{f}.json').write_text(json.dumps(old))
  (out / files[2]).write_bytes(before[files[2]][:1000])
  assert tpm.run(out, *SMALL) == 0
  log = capsys.readouterr().out
  assert f'shard {files[2]}: cannot be read (' in log and 'truncated record' in log
  assert 'resuming: 3 of 4 shards already complete' in log
  assert shard_bytes(out) == before
  assert all(sidecar(out, f)['num_bytes'] == len(before[f]) for f in files)


# ---------------------------------------------------------- folder inputs ---

def test_images_sharing_a_user_mask_are_refused(tmp_path):
  src, masks = tmp_path / 'images', tmp_path / 'labels'
  tpm.save(f'{src}/a.png', tpm.PHOTO)
  tpm.save(f'{src}/sub/pair.jpg', tpm.PHOTO2, 'JPEG')
  tpm.save(f'{src}/sub/pair.png', tpm.PHOTO2)
  for name, shape in (('a', tpm.PHOTO.shape), ('sub/pair', tpm.PHOTO2.shape)):
    tpm.save(f'{masks}/{name}.png', np.zeros(shape[:2], np.uint8))
  assert tpm.run(tmp_path / 'out', f'--source=folder:{src}', f'--user_masks={masks}',
                 *tpm.FAST, '--nolabels') == 0  # A mixed layout (test_labels.py).
  manifest, exs = tpm.read_dataset(tmp_path / 'out')
  assert sorted(exs) == ['a.png']
  reasons = {f['id']: f['reason'] for f in manifest['failures']}
  assert sorted(reasons) == ['sub/pair.jpg', 'sub/pair.png']
  for reason in reasons.values():
    assert reason.startswith('ambiguous user mask: images sub/pair.jpg and'
                             f' sub/pair.png would both take {masks}/sub/pair.png')


def test_folder_listing_follows_symlinks_and_counts_what_it_skips(tmp_path):
  src, outside = tmp_path / 'images', tmp_path / 'elsewhere'
  tpm.save(f'{src}/real/a.png', tpm.PHOTO)
  tpm.save(f'{outside}/b.png', tpm.PHOTO2)
  os.symlink(outside, src / 'linked')          # Followed.
  os.symlink(outside, src / 'twice')           # The same folder again: listed once.
  os.symlink(src, src / 'real' / 'loop')       # A cycle: must not hang.
  tpm.save(f'{src}/scan.tif', tpm.PHOTO, 'TIFF')
  frames = [Image.fromarray(tpm.PHOTO), Image.fromarray(tpm.PHOTO[::-1])]
  frames[0].save(src / 'anim.gif', save_all=True, append_images=frames[1:])
  (src / 'notes.txt').write_text('x')
  (src / 'README').write_text('x')
  tpm.save(os.fsdecode(os.fsencode(str(src)) + b'/bad\xff.png'), tpm.PHOTO3)
  # A mixed layout (bad\xff.png lies in the folder): no image labels.
  assert tpm.run(tmp_path / 'out', f'--source=folder:{src}', *tpm.FAST, '--nolabels') == 0
  manifest, exs = tpm.read_dataset(tmp_path / 'out')
  assert sorted(exs) == ['linked/b.png', 'real/a.png']
  assert manifest['skipped']['count'] == 4
  assert manifest['skipped']['by_extension'] == {'': 1, '.gif': 1, '.tif': 1, '.txt': 1}
  folders = {f['path']: f['reason'] for f in manifest['skipped']['folders']}
  assert folders == {
      'real/loop': 'a symlink loop back to . (not followed)',
      'twice': 'another path to the folder listed as linked (not followed)'}
  [failure] = manifest['failures']
  assert failure['id'] == 'bad\\xff.png'
  assert failure['reason'] == ('file name is not valid UTF-8 (bad\\xff.png): rename'
                               ' it (image ids are stored as UTF-8 text)')


# ------------------------------------------------------------ subprocesses ---

class Job:
  """precompute_masks in a subprocess; stdout read by a thread, stderr to a file."""

  def __init__(self, tmp_path, out_dir, *args, workers=2):
    self.err_path = tmp_path / f'stderr-{time.monotonic_ns()}'
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO] + [p for p in env.get(
        'PYTHONPATH', '').split(os.pathsep) if p])
    with open(self.err_path, 'w') as err:
      self.proc = subprocess.Popen(
          [sys.executable, '-m', 'data_pipeline.precompute_masks', f'--out_dir={out_dir}',
           f'--num_workers={workers}', '--progress_every_s=0', *args],
          stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, env=env)
    self.lines = queue.Queue()
    self.out = []
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.out.append(line)
      self.lines.put(line)
    self.lines.put(None)

  def wait_for_progress(self, timeout=300):
    """Blocks until a progress line says at least one input is done."""
    deadline = time.monotonic() + timeout
    while True:
      line = self.lines.get(timeout=max(1, deadline - time.monotonic()))
      if line is None:
        pytest.fail(f'the job ended before any progress: {"".join(self.out)}'
                    f' {self.err_path.read_text()}')
      m = re.match(r'\s+(\d+)/\d+ inputs', line)
      if m and int(m[1]) > 0:
        return

  def wait(self, timeout=300):
    rc = self.proc.wait(timeout)
    return rc, ''.join(self.out), self.err_path.read_text()


def children(pid):
  """The pids of the processes whose parent is `pid` (Linux /proc)."""
  out = []
  for d in os.listdir('/proc'):
    if d.isdigit():
      try:
        with open(f'/proc/{d}/stat', 'rb') as f:
          stat = f.read()
      except OSError:
        continue
      if int(stat[stat.rfind(b')') + 2:].split()[1]) == pid:
        out.append(int(d))
  return out


def cmdline(pid):
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read().replace(b'\0', b' ').decode(errors='replace')
  except OSError:
    return ''


def gone(pid):
  """True when `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      stat = f.read()
  except OSError:
    return True
  return stat[stat.rfind(b')') + 2:].split()[0] == b'Z'


def test_sigint_leaves_a_partial_manifest_and_the_rerun_completes(tmp_path, capsys):
  out = tmp_path / 'out'
  job = Job(tmp_path, out, *LONG)
  job.wait_for_progress()
  os.kill(job.proc.pid, signal.SIGINT)
  rc, stdout, stderr = job.wait()
  assert rc == 130, stdout + stderr
  assert 'SIGINT: no new shards are started' in stdout
  assert 'interrupted by SIGINT' in stderr and 'marked "partial"' in stderr
  assert f'python -m data_pipeline.precompute_masks --source=demo --out_dir={out}' in stderr
  assert 'Traceback' not in stderr
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['partial'] is True
  complete = [s['file'] for s in manifest['shards']]
  assert 0 < len(complete) < 8 and len(complete) + len(manifest['missing_shards']) == 8
  assert sorted(tpm.shard_files(out)) == complete
  assert not (out / LOCK).exists()
  with pytest.raises(ValueError, match='is partial: .* interrupted'):
    ip.read_manifest(str(out))
  # The same command (here in this process, 1 worker: the same bytes) finishes it.
  capsys.readouterr()
  assert tpm.run(out, *LONG) == 0
  assert (f'resuming: {len(complete)} of 8 shards already complete'
          in capsys.readouterr().out)
  assert tpm.run(tmp_path / 'ref', *LONG) == 0
  assert shard_bytes(out) == shard_bytes(tmp_path / 'ref')
  assert json.loads((out / 'manifest.json').read_text())['partial'] is False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc')
def test_killed_parent_leaves_no_workers_and_a_second_job_is_refused(tmp_path, capsys):
  out = tmp_path / 'out'
  job = Job(tmp_path, out, *LONG)
  job.wait_for_progress()
  # While the first job holds the lock, a second one on the folder is refused.
  capsys.readouterr()
  assert tpm.run(out, *LONG) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'data_pipeline.precompute_masks: ERROR: --out_dir={out} is in use by another'
                        f' precompute (pid {job.proc.pid} on host {socket.gethostname()},')
  assert len(err.splitlines()) == 1
  workers = [p for p in children(job.proc.pid) if 'multiprocessing' in cmdline(p)
             and 'resource_tracker' not in cmdline(p)]
  assert len(workers) == 2
  job.proc.kill()
  job.wait()
  deadline = time.monotonic() + 60
  while not all(gone(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert [p for p in workers if not gone(p)] == []
  # Its lock is left behind; this host, dead pid: the next run takes it over.
  assert json.loads((out / LOCK).read_text())['pid'] == job.proc.pid
  assert tpm.run(out, *LONG) == 0
  log = capsys.readouterr().out
  assert f'taking over the lock {out / LOCK} of a precompute that is no longer' in log
  assert not (out / LOCK).exists()
  assert json.loads((out / 'manifest.json').read_text())['partial'] is False


def test_lock_held_by_a_live_job_or_another_host_is_respected(tmp_path, capsys):
  out = tmp_path / 'out'
  out.mkdir()
  here = socket.gethostname()

  def hold(**kw):
    (out / LOCK).write_text(json.dumps({'host': here, 'pid': os.getpid(),
                                        'started': '2026-01-01T00:00:00+00:00', **kw}))

  hold()  # This process: alive.
  assert tpm.run(out, *SMALL) == 1
  err = capsys.readouterr().err
  assert f'is in use by another precompute (pid {os.getpid()} on host {here}' in err
  assert 'wait for it to finish' in err
  hold(host='other-host', pid=1)
  assert tpm.run(out, *SMALL) == 1
  err = capsys.readouterr().err
  assert 'pid 1 on host other-host' in err and f'delete {out / LOCK} and re-run' in err
  assert sorted(os.listdir(out)) == [LOCK]  # Nothing written.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  hold(pid=dead.pid)
  assert tpm.run(out, *SMALL) == 0
  assert 'taking over the lock' in capsys.readouterr().out
  assert not (out / LOCK).exists()
