r"""DetCon-B and BYOL on one GPU: largest batch, step time, MFU, colour share.

  python -m benchmarks.gpu_step                  # ResNet-50, 224 px, bfloat16 (imagenet preset)
  python -m benchmarks.gpu_step --batch_sizes=512,576 --steps=30   # no batch search
  python -m benchmarks.gpu_step --preset=test --batch_sizes=2 --steps=2 --warmup=1  # CPU smoke

What runs is the trainer's own step (train.compile_train_step: colour
recipe, method, LARS, EMA, under shard_map over every local device) on
synthetic batches shaped exactly as the input pipeline ships them
(input_pipeline.example_spec: uint8 views, masks of a handful of ids in 4x4
blocks, boxes (0, 0, 1, 1), no flips) and a real initialised state.

Per method:
  batch   the largest per-device batch that compiles and runs one step:
          from --start_batch, doubled until the device runs out of memory,
          then bisected in steps of --granularity; a linear model of the
          compiler's peak memory against the device's bytes_limit proposes
          where it can (each proposal still compiles and runs, so the tries
          decide). At most --max_tries compiles, and none that would end
          after the method's share of --search_budget_s.
          --batch_sizes skips the search.
  time    median seconds of --steps timed steps after --warmup steps,
          each step waited for (jax.block_until_ready).
  MFU     FLOPs per device step / step time / the device's peak bf16 rate
          (PEAK_FLOPS, or --peak_tflops). FLOPs: the compiled executable's
          cost analysis, or, where the backend gives none, the same
          per-device step lowered for a 1-device CPU mesh at the same
          per-device batch (always counted, as a check); the notes say which.
  colour  (t_uint8 - t_float) / t_uint8, as benchmarks/color_share.py: the
          step fed uint8 views (the colour recipe runs in the step, as in
          training) against the step fed float views already normalised
          (the recipe passes them through).
Timing rounds alternate (DetCon-B uint8, DetCon-B float, BYOL uint8, BYOL
float, then again) so drift hits every row alike. Between segments a
method's state waits on the host, so only one state and one batch occupy
the device, as in the search. The device's description (kind, memory,
compute capability, library versions) goes to --target_json for later
deviceless compiles.
"""

import ast
import dataclasses
import functools
import gc
import importlib
import json
import math
import os
import time

from absl import app
from absl import flags
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jaxlib
import numpy as np

from benchmarks import common
from data_pipeline import input_pipeline
from data_pipeline import tf_setup
from dense_ssl import method as method_lib
from dense_ssl import optim
from dense_ssl import train
from dense_ssl.objectives.base import AXIS

# Its own FlagValues: tests import this module beside others that define
# --out etc. on absl's global FLAGS.
FLAGS = flags.FlagValues()
_METHODS = flags.DEFINE_list('methods', ['detcon_b', 'byol'], 'configs/<name>.py to time.',
                             flag_values=FLAGS)
_PRESET = flags.DEFINE_string('preset', 'imagenet', 'Config preset (test: ResNet-10, 64 px).',
                              flag_values=FLAGS)
_OVERRIDES = flags.DEFINE_list('overrides', [], 'key=value config overrides, e.g. '
                               'model.depth=18,data.image_size=96.', flag_values=FLAGS)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', [], 'Per-device batch per method (one value: '
                                 'every method); skips the search.', flag_values=FLAGS)
_START = flags.DEFINE_integer('start_batch', 64, 'First per-device batch of the search.',
                              flag_values=FLAGS)
_GRANULARITY = flags.DEFINE_integer('granularity', 16, 'The search\'s batch step.',
                                    flag_values=FLAGS)
_MAX_TRIES = flags.DEFINE_integer('max_tries', 6, 'Compiles per method in the search.',
                                  flag_values=FLAGS)
_SEARCH_BUDGET = flags.DEFINE_float('search_budget_s', 180, 'Seconds for all searches.',
                                    flag_values=FLAGS)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per method and variant.',
                              flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps before the first timed one.',
                               flag_values=FLAGS)
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Alternating rounds the timed steps are split '
                               'into.', flag_values=FLAGS)
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s per device (default: '
                           'PEAK_FLOPS by device kind).', flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', 'benchmarks/results/gpu_step.md', 'Table file.',
                           flag_values=FLAGS)
