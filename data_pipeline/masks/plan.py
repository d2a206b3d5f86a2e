"""The job: its parameters and their checks, the plan of shard tasks, the manifest.

`plan_job` runs in the main process of both modes (local_runner.py,
beam_runner.py) before any shard is computed: it checks the parameters and
--out_dir (params.json holds what determines the output; a re-run must match
it to resume), takes the folder's lock (lock.py; the runner releases it),
removes stale temporary files, verifies the shards that have a sidecar
(`verify_shard`: size always, checksum with --verify; a shard that fails is
recomputed, one log line each) and lists the tasks of the shards still to
compute. `build_manifest` makes manifest.json from the shards' sidecars (all
of them, or for an interrupted run the complete ones, marked "partial"). All
I/O of the output folder goes through shards.out_path (etils.epath).
"""

import collections
import dataclasses
import datetime
import json
import math
import os
import re
import shlex

from data_pipeline import mask_kinds
from data_pipeline import records
from data_pipeline.masks import lock as lock_lib
from data_pipeline.masks import quality
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
  labels: bool = True
  max_pixels: float = 50e6
  min_image_size: int = 32
  split_name: str = 'train'
  num_examples: int = None
  demo_seed: int = 0
  image_size: int = 128
  demo_first_index: int = None
  demo_appearance: str = 'random'
  limit: int = None
  progress_every_s: float = 5.0
  verify: bool = False


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


def check_out_dir(out_dir, run_params, lock=None):
  """Creates out_dir with params.json, or checks that a re-run matches it.

  Takes `lock` (a lock.OutDirLock; released again if the folder is refused).
  Returns True when out_dir holds a run with these parameters (a resume).
  """
  out = shards.out_path(out_dir)
  path = out / 'params.json'

  def foreign():
    return out.is_dir() and any(not lock_lib.is_own_file(p.name) for p in out.iterdir())

  if not path.is_file():
    if foreign():
      raise PrecomputeError(f'--out_dir={out_dir} is not empty and has no params.json'
                            ' from precompute_masks; use an empty or new folder')
    out.mkdir(parents=True, exist_ok=True)
  if lock is not None:
    lock.acquire()
  try:
    if path.is_file():
      stored = shards.read_json(path)
      try:
        version = records.check_format_version(stored.get('format_version'), str(path))
      except ValueError as e:
        raise PrecomputeError(str(e)) from None
      if version < run_params.get('format_version', version):
        # An older record format: its shards stay readable (readers decode
        # every version up to records.FORMAT_VERSION), so a re-run resumes
        # or verifies the job; the shards it writes use the current format.
        stored = dict(stored, format_version=run_params['format_version'])
      if stored != run_params:
        diff = [f'{k}: {stored.get(k)!r} there, {run_params.get(k)!r} now'
                for k in sorted(set(stored) | set(run_params))
                if stored.get(k) != run_params.get(k)]
        hint = ''
        if 'image_labels' in run_params and 'image_labels' not in stored:
          hint = (' A run written without image labels (e.g. before they were'
                  ' stored) resumes with --nolabels.')
        raise PrecomputeError(
            f'--out_dir={out_dir} holds a run with different parameters ('
            + '; '.join(diff) + '). Re-run with the same parameters to resume it, or'
            ' use a new --out_dir (or delete this one) to start over.' + hint)
      return True
    if foreign():
      raise PrecomputeError(f'--out_dir={out_dir} is not empty and has no params.json'
                            ' from precompute_masks; use an empty or new folder')
    shards.write_json_atomic(path, run_params)
    return False
  except BaseException:
    if lock is not None:
      lock.release()
    raise


def command_line(params, extra=()):
  """The command that runs `params` (absolute paths: it works from any folder)."""
  default = Params(source='', out_dir='')
  source = params.source or ''
  if source.startswith('folder:'):
    source = 'folder:' + os.path.abspath(source[len('folder:'):])
  parts = ['python', '-m', 'data_pipeline.precompute_masks', f'--source={source}',
           f'--out_dir={shards.normalize_out_dir(params.out_dir)}']
  for f in dataclasses.fields(Params):
    value, was = getattr(params, f.name), getattr(default, f.name)
    if f.name in ('source', 'out_dir', 'verify') or value is None:
      continue
    if isinstance(value, (list, tuple)):
      if tuple(map(str, value)) == tuple(map(str, was)):
        continue
      parts.append(f'--{f.name}={",".join(map(str, value))}')
    elif value == was:
      continue
    elif isinstance(value, bool):
      parts.append(f'--{f.name}' if value else f'--no{f.name}')
    elif f.name in ('data_dir', 'user_masks') and not shards.is_url(value):
      parts.append(f'--{f.name}={os.path.abspath(value)}')
    else:
      parts.append(f'--{f.name}={value}')
  return shlex.join(parts + list(extra))


