"""The mask precompute as an Apache Beam pipeline (`precompute_masks --runner=...`).

  pip install -r requirements.txt -r requirements-beam.txt
  # This machine, 2 worker processes:
  python -m data_pipeline.precompute_masks --runner=DirectRunner \\
      --direct_num_workers=2 --direct_running_mode=multi_processing \\
      --source=demo --out_dir=$MASKS/demo
  # Dataflow (launch/beam_dataflow.sh), Flink or Spark (launch/beam_cluster.sh):
  python -m data_pipeline.precompute_masks --runner=DataflowRunner \\
      --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py \\
      --source=tfds:imagenet2012:train --data_dir=gs://B/tfds --out_dir=gs://B/masks

The job is the local mode's (data_pipeline/precompute_masks.py's docstring
says what is stored): `plan.plan_job` checks the flags and --out_dir
(params.json: a re-run with other parameters is refused), takes --out_dir's
lock (lock.py; held by this launching process until the pipeline ends, so a
second job on the same --out_dir is refused), verifies the complete shards
and lists the shard tasks of the shards not complete yet; the pipeline is

  Create(shard tasks) -> Reshuffle -> ParDo(ProcessShardFn) -> ToList -> WriteManifest

ProcessShardFn calls `shards.process_shard`, the local mode's function, so a
shard and its sidecar are byte for byte what the local mode writes; the last
step writes manifest.json with `plan.build_manifest` from the sidecars
("runner" says which runner ran it). One shard is one element: Beam's
parallelism is over shards, so give at least a few shards per worker
(--num_shards / --examples_per_shard). A retried element finds its shard's
sidecar and does not compute it again.

Flags: precompute_masks' flags keep their meaning; --num_workers and
--progress_every_s only serve the local mode (parallelism is the runner's:
--direct_num_workers, Dataflow's --max_num_workers; Dataflow's own
--num_workers cannot be given through this command). Every other flag goes to
Beam's PipelineOptions; a flag that neither knows is a usage error.

Where the files are: workers write --out_dir and read the inputs themselves.
--out_dir is read and written through etils.epath (shards.py), by the planning
and by every worker directly, with no local copy:
  * A local path or file:// URL (DirectRunner), or a file system mounted at the
    same path on this machine and on every worker (a Flink / Spark cluster
    with NFS etc.).
  * gs://... (required on Dataflow), or another URL scheme epath supports.
Inputs on Dataflow: --source=tfds:NAME:SPLIT with --data_dir=gs://... or
--source=demo; folder: sources and --user_masks are read with POSIX file APIs
and need the shared mount.
"""

import contextlib
import dataclasses
import io
import os
import time

from data_pipeline.masks import plan as plan_lib
from data_pipeline.masks import shards
from data_pipeline.masks.errors import FlagError
from data_pipeline.masks.errors import PrecomputeError

try:
  import apache_beam as beam
  _BEAM_IMPORT_ERROR = None
except ImportError as e:  # Optional: requirements-beam.txt.
  beam, _BEAM_IMPORT_ERROR = None, e

METRICS_NAMESPACE = 'precompute_masks'
# The repository root (holds data_pipeline/ and setup.py).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Runners whose workers are not processes of this machine's Python: they need
# this package (--setup_file) or a container that has it.
_REMOTE_RUNNERS = ('DataflowRunner', 'FlinkRunner', 'SparkRunner', 'PortableRunner')


def require_beam():
  """The apache_beam module, or a PrecomputeError that says how to install it."""
  if beam is None:
    raise PrecomputeError(
        f'--runner needs Apache Beam, which is not installed ({_BEAM_IMPORT_ERROR});'
        ' install it with: pip install -r requirements-beam.txt')
  return beam


