"""The job: its parameters and their checks, the plan of shard tasks, the manifest.

`plan_job` runs in the main process of both modes (local_runner.py,
beam_runner.py) before any shard is computed: it checks the parameters and
--out_dir (params.json holds what determines the output; a re-run must match
it to resume), removes stale temporary files and lists the tasks of the shards
that have no sidecar yet. `build_manifest` makes manifest.json from all the
shards' sidecars. All I/O of the output folder goes through shards.out_path
(etils.epath).
"""

import collections
import dataclasses
import datetime
import json
import math
import os
import re

from data_pipeline import records
from data_pipeline.masks import shards
from data_pipeline.masks import sources
from data_pipeline.masks.errors import PrecomputeError


@dataclasses.dataclass
class Params:
  """The command's parameters (one field per flag)."""
  source: str
  out_dir: str
  data_dir: str = None
  fh_scales: tuple = ('1000',)
  fh_min_sizes: tuple = ('1000',)
  fh_sigma: float = 0.8
  num_workers: int = None
  examples_per_shard: int = 1024
  num_shards: int = None
  user_masks: str = None
  gt: bool = True
  max_pixels: float = 50e6
  min_image_size: int = 32
  split_name: str = 'train'
  num_examples: int = None
  demo_seed: int = 0
  image_size: int = 128
  limit: int = None
  progress_every_s: float = 5.0


def _number(text, flag, cast):
  try:
    v = float(text)
    if cast is int and not v.is_integer():
      raise ValueError
    return int(v) if cast is int or v.is_integer() else v
  except ValueError:
    kind = 'an integer' if cast is int else 'a number'
    raise PrecomputeError(f'--{flag}: {text!r} is not {kind}') from None


def parse_fh(params):
  """((scale, min_size, name), ...) from the paired --fh_scales / --fh_min_sizes."""
  scales = [s for s in params.fh_scales or () if str(s).strip()]
  sizes = [s for s in params.fh_min_sizes or () if str(s).strip()]
  if len(scales) != len(sizes):
    raise PrecomputeError(
        f'--fh_scales has {len(scales)} values ({",".join(map(str, scales))}) but'
        f' --fh_min_sizes has {len(sizes)} ({",".join(map(str, sizes))}); give one'
        ' min_size per scale, e.g. --fh_scales=500,1000 --fh_min_sizes=500,1000')
  out = []
  for s, m in zip(scales, sizes):
    scale, min_size = _number(s, 'fh_scales', float), _number(m, 'fh_min_sizes', int)
    if scale <= 0 or min_size < 0 or params.fh_sigma < 0:
      raise PrecomputeError(f'FH needs scale > 0, min_size >= 0, sigma >= 0; got'
                            f' scale={scale}, min_size={min_size},'
                            f' sigma={params.fh_sigma}')
    out.append((scale, min_size, records.fh_mask_name(scale, min_size, params.fh_sigma)))
  names = [n for _, _, n in out]
  if len(set(names)) != len(names):
    raise PrecomputeError(f'--fh_scales/--fh_min_sizes repeat a pair: {names}')
  return tuple(out)


def check_out_dir(out_dir, run_params):
  """Creates out_dir with params.json, or checks that a re-run matches it.

  Returns True when out_dir holds a run with these parameters (a resume).
  """
  out = shards.out_path(out_dir)
  path = out / 'params.json'
  if path.is_file():
    stored = shards.read_json(path)
    if stored != run_params:
      diff = [f'{k}: {stored.get(k)!r} there, {run_params.get(k)!r} now'
              for k in sorted(set(stored) | set(run_params))
              if stored.get(k) != run_params.get(k)]
      raise PrecomputeError(
          f'--out_dir={out_dir} holds a run with different parameters ('
          + '; '.join(diff) + '). Re-run with the same parameters to resume it, or'
          ' use a new --out_dir (or delete this one) to start over.')
    return True
  if out.is_dir() and any(True for _ in out.iterdir()):
    raise PrecomputeError(f'--out_dir={out_dir} is not empty and has no params.json'
                          ' from precompute_masks; use an empty or new folder')
  out.mkdir(parents=True, exist_ok=True)
  shards.write_json_atomic(path, run_params)
  return False


def remove_stale(out_dir, split):
  """Deletes the shards' and sidecars' temporary files; returns how many."""
  pattern = re.compile(rf'^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.tfrecord'
                       r'(\.json)?\.tmp-\d+$')
  stale = [p for p in shards.out_path(out_dir).iterdir() if pattern.match(p.name)]
  for p in stale:
    p.unlink()
  return len(stale)


def duration(s):
  """Seconds as '1m05s' or '2h03m' ('?' when not finite)."""
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


@dataclasses.dataclass
class Plan:
  """What a run will do, decided before any shard is computed (local and Beam)."""
  params: Params
  source: sources.Source
  fh_entries: list
  mask_names: tuple
  num_shards: int
  out_dir: str            # shards.normalize_out_dir's form
  tasks: list             # ShardTasks of the shards still to compute
  done: dict              # shard index -> sidecar, shards complete before this run
  resumed: bool
  stale: int              # stale temporary files removed
  todo: int               # inputs in `tasks`


