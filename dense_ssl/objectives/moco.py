"""MoCo-v2 (He et al. 2020; Chen et al. 2020): InfoNCE against a queue of keys.

The online network (encoder + the shared projector, configured as MoCo-v2's
2048 -> 2048 -> 128 head without BN: model.projector_bn = False) gives the
query q of view 1; the momentum encoder (the EMA target, constant tau =
0.999: config.ema.schedule = 'constant') gives the key k+ of view 2; the
negatives are the keys of earlier batches in a FIFO queue of K = 65,536.
The queue is part of the train state (TrainState.method_state['moco'],
replicated, checkpointed): after each step the keys of the WHOLE global
batch (gathered from every device of every host) are enqueued, so K must
be a multiple of config.batch_size. MoCo's shuffled BN is not needed: BN
statistics here are cross-replica over the global batch, which removes the
intra-batch leak shuffling guards against.
ReSim's global objective (Eq. 4); alone it is configs/moco.py.

Config (config.objectives.moco): weight, queue_size (65,536), temperature (0.2).
"""

import jax
import jax.numpy as jnp

from data_pipeline import config_rules
from dense_ssl.losses import moco as moco_losses
from dense_ssl.losses.detcon import l2_normalize
from dense_ssl.objectives import base


class MoCo(base.Objective):
  name = 'moco'
  is_global = True
  has_state = True
  passes = frozenset({(base.ONLINE, 0), (base.TARGET, 1)})
  # The queue holds whole global batches: 1,024 / 64 keys for the demo / test batches.
  presets = {'demo': dict(queue_size=1024), 'test': dict(queue_size=64)}

  @classmethod
  def default_config(cls):
    return base.objective_config(queue_size=65536, temperature=0.2)

  @classmethod
  def validate(cls, config):
    c, key = config.objectives.moco, 'objectives.moco.queue_size'
    problems = super().validate(config) + config_rules.check(key, c.queue_size, '>= 1',
                                                     integer=True)
    batch = config.get('batch_size')
    if not problems and config_rules.is_number(batch, True) and batch > 0 and c.queue_size % batch:
      problems.append(f'config.{key}={c.queue_size}: must be a multiple of '
                      f'config.batch_size={batch} (the queue takes whole global batches)')
    return problems

  def pools(self, plan, view):
    return {'global': base.global_pool}

  def init_state(self, rng):
    queue = jax.random.normal(rng, (int(self.c.queue_size),
                                    int(self.config.model.projector_dim)), jnp.float32)
    return dict(queue=l2_normalize(queue), pointer=jnp.zeros((), jnp.int32))

  def loss(self, ctx, plan, state):
    q = ctx.online[0]['projection']['global'][:, 0]
    k = ctx.target[1]['projection']['global'][:, 0]
    loss, acc = moco_losses.moco_loss(q, k, state['queue'], temperature=self.c.temperature)
    keys = base.gather_replicated(jax.lax.stop_gradient(l2_normalize(k)))
    queue, pointer = moco_losses.enqueue(state['queue'], state['pointer'], keys)
    return loss, dict(accuracy=acc), dict(queue=queue, pointer=pointer)