_TARGET = flags.DEFINE_string('target_json', None, 'Device description (default: '
                              'gpu_target.json beside --out).', flag_values=FLAGS)

# Dense bf16 tensor-core peaks per device (NVIDIA's data sheets, without
# sparsity); the first substring of device_kind that matches wins.
PEAK_FLOPS = (('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12),
              ('H200', 989e12), ('GH200', 989e12), ('A100', 312e12))
VARIANTS = ('uint8', 'float')   # The trainer's input; pre-coloured floats.
TRAINER = VARIANTS[0]


@dataclasses.dataclass
class Trial:
  """One try of a per-device batch: compiled and ran one step, or out of memory."""
  per_device: int
  fits: bool
  seconds: float = 0.0
  peak_bytes: float = None     # The compiler's peak for one device, when known.
  state_bytes: float = None    # Of that, what does not grow with the batch.
  error: str = ''


# ------------------------------------------------------------ the search ---

def _round_down(b, granularity):
  return int(b) // granularity * granularity


def predicted_max_batch(trials, limit_bytes):
  """Where a line through the compiler's peaks meets limit_bytes (or None).

  Peak memory is close to linear in the batch (the state is fixed, the
  activations grow): two trials give the line, one trial and its state's
  bytes do too.
  """
  if not limit_bytes:
    return None
  known = sorted((t.per_device, t.peak_bytes) for t in trials if t.peak_bytes)
  if not known:
    return None
  b1, p1 = known[-1]
  b0, p0 = next(((b, p) for b, p in reversed(known) if b != b1), (0, None))
  if p0 is None:   # One batch: the line through the state's bytes at batch 0.
    p0 = next((t.state_bytes for t in trials if t.state_bytes), None)
  if p0 is None:
    return None
  slope = (p1 - p0) / (b1 - b0)
  if slope <= 0:
    return None
  return b1 + (limit_bytes - p1) / slope


def next_batch(trials, *, start, granularity, limit_bytes=None):
  """The next per-device batch to try, or None once the largest is bracketed."""
  lo = max((t.per_device for t in trials if t.fits), default=0)
  hi = min((t.per_device for t in trials if not t.fits), default=None)
  inside = lambda b: b > lo and (hi is None or b < hi) and b >= granularity
  guess = predicted_max_batch(trials, limit_bytes)
  if guess is not None:
    if hi is None:
      if lo >= _round_down(guess, granularity):
        return None     # The line says lo + granularity does not fit.
      # The first jump aims a little below the line (memory grows in steps).
      b = _round_down(guess * (0.97 if lo < 0.9 * guess else 1.0), granularity)
    elif guess >= hi:
      # hi failed below the line: the runtime needs a little more than the
      # compiler's peak, so the largest batch is probably just below hi.
      # A second such failure: the line is no guide, bisect.
      once = sum(not t.fits for t in trials) == 1
      b = _round_down(hi - max(granularity, (hi - lo) / 8), granularity) if once else 0
    else:
      b = _round_down(guess, granularity)
    if inside(b):
      return b
  if not trials:
    return start
  if hi is None:
    return 2 * lo
  mid = _round_down((lo + hi) // 2, granularity)
  return mid if inside(mid) else None


def find_max_batch(try_batch, *, start=64, granularity=16, max_tries=6, limit_bytes=None,
                   deadline=None, log=print):
  """Largest per-device batch b (a multiple of granularity) with try_batch(b).fits.

  Doubles from `start` until a try fails, then bisects; with limit_bytes
  (the device's) and the compiler's peaks, predicted_max_batch proposes
  instead. Stops after max_tries tries, before a try (as long as the last)
  would end after `deadline` (time.perf_counter()), once the bracket is
  `granularity` wide, or once the memory line says the next batch up
  cannot fit.
  Returns (largest batch that fitted or None, [Trial, ...] in order).
  """
  trials = []
  while len(trials) < max_tries:
    # Another try like the last would end after the deadline: stop now.
    if trials and deadline is not None and (
        time.perf_counter() + trials[-1].seconds > deadline):
      log('  search time spent: stopping')
      break
    b = next_batch(trials, start=start, granularity=granularity, limit_bytes=limit_bytes)
    if b is None:
      break
    trials.append(try_batch(b))
    t = trials[-1]
    log(f'  per-device batch {b}: {"fits" if t.fits else "out of memory"} '
        f'({t.seconds:.0f} s)' + (f'; compiler peak {t.peak_bytes / 2**30:.2f} GiB'
                                  if t.peak_bytes else ''))
  best = max((t.per_device for t in trials if t.fits), default=None)
  return best, trials


# ------------------------------------------------------------- the step ---

def is_out_of_memory(error):
  # The runtime reports allocation failures as a JaxRuntimeError whose only
  # distinguishing mark is its status text (no subclass for it).
  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text)


def apply_overrides(config, overrides):
  """key=value strings onto the config (values as Python literals, else strings)."""
  items = []
  for part in overrides:   # DEFINE_list split tuples at their commas: rejoin.
    if '=' in part or not items:
      items.append(part)
    else:
      items[-1] += ',' + part
  for item in items:
    key, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--overrides: {item!r} is not key=value')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    config.update_from_flattened_dict({key.strip(): value})
  return config


def synthetic_batch(spec, num_devices, per_device, seed=0):
  """A [num_devices, per_device, ...] numpy batch with example_spec's shapes and dtypes."""
  r = np.random.default_rng(seed)
  out = {}
  for k, (shape, dtype) in spec.items():
    lead = (num_devices, per_device)
    if k.endswith('/image'):
      out[k] = r.integers(0, 256, lead + shape).astype(dtype)
    elif k.endswith('/mask'):   # 8 ids in 4 x 4 blocks: a few regions per view.
      ids = r.integers(0, 8, lead + (4, 4))
      reps = [math.ceil(s / 4) for s in shape[:2]]
      blocks = np.repeat(np.repeat(ids, reps[0], 2), reps[1], 3)
      out[k] = blocks[:, :, :shape[0], :shape[1]].astype(dtype)
    elif k.endswith('/box'):
      out[k] = np.broadcast_to(np.array([0, 0, 1, 1], dtype), lead + shape).copy()
    else:                       # flips, and anything else a view carries: zeros.
      out[k] = np.zeros(lead + shape, dtype)
  return out


@dataclasses.dataclass
class Bench:
  """One method: config, mesh, the step's inputs and, once chosen, its batch."""
  name: str
  config: object
  mesh: object
  spec: dict
  host_state: object            # The TrainState on the host (numpy leaves).
  hyper: dict
  per_device: int = None
  compiled: dict = dataclasses.field(default_factory=dict)   # variant -> executable
  local: dict = dataclasses.field(default_factory=dict)      # variant -> numpy batch
  times: dict = dataclasses.field(default_factory=dict)      # variant -> [seconds]
  errors: dict = dataclasses.field(default_factory=dict)     # variant -> text
  trials: list = dataclasses.field(default_factory=list)
  flops: float = None
  flops_source: str = ''
  cpu_flops: float = None
  search_seconds: float = 0.0


def make_bench(name, preset, overrides, mesh):
  """The method's config and a real initialised state (kept on the host)."""
  config = apply_overrides(importlib.import_module(f'configs.{name}').get_config(preset),
                           overrides)
  spec = input_pipeline.example_spec(config.data, input_pipeline.shipped_mask_dtype(config.data)[0])
  method = method_lib.Method(config)
  # The program does not depend on the schedules (they are step inputs).
  tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 1000, 10))
  sample = synthetic_batch(spec, 1, 2)
  state = jax.device_get(train.init_state(method, tx, config, sample, mesh))
  hyper = optim.step_hyperparameters(config, 1000, 10)(100)
  return Bench(name=name, config=config, mesh=mesh, spec=spec, host_state=state, hyper=hyper)