def _first_line(e):
  text = getattr(e, 'message', None) or str(e) or type(e).__name__
  return text.strip().splitlines()[0][:200]


def _read_records(path):
  """How many records the TFRecord file at `path` holds (TF checks each CRC)."""
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  n = 0
  for _ in tf.data.TFRecordDataset(os.fspath(path)):
    n += 1
  return n


def verify_shard(out_dir, file, sidecar, checksum=False):
  """(problem or None, sidecar) for a shard whose sidecar marks it complete.

  Checks that the file exists and has the sidecar's size, and with `checksum`
  its checksum. A sidecar without size and checksum (written before they
  existed) is checked by reading every record (TF checks each record's CRC;
  the count must match) and, if the shard is good, rewritten with both.
  """
  out = shards.out_path(out_dir)
  path = out / file
  if not path.is_file():
    return 'the file is missing (its sidecar marks it complete)', sidecar
  size = shards.file_size(path)
  if 'num_bytes' not in sidecar:
    try:
      n = _read_records(path)
    except Exception as e:  # pylint: disable=broad-except  # DataLossError etc.
      return f'cannot be read ({_first_line(e)})', sidecar
    if n != sidecar.get('num_examples'):
      return (f'holds {n} records but its sidecar says'
              f' {sidecar.get("num_examples")}'), sidecar
    sidecar = {**sidecar, 'num_bytes': size, 'checksum': shards.file_checksum(path)}
    shards.write_json_atomic(out / f'{file}.json', sidecar)
    return None, sidecar
  if size != sidecar['num_bytes']:
    return (f'{size:,} bytes but its sidecar says {sidecar["num_bytes"]:,}'
            ' (truncated or changed)'), sidecar
  if checksum:
    got = shards.file_checksum(path)
    if got != sidecar.get('checksum'):
      return (f'checksum {got} but its sidecar says {sidecar.get("checksum")}'
              ' (corrupt or changed)'), sidecar
  return None, sidecar


def user_mask_conflicts(ids, user_masks):
  """{id: reason} for folder inputs whose --user_masks map another input also takes.

  The map of `dir/name.ext` is `<user_masks>/dir/name.png`, so `a.jpg` and
  `a.png` would share one: both are refused, each with a reason naming both.
  """
  by_stem = collections.defaultdict(list)
  for i in ids:
    by_stem[os.path.splitext(i)[0]].append(i)
  out = {}
  for stem, group in by_stem.items():
    if len(group) > 1:
      names = ', '.join(sources.printable(g) for g in group[:-1])
      names += f' and {sources.printable(group[-1])}'
      mask = sources.printable(os.path.join(user_masks, stem + '.png'))
      for i in group:
        out[i] = (f'ambiguous user mask: images {names} would'
                  f' {"both" if len(group) == 2 else "all"} take {mask}; rename all but'
                  ' one of them so that each image has its own label map')
  return out


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
  skipped: dict = None    # sources.Skipped.as_json(): files / folders not listed
  command: str = ''       # command_line(): how to resume or repair this run
  lock: object = None     # lock.OutDirLock held for this run (None in workers)
  recomputed: int = 0     # complete shards that failed verification


