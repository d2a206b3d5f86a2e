"""The local mode: shard tasks on a pool of 'spawn' worker processes, with progress.

One task per shard; --num_workers=1 runs them in this process. Each worker
imports TensorFlow once (TensorFlow and fork do not mix, hence 'spawn') and
reports every input through a queue, from which the main process prints
count, rate and ETA every --progress_every_s seconds. The main process hands
out one shard per idle worker, so that it can stop handing out work.

Signals (SIGINT, SIGTERM) go to the main process only (workers ignore them):
the first stops handing out shards, lets the running ones finish, writes
manifest.json of the complete shards marked "partial" and ends with
errors.Interrupted (the command exits 128 + signum: 130 for SIGINT) saying
how to resume (the same command). A second one stops at once: the workers
are killed, their temporary files are removed on the next run (plan.py's
remove_stale), and the partial manifest is still written. Workers die with
the main process even when it is killed (SIGKILL): Linux
prctl(PR_SET_PDEATHSIG, SIGKILL), elsewhere a thread that polls the parent.
"""

import concurrent.futures
import ctypes
import dataclasses
import multiprocessing
import os
import queue as queue_lib
import signal
import sys
import threading
import time

from data_pipeline.masks import plan as plan_lib
from data_pipeline.masks import shards
from data_pipeline.masks.errors import Interrupted
from data_pipeline.masks.errors import PrecomputeError

