"""precompute_masks --runner=DirectRunner (data_pipeline/masks/beam_runner.py).

The Beam mode must write what the local mode writes: the same shard bytes, the
same per-shard counts and failures in manifest.json, the same resume. Run in
this process like tests/test_precompute_masks.py (whose helpers are reused);
the multi_processing DirectRunner starts 2 SDK worker processes of its own.
"""

import json
import os
import shutil
import socket

from data_pipeline import precompute_masks as pm
from data_pipeline.masks import beam_runner
from data_pipeline.masks import lock as lock_lib
from tests import test_precompute_masks as tpm

MULTI = ('--runner=DirectRunner', '--direct_num_workers=2',
         '--direct_running_mode=multi_processing')
IN_PROCESS = ('--runner=DirectRunner',)
DEMO = ('--source=demo', '--num_examples=24', '--image_size=64', '--num_shards=4',
        *tpm.FAST)
# What must not depend on how the job ran (not timing, runner, parameters).
SAME = ('format_version', 'split', 'source', 'num_examples', 'mask_names', 'fh',
        'shards', 'failures', 'num_failures', 'num_transcoded', 'original_formats')


def beam_run(out_dir, *args, mode=MULTI):
  return pm.main(['precompute_masks', f'--out_dir={out_dir}', '--progress_every_s=0',
                  *mode, *args])


def manifest(out_dir):
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    return json.load(f)


def shard_bytes(out_dir):
  return {f: open(os.path.join(out_dir, f), 'rb').read()
          for f in tpm.shard_files(out_dir)}


def assert_same_output(local_dir, beam_dir):
  assert shard_bytes(beam_dir) == shard_bytes(local_dir)
  for f in tpm.shard_files(local_dir):  # Sidecars: all but the seconds.
    a, b = (json.load(open(os.path.join(d, f + '.json'))) for d in (local_dir, beam_dir))
    a.pop('seconds'), b.pop('seconds')
    assert a == b, f
  want, got = manifest(local_dir), manifest(beam_dir)
  assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
  assert got['runner'] == 'DirectRunner' and want['runner'] == 'local'


def test_multiprocess_direct_runner_writes_local_modes_shards(tmp_path, capsys):
  assert tpm.run(tmp_path / 'local', *DEMO) == 0
  capsys.readouterr()
  assert beam_run(tmp_path / 'beam', *DEMO) == 0
  out = capsys.readouterr().out
  assert 'as an Apache Beam pipeline on DirectRunner' in out
  assert 'inputs_written 24' in out and 'shards_written 4' in out
  assert len(tpm.shard_files(tmp_path / 'beam')) == 4
  assert_same_output(tmp_path / 'local', tmp_path / 'beam')
  m = manifest(tmp_path / 'beam')
  assert m['num_examples'] == 24 and m['timing']['shards_this_run'] == 4
  assert m['parameters']['pipeline_options']['direct_num_workers'] == 2
  tpm.read_dataset(tmp_path / 'beam')  # The input pipeline reads it.

  # Resume: only the deleted shard is computed again, into the same bytes.
  out_dir = tmp_path / 'beam'
  files = tpm.shard_files(out_dir)
  before = shard_bytes(out_dir)
  mtimes = {f: os.stat(out_dir / f).st_mtime_ns for f in files}
  (out_dir / files[2]).unlink()
  (out_dir / f'{files[2]}.json').unlink()
  (out_dir / f'{files[2]}.tmp-99999').write_bytes(b'half a shard')
  (out_dir / 'manifest.json').unlink()
  capsys.readouterr()
  assert beam_run(out_dir, *DEMO) == 0
  out = capsys.readouterr().out
  assert 'resuming: 3 of 4 shards already complete' in out
  assert 'removed 1 stale temporary files' in out
  assert 'running 1 shards (6 inputs)' in out and 'shards_written 1' in out
  assert shard_bytes(out_dir) == before
  assert {f: os.stat(out_dir / f).st_mtime_ns for f in files if f != files[2]} == {
      f: t for f, t in mtimes.items() if f != files[2]}
  assert not [f for f in os.listdir(out_dir) if '.tmp-' in f]
  assert_same_output(tmp_path / 'local', out_dir)
  assert manifest(out_dir)['timing']['inputs_this_run'] == 6

  # Other parameters into the same folder: refused as in the local mode.
  capsys.readouterr()
  assert beam_run(out_dir, *DEMO[:-2], '--fh_scales=200', '--fh_min_sizes=20',
                  mode=IN_PROCESS) == 1
  assert 'different parameters' in capsys.readouterr().err
  assert shard_bytes(out_dir) == before


