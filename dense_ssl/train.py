"""The one trainer for every method: data-parallel steps, EMA, checkpoints, logs.

The step is written pmap-style, for ONE device: it sees its slice of the
batch, BatchNorm statistics are averaged over the named axis `batch`,
negatives are all-gathered over it, and gradients and metrics are pmean'ed
over it. `jax.shard_map` under `jax.jit` runs it on a mesh of every device of
every process; this is what `jax.pmap` compiles to in current JAX, without
pmap's replicate/unreplicate bookkeeping (the state is one replicated global
array per leaf, the batch one global array sharded over devices).

  state, metrics = train_step(state, batch, hyper)   # state, hyper replicated; batch P('batch')

The input pipeline is a function of (seed, step), so a restart at the step
of the latest checkpoint replays exactly the batches an uninterrupted run
sees: resume is exact.
"""

import collections
import functools
import itertools
import math
import os
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from data_pipeline import input_pipeline
from data_pipeline import tf_setup
from data_pipeline import view_config
from dense_ssl import checkpoint as ckpt_lib
from dense_ssl import config_check
from dense_ssl import discovery
from dense_ssl import method as method_lib
from dense_ssl import online_eval
from dense_ssl import optim
from dense_ssl import state as state_lib
from dense_ssl.objectives.base import AXIS
from dense_ssl.ops import color


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


def make_per_device_step(method, make_tx, *, seed=0, data_config=None, probes=None):
  """The step for one device's batch (the named axis AXIS is bound).

  step_fn(state, batch, hyper): hyper = dict(learning_rate, tau), the
  step's scalars from optim.step_hyperparameters (inputs, not constants:
  the program does not depend on the schedules). make_tx(schedule) builds
  the optimiser (optim.make_optimizer with the config bound); it is built
  here around the given learning rate, with the same state structure as
  the optimiser the state was initialised with.
  seed, data_config: config.seed and config.data, for the colour recipe that
  runs first, on the device (dense_ssl/ops/color.py): uint8 views are
  coloured and normalised here with per-example keys from (seed, step, global
  index, view), so 1 and N devices, and a resumed run, see the same views.
  data_config None: the batches hold no uint8 view (float views pass through).
  probes: online_eval.OnlineProbes (or None): trained after the
  self-supervised update on its stop-gradient features, with their own
  optimiser; the self-supervised update does not depend on them.
  """

  def step_fn(state, batch, hyper):
    step = state.step
    tx = make_tx(lambda _: hyper['learning_rate'])
    batch = color.augment_views(batch, seed=seed, step=step, data_config=data_config)
    # The same key on every device: methods derive per-example keys from
    # global example indices (base.example_rngs), so the update does not
    # depend on the number of devices.
    rng = jax.random.fold_in(state.rng, step)
    # Per-device gradients (as under pmap), averaged explicitly below.
    params = jax.lax.pcast(state.online_params, AXIS, to='varying')
    loss_fn = lambda p: method.loss(p, state.online_batch_stats, state.target_variables,
                                    state.method_state, batch, rng,
                                    probe_view=probes.view if probes else None)
    (_, (stats, tstats, metrics, method_state, probed)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.online_params)
    online_params = optax.apply_updates(state.online_params, updates)
    # BN statistics are already cross-replica means; pmean keeps them
    # bit-identical across devices whatever the reduction order.
    stats = jax.lax.pmean(stats, AXIS)

    target_params, target_stats = state.target_params, state.target_batch_stats
    tau = jnp.float32(0.0)
    if method.uses_target:
      # BYOL: xi <- tau xi + (1 - tau) theta, with tau cosine-annealed to 1
      # (MoCo: constant, ema.schedule='constant'); tau_k from optim.ema_tau.
      tau = hyper['tau']
      target_params = optax.incremental_update(
          {k: online_params[k] for k in target_params}, target_params, 1.0 - tau)
      target_stats = jax.lax.pmean(tstats, AXIS)

    metrics = jax.lax.pmean(metrics, AXIS)
    metrics = dict(metrics, learning_rate=hyper['learning_rate'], tau=tau,
                   grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(online_params))
    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if probes is not None:
      probe_params, probe_opt_state, probe_metrics = probes.update(
          probe_params, probe_opt_state, probed, batch)
      metrics.update(probe_metrics)
    new_state = state.replace(
        step=step + 1, online_params=online_params, online_batch_stats=stats,
        target_params=target_params, target_batch_stats=target_stats,
        opt_state=opt_state, method_state=method_state, probe_params=probe_params,
        probe_opt_state=probe_opt_state)
    return new_state, metrics

  return step_fn


