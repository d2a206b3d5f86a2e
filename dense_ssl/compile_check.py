r"""Will it fit, and what will a step cost? THE training step compiled for a TPU slice or GPUs, here.

  python -m dense_ssl.compile_check --config=configs/detcon_b.py:imagenet --accelerator=v4-32
  python -m dense_ssl.compile_check --config=configs/detcon_b.py:imagenet \
      --accelerator=h100-80gb-8 --per_device_batch=128
  python -m dense_ssl.compile_check --config=configs/clove.py:imagenet --accelerator=v4-32 \
      --find_max_batch --out=clove_v4-32.json
  bash launch/compile_check.sh --config=... --accelerator=...   # installs the compilers first

No TPU is needed: libtpu (requirements-tpu.txt; `jax[tpu]` on a TPU VM)
describes the devices of any slice (jax.experimental.topologies), and the
real TPU compiler compiles for them on this host's CPU. What is compiled is
the trainer's own step (train.compile_train_step: colour recipe, method,
optimiser, EMA, pmeans and gathers, under shard_map over a mesh of the
slice's devices), on the abstract TrainState (jax.eval_shape of the
trainer's init) and the abstract batch exactly as the input pipeline ships
it for this config (input_pipeline.example_spec: every view incl. local
crops, uint8 images, the mask dtype, boxes, flips), sharded P('batch').

The report (printed, and written as JSON) per device:
  memory     HBM for arguments (the state, the batch), outputs, aliased
             (the donated state), temporaries, code and the peak, against
             the HBM the compiler says is available; a verdict (fits, or by
             how much it does not). These are the compiler's buffer
             assignment, not a measurement: the runtime adds little (its
             own buffers, the prefetched batches: data.prefetch_to_device
             x the batch's argument bytes, listed separately).
  flops      XLA's cost analysis of the per-device program (an estimate
             from the HLO: convolutions and dots at 2 FLOPs per MAC), per
             example, beside an analytic count of the encoder passes
             (models/resnet.forward_macs: 4.09 GMACs for ResNet-50 at 224 px).
  collectives  every all-reduce / all-gather / reduce-scatter / all-to-all /
             collective-permute of the optimised HLO with its sizes: the
             gradient all-reduce (about the parameters' bytes), the BN
             statistics, the gathered negatives.
  compile    seconds on this host.
With --find_max_batch: the largest per-device batch (a multiple of
--batch_granularity the config accepts) that fits, found by compiling: a
linear model of peak memory in the batch proposes, compiles decide.

Accelerator names are the Cloud TPU ones: v4-N and v5p-N count TensorCores
(2 per chip, one JAX device per chip: megacore), v5e-N (= v5litepod-N) and
v6e-N count chips, v3-N (and v2-N) count TensorCores (one device each).

NVIDIA GPUs the same way, with XLA's GPU compiler (the CUDA plugin,
requirements-gpu-compile.txt, without the CUDA libraries) told the device's
properties by a target config (gpu_targets/*.txtpb): h100-80gb-N is N H100
SXM 80GB, 1, 2, 4 or 8 on one host, or N/8 hosts of 8. Two figures differ:
the GPU compiler does not refuse a program larger than the device, so the
verdict compares its peak estimate with the share of device memory JAX's
GPU client allocates (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 by default); and
it has no cost analysis, so the FLOPs are those of the same per-device step
lowered for one CPU device (XLA's cost analysis before optimisation, within
0.5% of the compiled program's; its loss sees one device's batch, not the
gathered ones). Kernels are not autotuned without a GPU, so the memory
figures are a little less exact than for a TPU.
"""

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import sys
import time

