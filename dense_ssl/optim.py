"""Optimisers and schedules: LARS / SGD / AdamW, warmup + cosine LR, EMA tau.

Config keys (configs/common.py): batch_size, total_epochs | total_steps,
warmup_epochs, optimizer.{name, base_lr, weight_decay, momentum, eta,
nesterov, b1, b2}, ema.base.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ('lars', 'sgd', 'adamw')


def decay_mask(params):
  """True for the parameters that get weight decay and LARS adaptation.

  BYOL / DetCon exclude biases and all BatchNorm parameters: every 1-D leaf
  (conv and dense kernels are the only >= 2-D leaves).
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def steps_from_config(config, num_examples):
  """(total_steps, warmup_steps, steps_per_epoch) for a dataset of num_examples.

  Durations are in epochs (total_epochs, warmup_epochs); total_steps > 0
  overrides the length (warmup stays in epochs).
  """
  if num_examples <= 0:
    raise ValueError('the mask dataset has no examples (config key data.dir)')
  steps_per_epoch = num_examples / config.batch_size
  if config.total_steps > 0:
    total = int(config.total_steps)
  else:
    total = int(math.ceil(config.total_epochs * steps_per_epoch))
  if total <= 0:
    raise ValueError(f'config: total_epochs={config.total_epochs} gives no step; '
                     'set config.total_epochs or config.total_steps > 0')
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  return total, warmup, steps_per_epoch


def peak_learning_rate(config):
  """base_lr x global_batch / 256 (Goyal et al.; BYOL and DetCon)."""
  return config.optimizer.base_lr * config.batch_size / 256


def learning_rate_schedule(config, total_steps, warmup_steps):
  """Linear warmup from 0 to the peak, then cosine decay to 0 at total_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_learning_rate(config), warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


EMA_SCHEDULES = ('cosine', 'constant')


def ema_tau(step, total_steps, base, schedule='cosine'):
  """The target's decay tau_k (config keys ema.base, ema.schedule).

  cosine: BYOL's tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2, base -> 1.
  constant: MoCo's momentum encoder, tau_k = base (0.999).
  """
  if schedule == 'constant':
    return jnp.float32(base)
  if schedule != 'cosine':
    raise ValueError(f'config key ema.schedule={schedule!r}: choose one of {EMA_SCHEDULES}')
  # 1 - tau_k is a cosine decay of (1 - base) to 0 over the K steps.
  return 1.0 - optax.cosine_decay_schedule(1.0 - base, total_steps)(step)


def step_hyperparameters(config, total_steps, warmup_steps):
  """fn(step) -> dict(learning_rate, tau) of np.float32: the step's inputs.

  The compiled train step takes the learning rate and the EMA tau of its
  step as inputs instead of evaluating the schedules inside, so its program
  does not depend on the run's length, warmup or base LR (one compilation
  serves them all: the tests share compiled steps through the persistent
  cache). The values are optax's schedules (learning_rate_schedule, ema_tau)
  evaluated once for every step 0 ... total_steps, so a resumed run reads
  the very same numbers.
  """
  steps = np.arange(total_steps + 1)
  schedule = learning_rate_schedule(config, total_steps, warmup_steps)
  lr = np.asarray(jax.jit(jax.vmap(schedule))(steps), np.float32)
  base, kind = config.ema.base, config.ema.get('schedule', 'cosine')
  tau = np.broadcast_to(np.asarray(jax.jit(jax.vmap(
      lambda k: ema_tau(k, total_steps, base, kind)))(steps), np.float32), steps.shape)

  def at(step):
    k = min(int(step), total_steps)
    return dict(learning_rate=lr[k], tau=tau[k])

  return at


def make_optimizer(config, schedule):
  """The optax transformation named by config.optimizer.name."""
  o = config.optimizer
  if o.name == 'lars':
    # optax.lars: weight decay is added before the trust ratio, both masked.
    return optax.lars(schedule, weight_decay=o.weight_decay,
                      weight_decay_mask=decay_mask, trust_coefficient=o.eta,
                      trust_ratio_mask=decay_mask, momentum=o.momentum,
                      nesterov=o.nesterov)
  if o.name == 'sgd':
    return optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                       optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  if o.name == 'adamw':
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                       mask=decay_mask)
  raise ValueError(f'config key optimizer.name={o.name!r}: choose one of {OPTIMIZERS}')