def default_workers():
  """The CPUs this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


class Progress:
  """Counts inputs done and prints count, rate and ETA every few seconds."""

  def __init__(self, total, every_s, log):
    self.total, self.every_s, self.log = total, every_s, log
    self.done = self.failed = 0
    self.start = time.perf_counter()
    self.first = None      # Seconds until the first input finished (start-up cost).
    self.last_print = self.start

  def add(self, ok):
    self.done += 1
    self.failed += not ok
    if self.first is None:
      self.first = time.perf_counter() - self.start

  def maybe_print(self, force=False):
    now = time.perf_counter()
    if not force and now - self.last_print < self.every_s:
      return
    self.last_print = now
    elapsed = now - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    pct = 100. * self.done / max(self.total, 1)
    self.log(f'  {self.done}/{self.total} inputs ({pct:.1f}%), {rate:.2f} images/s,'
             f' ETA {plan_lib.duration(eta)}, {self.failed} failed')


# Worker-process state (spawned pool).
_PROGRESS_QUEUE = None
_PR_SET_PDEATHSIG = 1


def _watch_parent(parent_pid, every_s=1.0):
  while True:
    time.sleep(every_s)
    if os.getppid() != parent_pid:
      os._exit(1)  # pylint: disable=protected-access


def die_with_parent(parent_pid):
  """Makes this (worker) process end when `parent_pid`, its parent, ends."""
  armed = False
  if sys.platform.startswith('linux'):
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
      armed = False
  if os.getppid() != parent_pid:  # The parent died before prctl took effect.
    os._exit(1)  # pylint: disable=protected-access
  if not armed:  # No prctl: poll the parent.
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name='watch-parent').start()


def _init_worker(progress_queue, parent_pid):
  global _PROGRESS_QUEUE
  # The main process decides what a signal means (a terminal's Ctrl-C reaches
  # the whole process group); workers end with it (die_with_parent).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  die_with_parent(parent_pid)
  _PROGRESS_QUEUE = progress_queue
  shards.limit_tf_threads()  # Once per worker, not per shard.


def _run_task_in_worker(task):
  return shards.process_shard(task, lambda ok: _PROGRESS_QUEUE.put(ok))


class _StopNow(BaseException):
  """Raised by the signal handler at the second signal (not caught as Exception)."""


class Stop:
  """SIGINT / SIGTERM handling of the main process (see the module docstring).

  mode 'now' (planning): a signal raises _StopNow; 'graceful' (computing):
  the first one only sets `signum`, the second raises _StopNow; 'defer'
  (writing the manifest): signals are only noted. After a stop the handlers
  stay (mode 'exit'): a signal while the process exits ends it at once.
  """

  def __init__(self):
    self.signum = None
    self.count = 0
    self.mode = 'now'
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    if self.signum is None:
      for sig, old in self._old.items():
        signal.signal(sig, old)
    else:  # Stopped by a signal: another one while the process exits ends it.
      self.mode = 'exit'
    return False

  def _handle(self, signum, frame):
    del frame
    if self.mode == 'exit':
      os._exit(128 + self.signum)  # pylint: disable=protected-access
    self.count += 1
    if self.signum is None:
      self.signum = signum
    if self.mode == 'now' or (self.mode == 'graceful' and self.count > 1):
      raise _StopNow()

  @property
  def name(self):
    return signal.Signals(self.signum).name if self.signum else 'signal'


def _kill_pool(pool):
  procs = list((getattr(pool, '_processes', None) or {}).values())
  for p in procs:
    try:
      p.kill()
    except Exception:  # pylint: disable=broad-except
      pass
  pool.shutdown(wait=False, cancel_futures=True)
  for p in procs:
    p.join(5)


def run_tasks(tasks, num_workers, progress, stop=None, log=print):
  """Runs the shard tasks in this process or a spawn pool; returns their sidecars.

  With `stop` (a Stop), a first signal ends the loop after the running shards
  (the sidecars so far are returned); a second raises _StopNow, whose
  `sidecars` attribute holds the shards completed until then.
  """
  stop = stop or Stop()
  out = []
  announced = False

  def announce(running):
    nonlocal announced
    if stop.signum is not None and not announced:
      announced = True
      log(f'{stop.name}: no new shards are started; waiting for the {running}'
          ' running to finish (send it again to stop at once)')

  if num_workers <= 1:
    try:
      for task in tasks:
        if stop.signum is not None:
          break

        def report(ok):
          progress.add(ok)
          progress.maybe_print()
          announce(1)
        out.append(shards.process_shard(task, report))
    except _StopNow as e:
      e.sidecars = out
      raise
    return out
  ctx = multiprocessing.get_context('spawn')
  q = ctx.Queue()

  def drain():
    while True:
      try:
        progress.add(q.get_nowait())
      except queue_lib.Empty:
        return

  pool = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=ctx, initializer=_init_worker, initargs=(q, os.getpid()))
  todo = list(tasks)
  running = {}
  try:
    while todo or running:
      # One shard per idle worker: the rest stay here, so a stop hands out no more.
      while todo and len(running) < num_workers and stop.signum is None:
        task = todo.pop(0)
        running[pool.submit(_run_task_in_worker, task)] = task
      if not running:
        break
      done, _ = concurrent.futures.wait(running, timeout=0.25,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      drain()
      progress.maybe_print()
      announce(len(running) - len(done))
      for fut in done:
        task = running.pop(fut)
        try:
          out.append(fut.result())
        except Exception as e:  # pylint: disable=broad-except
          todo.clear()
          for f in running:
            f.cancel()
          pool.shutdown(wait=True, cancel_futures=True)
          raise PrecomputeError(
              f'shard {task.file} failed: {type(e).__name__}: {e}. Completed shards'
              ' are kept: re-run the same command to resume.') from e
    pool.shutdown(wait=True)
    time.sleep(0.05)  # Let the queue's feeder threads flush the last reports.
    drain()
  except _StopNow as e:
    _kill_pool(pool)
    e.sidecars = out
    raise
  return out


def _interrupted_message(stop, plan, sidecars, abandoned):
  missing = plan.num_shards - len(sidecars)
  how = (' again: the running shards were abandoned (the next run removes their'
         ' temporary files)' if abandoned else ': the running shards were finished')
  return (f'interrupted by {stop.name}{how}; {len(sidecars)} of {plan.num_shards}'
          f' shards are complete, {missing} to do. Wrote'
          f' {os.path.join(plan.out_dir, "manifest.json")} marked "partial" (training'
          ' refuses it). To resume, run the same command:\n  ' + plan.command)


def precompute(params, log=print):
  """Runs the whole job in the local mode; returns the manifest dict.

  Raises errors.Interrupted after SIGINT / SIGTERM (see the module docstring).
  """
  t0 = time.perf_counter()
  with Stop() as stop:
    try:
      plan = plan_lib.plan_job(params, log)
    except _StopNow:
      raise Interrupted(f'interrupted by {stop.name} before any shard was computed;'
                        ' to run the job, run the same command again',
                        stop.signum) from None
    try:
      return _run(plan, params, stop, t0, log)
    finally:
      plan.lock.release()


def _run(plan, params, stop, t0, log):
  tasks = plan.tasks
  workers = max(1, min(params.num_workers or default_workers(), len(tasks)))
  if tasks:
    log(f'computing {len(tasks)} shards ({plan.todo} inputs) with {workers} worker'
        f'{"s" if workers > 1 else ""}')
  progress = Progress(plan.todo, params.progress_every_s, log)
  sidecars = dict(plan.done)
  abandoned = False
  stop.mode = 'graceful'
  try:
    new = run_tasks(tasks, workers, progress, stop, log)
  except _StopNow as e:
    new, abandoned = e.sidecars, True
  stop.mode = 'defer'  # A signal while the manifest is written: finish writing it.
  for sidecar in new:
    sidecars[sidecar['shard_index']] = sidecar
  if tasks:
    progress.maybe_print(force=True)
  elapsed = time.perf_counter() - t0
  partial = len(sidecars) < plan.num_shards
  manifest = plan_lib.build_manifest(
      plan, sidecars, partial=partial,
      parameters={**dataclasses.asdict(params), 'num_workers': workers},
      timing={
          'elapsed_s': round(elapsed, 3),
          'inputs_this_run': progress.done,
          'shards_this_run': len(new),
          'startup_s': None if progress.first is None else round(progress.first, 3),
          'shard_seconds': round(sum(s['seconds'] for s in sidecars.values()), 3),
          'num_workers': workers,
      })
  plan_lib.write_manifest(plan.out_dir, manifest)
  if partial:
    raise Interrupted(_interrupted_message(stop, plan, sidecars, abandoned),
                      stop.signum or signal.SIGINT)
  log(plan_lib.manifest_summary(manifest, plan.out_dir, elapsed))
  return manifest