def make_mesh():
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def compile_train_step(method, make_tx, mesh, *, seed=0, data_config=None, probes=None):
  """train_step(state, batch, hyper) -> (state, metrics), jitted over the mesh.

  hyper: optim.step_hyperparameters(...)(step), numpy scalars (replicated).
  """
  per_device = make_per_device_step(method, make_tx, seed=seed, data_config=data_config,
                                    probes=probes)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                               out_specs=(P(), P())),
                 donate_argnums=0)


def prefetch_to_devices(local_batches, mesh, size):
  """Global device batches, `size` ahead of the step that consumes them.

  Each batch is put on the devices (an asynchronous sharded transfer) as soon
  as the host has it, so the copies of the next `size` batches overlap the
  running step; the order of the batches is unchanged (exact resume).
  """
  queue = collections.deque()
  for local in local_batches:
    queue.append(global_batch(local, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def global_batch(local_batch, mesh):
  """This process's [D_local, B, ...] numpy batch -> global arrays sharded P(AXIS)."""
  sharding = NamedSharding(mesh, P(AXIS))
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v.reshape((-1,) + v.shape[2:]))
  return out


def step_dtype(key, dtype):
  """The dtype of batch entry `key` as the method sees it after the colour recipe.

  Float images, int32 masks; everything else as shipped.
  """
  if key.endswith('/image'):
    return np.dtype(np.float32)
  if key.endswith('/mask'):
    return np.dtype(np.int32)
  return np.dtype(dtype)


def init_state(method, tx, config, sample_batch, mesh, probes=None):
  """Initialises the TrainState replicated over the mesh (compiled once)."""
  rng = jax.random.PRNGKey(config.seed)
  # Two examples of device 0 give every shape; BN init needs no statistics.
  sample = {k: np.asarray(v)[0, :2] for k, v in sample_batch.items()}
  sample = {k: v.astype(step_dtype(k, v.dtype)) for k, v in sample.items()}
  repl = NamedSharding(mesh, P())
  init = jax.jit(lambda r, b: state_lib.create_train_state(method, tx, r, b, probes),
                 out_shardings=repl)
  return init(rng, sample)


def abstract_state(method, tx, config, example_spec):
  """The TrainState init_state would make, as shapes and dtypes (nothing computed).

  example_spec: {key: (shape, dtype)} of one example
  (input_pipeline.example_spec). For compiling the step ahead of time
  (dense_ssl/compile_check.py).
  """
  sample = {k: jax.ShapeDtypeStruct((2,) + tuple(shape), step_dtype(k, dtype))
            for k, (shape, dtype) in example_spec.items()}
  return jax.eval_shape(lambda r, b: state_lib.create_train_state(method, tx, r, b),
                        jax.random.PRNGKey(config.seed), sample)


COMPILE_WAIT_S = 3600  # How long a process waits for the others to compile.


def wait_for_all_processes(name, timeout_s):
  """A barrier of JAX's coordination service (no device collective)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  if client is not None:
    client.wait_at_barrier(name, int(timeout_s * 1000))
  else:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def check_processes_agree(config):
  """Every process must run the same config on as many local devices.

  A mismatch (a stale checkout, a different override, a host with fewer
  GPUs) would otherwise hang in a collective or train garbage; this fails
  at once on every process with a message naming the odd ones out.
  """
  if jax.process_count() == 1:
    return
  import hashlib  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode())
  mine = np.array([int(digest.hexdigest()[:12], 16), jax.local_device_count()],
                  np.int64)
  every = np.asarray(multihost_utils.process_allgather(mine))
  odd_config = [i for i in range(len(every)) if every[i, 0] != every[0, 0]]
  odd_devices = [i for i in range(len(every)) if every[i, 1] != every[0, 1]]
  if odd_config or odd_devices:
    raise ValueError(
        f'the {jax.process_count()} processes disagree: '
        + (f'processes {odd_config} have a different config than process 0 '
           '(same --config and overrides everywhere); ' if odd_config else '')
        + (f'local device counts {every[:, 1].tolist()} (process i at index '
           'i) differ; every host needs the same number of devices'
           if odd_devices else ''))


def _format_duration(seconds):
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def make_writer(workdir, is_chief):
  """The run's one metric writer (clu): TensorBoard scalars from process 0.

  Only the summary writer: clu's default writer adds a LoggingWriter, which
  would repeat every scalar as a log line beside Progress's. The other
  processes get a writer that writes nothing.
  """
  tf_setup.import_tensorflow()   # clu's writer imports TensorFlow: the quiet import first.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if not is_chief:
    return metric_writers.MultiWriter([])
  return metric_writers.SummaryWriter(workdir)


class Progress:
  """The log line: loss, LR, throughput, data wait and ETA (process 0 logs it).

  Means over the steps since the last line (smoother curves); the first
  step (compilation) is left out of the throughput and the ETA. Kept beside
  clu (not clu.periodic_actions.ReportProgress): that action reports steps/s
  and the ETA as work-unit notes and scalars, but not the loss, the
  learning rate or the share of time spent waiting for data, which is what
  a researcher reads in this line.
  """

  def __init__(self, config, total_steps, steps_per_epoch, num_devices):
    self.batch_size, self.total_steps = config.batch_size, total_steps
    self.steps_per_epoch, self.num_devices = steps_per_epoch, num_devices
    self.compile_done = None
    self.steps_after_compile = 0
    self.window = dict(t0=None, steps=0, wait=0.0)
    self.last_scalars = {}

  def step_done(self, metrics, t_start, wait):
    if self.compile_done is None:
      jax.block_until_ready(metrics)
      self.compile_done = time.perf_counter()
      self.window.update(t0=self.compile_done, steps=0, wait=0.0)
      logging.info('step 1 compiled and ran in %.1fs', self.compile_done - t_start)
    else:
      self.window['steps'] += 1
      self.window['wait'] += wait
      self.steps_after_compile += 1

  def log_line(self, step, logged):
    """Scalars for TensorBoard from the host metrics `logged`; logs the line."""
    now = time.perf_counter()
    probe_scalars, logged = online_eval.window_scalars(logged)
    # Means over the window; the online probes' metrics keep their probe/ names.
    scalars = {k if k.startswith('probe/') else f'train/{k}':
               float(np.mean([m[k] for m in logged])) for k in logged[-1]}
    scalars.update(probe_scalars)
    scalars['train/learning_rate'] = float(logged[-1]['learning_rate'])
    scalars['train/tau'] = float(logged[-1]['tau'])
    scalars['train/epoch'] = step / self.steps_per_epoch
    w = self.window
    perf = eta = ''
    if w['steps']:
      dt = (now - w['t0']) / w['steps']
      scalars.update({
          'perf/step_time_s': dt,
          'perf/images_per_s': self.batch_size / dt,
          'perf/images_per_s_per_device': self.batch_size / dt / self.num_devices,
          'perf/data_wait_fraction': w['wait'] / (now - w['t0']),
      })
      perf = (f' | {scalars["perf/images_per_s"]:.1f} img/s | {dt:.2f} s/step'
              f' | data wait {100 * scalars["perf/data_wait_fraction"]:.0f}%')
    if self.steps_after_compile:
      per_step = (now - self.compile_done) / self.steps_after_compile
      eta = f' | ETA {_format_duration(per_step * (self.total_steps - step))}'
    probes = ''.join(f' | {name} {100 * scalars[key]:.1f}%' for key, name in (
        ('probe/top1', 'probe top-1'), ('probe/miou', 'probe mIoU')) if key in scalars)
    logging.info('step %d/%d (%.0f%%) | epoch %.2f | loss %.4f | lr %.4g%s%s%s',
                 step, self.total_steps, 100 * step / self.total_steps,
                 step / self.steps_per_epoch, scalars['train/loss'],
                 scalars['train/learning_rate'], probes, perf, eta)
    self.window.update(t0=time.perf_counter(), steps=0, wait=0.0)
    self.last_scalars = scalars
    return scalars


def mismatch_message(error, directory, previous_config, config):
  """What differs between the checkpoint's run and this one, key by key."""
  differences = ckpt_lib.config_differences(previous_config, config)
  if previous_config is None:
    which = ('the workdir has no config.json of the run that wrote it, so the '
             'differing config keys cannot be listed')
  elif differences:
    shown = differences[:12]
    more = len(differences) - len(shown)
    which = ('config keys that differ from the checkpoint\'s run (config.json):\n  '
             + '\n  '.join(shown) + (f'\n  ... and {more} more' if more else ''))
  else:
    which = 'config.json lists no differing key'
  return (f'{directory}/{error.step} was written by a run with another TrainState '
          f'({error.detail}): resume with that run\'s settings, or use a new '
          f'--workdir; {which}')


def train_and_evaluate(config, workdir, *, stop_after_steps=None):
  """Trains config.objectives until the last step, resuming from workdir.

  Args:
    config: a locked ConfigDict (configs/<name>.py).
    workdir: checkpoints, config.json and TensorBoard logs go here.
    stop_after_steps: stop (after checkpointing) once this many steps ran in
      THIS call: simulates a preemption in tests.
  Returns:
    dict(step=..., metrics=last logged metrics, state=the final TrainState,
    finished=bool).
  """
  # ------------------------------------------------------------- setup ---
  # Every problem of the config at once, before anything starts.
  config_check.validate(config, num_devices=jax.device_count())
  if '://' not in workdir:  # Orbax wants absolute local paths (gs:// as is).
    workdir = os.path.abspath(workdir)
  is_chief = jax.process_index() == 0
  check_processes_agree(config)
  mesh = make_mesh()
  num_devices = jax.device_count()
  method = method_lib.Method(config)

  manifest = input_pipeline.read_manifest(config.data.dir)
  num_examples = int(manifest['num_examples'])
  total_steps, warmup_steps, steps_per_epoch = optim.steps_from_config(
      config, num_examples)
  schedule = optim.learning_rate_schedule(config, total_steps, warmup_steps)
  tx = optim.make_optimizer(config, schedule)      # Its state's structure, for init.
  hyper = optim.step_hyperparameters(config, total_steps, warmup_steps)
  # The online probes of what the data has (image labels, class maps).
  probes = online_eval.OnlineProbes.from_config(config, manifest, method.passes)

  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  setup_done = False
  try:  # Whatever stops the start closes the checkpointer (no orbax threads left).
    # config.json binds a workdir only once it holds checkpoints: a start that
    # failed before its first checkpoint leaves nothing a corrected run must match.
    previous_config = None
    if checkpointer.all_steps():
      ckpt_lib.check_config_matches(workdir, config)
      previous_config = ckpt_lib.read_config(workdir)
    start_step = checkpointer.latest_step() or 0
    if start_step >= total_steps:
      logging.info('training is finished: %s has the checkpoint of step %d of %d; '
                   'nothing to do (use a new --workdir to train again).',
                   checkpointer.directory, start_step, total_steps)
      return dict(step=start_step, metrics={}, state=None, finished=True)
    logging.info('%s (%s): %d examples, global batch %d over %d devices (%d processes): '
                 '%d steps (%.1f epochs), %d warmup; peak LR %.4g', config.name,
                 ' + '.join(f'{w:g} x {n}' for n, w in method.weights.items()),
                 num_examples, config.batch_size, num_devices, jax.process_count(),
                 total_steps, total_steps / steps_per_epoch, warmup_steps,
                 optim.peak_learning_rate(config))

    # -------------------------------------------------------------- data ---
    # A function of (seed, step): restarting at start_step replays the batches.
    def batches_from(step):
      return input_pipeline.make_pretrain_iterator(
          config.data, global_batch_size=config.batch_size, seed=config.seed,
          start_step=step, process_index=jax.process_index(),
          process_count=jax.process_count(), num_local_devices=jax.local_device_count(),
          probe_targets=probes is not None)

    batches = batches_from(start_step)
    first = next(batches)

    # ------------------------------------------------- state, or resume ---
    state = init_state(method, tx, config, first, mesh, probes=probes)
    if probes is not None:
      logging.info('online probes: %s (dense_ssl/online_eval.py; config.online_eval=False '
                   'turns them off)', ', '.join(
                       {'label': f'a classifier of the {probes.num_labels} image labels',
                        'class': f'a dense probe of the {probes.num_classes} map classes'}[t]
                       for t in probes.targets))
    logging.info('parameters: online %s, target %s',
                 f'{state_lib.num_params(state.online_params):,}',
                 f'{state_lib.num_params(state.target_params):,}')
    if start_step:
      try:
        restored_step, state, meta, skipped = checkpointer.restore_newest(state)
      except ckpt_lib.RunMismatchError as e:
        raise ValueError(mismatch_message(e, checkpointer.directory, previous_config,
                                          config)) from e
      if skipped:
        logging.warning('falling back to step %d, the newest checkpoint that restores '
                        '(damaged: %s)', restored_step,
                        ', '.join(f'step {s}' for s, _, _ in skipped))
      if restored_step != start_step:  # The data position follows the step.
        start_step = restored_step
        batches = batches_from(start_step)
        first = next(batches)
      logging.info('resuming from step %d (%s)', start_step, checkpointer.directory)
      if int(meta.get('data_step', start_step)) != start_step:
        raise ValueError(f'{checkpointer.directory}/{start_step}: data position '
                         f'{meta["data_step"]} does not match the step')
    else:
      logging.info('starting from scratch in %s', workdir)
    if is_chief:  # Once the run is known to fit the workdir.
      ckpt_lib.save_config(workdir, config)
    setup_done = True
  finally:
    if not setup_done:
      checkpointer.close()

  # ----------------------------------------------------- compiled step ---
  train_step = compile_train_step(method, functools.partial(optim.make_optimizer, config),
                                  mesh, seed=config.seed, data_config=config.data,
                                  probes=probes)
  if jax.process_count() > 1:
    # Compile first, then meet: the first collective of the step gives every
    # process only 30 s to join (gloo on CPU), and one host can finish
    # compiling much later than another (a loaded machine).
    t0 = time.perf_counter()
    train_step = train_step.lower(state, global_batch(first, mesh),
                                  hyper(start_step)).compile()
    logging.info('compiled the step in %.1fs; waiting for the other processes',
                 time.perf_counter() - t0)
    wait_for_all_processes('dense_ssl_step_compiled', COMPILE_WAIT_S)

  def save(step):
    checkpointer.save(step, state, dict(
        step=step, data_step=step, total_steps=total_steps, name=config.name,
        seed=config.seed, epoch=step / steps_per_epoch))

  # -------------------------------------------------------------- loop ---
  writer = make_writer(workdir, is_chief)
  held_out = None
  if config.eval_every_steps and config.eval_data_dir:
    held_out = online_eval.HeldOutEval(config, workdir, total_steps)

  def report(step_done, scalars):
    if scalars:
      writer.write_scalars(step_done, scalars)
      writer.flush()
      logging.info('held-out at step %d: %s', step_done, ' | '.join(
          f'{k[5:]} {100 * v:.1f}%' for k, v in sorted(scalars.items())))

  if held_out is not None and start_step == 0:
    report(0, held_out.evaluate(0, None, state))   # The random init: the floor.
  # Odin: the discovered masks' ABO against GT as the run goes (dense_ssl/discovery.py).
  quality = None
  if discovery.uses_discovery(config) and config.discovery.quality_every_steps:
    quality = discovery.DiscoveryQuality(config, total_steps)
    if start_step == 0 and is_chief:   # The random init's discovery.
      writer.write_scalars(0, quality.evaluate(0, None, state))
  progress = Progress(config, total_steps, steps_per_epoch, num_devices)
  pending = collections.deque()          # (step, device metrics) not yet read.
  logged = []                            # Host metrics since the last log line.
  step, ran = start_step, 0
  device_batches = prefetch_to_devices(itertools.chain([first], batches), mesh,
                                       int(view_config.read(config.data, 'prefetch_to_device')))

  def check_finite(step_done, metrics):
    # The loss alone can stay finite (normalisation clamps NaN features)
    # while gradients and weights are not: check all three.
    values = {k: float(metrics[k]) for k in ('loss', 'grad_norm', 'param_norm')}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
      checkpointer.wait()
      good = checkpointer.latest_step()
      raise NonFiniteLossError(
          f'non-finite training values at step {step_done} ({bad}): stopping. '
          f'The last good checkpoint (step {good}) is kept in '
          f'{checkpointer.directory}. Lower config.optimizer.base_lr, raise '
          'config.warmup_epochs, use config.model.dtype=float32, or check the '
          'input data.')

  def drain(keep):
    """Reads (and checks) all pending step metrics but the last `keep`."""
    while len(pending) > keep:
      done_step, m = pending.popleft()
      m = jax.device_get(m)
      check_finite(done_step, m)
      logged.append(m)

  try:
    while step < total_steps:
      t_wait = time.perf_counter()
      batch = next(device_batches)
      wait = time.perf_counter() - t_wait
      state, metrics = train_step(state, batch, hyper(step))
      step += 1
      ran += 1
      pending.append((step, metrics))
      # Read the previous step's metrics while this one runs (no stall).
      drain(keep=1)
      progress.step_done(metrics, t_wait, wait)

      is_last = step == total_steps
      stop_now = stop_after_steps is not None and ran >= stop_after_steps
      if step % config.log_every_steps == 0 or is_last or stop_now:
        drain(keep=0)
        scalars = progress.log_line(step, logged)
        logged.clear()
        writer.write_scalars(step, scalars)
        writer.flush()
      if held_out is not None and held_out.action(step, state=state):
        report(step, held_out.action.get_last_callback_result())
      if quality is not None and quality.action(step, state=state) and is_chief:
        writer.write_scalars(step, quality.action.get_last_callback_result())
        writer.flush()

      # --------------------------------------------------- checkpoint ---
      if step % config.ckpt_every_steps == 0 or is_last or stop_now:
        drain(keep=0)  # Never checkpoint a state whose loss was not finite.
        save(step)
        logging.info('saving checkpoint of step %d (async)', step)
      if stop_now and not is_last:
        logging.info('stopping after %d steps in this run (stop_after_steps)', ran)
        break
  finally:
    checkpointer.close()   # Waits for the last asynchronous save.
    writer.close()

  if step == total_steps:
    logging.info('training finished: step %d of %d; checkpoints in %s, '
                 'TensorBoard logs in %s', step, total_steps,
                 checkpointer.directory, workdir)
  return dict(step=step, metrics=progress.last_scalars, state=state,
              finished=step == total_steps)