def plan_job(params, log=print, command_extra=()):
  """Checks the parameters and --out_dir (params.json), lists the shard tasks.

  --out_dir (a local path, made absolute, or a URL) is where params.json and
  the sidecars are checked and where the tasks write. Takes --out_dir's lock:
  the caller releases `plan.lock` when the run ends. `command_extra`: flags
  after the precompute's own in command_line (the Beam runner's).
  """
  if not params.source:
    raise PrecomputeError('--source is required: folder:DIR, tfds:NAME:SPLIT or demo')
  if not params.out_dir:
    raise PrecomputeError('--out_dir is required')
  fh = parse_fh(params)
  source, folder_ids, skipped = sources.open_source(
      params.source, data_dir=params.data_dir, num_examples=params.num_examples,
      demo_seed=params.demo_seed, image_size=params.image_size, limit=params.limit,
      split_name=params.split_name, first_index=params.demo_first_index,
      demo_appearance=params.demo_appearance, labels=params.labels)
  gt = bool(params.gt and source.has_gt)
  classes = gt and source.has_classes
  if params.gt and not source.has_gt and source.kind == 'tfds':
    log(f'note: {source.kind} source {params.source} has no GT maps; storing none')
  user_masks = os.path.abspath(params.user_masks) if params.user_masks else ''
  if user_masks and not os.path.isdir(user_masks):
    raise PrecomputeError(f'--user_masks={params.user_masks} is not a directory')
  # What the flags ask to store; each stored mask kind names its maps.
  job = dict(fh=fh, gt=gt, classes=classes, user_masks=user_masks)
  mask_names = tuple(n for kind in mask_kinds.stored() for n in kind.record_names(job))
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
      # Only when stored: params.json of runs without class maps is unchanged.
      **({'class_map': True} if classes else {}),
      # Likewise; a run from before image labels resumes with --nolabels.
      **({'image_labels': True} if source.label_names else {}),
  }))
  out_dir = shards.normalize_out_dir(params.out_dir)
  command = command_line(params, command_extra)
  conflicts = (user_mask_conflicts(folder_ids, user_masks)
               if user_masks and folder_ids is not None else {})
  lock = lock_lib.OutDirLock(out_dir, log, command=command)
  resumed = check_out_dir(out_dir, run_params, lock)
  try:
    log(f'precompute_masks: {source.description}: {n} inputs -> {k} shards in'
        f' {out_dir}; maps {", ".join(mask_names)}'
        + (f'; image labels ({len(source.label_names)} classes)'
           if source.label_names else ''))
    skipped_json = skipped.as_json()
    if skipped_json['count']:
      kinds = ', '.join(f'{e or "(none)"} {c}'
                        for e, c in skipped_json['by_extension'].items())
      log(f'note: skipped {skipped_json["count"]} files that are not'
          f' {"/".join(sources.IMAGE_EXTENSIONS)} images ({kinds}); counted in'
          ' manifest.json "skipped"')
    for folder in skipped_json['folders']:
      log(f'note: skipped folder {folder["path"]}: {folder["reason"]}')
    if conflicts:
      log(f'note: {len(conflicts)} images share a --user_masks label map with'
          ' another image (same path, other extension): each is listed as a failure')
    stale = remove_stale(out_dir, params.split_name)
    tasks, done, bad = [], {}, 0
    out = shards.out_path(out_dir)
    for i in range(k):
      file = shards.shard_name(params.split_name, i, k)
      try:
        sidecar = shards.read_json(out / f'{file}.json')
      except Exception:  # pylint: disable=broad-except  # Missing or partial.
        sidecar = None
      if sidecar is not None:
        problem, sidecar = verify_shard(out_dir, file, sidecar, params.verify)
        if problem is None:
          done[i] = sidecar
          continue
        log(f'shard {file}: {problem}: recomputing it')
        (out / f'{file}.json').unlink()  # Not complete any more.
        bad += 1
      ids = tuple(folder_ids[i::k]) if folder_ids is not None else ()
      tasks.append(shards.ShardTask(
          index=i, file=file, out_dir=out_dir, source=source, num_shards=k,
          folder_ids=ids, fh=fh, fh_sigma=params.fh_sigma, gt=gt,
          user_masks=user_masks, max_pixels=params.max_pixels,
          min_image_size=params.min_image_size, mask_names=mask_names,
          user_mask_conflicts=tuple((j, conflicts[j]) for j in ids if j in conflicts)))
    todo = sum(len(sources.shard_positions(source, k, t.index)) for t in tasks)
    if resumed:
      checked = 'sizes and checksums checked' if params.verify else 'sizes checked'
      log(f'resuming: {len(done)} of {k} shards already complete ({checked};'
          f' skipped), {len(tasks)} to compute'
          + (f' ({bad} failed the check)' if bad else '')
          + f'; removed {stale} stale temporary files')
  except BaseException:
    lock.release()
    raise
  return Plan(params=params, source=source, fh_entries=fh_entries,
              mask_names=mask_names, num_shards=k, out_dir=out_dir, tasks=tasks,
              done=done, resumed=resumed, stale=stale, todo=todo,
              skipped=skipped_json, command=command, lock=lock, recomputed=bad)


