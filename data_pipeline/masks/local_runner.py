"""The local mode: shard tasks on a pool of 'spawn' worker processes, with progress.

One task per shard; --num_workers=1 runs them in this process. Each worker
imports TensorFlow once (TensorFlow and fork do not mix, hence 'spawn') and
reports every input through a queue, from which the main process prints
count, rate and ETA every --progress_every_s seconds.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import queue as queue_lib
import time

from data_pipeline.masks import plan as plan_lib
from data_pipeline.masks import shards
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


def _init_worker(progress_queue):
  global _PROGRESS_QUEUE
  _PROGRESS_QUEUE = progress_queue
  shards.limit_tf_threads()  # Once per worker, not per shard.


def _run_task_in_worker(task):
  return shards.process_shard(task, lambda ok: _PROGRESS_QUEUE.put(ok))


def run_tasks(tasks, num_workers, progress):
  """Runs the shard tasks in this process or a spawn pool; returns their sidecars."""
  if num_workers <= 1:
    out = []
    for task in tasks:
      def report(ok):
        progress.add(ok)
        progress.maybe_print()
      out.append(shards.process_shard(task, report))
    return out
  ctx = multiprocessing.get_context('spawn')
  q = ctx.Queue()

  def drain():
    while True:
      try:
        progress.add(q.get_nowait())
      except queue_lib.Empty:
        return

  out = []
  with concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as pool:
    pending = {pool.submit(_run_task_in_worker, t): t for t in tasks}
    while pending:
      done, _ = concurrent.futures.wait(pending, timeout=0.25,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      drain()
      progress.maybe_print()
      for fut in done:
        task = pending.pop(fut)
        try:
          out.append(fut.result())
        except Exception as e:  # pylint: disable=broad-except
          for f in pending:
            f.cancel()
          raise PrecomputeError(
              f'shard {task.file} failed: {type(e).__name__}: {e}. Completed shards'
              ' are kept: re-run the same command to resume.') from e
    time.sleep(0.05)  # Let the queue's feeder threads flush the last reports.
    drain()
  return out


def precompute(params, log=print):
  """Runs the whole job in the local mode; returns the manifest dict."""
  t0 = time.perf_counter()
  plan = plan_lib.plan_job(params, log)
  tasks = plan.tasks
  workers = max(1, min(params.num_workers or default_workers(), len(tasks)))
  if tasks:
    log(f'computing {len(tasks)} shards ({plan.todo} inputs) with {workers} worker'
        f'{"s" if workers > 1 else ""}')
  progress = Progress(plan.todo, params.progress_every_s, log)
  sidecars = dict(plan.done)
  for sidecar in run_tasks(tasks, workers, progress):
    sidecars[sidecar['shard_index']] = sidecar
  if tasks:
    progress.maybe_print(force=True)
  elapsed = time.perf_counter() - t0
  manifest = plan_lib.build_manifest(
      plan, sidecars,
      parameters={**dataclasses.asdict(params), 'num_workers': workers},
      timing={
          'elapsed_s': round(elapsed, 3),
          'inputs_this_run': progress.done,
          'shards_this_run': len(tasks),
          'startup_s': None if progress.first is None else round(progress.first, 3),
          'shard_seconds': round(sum(s['seconds'] for s in sidecars.values()), 3),
          'num_workers': workers,
      })
  plan_lib.write_manifest(plan.out_dir, manifest)
  log(plan_lib.manifest_summary(manifest, plan.out_dir, elapsed))
  return manifest