def _config_at(bench, per_device, mesh):
  config = bench.config.copy_and_resolve_references()
  config.batch_size = per_device * mesh.size
  return config


def lower_step(bench, per_device, variant, mesh=None):
  """The trainer's step lowered at this per-device batch (abstract inputs)."""
  mesh = mesh or bench.mesh
  config = _config_at(bench, per_device, mesh)
  repl, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  abstract = lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s)
  state = jax.tree.map(lambda x: abstract(x, repl), bench.host_state)
  image_dtype = {'uint8': None, 'float': np.float32}[variant]
  batch = {k: jax.ShapeDtypeStruct(
      (per_device * mesh.size,) + shape,
      image_dtype if image_dtype and k.endswith('/image') else dtype, sharding=split)
           for k, (shape, dtype) in bench.spec.items()}
  hyper = {k: abstract(v, repl) for k, v in bench.hyper.items()}
  step = train.compile_train_step(method_lib.Method(config),
                                  functools.partial(optim.make_optimizer, config), mesh,
                                  seed=config.seed, data_config=config.data)
  return step.lower(state, batch, hyper)


def _memory(compiled, batch_bytes):
  """(peak bytes, state bytes) of one device from the compiler, or (None, None)."""
  try:
    m = compiled.memory_analysis()
    peak = getattr(m, 'peak_memory_in_bytes', 0) or (
        m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        + m.temp_size_in_bytes)
    return (float(peak + m.generated_code_size_in_bytes),
            float(m.argument_size_in_bytes - batch_bytes))
  except Exception:  # pylint: disable=broad-except  # Not every backend reports it.
    return None, None


