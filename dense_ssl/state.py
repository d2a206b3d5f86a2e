"""The training state: everything a checkpoint needs to continue exactly."""

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Online and target networks, optimiser state, step and RNG.

  The data position is the step: the input pipeline is a function of
  (seed, step), so restarting it at `step` replays the same batches.
  Without a target network (SimCLR, DetCon-S) the target dicts are empty.
  Parameter paths are fixed: the encoder is online_params['encoder'] (and
  target_params['encoder']), what the converter reads.
  """
  step: jnp.ndarray                 # int32 [], steps done.
  online_params: Any
  online_batch_stats: Any
  target_params: Any
  target_batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray                  # uint32 [2]: raw key, checkpointable.
  method_state: Any = flax.struct.field(default_factory=dict)  # e.g. MoCo's queue.
  # The online probes (dense_ssl/online_eval.py): their parameters and their
  # own optimiser's state; empty without probes.
  probe_params: Any = flax.struct.field(default_factory=dict)
  probe_opt_state: Any = flax.struct.field(default_factory=dict)

  @property
  def target_variables(self):
    if not self.target_params:
      return None
    return dict(params=self.target_params, batch_stats=self.target_batch_stats)


def create_train_state(method, tx, rng, sample_batch, probes=None):
  """Initialises the method's networks and the optimiser on one device batch.

  probes: online_eval.OnlineProbes or None. Their parameters draw from a key
  of their own: the rest of the state is the same with or without them.
  """
  init_rng, state_rng = jax.random.split(rng)
  probe_params = probes.init(jax.random.fold_in(rng, 0x9B0BE)) if probes else {}
  variables = method.init(init_rng, sample_batch)
  method_state = variables['state']
  online, target = variables['online'], variables['target'] or {}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      online_params=online['params'],
      online_batch_stats=online['batch_stats'],
      target_params=target.get('params', {}),
      target_batch_stats=target.get('batch_stats', {}),
      opt_state=tx.init(online['params']),
      rng=state_rng,
      method_state=method_state,
      probe_params=probe_params,
      probe_opt_state=probes.tx().init(probe_params) if probes else {})


def num_params(tree):
  return sum(int(x.size) for x in jax.tree.leaves(tree))