def test_failures_are_listed_as_in_local_mode(tmp_path):
  src = tpm.photo_folder(str(tmp_path / 'images'), n=4)
  with open(f'{src}/d0/img0.png', 'rb') as f:
    png = f.read()
  with open(f'{src}/d1/corrupt.png', 'wb') as f:
    f.write(png[:len(png) // 2])
  tpm.save(f'{src}/d1/tiny.png', tpm.PHOTO[:20, :40])
  args = (f'--source=folder:{src}', *tpm.FAST, '--num_shards=3')
  assert tpm.run(tmp_path / 'local', *args) == 0
  assert beam_run(tmp_path / 'beam', *args) == 0
  assert_same_output(tmp_path / 'local', tmp_path / 'beam')
  m = manifest(tmp_path / 'beam')
  reasons = {f['id']: f['reason'] for f in m['failures']}
  assert reasons.keys() == {'d1/corrupt.png', 'd1/tiny.png'}
  assert 'truncated' in reasons['d1/corrupt.png']
  assert 'too small for a crop' in reasons['d1/tiny.png']
  assert m['num_examples'] == 4 and m['num_failures'] == 2


def test_url_out_dir_is_written_through_epath(tmp_path):
  """A URL --out_dir (gs:// on Dataflow; file:// here), written with no local copy."""
  assert tpm.run(tmp_path / 'local', *DEMO) == 0
  url = f'file://{tmp_path}/remote'
  assert beam_run(url, *DEMO, mode=IN_PROCESS) == 0
  assert_same_output(tmp_path / 'local', tmp_path / 'remote')
  os.remove(tmp_path / 'remote' / 'train-00001-of-00004.tfrecord.json')
  assert beam_run(url, *DEMO, mode=IN_PROCESS) == 0
  assert manifest(tmp_path / 'remote')['timing']['shards_this_run'] == 1
  assert_same_output(tmp_path / 'local', tmp_path / 'remote')
  # A foreign, non-empty folder is refused.
  shutil.copytree(tmp_path / 'local', tmp_path / 'foreign')
  os.remove(tmp_path / 'foreign' / 'params.json')
  assert beam_run(f'file://{tmp_path}/foreign', *DEMO, mode=IN_PROCESS) == 1


def test_exit_status_and_usage_errors(tmp_path, capsys, monkeypatch):
  src = tmp_path / 'images'
  src.mkdir()
  (src / 'zero.png').write_bytes(b'')
  (src / 'text.jpg').write_text('hello')
  assert beam_run(tmp_path / 'out', f'--source=folder:{src}', *tpm.FAST,
                  mode=IN_PROCESS) == 1
  assert 'every one of the 2 inputs failed' in capsys.readouterr().err
  assert manifest(tmp_path / 'out')['num_failures'] == 2

  demo = ('--source=demo', '--num_examples=2', '--image_size=64', *tpm.FAST)
  assert beam_run(tmp_path / 'o2', *demo, '--direct_num_workers=2',
                  '--direct_running_mode=bogus', mode=IN_PROCESS) == 2
  assert 'bad Beam pipeline option' in capsys.readouterr().err
  assert beam_run(tmp_path / 'o2', *demo, '--direct_num_worker=2', mode=IN_PROCESS) == 2
  assert 'unknown flag(s) --direct_num_worker' in capsys.readouterr().err
  assert beam_run(tmp_path / 'o2', *demo, mode=('--runner=NoSuchRunner',)) == 1
  assert '--runner=NoSuchRunner' in capsys.readouterr().err
  # Without --runner an unknown flag is still an error.
  assert tpm.run(tmp_path / 'o2', *demo, '--direct_num_workers=2') == 2
  assert 'direct_num_workers' in capsys.readouterr().err
  monkeypatch.setattr(beam_runner, 'beam', None)
  assert beam_run(tmp_path / 'o2', *demo, mode=IN_PROCESS) == 1
  assert 'pip install -r requirements-beam.txt' in capsys.readouterr().err
  assert not (tmp_path / 'o2').exists()


def test_launching_process_holds_the_out_dir_lock(tmp_path, capsys, monkeypatch):
  out = tmp_path / 'out'
  out.mkdir()
  lock = out / lock_lib.LOCK_NAME
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                              'started': '2026-01-01T00:00:00+00:00'}))
  assert beam_run(out, *DEMO, mode=IN_PROCESS) == 1  # A live job holds it.
  assert f'is in use by another precompute (pid {os.getpid()}' in capsys.readouterr().err
  lock.unlink()
  held = []
  build = beam_runner.build_pipeline

  def spy(p, plan, *args):
    held.append(json.loads(lock.read_text()))
    return build(p, plan, *args)

  monkeypatch.setattr(beam_runner, 'build_pipeline', spy)
  assert beam_run(out, *DEMO, mode=IN_PROCESS) == 0
  assert [h['pid'] for h in held] == [os.getpid()]
  assert '--runner=DirectRunner' in held[0]['command']
  assert not lock.exists()
  assert '--runner=DirectRunner' in manifest(out)['command']