def _place(bench, local):
  """The host state and a local batch on the devices (replicated; sharded)."""
  state = jax.device_put(bench.host_state, NamedSharding(bench.mesh, P()))
  batch = train.global_batch(local, bench.mesh)
  return jax.block_until_ready((state, batch))


def prepare_variant(bench, per_device, variant):
  """Compiles the variant at this batch and runs its first step; -> Trial.

  Out of memory (at compile or run) is a Trial that does not fit; any
  other error propagates. On success the executable and its batch are kept.
  """
  t0 = time.perf_counter()
  trial = Trial(per_device, fits=False)
  local = synthetic_batch(bench.spec, len(bench.mesh.local_devices), per_device)
  if variant == 'float':
    local = common.precolored(local)
  try:
    compiled = lower_step(bench, per_device, variant).compile()
    trial.peak_bytes, trial.state_bytes = _memory(
        compiled, sum(v.nbytes for v in local.values()) / len(bench.mesh.local_devices))
    state, batch = _place(bench, local)
    state, metrics = compiled(state, batch, bench.hyper)
    jax.block_until_ready((state, metrics))
    trial.fits = True
    bench.host_state = jax.device_get(state)
    bench.compiled[variant], bench.local[variant] = compiled, local
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    trial.error = str(e).strip().splitlines()[0][:200]
  finally:
    state = batch = metrics = None   # Free the device before the next try.
  if not trial.fits:
    gc.collect()                     # What the error's traceback held.
  trial.seconds = time.perf_counter() - t0
  return trial


def _flops_of(cost):
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost.get('flops', 0.0)) if isinstance(cost, dict) else 0.0


def compiled_flops(compiled):
  """XLA's FLOPs of a compiled per-device step, or 0 where the backend has no count."""
  try:
    return _flops_of(compiled.cost_analysis())
  except Exception:  # pylint: disable=broad-except  # GPU PJRT may have none.
    return 0.0


def cpu_lowered_flops(bench):
  """FLOPs of the same per-device step lowered for one CPU device (0 if unavailable).

  XLA's estimate of the unoptimised HLO: the same convolutions and dots as
  the device's program, without compiling for it.
  """
  try:
    cpu = Mesh(np.asarray(jax.devices('cpu')[:1]), (AXIS,))
    lowered = lower_step(bench, bench.per_device, TRAINER, mesh=cpu)
    return _flops_of(lowered.cost_analysis()) or _flops_of(lowered.compile().cost_analysis())
  except Exception:  # pylint: disable=broad-except  # e.g. JAX_PLATFORMS without cpu.
    return 0.0


def step_flops(bench):
  """(FLOPs of one device step, where from, the CPU lowering's count) of the trainer's step.

  The CPU lowering is counted either way: beside the device's own count it
  checks it (convolutions the backend hides in library calls would be missing).
  """
  device, cpu = compiled_flops(bench.compiled[TRAINER]), cpu_lowered_flops(bench)
  if device > 0:
    return device, 'compiled executable', cpu
  return cpu, 'CPU lowering', cpu