def plan_job(params, log=print):
  """Checks the parameters and --out_dir (params.json), lists the shard tasks.

  --out_dir (a local path, made absolute, or a URL) is where params.json and
  the sidecars are checked and where the tasks write.
  """
  if not params.source:
    raise PrecomputeError('--source is required: folder:DIR, tfds:NAME:SPLIT or demo')
  if not params.out_dir:
    raise PrecomputeError('--out_dir is required')
  fh = parse_fh(params)
  source, folder_ids = sources.open_source(
      params.source, data_dir=params.data_dir, num_examples=params.num_examples,
      demo_seed=params.demo_seed, image_size=params.image_size, limit=params.limit)
  gt = bool(params.gt and source.has_gt)
  if params.gt and not source.has_gt and source.kind == 'tfds':
    log(f'note: {source.kind} source {params.source} has no GT maps; storing none')
  user_masks = os.path.abspath(params.user_masks) if params.user_masks else ''
  if user_masks and not os.path.isdir(user_masks):
    raise PrecomputeError(f'--user_masks={params.user_masks} is not a directory')
  mask_names = tuple([n for _, _, n in fh] + [records.GT_MASK] * gt
                     + [records.USER_MASK] * bool(user_masks))
  if not mask_names:
    raise PrecomputeError('nothing to store: no FH scales (--fh_scales), no GT in'
                          ' this source and no --user_masks')
  n = source.num_items
  if params.num_shards:
    k = params.num_shards
  elif params.examples_per_shard and params.examples_per_shard > 0:
    k = math.ceil(n / params.examples_per_shard)
  else:
    raise PrecomputeError('give --examples_per_shard > 0 or --num_shards > 0')
  if k <= 0:
    raise PrecomputeError(f'--num_shards={k}: must be > 0')
  fh_entries = [{'scale': s, 'min_size': m, 'sigma': params.fh_sigma, 'name': name}
                for s, m, name in fh]
  # Everything that determines the output; a re-run must match it to resume.
  run_params = json.loads(json.dumps({
      'format_version': records.FORMAT_VERSION, 'source': source.description,
      'split_name': params.split_name, 'fh': fh_entries, 'gt': gt,
      'user_masks': user_masks, 'max_pixels': int(params.max_pixels),
      'min_image_size': params.min_image_size, 'num_items': n, 'num_shards': k,
      'items_fingerprint': source.fingerprint,
  }))
  out_dir = shards.normalize_out_dir(params.out_dir)
  resumed = check_out_dir(out_dir, run_params)
  stale = remove_stale(out_dir, params.split_name)
  tasks, done = [], {}
  for i in range(k):
    file = shards.shard_name(params.split_name, i, k)
    sidecar = shards.read_sidecar(out_dir, file)
    if sidecar is not None:
      done[i] = sidecar
      continue
    ids = tuple(folder_ids[i::k]) if folder_ids is not None else ()
    tasks.append(shards.ShardTask(
        index=i, file=file, out_dir=out_dir, source=source, num_shards=k,
        folder_ids=ids, fh=fh, fh_sigma=params.fh_sigma, gt=gt, user_masks=user_masks,
        max_pixels=params.max_pixels, min_image_size=params.min_image_size,
        mask_names=mask_names))
  todo = sum(len(sources.shard_positions(source, k, t.index)) for t in tasks)
  log(f'precompute_masks: {source.description}: {n} inputs -> {k} shards in {out_dir};'
      f' maps {", ".join(mask_names)}')
  if resumed:
    log(f'resuming: {len(done)} of {k} shards already complete (skipped),'
        f' {len(tasks)} to compute; removed {stale} stale temporary files')
  return Plan(params=params, source=source, fh_entries=fh_entries,
              mask_names=mask_names, num_shards=k, out_dir=out_dir, tasks=tasks,
              done=done, resumed=resumed, stale=stale, todo=todo)


def build_manifest(plan, sidecars, *, parameters, timing, runner='local'):
  """manifest.json's content from the sidecars ({shard index: sidecar}, all shards)."""
  all_shards = [sidecars[i] for i in range(plan.num_shards)]
  failures = [f for s in all_shards for f in s['failures']]
  return {
      'format_version': records.FORMAT_VERSION,
      'split': plan.params.split_name,
      'source': plan.source.description,
      'runner': runner,
      'parameters': parameters,
      'num_examples': sum(s['num_examples'] for s in all_shards),
      'mask_names': list(plan.mask_names),
      'fh': plan.fh_entries,
      'shards': [{'file': s['file'], 'num_examples': s['num_examples'],
                  'num_failures': s['num_failures']} for s in all_shards],
      'failures': failures,
      'num_failures': len(failures),
      'num_transcoded': sum(s['num_transcoded'] for s in all_shards),
      'original_formats': dict(sum((collections.Counter(s['original_formats'])
                                    for s in all_shards), collections.Counter())),
      'versions': shards.versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'timing': timing,
  }


def write_manifest(out_dir, manifest):
  """Writes manifest.json into out_dir (last: the run is then complete)."""
  shards.write_json_atomic(shards.out_path(out_dir) / 'manifest.json', manifest)


def read_manifest(out_dir):
  """The manifest.json of out_dir."""
  return shards.read_json(shards.out_path(out_dir) / 'manifest.json')


def manifest_summary(manifest, out_dir, elapsed):
  """The last log line of a run."""
  return (f'wrote {manifest["num_examples"]} examples in {len(manifest["shards"])} shards'
          f' ({manifest["num_failures"]} failures, {manifest["num_transcoded"]}'
          f' transcoded) in {duration(elapsed)}; manifest:'
          f' {os.path.join(out_dir, "manifest.json")}')
