"""One job per --out_dir: the lock file `OUT/precompute.lock`.

The launching process of either mode (local or Beam) holds it from the
--out_dir checks to the manifest. It is a small JSON object: host, pid, the
pid's start time (Linux: /proc/<pid>/stat, so that a reused pid is not taken
for the job), start time and the command. A second job refuses to start with
one line naming the holder. A lock left by a dead job is taken over when it
is provably stale: same host and its pid is not alive (or is another process
now); a lock from another host is never taken over (we cannot see its
processes): the message says to delete it if that job is known dead.

Local folders get an atomic create (the content is written to a temporary
file, then hard-linked to the lock's name, which fails if it exists); URLs
(gs://, ...) a write-then-read-back check, which narrows but does not close
the race of two jobs starting in the same instant.
"""

import datetime
import errno
import json
import os
import shlex
import socket
import sys

from data_pipeline.masks import shards
from data_pipeline.masks.errors import PrecomputeError

LOCK_NAME = 'precompute.lock'


def is_own_file(name):
  """True for the lock file and its temporary / stale forms (not output)."""
  return name == LOCK_NAME or name.startswith(LOCK_NAME + '.')


def _pid_start(pid):
  """The start time of process `pid` in clock ticks since boot (Linux), else None."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      stat = f.read()
  except OSError:
    return None
  fields = stat[stat.rfind(b')') + 2:].split()
  return (int(fields[19]), fields[0].decode()) if len(fields) > 19 else None


def pid_alive(pid, start=None):
  """Whether process `pid` of this host runs (and is the one started at `start`)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process: alive.
    pass
  except OSError:
    return False
  now = _pid_start(pid)
  if now is not None:
    if now[1] == 'Z':  # A zombie: dead, not yet reaped by its parent.
      return False
    if start is not None and now[0] != start:  # The pid was reused.
      return False
  return True


class OutDirLock:
  """The lock of one --out_dir; `acquire` raises PrecomputeError when it is held."""

  def __init__(self, out_dir, log=print, command=None):
    self.out_dir = out_dir
    self.path = shards.out_path(out_dir) / LOCK_NAME
    self.log = log
    start = _pid_start(os.getpid())
    self.content = {
        'host': socket.gethostname(), 'pid': os.getpid(),
        'pid_start': start[0] if start else None,
        'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        'command': command or ' '.join(shlex.quote(a) for a in sys.argv),
    }
    self.held = False

  # ------------------------------------------------------------ internals ---

  def _local(self):
    return not shards.is_url(self.out_dir) or self.out_dir.startswith('file://')

  def _try_create(self):
    """Creates the lock with our content; False when it exists."""
    text = json.dumps(self.content, indent=1)
    if self._local():
      path = os.fspath(self.path)
      tmp = f'{path}.tmp-{os.getpid()}'
      with open(tmp, 'w') as f:
        f.write(text)
      try:
        os.link(tmp, path)
        return True
      except FileExistsError:
        return False
      except OSError as e:  # A file system without hard links.
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
          raise
        try:
          fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        with os.fdopen(fd, 'w') as f:
          f.write(text)
        return True
      finally:
        try:
          os.unlink(tmp)
        except OSError:
          pass
    if self.path.exists():
      return False
    self.path.write_text(text)
    return self._read() == self.content

  def _read(self):
    """The lock's content: a dict, {} if unreadable, None if absent."""
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    except Exception:  # pylint: disable=broad-except  # Other backends' errors.
      return None if not self.path.exists() else {}
    try:
      holder = json.loads(text)
      return holder if isinstance(holder, dict) else {}
    except ValueError:
      return {}

  def _describe(self, holder):
    return (f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")},'
            f' started {holder.get("started", "?")}')

  def _take_over(self, holder):
    """Removes the stale lock `holder`; False if it changed meanwhile."""
    if self._local():
      path = os.fspath(self.path)
      aside = f'{path}.stale-{os.getpid()}'
      try:
        os.rename(path, aside)
      except FileNotFoundError:
        return True  # Someone removed it: try to create ours.
      try:
        with open(aside) as f:
          moved = json.loads(f.read())
      except (OSError, ValueError):
        moved = {}
      if moved != holder:  # Another job took it over first: give it back.
        try:
          os.link(aside, path)
        except OSError:
          pass
        os.unlink(aside)
        return False
      os.unlink(aside)
      return True
    self.path.unlink()
    return True

  # --------------------------------------------------------------- public ---

  def acquire(self):
    """Takes the lock (taking over a provably stale one) or raises PrecomputeError."""
    for _ in range(5):
      if self._try_create():
        self.held = True
        return
      holder = self._read()
      if holder is None:
        continue  # Released meanwhile.
      if not holder or 'pid' not in holder:
        raise PrecomputeError(
            f'--out_dir={self.out_dir} is locked by {self.path}, which cannot be read'
            ' (another job may be starting); if no precompute is running on this'
            ' folder, delete that file and re-run')
      same_host = holder.get('host') == socket.gethostname()
      if not same_host:
        raise PrecomputeError(
            f'--out_dir={self.out_dir} is in use by another precompute'
            f' ({self._describe(holder)}); if that job is dead, delete {self.path}'
            ' and re-run the same command')
      if pid_alive(int(holder['pid']), holder.get('pid_start')):
        raise PrecomputeError(
            f'--out_dir={self.out_dir} is in use by another precompute'
            f' ({self._describe(holder)}); wait for it to finish (or stop it), then'
            ' re-run the same command to resume')
      if self._take_over(holder):
        self.log(f'note: taking over the lock {self.path} of a precompute that is'
                 f' no longer running ({self._describe(holder)})')
    raise PrecomputeError(f'--out_dir={self.out_dir}: could not take the lock'
                          f' {self.path} (other jobs keep taking it); retry')

  def release(self):
    """Removes the lock if it is still ours (idempotent)."""
    if not self.held:
      return
    self.held = False
    try:
      if self._read() == self.content:
        self.path.unlink()
    except Exception:  # pylint: disable=broad-except  # Best effort on the way out.
      pass