def _shard_entry(sidecar):
  entry = {'file': sidecar['file'], 'num_examples': sidecar['num_examples'],
           'num_failures': sidecar['num_failures']}
  for key in ('num_bytes', 'checksum'):
    if key in sidecar:
      entry[key] = sidecar[key]
  return entry


def build_manifest(plan, sidecars, *, parameters, timing, runner='local', partial=False):
  """manifest.json's content from the sidecars ({shard index: sidecar}).

  All shards' sidecars; with `partial` (an interrupted run) the complete ones:
  the manifest then says "partial": true and lists the missing shards
  (data_pipeline/input_pipeline.py refuses to train on it).
  """
  if partial:
    all_shards = [sidecars[i] for i in sorted(sidecars)]
  else:
    all_shards = [sidecars[i] for i in range(plan.num_shards)]
  failures = [f for s in all_shards for f in s['failures']]
  extra = {}
  if partial:
    extra['missing_shards'] = [shards.shard_name(plan.params.split_name, i,
                                                 plan.num_shards)
                               for i in range(plan.num_shards) if i not in sidecars]
  return {
      'format_version': records.FORMAT_VERSION,
      'partial': bool(partial),
      **extra,
      'split': plan.params.split_name,
      'source': plan.source.description,
      'runner': runner,
      'command': plan.command,
      'parameters': parameters,
      'num_examples': sum(s['num_examples'] for s in all_shards),
      'mask_names': list(plan.mask_names),
      # Names of the class map's ids (index = id), where the source has them.
      **({'class_names': list(plan.source.class_names)}
         if plan.source.class_names and plan.source.has_classes else {}),
      # Image labels (records.IMAGE_LABEL in every record), where stored.
      **({'label_names': list(plan.source.label_names),
          'num_labels': len(plan.source.label_names)} if plan.source.label_names else {}),
      'fh': plan.fh_entries,
      'shards': [_shard_entry(s) for s in all_shards],
      # The largest id of any stored label map (None if a shard predates it).
      'max_label_id': (max((s['max_label_id'] for s in all_shards), default=-1)
                       if all('max_label_id' in s for s in all_shards) else None),
      'skipped': plan.skipped or sources.Skipped().as_json(),
      'failures': failures,
      'num_failures': len(failures),
      'num_transcoded': sum(s['num_transcoded'] for s in all_shards),
      'original_formats': dict(sum((collections.Counter(s['original_formats'])
                                    for s in all_shards), collections.Counter())),
      **abo_manifest_entry(all_shards),
      'versions': shards.versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'timing': timing,
  }


def abo_manifest_entry(sidecars):
  """{'abo': ...} for the manifest from the shards' sidecars, or {} without GT.

  The ABO of every stored FH / user map with the GT instances (quality.py has
  the definitions), over the shards listed: each worker summed its shard's
  images (shards.process_shard), the sums are added here in shard order. The
  same numbers as `python -m data_pipeline.mask_quality` on the folder.
  {} when no GT is stored, when GT is the only map, or when a shard's sidecar
  has no "abo" (written by an older version).
  """
  if not sidecars or any('abo' not in s for s in sidecars):
    return {}
  names = list(sidecars[0]['abo']['maps'])
  if not names:  # GT alone: nothing to measure.
    return {}
  totals = {n: quality.AboStats() for n in names}
  for s in sidecars:
    for n in names:
      totals[n].merge(quality.AboStats.from_json(s['abo']['maps'][n]))
  first = totals[names[0]].summary()
  return {'abo': {
      'gt_map': sidecars[0]['abo']['gt_map'],
      'definition': 'abo: mean over all GT instances (ids > 0) of the best IoU with'
                    ' any mask (id) of the map; abo_per_image: mean over images of'
                    ' that mean; images without GT instances skipped',
      'num_images': first['num_images'],
      'num_images_without_instances': first['num_images_without_instances'],
      'num_instances': first['num_instances'],
      'maps': {n: {k: totals[n].summary()[k]
                   for k in ('abo', 'abo_per_image', 'masks_per_image')}
               for n in names},
  }}


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