# The check never runs on the host's accelerators: the TPU is only compiled
# for. Without this, a host with libtpu and no TPU prints a page of TPU
# initialisation errors on the first jax call.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# libtpu, loaded to describe the slice, looks for the TPU VM it runs on (its
# metadata server, its workers) and logs a page of errors where there is
# none; these say "one local worker" so it does not look.
# Several compile checks may run at once (the benchmark, the tests): libtpu
# otherwise takes a machine-wide lock (/tmp/libtpu_lockfile) meant for the
# one process that owns a TPU.
for _k, _v in (('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'), ('TPU_SKIP_MDS_QUERY', '1'),
               ('TPU_ACCELERATOR_TYPE', 'v4-8'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
               ('TPU_WORKER_ID', '0'), ('TF_CPP_MIN_LOG_LEVEL', '2')):
  os.environ.setdefault(_k, _v)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from data_pipeline import tf_setup
from dense_ssl import cli

PROG = 'dense_ssl.compile_check'
GiB = 2**30
TIGHT = 0.9   # A step above this share of the allowed HBM is flagged.


class CompileCheckError(ValueError):
  """A user error: an unknown accelerator, a batch that does not divide, no compiler."""


# --------------------------------------------------------- accelerators ---

@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation as Cloud TPU names its slices."""
  topology_prefix: str        # libtpu's topology name prefix ('v4' in 'v4:2x2x4')
  dims: int                   # 3-D torus (v4, v5p) or 2-D (v2, v3, v5e, v6e)
  name_counts: str            # 'cores' (v2/v3/v4/v5p names) or 'chips' (v5e/v6e)
  megacore: bool              # 2 TensorCores fused into one JAX device per chip
  hbm_gib_per_chip: float     # nominal; the compiler's own figure is used for fit
  peak_bf16_tflops_per_chip: float   # dense bf16, Google's published figure
  devices_per_chip: int = 1


GENERATIONS = {
    'v2': Generation('v2', 2, 'cores', False, 16, 45, devices_per_chip=2),
    'v3': Generation('v3', 2, 'cores', False, 32, 123, devices_per_chip=2),
    'v4': Generation('v4', 3, 'cores', True, 32, 275),
    'v5p': Generation('v5', 3, 'cores', True, 95, 459),
    'v5e': Generation('v5e', 2, 'chips', False, 16, 197),
    'v6e': Generation('v6e', 2, 'chips', False, 32, 918),
}
ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e'}
EXAMPLES = ('v4-8', 'v4-32', 'v5e-16', 'v5litepod-16', 'v5p-32', 'v6e-8', 'v3-8')


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One slice (or set of GPUs): what get_topology_desc needs, and per-device figures."""
  name: str
  generation: str
  topology: str                 # e.g. 'v4:2x2x4'; GPUs: '1x1x8' (see gpu_accelerator)
  chip_config: str              # 'megacore' | 'default'; None for GPUs
  chips_per_host_bounds: tuple  # None for GPUs
  num_chips: int
  num_devices: int
  num_hosts: int
  nominal_hbm_bytes: int        # per device
  peak_bf16_flops: float        # per device
  platform: str = 'tpu'         # 'tpu' | 'cuda'
  target_config: str = None     # GPUs: the device's description in gpu_targets/

  def to_json(self):
    return dataclasses.asdict(self)


def _torus(chips, dims):
  """Chip grid of a slice of `chips` chips: v4-32 (16 chips) -> (2, 2, 4)."""
  if dims == 3:
    if chips < 4 or chips & (chips - 1):
      return None
    if chips == 4:
      return (2, 2, 1)
    # 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...: z, y, x doubled in turn.
    shape = [2, 2, 2]
    order = [2, 1, 0]
  else:
    if chips == 1:
      return (1, 1)
    if chips < 4 or chips & (chips - 1):
      return None
    shape = [2, 2]
    order = [1, 0]
  k = 0
  while math.prod(shape) < chips:
    shape[order[k % len(order)]] *= 2
    k += 1
  return tuple(shape)


def accelerator(name):
  """The Accelerator of a Cloud TPU name ('v4-32', 'v5litepod-16', ...) or GPUs ('h100-80gb-8')."""
  if name.strip().lower().startswith(tuple(GPU_MODELS)):
    return gpu_accelerator(name)
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', name.strip().lower())
  gen_name = ALIASES.get(match[1], match[1]) if match else None
  gen = GENERATIONS.get(gen_name)
  count = int(match[2]) if match else 0
  known = (f'known generations: {", ".join(list(GENERATIONS) + list(ALIASES))}; a name is '
           f'<generation>-<count>, e.g. {", ".join(EXAMPLES)}; or NVIDIA GPUs: '
           f'{", ".join(GPU_EXAMPLES)}')
  if gen is None:
    raise CompileCheckError(f'--accelerator={name!r} is not a TPU slice or GPU name; {known}')
  chips = count // 2 if gen.name_counts == 'cores' else count
  shape = _torus(chips, gen.dims) if chips else None
  if shape is None or (gen.name_counts == 'cores' and count % 2):
    raise CompileCheckError(
        f'--accelerator={name!r}: {gen_name} slices come in sizes '
        + ('8, 16, 32, ... (TensorCores, 2 per chip)' if gen.name_counts == 'cores'
           else '1, 4, 8, 16, ... (chips)') + f'; {known}')
  if gen.dims == 3:
    host = (2, 2, 1)
  elif chips <= (4 if gen.name_counts == 'cores' else 8):
    host = shape + (1,)           # A single-host slice: every chip on one host.
  else:
    host = (2, 2, 1)
  num_devices = chips * gen.devices_per_chip
  return Accelerator(
      name=f'{gen_name}-{count}', generation=gen_name,
      topology=f'{gen.topology_prefix}:{"x".join(map(str, shape))}',
      chip_config='megacore' if gen.megacore else 'default',
      chips_per_host_bounds=host, num_chips=chips, num_devices=num_devices,
      num_hosts=max(1, chips // math.prod(host)),
      nominal_hbm_bytes=int(gen.hbm_gib_per_chip * GiB / gen.devices_per_chip),
      peak_bf16_flops=gen.peak_bf16_tflops_per_chip * 1e12 / gen.devices_per_chip)


# platform -> (module that must be importable, what it is, the folder
# launch/compilers.sh installs it into (its variable; else under the venv)).
COMPILERS = {
    'tpu': ('libtpu', 'libtpu (the TPU compiler, requirements-tpu.txt)',
            'DENSE_SSL_TPU_COMPILER', 'tpu_compiler'),
    'cuda': ('jax_plugins.xla_cuda12',
             'the CUDA plugin (the GPU compiler, requirements-gpu-compile.txt)',
             'DENSE_SSL_GPU_COMPILER', 'gpu_compiler'),
}


def require_compiler(acc):
  """Puts the compiler of acc's platform on sys.path, or fails saying how to install it.

  Neither compiler is installed where every Python sees it: with libtpu
  importable, JAX on a host without a TPU looks for one and logs a page of
  errors; with the CUDA plugin, every `import jax` logs "Could not find cuda
  drivers". launch/compilers.sh installs each into a folder of the venv;
  only this process adds the one it needs (before JAX loads the plugin).
  """
  module, what, variable, name = COMPILERS[acc.platform]
  venv = os.environ.get('VIRTUAL_ENV') or os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.venv')
  folder = os.environ.get(variable) or os.path.join(venv, name)
  if os.path.isdir(folder) and folder not in sys.path:
    sys.path.append(folder)
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:   # A dotted name whose parent is missing.
    found = False
  if not found:
    raise CompileCheckError(
        f'{what} is not installed (looked in {folder}): run the check through `bash '
        f'launch/compile_check.sh ...`, which installs it there')


@functools.cache
def topology_devices(acc):
  """The JAX devices of the slice or GPUs (compile-only: nothing runs on them)."""
  require_compiler(acc)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if acc.platform == 'cuda':
    topo = gpu_topology(acc)
  else:
    topo = topologies.get_topology_desc(
        platform='tpu', topology_name=acc.topology, chip_config_name=acc.chip_config,
        chips_per_host_bounds=acc.chips_per_host_bounds, num_slices=1)
  devices = list(topo.devices)
  if len(devices) != acc.num_devices:
    raise RuntimeError(f'the compiler made {len(devices)} devices for {acc.name} '
                       f'({acc.topology}, {acc.chip_config}); expected {acc.num_devices}')
  return devices


# ---------------------------------------------------------- NVIDIA GPUs ---

# XLA's GPU compiler compiles for GPUs it is told about: a target config (the
# device's properties: SMs, memory, caches, rates; gpu_targets/*.txtpb, the
# text form of XLA's GpuTargetConfigProto) and a topology 'PxHxD': NVLink
# partitions x hosts per partition x GPUs per host. An 8-GPU host is one
# NVLink domain, so several hosts are several partitions: 32 GPUs, '4x1x8'.

GPU_TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_targets')


@dataclasses.dataclass(frozen=True)
class GpuModel:
  """One NVIDIA GPU model as the check names it."""
  target_config: str            # file in gpu_targets/
  gpus_per_host: int            # an HGX / DGX board
  peak_bf16_tflops: float       # dense bf16 tensor core rate, NVIDIA's datasheet


GPU_MODELS = {'h100-80gb': GpuModel('h100_80gb.txtpb', 8, 989.4)}
GPU_EXAMPLES = ('h100-80gb-1', 'h100-80gb-8', 'h100-80gb-32')
# JAX's GPU client preallocates this share of device memory and its
# allocator uses no more (XLA_PYTHON_CLIENT_MEM_FRACTION; its default).
DEFAULT_GPU_MEM_FRACTION = 0.75


def gpu_device_memory(target_config):
  """device_memory_size (bytes) of a target config file in gpu_targets/."""
  with open(os.path.join(GPU_TARGETS, target_config)) as f:
    return int(re.search(r'^\s*device_memory_size:\s*(\d+)', f.read(), re.M)[1])


def gpu_accelerator(name):
  """The Accelerator of N GPUs: 'h100-80gb-8' (one host), 'h100-80gb-32' (4 hosts of 8)."""
  match = re.fullmatch(r'([a-z]\d+-\d+gb)-(\d+)', name.strip().lower())
  model = GPU_MODELS.get(match[1]) if match else None
  count = int(match[2]) if match else 0
  per_host = model.gpus_per_host if model else 0
  if model is None or not (count in (1, 2, 4) or (count and count % per_host == 0)):
    raise CompileCheckError(
        f'--accelerator={name!r} is not a GPU set this check knows: <model>-<count> '
        f'with model {" or ".join(GPU_MODELS)} and count 1, 2, 4, 8 (one host) or a '
        f'multiple of 8 (hosts of 8), e.g. {", ".join(GPU_EXAMPLES)}')
  hosts = max(1, count // per_host)
  return Accelerator(
      name=f'{match[1]}-{count}', generation=match[1],
      topology=f'{hosts}x1x{min(count, per_host)}', chip_config=None,
      chips_per_host_bounds=None, num_chips=count, num_devices=count, num_hosts=hosts,
      nominal_hbm_bytes=gpu_device_memory(model.target_config),
      peak_bf16_flops=model.peak_bf16_tflops * 1e12, platform='cuda',
      target_config=model.target_config)


def gpu_topology(acc):
  """get_topology_desc of acc's GPUs."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with open(os.path.join(GPU_TARGETS, acc.target_config)) as f:
    target = f.read()
  try:
    return topologies.get_topology_desc(platform='cuda', topology=acc.topology,
                                        target_config=target)
  except NotImplementedError as e:
    # jax looks for plugins once, at its first backend: this process had
    # started one before require_compiler put the CUDA plugin on the path.
    raise CompileCheckError(
        'the CUDA plugin is installed but jax did not load it: check GPUs in a '
        'process that has not run jax yet (python -m dense_ssl.compile_check)') from e


def gpu_mem_fraction():
  return float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', DEFAULT_GPU_MEM_FRACTION))


# ---------------------------------------------------- the compiler's HBM ---

# The TPU compiler's out-of-memory error (libtpu 0.0.42, pinned by
# requirements-tpu.txt; tests/test_compile_check.py pins this wording):
#   RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required
#   for HLO temporaries (63.10G) exceeds available HBM (15.25G).
_OOM = re.compile(r'memory required for (?P<what>[\w ]+?) \((?P<required>[\d.]+)(?P<ru>[KMGT])\)'
                  r' exceeds available HBM \((?P<available>[\d.]+)(?P<au>[KMGT])\)')
_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


class OutOfMemory(Exception):
  """The compiler refused the program: it needs more HBM than a device has."""

  def __init__(self, required, available, what, message):
    super().__init__(message)
    self.required, self.available, self.what = required, available, what


def parse_out_of_memory(message):
  """(required bytes, available bytes, what) of the compiler's OOM text, or None."""
  m = _OOM.search(message)
  if not m:
    return None
  return (float(m['required']) * _UNITS[m['ru']], float(m['available']) * _UNITS[m['au']],
          m['what'])


def _compile(lowered):
  try:
    return lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if 'RESOURCE_EXHAUSTED' in text:
      parsed = parse_out_of_memory(text)
      if parsed:
        raise OutOfMemory(*parsed, text) from e
    raise


@functools.cache
def available_hbm(acc):
  """The HBM per device the TPU compiler allows (bytes): asked of the compiler.

  A one-device program that needs far more than any TPU has is compiled;
  the refusal states the available HBM (e.g. 30.75G of a v4 chip's 32 GiB).
  The GPU compiler compiles the same probe (2 TiB of temporaries on an
  80 GB H100) with a warning, not a refusal: for GPUs, the share of device
  memory that JAX's GPU client allocates.
  """
  if acc.platform == 'cuda':
    return int(gpu_mem_fraction() * acc.nominal_hbm_bytes)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top,g-multiple-import
  mesh = Mesh(np.asarray(topology_devices(acc)[:1]), ('d',))
  x = jax.ShapeDtypeStruct((1 << 19,), jnp.float32, sharding=NamedSharding(mesh, P()))
  # A [n, n] float32 temporary (1 TiB): sorting it keeps it from being fused away.
  probe = jax.jit(lambda v: jnp.sort(v[:, None] * v[None, :], axis=0)[:1])
  try:
    _compile(probe.lower(x))
  except OutOfMemory as e:
    return int(e.available)
  raise RuntimeError(f'the HBM probe compiled for {acc.name}: cannot learn its HBM')


# ------------------------------------------------------------ compiling ---

def configure(config, acc, per_device_batch=None):
  """A copy of config with batch_size = per_device_batch x devices (or as it is)."""
  config = config.copy_and_resolve_references()
  n = acc.num_devices
  if per_device_batch is None:
    if config.batch_size % n:
      raise CompileCheckError(
          f'config.batch_size={config.batch_size} does not divide over the {n} devices '
          f'of {acc.name}; set --per_device_batch or --config.batch_size')
  else:
    config.batch_size = int(per_device_batch) * n
  return config


def batch_problems(config, acc):
  """config_check's problems for this batch over the slice (e.g. MoCo's queue)."""
  from dense_ssl import config_check  # pylint: disable=g-import-not-at-top
  return config_check.problems(config, num_devices=acc.num_devices, check_data=False)


@dataclasses.dataclass
class Compiled:
  """One compile of the step: the executable, or the compiler's refusal."""
  per_device_batch: int
  seconds: float
  compiled: object = None
  lowered: object = None       # compile_step(lower_only=True)
  oom: OutOfMemory = None
  params_bytes: int = 0
  batch_bytes: int = 0         # the batch's bytes per device (one step's input)
  example_spec: dict = None
  method: object = None
  masks_dtype: object = None


def compile_step(config, acc, *, masks_dtype=None, devices=None, lower_only=False):
  """Compiles the trainer's step for the slice at config.batch_size; -> Compiled.

  devices: compile for these instead of acc's (one CPU: the FLOPs of a GPU
  step). lower_only: stop after lowering (result.lowered; no compiled).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top,g-multiple-import
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  from dense_ssl import method as method_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import optim  # pylint: disable=g-import-not-at-top
  from dense_ssl import state as state_lib  # pylint: disable=g-import-not-at-top
  from dense_ssl import train  # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives.base import AXIS  # pylint: disable=g-import-not-at-top

  tf_setup.hide_accelerators()
  devices = list(devices or topology_devices(acc))
  n = len(devices)
  per_device = config.batch_size // n
  mesh = Mesh(np.asarray(devices), (AXIS,))
  method = method_lib.Method(config)
  # The program does not depend on the schedules (they are step inputs).
  total_steps, warmup_steps = 1000, 10
  schedule = optim.learning_rate_schedule(config, total_steps, warmup_steps)
  tx = optim.make_optimizer(config, schedule)
  hyper = optim.step_hyperparameters(config, total_steps, warmup_steps)(0)
  if masks_dtype is None:
    masks_dtype, _ = input_pipeline.shipped_mask_dtype(config.data)
  spec = input_pipeline.example_spec(config.data, masks_dtype)

  repl, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  state = train.abstract_state(method, tx, config, spec)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
  batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + shape, dtype, sharding=split)
           for k, (shape, dtype) in spec.items()}
  hyper = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=repl)
           for k, v in hyper.items()}
  step = train.compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh, seed=config.seed, data_config=config.data)
  result = Compiled(
      per_device_batch=per_device, seconds=0.0, example_spec=spec, method=method,
      masks_dtype=masks_dtype,
      params_bytes=4 * state_lib.num_params(state.online_params),
      batch_bytes=per_device * sum(math.prod(s) * np.dtype(d).itemsize
                                   for s, d in spec.values()))
  t0 = time.perf_counter()
  if lower_only:
    result.lowered = step.lower(state, batch, hyper)
    result.seconds = time.perf_counter() - t0
    return result
  try:
    result.compiled = _compile(step.lower(state, batch, hyper))
  except OutOfMemory as e:
    result.oom = e
  result.seconds = time.perf_counter() - t0
  return result


# ------------------------------------------------------------- analysis ---

_COLLECTIVE = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+'
    r'(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)'
    r'(?P<start>-start)?\(')
_ARRAY = re.compile(r'\b(?P<dtype>pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|'
                    r'f8e4m3fn|f8e5m2)\[(?P<dims>[\d,]*)\]')
_BYTES = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 's32': 4,
          'u32': 4, 's64': 8, 'u64': 8, 'f16': 2, 'bf16': 2, 'f32': 4, 'f64': 8,
          'f8e4m3fn': 1, 'f8e5m2': 1}


def collectives(hlo_text):
  """The collectives of an optimised HLO module: [dict(op, arrays, bytes)].

  `arrays` lists the 'dtype[dims]' of what is reduced or gathered (for an
  async all-gather / collective-permute start: its outputs); `bytes` their
  size per device as the HLO states it. The -done halves of async pairs are
  not counted twice.
  """
  out = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.match(line)
    if not m:
      continue
    arrays = [(a['dtype'], tuple(int(d) for d in a['dims'].split(',') if d))
              for a in _ARRAY.finditer(m['shape'])]
    if m['start'] and m['op'] in ('all-gather', 'collective-permute', 'all-to-all') \
        and len(arrays) % 2 == 0 and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2:]   # (operands, results): the results
    out.append(dict(op=m['op'],
                    arrays=[f'{d}[{",".join(map(str, s))}]' for d, s in arrays],
                    bytes=int(sum(_BYTES[d] * math.prod(s) for d, s in arrays))))
  return out


def summarise_collectives(items, params_bytes):
  """Per op: count and bytes; and the gradient all-reduce's share."""
  by_op = {}
  for c in items:
    e = by_op.setdefault(c['op'], dict(count=0, bytes=0, largest=[]))
    e['count'] += 1
    e['bytes'] += c['bytes']
    e['largest'].append((c['bytes'], c['arrays']))
  for e in by_op.values():
    e['largest'] = [dict(bytes=b, arrays=a[:4] + (['...'] if len(a) > 4 else []))
                    for b, a in sorted(e['largest'], key=lambda t: -t[0])[:3]]
  reduced = by_op.get('all-reduce', {}).get('bytes', 0) + \
      by_op.get('reduce-scatter', {}).get('bytes', 0)
  return dict(by_op=by_op, params_bytes=params_bytes,
              # The gradients (float32, the parameters' size) dominate what is
              # reduced; the rest is BN statistics, the EMA target's statistics
              # and the metrics.
              reduced_bytes=reduced,
              gradient_all_reduce=reduced >= params_bytes)


def encoder_flops_per_example(config, method):
  """Analytic FLOPs of the encoder passes of one example in one step.

  2 FLOPs per MAC (models/resnet.forward_macs). A pass the loss
  differentiates (online) costs 3 forwards (the backward is about two: one
  for activations' gradients, one for the weights'); an EMA target pass 1.
  Local crops (multi-crop) go through the online network at their size.
  Heads, losses, BatchNorm and the colour recipe are not counted here.
  """
  from dense_ssl.models import resnet  # pylint: disable=g-import-not-at-top
  from data_pipeline import view_config  # pylint: disable=g-import-not-at-top
  specs = view_config.view_specs(config.data)
  fwd = lambda size: 2 * resnet.forward_macs(config.model.depth, size,
                                             config.model.width_multiplier)
  total = 0
  for branch, view in method.passes:
    total += (3 if branch == 'online' else 1) * fwd(specs[view].size)
  if any(o.uses_local_crops for o in method.objectives):
    total += sum(3 * fwd(s.size) for s in specs if s.local)
  return total


def cpu_cost(result, acc):
  """(cost analysis, seconds, source) of result's per-device step lowered for one CPU.

  The GPU compiler has no cost analysis. The same step (config, per-device
  batch, masks) on a one-device CPU mesh computes the same convolutions and
  dots per device; only what the loss gathers across devices (DetCon's
  negatives) is one device's batch instead of all of them. Lowered, not
  compiled: XLA's cost analysis of the program before optimisation, within
  0.5% of the compiled program's (DetCon-B, test preset: 1.9696 vs 1.9598
  GFLOP per step), without a CPU compile of the whole step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  config = result.method.config.copy_and_resolve_references()
  config.batch_size = result.per_device_batch
  cpu = compile_step(config, acc, masks_dtype=result.masks_dtype,
                     devices=jax.devices('cpu')[:1], lower_only=True)
  cost = cpu.lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  source = ('XLA\'s cost analysis of the same per-device step lowered (not optimised) '
            f'for one CPU device ({acc.platform} has none)')
  return cost, cpu.seconds, source


def peak_bytes(m):
  """Peak device memory of a memory_analysis(), with the code."""
  peak = int(getattr(m, 'peak_memory_in_bytes', 0) or
             (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
              + m.temp_size_in_bytes))
  return peak + m.generated_code_size_in_bytes


def analyse(result, acc, *, available, prefetch=2):
  """The report's per-device figures of one Compiled."""
  rep = dict(per_device_batch=result.per_device_batch,
             global_batch=result.per_device_batch * acc.num_devices,
             compile_seconds=round(result.seconds, 1))
  if result.oom is not None:
    need = result.oom.required
    rep['memory'] = dict(fits=False, available_bytes=available,
                         required_temporaries_bytes=int(need),
                         over_by_bytes=int(need - result.oom.available),
                         compiler_message=str(result.oom).strip().splitlines()[0])
    return rep
  c = result.compiled
  m = c.memory_analysis()
  peak_with_code = peak_bytes(m)
  rep['memory'] = dict(
      arguments_bytes=int(m.argument_size_in_bytes),
      outputs_bytes=int(m.output_size_in_bytes),
      aliased_bytes=int(m.alias_size_in_bytes),
      temporaries_bytes=int(m.temp_size_in_bytes),
      code_bytes=int(m.generated_code_size_in_bytes),
      peak_bytes=peak_with_code,
      prefetched_batches_bytes=int(prefetch * result.batch_bytes),
      available_bytes=int(available),
      fraction=peak_with_code / available,
      fits=peak_with_code <= available,
      # Within 10% of the limit the runtime's own buffers, the prefetched
      # batches and fragmentation can tip it over: choose a larger slice.
      tight=peak_with_code > TIGHT * available,
      headroom_bytes=int(available - peak_with_code))
  if acc.platform == 'cuda':
    rep['memory'].update(device_memory_bytes=int(acc.nominal_hbm_bytes),
                         allowed_fraction=gpu_mem_fraction())
  cost = c.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  source, source_seconds = 'XLA\'s cost analysis of the optimised per-device HLO', 0.0
  if not cost:
    cost, source_seconds, source = cpu_cost(result, acc)
  flops = float(cost.get('flops', 0.0))
  analytic = encoder_flops_per_example(result.method.config, result.method)
  per_example = flops / result.per_device_batch
  rep['flops'] = dict(
      per_device_step=flops, per_example=per_example,
      source=source, source_seconds=round(source_seconds, 1),
      bytes_accessed_per_device_step=float(cost.get('bytes accessed', 0.0)),
      analytic_encoder_per_example=float(analytic),
      compiled_over_analytic=per_example / analytic if analytic else None,
      # A bound, not a prediction: the step at the chip's peak bf16 rate.
      step_seconds_at_peak=flops / acc.peak_bf16_flops)
  rep['collectives'] = summarise_collectives(collectives(c.as_text()), result.params_bytes)
  return rep


# ------------------------------------------------------ the whole check ---

def candidate_batches(config, acc, granularity, limit):
  """Per-device batches the config accepts on this slice, ascending."""
  out = []
  for b in range(granularity, limit + 1, granularity):
    if not batch_problems(configure(config, acc, b), acc):
      out.append(b)
  return out


def find_max_batch(config, acc, first, *, available, granularity=8, limit=4096,
                   max_probes=8, log=print):
  """Largest per-device batch that fits (compiles), by model-guided bisection.

  first: the Compiled of the configured batch. Peak memory is close to
  linear in the batch (the state is fixed, activations scale): two points
  (or one and the state's size) predict where it meets the available HBM;
  each proposal is compiled, and the bracket [fits, does not fit] shrinks
  until its ends are neighbours among the candidate batches.
  Returns dict(per_device, global, probes=[...], bracketed=bool).
  """
  cands = candidate_batches(config, acc, granularity, limit)
  if not cands:
    raise CompileCheckError(f'no per-device batch in {granularity}..{limit} '
                            f'(step {granularity}) is valid for this config on {acc.name}')
  points = {}   # batch -> peak bytes (fits) or required estimate (does not)
  fits = {}

  def record(res):
    b = res.per_device_batch
    if res.oom is None:
      points[b] = peak_bytes(res.compiled.memory_analysis())
      # The GPU compiler compiles what does not fit; the TPU's refuses.
      fits[b] = points[b] <= available
    else:
      points[b] = res.oom.required
      fits[b] = False
    log(f'  per-device batch {b}: {"fits" if fits[b] else "does not fit"} '
        f'({points[b] / GiB:.2f} GiB{" needed" if not fits[b] else ""}, '
        f'compiled in {res.seconds:.0f} s)')

  record(first)
  fixed = None
  if first.oom is None:
    m = first.compiled.memory_analysis()
    fixed = m.argument_size_in_bytes - first.batch_bytes   # the state

  def predict():
    known = sorted(points.items())
    if len(known) >= 2:
      (b0, p0), (b1, p1) = known[0], known[-1]
      slope = (p1 - p0) / (b1 - b0) if b1 != b0 else 0
    else:
      (b0, p0), = known
      slope = (p0 - (fixed or 0)) / b0
    if slope <= 0:
      return None
    return b0 + (available - p0) / slope

  probes = 1
  while probes < max_probes:
    lo = max((b for b in fits if fits[b]), default=None)
    hi = min((b for b in fits if not fits[b]), default=None)
    inside = [b for b in cands if (lo is None or b > lo) and (hi is None or b < hi)]
    if not inside:
      break
    guess = predict()
    if lo is not None and hi is not None:
      mid = inside[len(inside) // 2]
      # Trust the model only inside the bracket; else bisect.
      pick = max((b for b in inside if guess and b <= guess), default=mid)
      if pick in (inside[0], inside[-1]) and len(inside) > 2:
        pick = mid
    elif guess is None:
      pick = inside[len(inside) // 2]
    else:
      # Aim a little below the line (memory grows in steps); never repeat.
      target = guess * (0.97 if hi is None else 1.0)
      below = [b for b in inside if b <= target]
      pick = below[-1] if below else inside[0]
    res = compile_step(configure(config, acc, pick), acc)
    record(res)
    probes += 1
  lo = max((b for b in fits if fits[b]), default=None)
  hi = min((b for b in fits if not fits[b]), default=None)
  neighbours = [b for b in cands if (lo is None or b > lo) and (hi is None or b < hi)]
  return dict(per_device=lo, global_batch=lo * acc.num_devices if lo else None,
              smallest_failing=hi, bracketed=not neighbours and hi is not None,
              probes=[dict(per_device=b, fits=fits[b], bytes=int(points[b]))
                      for b in sorted(points)])


def check(config, acc, *, config_name='', per_device_batch=None, find_max=False,
          granularity=8, max_probes=8, log=print):
  """The whole report (a JSON-able dict) of config on the slice `acc`."""
  import jax  # pylint: disable=g-import-not-at-top
  config = configure(config, acc, per_device_batch)
  problems = batch_problems(config, acc)
  if problems:
    raise CompileCheckError('the config does not run on this slice:\n  '
                            + '\n  '.join(problems))
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators()
  masks_dtype, masks_from = input_pipeline.shipped_mask_dtype(config.data)
  available = available_hbm(acc)
  log(f'compiling {config_name or config.name} for {acc.name} ({acc.topology}, '
      f'{acc.num_devices} devices, {acc.num_hosts} hosts): per-device batch '
      f'{config.batch_size // acc.num_devices}, {config.model.dtype} ...')
  first = compile_step(config, acc, masks_dtype=masks_dtype)
  report = dict(
      config=config_name, name=config.name, accelerator=acc.to_json(),
      compute_dtype=str(config.model.dtype), jax=jax.__version__,
      # The compiler's package version: libtpu's, or the CUDA plugin's.
      **{'libtpu' if acc.platform == 'tpu' else 'jax_cuda12_pjrt': _compiler_version(acc)},
      batch=dict(global_batch=config.batch_size,
                 per_device=config.batch_size // acc.num_devices,
                 per_example={k: dict(shape=list(s), dtype=np.dtype(d).name)
                              for k, (s, d) in first.example_spec.items()},
                 mask_dtype_from=masks_from),
      params_bytes=first.params_bytes,
      step=analyse(first, acc, available=available,
                   prefetch=int(input_pipeline.view_config.read(config.data, 'prefetch_to_device'))),
      estimates=ESTIMATES[acc.platform])
  if find_max:
    log('finding the largest per-device batch that fits ...')
    report['max_batch'] = find_max_batch(config, acc, first, available=available,
                                         granularity=granularity, max_probes=max_probes,
                                         log=log)
  return report


ESTIMATES = {
    'tpu': ('memory: the TPU compiler\'s buffer assignment for one device; '
            'flops: XLA\'s cost analysis of the optimised per-device HLO; '
            'step_seconds_at_peak: FLOPs / the chip\'s peak bf16 rate (a lower '
            'bound, not a timing). Nothing here ran on a TPU.'),
    'cuda': ('memory: the GPU compiler\'s buffer assignment for one device (kernels '
             'not autotuned: no GPU to time them), against the share of device memory '
             'JAX\'s GPU client allocates (XLA_PYTHON_CLIENT_MEM_FRACTION); the '
             'compiler itself does not refuse a program that does not fit; '
             'flops: see step.flops.source; step_seconds_at_peak: FLOPs / the GPU\'s '
             'dense bf16 tensor core rate (a lower bound, not a timing). Nothing here '
             'ran on a GPU.'),
}


def _compiler_version(acc):
  """The installed version of acc's compiler package (libtpu, jax-cuda12-pjrt)."""
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version({'tpu': 'libtpu', 'cuda': 'jax-cuda12-pjrt'}[acc.platform])
  except Exception:  # pylint: disable=broad-except
    return None


def _arrays(names):
  """'f32[4096,16,256]', or 'f32[64] + 3 more' / '+ more' for XLA's combined ops."""
  if len(names) == 1:
    return names[0]
  more = 'more' if names[-1] == '...' else f'{len(names) - 1} more'
  return f'{names[0]} + {more} (combined)'


def _mask_dtype(rep):
  return next((v['dtype'] for k, v in rep['batch']['per_example'].items()
               if k.endswith('/mask')), 'none')


def _gib(b):
  return f'{b / GiB:.2f} GiB'


def format_report(rep):
  """The report as the lines printed."""
  acc, step = rep['accelerator'], rep['step']
  gpu = acc.get('platform') == 'cuda'
  lines = [f'{rep["config"] or rep["name"]} on {acc["name"]} ({acc["topology"]}, '
           + (f'{acc["target_config"]}' if gpu else f'{acc["chip_config"]}')
           + f'; {acc["num_devices"]} devices on {acc["num_hosts"]} '
           f'hosts), {rep["compute_dtype"]}',
           f'  batch: global {rep["batch"]["global_batch"]}, per device '
           f'{rep["batch"]["per_device"]}; masks {_mask_dtype(rep)} '
           f'({rep["batch"]["mask_dtype_from"]}); compiled in {step["compile_seconds"]:.0f} s']
  mem = step['memory']
  if not mem['fits'] and 'required_temporaries_bytes' in mem:
    lines.append(f'  DOES NOT FIT: the compiler needs {_gib(mem["required_temporaries_bytes"])}'
                 f' of temporaries, {_gib(mem["available_bytes"])} available '
                 f'(over by {_gib(mem["over_by_bytes"])})')
  else:
    lines += [
        f'  HBM per device (compiler estimate): peak {_gib(mem["peak_bytes"])} of '
        f'{_gib(mem["available_bytes"])} available ({100 * mem["fraction"]:.0f}%): '
        + ('DOES NOT FIT' if not mem['fits'] else
           f'fits, but within {100 * (1 - TIGHT):.0f}% of the limit: choose a larger slice'
           if mem.get('tight') else 'fits'),
        *([f'    available = {mem["allowed_fraction"]:.2f} x the device\'s '
           f'{_gib(mem["device_memory_bytes"])} (XLA_PYTHON_CLIENT_MEM_FRACTION): the GPU '
           f'compiler\'s peak estimate against what JAX\'s GPU client allocates'] if gpu else []),
        f'    arguments {_gib(mem["arguments_bytes"])} (state + batch), outputs '
        f'{_gib(mem["outputs_bytes"])}, aliased {_gib(mem["aliased_bytes"])} (donated '
        f'state), temporaries {_gib(mem["temporaries_bytes"])}, code '
        f'{_gib(mem["code_bytes"])}; prefetched batches +{_gib(mem["prefetched_batches_bytes"])}']
    f = step['flops']
    lines += [
        f'  FLOPs ({"XLA cost analysis" if not gpu else "the step for one CPU"}): '
        f'{f["per_device_step"] / 1e12:.2f} TFLOP per device '
        f'step, {f["per_example"] / 1e9:.1f} GFLOP per example; analytic encoder passes '
        f'{f["analytic_encoder_per_example"] / 1e9:.1f} GFLOP (x{f["compiled_over_analytic"]:.2f});'
        f' at the chip\'s peak a step takes >= {1e3 * f["step_seconds_at_peak"]:.0f} ms']
    if gpu:
      lines.append(f'    FLOPs from {f["source"]} ({f["source_seconds"]:.0f} s)')
    col = step['collectives']
    lines.append(f'  collectives (per device step; parameters {_gib(col["params_bytes"])}):')
    for op, e in sorted(col['by_op'].items()):
      top = ', '.join(f'{_gib(x["bytes"])} {_arrays(x["arrays"])}' for x in e['largest'][:2])
      lines.append(f'    {op}: {e["count"]} ops, {_gib(e["bytes"])} (largest: {top})')
  mb = rep.get('max_batch')
  if mb:
    lines.append(f'  largest per-device batch that fits: {mb["per_device"]} (global '
                 f'{mb["global_batch"]})' + (f'; {mb["smallest_failing"]} does not fit'
                                            if mb['smallest_failing'] else '')
                 + ('' if mb['bracketed'] else ' (not bracketed: raise --max_probes)'))
  return '\n'.join(lines)


# ------------------------------------------------------------------ CLI ---

# Its own FlagValues: tests and scripts import this module beside others
# (dense_ssl.convert) that define --out on absl's global FLAGS.
FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and preset, e.g. configs/detcon_b.py:imagenet.',
    lock_config=True, flag_values=FLAGS)
_ACCELERATOR = flags.DEFINE_string(
    'accelerator', None, f'TPU slice, as Cloud TPU names it ({", ".join(EXAMPLES)}), '
    f'or NVIDIA GPUs ({", ".join(GPU_EXAMPLES)}).', flag_values=FLAGS)
_PER_DEVICE_BATCH = flags.DEFINE_integer(
    'per_device_batch', None, 'Compile at this per-device batch (default: '
    'config.batch_size / devices).', flag_values=FLAGS)
_FIND_MAX = flags.DEFINE_bool('find_max_batch', False,
                              'Also find the largest per-device batch that fits.',
                              flag_values=FLAGS)
_GRANULARITY = flags.DEFINE_integer('batch_granularity', 8,
                                    '--find_max_batch: per-device batches step by this.',
                                    flag_values=FLAGS)
_MAX_PROBES = flags.DEFINE_integer('max_probes', 8,
                                   '--find_max_batch: at most this many compiles.',
                                   flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', '', 'Write the JSON report here (default: '
                           'out/compile_check/<config>_<preset>_<accelerator>.json).',
                           flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Tracebacks of user errors too.',
                             flag_values=FLAGS)
flags.mark_flags_as_required(['config', 'accelerator'], flag_values=FLAGS)


def _config_arg(argv):
  arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '')
  return arg


def default_out(config_arg, acc_name):
  path, _, preset = config_arg.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('out', 'compile_check',
                      f'{stem}_{preset or "imagenet"}_{acc_name}.json')


def main(argv):
  if len(argv) > 1:
    cli.usage_error(PROG, f'unexpected arguments: {argv[1:]}')
  config_arg = _config_arg(sys.argv)
  try:
    acc = accelerator(_ACCELERATOR.value)
    require_compiler(acc)
    report = check(_CONFIG.value, acc, config_name=config_arg,
                   per_device_batch=_PER_DEVICE_BATCH.value, find_max=_FIND_MAX.value,
                   granularity=_GRANULARITY.value, max_probes=_MAX_PROBES.value,
                   log=lambda s: print(s, flush=True))
  except CompileCheckError as e:
    if _VERBOSE.value:
      raise
    cli.fail(PROG, str(e))
  print(format_report(report))
  out = _OUT.value or default_out(config_arg, acc.name)
  try:
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
      json.dump(report, f, indent=1, default=str)
  except OSError as e:   # The report is printed above: nothing is lost.
    cli.fail(PROG, f'--out={out}: cannot write the JSON report ({e.strerror or e}); '
             'the report is printed above')
  print(f'report: {out}')
  mem = report['step']['memory']
  if not mem['fits']:
    sys.exit(3)   # Distinct from user errors (1): launchers stop on it.


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=cli.config_flags_parser(PROG, _CONFIG, FLAGS))