def pipeline_options(runner, beam_args):
  """PipelineOptions from --runner and the flags precompute_masks does not know."""
  require_beam()
  from apache_beam.options import pipeline_options as po
  given, beam_args = list(beam_args), list(beam_args)
  if runner == 'DirectRunner' and not any(
      a.startswith('--default_sdk_harness_log_level') for a in beam_args):
    # The local SDK workers log to this console: INFO is one line per bundle.
    beam_args.append('--default_sdk_harness_log_level=WARNING')
  options = po.PipelineOptions([f'--runner={runner}', *beam_args])
  usage = io.StringIO()
  try:
    with contextlib.redirect_stderr(usage):  # argparse's usage lists every option.
      known = options.get_all_options(drop_default=True)
      everything = options.get_all_options(drop_default=True, retain_unknown_options=True)
  except SystemExit:
    why = (usage.getvalue().strip().splitlines() or ['?'])[-1]
    raise FlagError(f'bad Beam pipeline option in {given}: {why}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise FlagError(f'bad Beam pipeline option: {e}') from None
  unknown = sorted(set(everything) - set(known))
  if unknown:
    raise FlagError(
        f'unknown flag(s) {", ".join("--" + u for u in unknown)}: neither a'
        ' precompute_masks flag (see --help) nor an Apache Beam pipeline option')
  return options


# ------------------------------------------------------------------ pipeline ---

class ProcessShardFn(beam.DoFn if beam else object):
  """ShardTask -> its sidecar, written by shards.process_shard."""

  def setup(self):
    shards.limit_tf_threads()  # TF: 1 thread per worker.

  def process(self, task):
    from apache_beam.metrics import Metrics
    ok = Metrics.counter(METRICS_NAMESPACE, 'inputs_written')
    failed = Metrics.counter(METRICS_NAMESPACE, 'inputs_failed')
    done = shards.read_sidecar(task.out_dir, task.file)
    if done is not None:  # A retried element whose shard was completed.
      yield done
      return
    sidecar = shards.process_shard(task, lambda good: (ok if good else failed).inc())
    Metrics.counter(METRICS_NAMESPACE, 'shards_written').inc()
    yield sidecar


def write_manifest(new_sidecars, plan, parameters, runner, start_time):
  """The pipeline's last step: manifest.json from all the shards' sidecars."""
  sidecars = dict(plan.done)
  sidecars.update({s['shard_index']: s for s in new_sidecars})
  missing = sorted(set(range(plan.num_shards)) - set(sidecars))
  if missing:
    raise RuntimeError(f'no sidecar for shards {missing[:10]}')
  manifest = plan_lib.build_manifest(
      plan, sidecars, parameters=parameters, runner=runner,
      timing={
          'elapsed_s': round(time.time() - start_time, 3),
          'inputs_this_run': sum(s['num_examples'] + s['num_failures']
                                 for s in new_sidecars),
          'shards_this_run': len(new_sidecars),
          'startup_s': None,
          'shard_seconds': round(sum(s['seconds'] for s in sidecars.values()), 3),
          'num_workers': None,
          'runner': runner,
      })
  plan_lib.write_manifest(plan.out_dir, manifest)
  return manifest['num_examples']


def build_pipeline(p, plan, parameters, runner, start_time):
  """Adds the job's transforms to the Pipeline `p`."""
  summary = dataclasses.replace(plan, tasks=[], lock=None)  # What the last step needs.
  return (p
          | 'ShardTasks' >> beam.Create(plan.tasks)
          | 'Reshuffle' >> beam.Reshuffle()
          | 'ProcessShard' >> beam.ParDo(ProcessShardFn())
          | 'Sidecars' >> beam.combiners.ToList()
          | 'WriteManifest' >> beam.Map(write_manifest, summary, parameters, runner,
                                        start_time))


def _log_metrics(result, log):
  try:
    from apache_beam.metrics.metric import MetricsFilter
    counters = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']
  except Exception:  # pylint: disable=broad-except  # Not every runner has metrics.
    return
  values = {c.key.metric.name: c.committed for c in counters}
  if values:
    log('  counters: ' + ', '.join(f'{k} {v}' for k, v in sorted(values.items())))


def run(params, runner, beam_args, log=print):
  """Runs the job on a Beam runner; returns the manifest dict (as written)."""
  require_beam()
  start, t0 = time.time(), time.perf_counter()
  options = pipeline_options(runner, beam_args)
  try:  # Before anything is written: a bad runner is a usage error.
    p = beam.Pipeline(runner=runner, options=options)
  except (ValueError, ImportError) as e:
    raise PrecomputeError(f'--runner={runner}: {e}') from None
  if not params.out_dir:
    raise PrecomputeError('--out_dir is required')
  plan = plan_lib.plan_job(params, log,
                           command_extra=(f'--runner={runner}', *beam_args))
  try:
    return _run(p, plan, params, runner, options, start, t0, log)
  finally:
    plan.lock.release()


def _run(p, plan, params, runner, options, start, t0, log):
  if params.num_workers:
    log(f'note: --num_workers={params.num_workers} is for the local mode; with'
        f' --runner the runner decides (e.g. --direct_num_workers)')
  # Subprocess workers (DirectRunner multi_processing, LOOPBACK) import this package.
  path = [d for d in os.environ.get('PYTHONPATH', '').split(os.pathsep) if d]
  if _REPO not in path:
    os.environ['PYTHONPATH'] = os.pathsep.join([_REPO] + path)
  all_options = options.get_all_options(drop_default=True)
  if runner in _REMOTE_RUNNERS and not any(
      all_options.get(k) for k in ('setup_file', 'sdk_container_image', 'extra_packages',
                                   'environment_config')):
    log(f'note: {runner} workers need this package: pass --setup_file={_REPO}/setup.py'
        ' (or a --sdk_container_image that has it)')
  parameters = {**dataclasses.asdict(params), 'runner': runner,
                'pipeline_options': all_options}
  log(f'running {len(plan.tasks)} shards ({plan.todo} inputs) as an Apache Beam'
      f' pipeline on {runner}')
  build_pipeline(p, plan, parameters, runner, start)
  try:
    result = p.run()
    state = result.wait_until_finish()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    raise PrecomputeError(
        f'the Beam pipeline failed: {type(e).__name__}: {text[-3000:]}\nCompleted'
        ' shards are kept: re-run the same command to resume.') from e
  if state is not None and str(state).split('.')[-1] not in ('DONE', 'UNKNOWN'):
    raise PrecomputeError(f'the Beam pipeline ended in state {state}; completed'
                          ' shards are kept: re-run the same command to resume')
  _log_metrics(result, log)
  manifest = plan_lib.read_manifest(plan.out_dir)
  log(plan_lib.manifest_summary(manifest, plan.out_dir, time.perf_counter() - t0))
  return manifest