def time_rounds(benches, *, steps, warmup, rounds, log=print):
  """Appends each (method, variant)'s timed step seconds, in alternating rounds."""
  rounds = max(1, min(rounds, steps))
  for r in range(rounds):
    n = steps // rounds + (r < steps % rounds)
    for bench in benches:
      for variant in VARIANTS:
        if variant not in bench.compiled:
          continue
        state, batch = _place(bench, bench.local[variant])
        times = bench.times.setdefault(variant, [])
        for i in range((warmup if r == 0 else 0) + n):
          t = time.perf_counter()
          state, metrics = bench.compiled[variant](state, batch, bench.hyper)
          jax.block_until_ready((state, metrics))
          if i >= (warmup if r == 0 else 0):
            times.append(time.perf_counter() - t)
        bench.host_state = jax.device_get(state)   # Off the device for the next one.
        state = batch = metrics = None
    log(f'  round {r + 1}/{rounds} done')


# ----------------------------------------------------------- the device ---

# CUdevice_attribute values of cuda.h: what XLA's GpuTargetConfigProto
# (gpu_device_info) records of a device.
CUDA_ATTRIBUTES = dict(
    threads_per_block_limit=1, block_dim_limit_x=2, block_dim_limit_y=3,
    block_dim_limit_z=4, shared_memory_per_block=8, threads_per_warp=10,
    registers_per_block_limit=12, clock_rate_khz=13, core_count=16,
    memory_clock_rate_khz=36, memory_bus_width_bits=37, l2_cache_size=38,
    threads_per_core_limit=39, compute_capability_major=75,
    compute_capability_minor=76, shared_memory_per_core=81,
    registers_per_core_limit=82, shared_memory_per_block_optin=97,
    blocks_per_core_limit=106)


def cuda_device_properties(ordinal=0):
  """The CUDA driver's properties of GPU `ordinal` ({} without a CUDA driver)."""
  import ctypes  # pylint: disable=g-import-not-at-top
  try:
    cuda = ctypes.CDLL('libcuda.so.1')
    dev, value = ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(dev), ordinal):
      return {}
    out = {}
    for name, attr in CUDA_ATTRIBUTES.items():
      if not cuda.cuDeviceGetAttribute(ctypes.byref(value), attr, dev):
        out[name] = value.value
    total = ctypes.c_size_t()
    if not cuda.cuDeviceTotalMem_v2(ctypes.byref(total), dev):
      out['device_memory_size'] = total.value
    name = ctypes.create_string_buffer(256)
    if not cuda.cuDeviceGetName(name, 256, dev):
      out['name'] = name.value.decode()
    return out
  except (OSError, AttributeError):
    return {}


def peak_flops(device_kind, override_tflops=None):
  """Peak FLOP/s per device: the override, else PEAK_FLOPS, else None."""
  if override_tflops:
    return override_tflops * 1e12
  return next((v for k, v in PEAK_FLOPS if k.lower() in device_kind.lower()), None)


def device_description():
  """What a later deviceless compile needs to know of this device (JSON-able).

  JAX has no Python API for XLA's GPU target config; these are its inputs
  where the runtime (and, on a GPU, the CUDA driver) exposes them.
  """
  d = jax.devices()[0]
  simple = (str, int, float, bool)
  out = dict(device_kind=d.device_kind, platform=d.platform, device_count=jax.device_count(),
             local_device_count=jax.local_device_count(), jax=jax.__version__,
             jaxlib=jaxlib.__version__, xla_flags=os.environ.get('XLA_FLAGS', ''))
  # compute_capability, core_count, ... on GPUs; whatever the device has.
  out['attributes'] = {}
  for name in dir(d):
    if not name.startswith('_'):
      try:
        value = getattr(d, name)
      except Exception:  # pylint: disable=broad-except
        continue
      if isinstance(value, simple):
        out['attributes'][name] = value
  try:
    out['platform_version'] = d.client.platform_version
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    stats = d.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  out['memory_stats'] = {k: v for k, v in stats.items() if isinstance(v, simple)}
  out['bytes_limit'] = stats.get('bytes_limit')
  if d.platform == 'gpu':
    out['cuda_device'] = cuda_device_properties(getattr(d, 'local_hardware_id', 0) or 0)
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
    if cuda_versions is not None:
      out['cuda'] = {}
      for fn in ('cuda_runtime_get_version', 'cuda_driver_get_version', 'cudnn_get_version',
                 'cublas_get_version', 'cufft_get_version', 'cusolver_get_version',
                 'cusparse_get_version', 'cupti_get_version'):
        try:
          out['cuda'][fn.replace('_get_version', '')] = getattr(cuda_versions, fn)()
        except Exception:  # pylint: disable=broad-except
          pass
  except ImportError:
    pass
  return out


