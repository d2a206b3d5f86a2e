"""Fake batches, a loss runner and test data configs shared by the tests."""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipeline import view_config
from dense_ssl.objectives.base import AXIS

SIZE, PER_DEVICE = 64, 2


def data_config(**overrides):
  """config.data of the 'test' preset (configs/common.py), with `overrides` applied.

  The readers of config.data take every key from configs/common.py and state no
  default of their own: a test starts from the real defaults and says only
  what it changes. A plain dict, like the literals tests used to pass.
  """
  from configs import common  # pylint: disable=g-import-not-at-top
  data = common.apply_preset(common.base_config('test'), 'test').data.to_dict()
  unknown = sorted(set(overrides) - set(data) - set(view_config.OPTIONAL_KEYS))
  if unknown:
    raise KeyError(f'data_config: unknown data keys {unknown}; configs/common.py'
                   ' base_config defines the others')
  data.update(overrides)
  return data


def fake_batch(n, rng, *, num_ids=5):
  """n examples of two 64 px views with blocky masks (several ids own C5 cells)."""
  r = np.random.default_rng(rng)
  b = {}
  for v in ('view1', 'view2'):
    b[f'{v}/image'] = r.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    coarse = r.integers(0, num_ids, size=(n, 4, 4))
    b[f'{v}/mask'] = np.repeat(np.repeat(coarse, 16, 1), 16, 2).astype(np.int32)
    b[f'{v}/box'] = np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1))
    b[f'{v}/flip'] = np.zeros((n,), np.int32)
  return b


def blocky_whole_view(n, seed=0):
  """uint8 [n, SIZE, SIZE, 3]: a whole view of 4 x 4 blocks in 4 colours plus a little
  noise (Odin's whole/image with clusters to find)."""
  r = np.random.default_rng(seed)
  coarse = r.integers(0, 4, size=(n, 4, 4))
  palette = r.integers(0, 256, size=(4, 3))
  cell = SIZE // 4
  whole = palette[np.repeat(np.repeat(coarse, cell, 1), cell, 2)]
  return np.clip(whole + r.normal(0, 4, whole.shape), 0, 255).astype(np.uint8)


def run_loss(method, variables, batch, rng, devices=4):
  """method.loss inside shard_map over `devices`, as the trainer runs it.

  Returns (loss, metrics, new method state), each pmean'ed / replicated.
  """
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), (AXIS,))

  def per_device(online, target, mstate, batch, rng):
    loss, (_, _, metrics, mstate, _) = method.loss(
        online['params'], online['batch_stats'], target, mstate, batch, rng)
    return jax.lax.pmean(loss, AXIS), jax.lax.pmean(metrics, AXIS), mstate

  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  f = jax.jit(jax.shard_map(per_device, mesh=mesh,
                            in_specs=(P(), P(), P(), P(AXIS), P()),
                            out_specs=(P(), P(), P())))
  target = variables['target']
  return f(jax.device_put(variables['online'], rep),
           jax.device_put(target, rep) if target is not None else None,
           jax.device_put(variables.get('state', {}), rep), jax.device_put(batch, shard),
           jax.device_put(rng, rep))