# -------------------------------------------------------------- the run ---

def run(*, methods=('detcon_b', 'byol'), preset='imagenet', overrides=(), batch_sizes=(),
        start_batch=64, granularity=16, max_tries=6, search_budget_s=180.0, steps=20,
        warmup=3, rounds=4, peak_tflops=None, out='benchmarks/results/gpu_step.md',
        target_json=None, log=print):
  """Measures every method; writes the table and the device JSON; returns the rows."""
  tf_setup.hide_accelerators()
  t_start = time.perf_counter()
  target_json = target_json or os.path.join(os.path.dirname(out) or '.', 'gpu_target.json')
  # First, so a run stopped by its time limit still leaves the description.
  device = device_description()
  os.makedirs(os.path.dirname(target_json) or '.', exist_ok=True)
  with open(target_json, 'w') as f:
    json.dump(device, f, indent=1, default=str)
  log(f'{device["device_count"]} x {device["device_kind"]}; bytes_limit '
      f'{device["bytes_limit"]}; description: {target_json}')
  batch_sizes = [int(b) for b in batch_sizes]
  if batch_sizes and len(batch_sizes) not in (1, len(methods)):
    raise ValueError(f'--batch_sizes: give 1 or {len(methods)} values (one per method), '
                     f'not {len(batch_sizes)}')
  mesh = train.make_mesh()
  benches = []
  for i, name in enumerate(methods):
    bench = make_bench(name, preset, list(overrides), mesh)
    t0 = time.perf_counter()
    if batch_sizes:
      b = batch_sizes[i if len(batch_sizes) > 1 else 0]
      log(f'{name}: per-device batch {b} (given)')
      bench.trials = [prepare_variant(bench, b, TRAINER)]
      best = b if bench.trials[0].fits else None
    else:
      log(f'{name}: searching the largest per-device batch ...')
      share = search_budget_s / len(methods)
      best, bench.trials = find_max_batch(
          lambda b, bench=bench: prepare_variant(bench, b, TRAINER), start=start_batch,
          granularity=granularity, max_tries=max_tries, limit_bytes=device['bytes_limit'],
          deadline=t0 + share, log=log)
    bench.search_seconds = time.perf_counter() - t0
    benches.append(bench)
    if best is None:
      bench.errors[TRAINER] = 'no per-device batch tried fits: ' + '; '.join(
          f'{t.per_device}: {t.error}' for t in bench.trials)
      log(f'{name}: {bench.errors[TRAINER]}')
      continue
    # Fits grow during a search: the executable kept is the best's.
    bench.per_device = best
    bench.flops, bench.flops_source, bench.cpu_flops = step_flops(bench)
    trial = prepare_variant(bench, best, 'float')
    if not trial.fits:
      bench.errors['float'] = trial.error
    log(f'{name}: per-device batch {best}, {bench.flops / 1e9:.1f} GFLOP/step '
        f'({bench.flops_source})')
  live = [b for b in benches if b.per_device]
  log(f'timing {steps} steps per method and variant in {min(rounds, steps)} alternating '
      'rounds ...')
  time_rounds(live, steps=steps, warmup=warmup, rounds=rounds, log=log)

  peak = peak_flops(device['device_kind'], peak_tflops)
  rows = []
  for bench in benches:
    row = dict(method=bench.name, per_device=bench.per_device,
               global_batch=bench.per_device * mesh.size if bench.per_device else None,
               flops_per_step=bench.flops, flops_source=bench.flops_source,
               cpu_lowered_flops=bench.cpu_flops,
               search_seconds=bench.search_seconds, errors=dict(bench.errors),
               trials=[dataclasses.asdict(t) for t in bench.trials])
    med = {v: float(np.median(t)) for v, t in bench.times.items() if t}
    if TRAINER in med:
      s = med[TRAINER]
      row.update(step_s=s, images_per_s=row['global_batch'] / s,
                 mfu=bench.flops / s / peak if peak and bench.flops else None)
    if TRAINER in med and 'float' in med:
      row.update(float_step_s=med['float'],
                 color_share=(med[TRAINER] - med['float']) / med[TRAINER])
    rows.append(row)
  text = format_table(rows, device, peak, steps=steps, warmup=warmup,
                      rounds=min(rounds, steps), preset=preset, overrides=overrides,
                      seconds=time.perf_counter() - t_start)
  common.write_table(text, out)
  return rows


def format_table(rows, device, peak, *, steps, warmup, rounds, preset, overrides, seconds):
  """The markdown report."""
  na = '-'
  limit = (f', bytes_limit {device["bytes_limit"] / 2**30:.1f} GiB'
           if device.get('bytes_limit') else '')
  setup = (f'{device["device_count"]} x {device["device_kind"]} ({device["platform"]}{limit}); '
           f'jax {device["jax"]}; preset {preset}'
           + (f', overrides {",".join(overrides)}' if overrides else '')
           + f'; median of {steps} timed steps after {warmup} warm-up, in {rounds} '
           'alternating rounds; '
           + (f'peak {peak / 1e12:.0f} TFLOP/s per device.' if peak
              else 'peak FLOP/s unknown: MFU omitted (--peak_tflops).'))
  lines = [f'# Train step of {", ".join(r["method"] for r in rows)} on '
           f'{device["device_kind"]}', '',
           common.machine_line(), setup, '',
           '| method | per-device batch | step ms | images/s | GFLOP/step | MFU | '
           'colour share |', '|---|---|---|---|---|---|---|']
  for r in rows:
    cells = [r['method'], r['per_device'] or na,
             f'{1e3 * r["step_s"]:.1f}' if 'step_s' in r else na,
             f'{r["images_per_s"]:.1f}' if 'images_per_s' in r else na,
             f'{r["flops_per_step"] / 1e9:.1f}' if r['flops_per_step'] else na,
             f'{100 * r["mfu"]:.1f}%' if r.get('mfu') is not None else na,
             f'{100 * r["color_share"]:.1f}%' if 'color_share' in r else na]
    lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
  lines += ['', 'images/s: examples (two views each) per second over all devices. '
            'GFLOP/step: one device\'s step. Colour share: (t_uint8 - t_float) / t_uint8, '
            'the step with the colour recipe against the step fed pre-coloured float '
            'views.', '']
  for r in rows:
    tries = ', '.join(f'{t["per_device"]} {"fits" if t["fits"] else "OOM"} '
                      f'({t["seconds"]:.0f} s)' for t in r['trials'])
    lines.append(f'- {r["method"]}: tries {tries}; search {r["search_seconds"]:.0f} s'
                 + (f'; FLOPs from the {r["flops_source"]} (the CPU lowering counts '
                    f'{(r["cpu_lowered_flops"] or 0) / 1e9:.1f} GFLOP)'
                    if r['flops_source'] else '')
                 + (f'; float step {1e3 * r["float_step_s"]:.1f} ms'
                    if 'float_step_s' in r else '')
                 + ''.join(f'; {v}: {e}' for v, e in r['errors'].items()) + '.')
  lines += ['', f'Whole run: {seconds:.0f} s.']
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  run(methods=_METHODS.value, preset=_PRESET.value, overrides=_OVERRIDES.value,
      batch_sizes=_BATCH_SIZES.value, start_batch=_START.value,
      granularity=_GRANULARITY.value, max_tries=_MAX_TRIES.value,
      search_budget_s=_SEARCH_BUDGET.value, steps=_STEPS.value, warmup=_WARMUP.value,
      rounds=_ROUNDS.value, peak_tflops=_PEAK.value, out=_OUT.value,
      target_json=_TARGET.value, log=lambda s: print(s, flush=True))


if __name__ == '__main__':
  app.run(main, flags_parser=common.own_flags_parser(FLAGS))
