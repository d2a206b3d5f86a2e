"""Odin's discovered masks in the step (dense_ssl/discovery.py, configs/odin.py).

k-means against float64 numpy and the masks' geometry: tests/test_discovery_ops.py.
Exact resume of a run on discovered masks: tests/test_train.py
(test_kill_and_resume_is_exact composes them with the dense objectives). A
real run of configs/odin.py:test, its discovery/abo in TensorBoard:
tests/test_online_eval.py (test_a_labelled_run_logs_its_probes_...). 1 vs 4
devices: tests/test_dense_objectives.py (test_composed_one_device_equals_four_devices,
with CLoVE's multi-crop, MoCo and ReSim-C4).
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from configs import odin as odin_config
from dense_ssl import discovery
from dense_ssl import method as method_lib
from dense_ssl.objectives import base
from dense_ssl.objectives.base import AXIS
from tests.fake_data import blocky_whole_view
from tests.fake_data import fake_batch
from tests.test_train import override


def odin_batch(n, seed=0):
  """fake_batch's views without masks, plus a blocky whole view (uint8): clusters to find.

  View 2 is a mirrored crop, so the masks depend on the geometry.
  """
  b = fake_batch(n, seed)
  b['whole/image'] = blocky_whole_view(n, seed)
  b['view2/box'] = np.tile(np.array([0.1, 0.2, 0.9, 1.0], np.float32), (n, 1))
  b['view2/flip'] = np.array([0, 1] * (n // 2), np.int32)
  for v in ('view1', 'view2'):
    del b[f'{v}/mask']
  return b


def _per_device(fn, *args):
  """fn(*args) inside shard_map on one device (the step's mapped axis bound)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (AXIS,))
  f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))
  return jax.device_get(f(*jax.device_put(args, NamedSharding(mesh, P()))))


def test_no_gradient_reaches_the_encoder_through_discovery():
  """The online gradient with discovered masks equals the gradient of DetCon-B given
  the same masks as data, and the loss does not depend on the whole view's pixels."""
  config = odin_config.get_config('test')
  batch = odin_batch(4, seed=1)
  batch['whole/image'] = (batch['whole/image'] / 255.0 - 0.45).astype(np.float32)
  odin = method_lib.Method(config)
  variables = jax.jit(odin.init)(jax.random.key(0), batch)
  online, target = variables['online'], variables['target']
  rng = jax.random.key(3)

  def masks(target, batch):
    # The step's discovery stream (Method.loss).
    out, _ = discovery.discover_masks(config, target, batch, base.stream(rng, 'discovery'))
    return {k: v for k, v in out.items() if k.endswith('/mask')}

  def grads(method, params, batch, target):
    # d loss / d (online params, whole view's pixels).
    loss = lambda p, w: method.loss(p, online['batch_stats'], target, {},
                                    dict(batch, **{'whole/image': w}), rng)[0]
    return jax.grad(loss, argnums=(0, 1))(params, batch['whole/image'])

  found = _per_device(lambda t, b: masks(t, b), target, batch)
  assert len(np.unique(found['view1/mask'])) > 1
  given = override(odin_config.get_config('test'), **{'data.mask': 'gt'})
  detcon = method_lib.Method(given)
  with_masks = dict(batch, **found)
  g_odin, g_whole = _per_device(lambda p, b, t: grads(odin, p, b, t), online['params'], batch,
                                target)
  g_given, _ = _per_device(lambda p, b, t: grads(detcon, p, b, t), online['params'],
                           with_masks, target)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
               g_odin, g_given)
  assert max(np.abs(x).max() for x in jax.tree.leaves(g_odin['encoder'])) > 0
  np.testing.assert_array_equal(g_whole, 0)


def test_config_check_names_the_discovery_keys(tmp_path):
  from dense_ssl import config_check  # pylint: disable=g-import-not-at-top
  from tests import mask_records  # pylint: disable=g-import-not-at-top
  config = override(odin_config.get_config('test'), **{
      'discovery.num_clusters': 1, 'discovery.feature': 'c6',
      'data.discovery_view_size': 100})
  found = config_check.problems(config, check_data=False)
  assert 'config.discovery.num_clusters=1: must be >= 2 (an integer)' in found
  assert any(p.startswith("config.discovery.feature='c6': ") for p in found)
  assert any(p.startswith('config.data.discovery_view_size=100: ') for p in found)
  # 4 x 4 cells of C4 at 64 px cannot hold 32 clusters.
  config = override(odin_config.get_config('test'), **{'discovery.num_clusters': 32})
  assert config_check.problems(config, check_data=False) == [
      'config.discovery.num_clusters=32: the c4 map of the 64 px whole view has only 16 '
      'cells; lower it or raise config.data.discovery_view_size']
  # The discovery network is the EMA target: DetCon-S has none.
  config = override(odin_config.get_config('test'),
                    **{'objectives.detcon.shared_network': True})
  assert any(p.startswith("config.data.mask='discovered': the discovery network is the EMA")
             for p in config_check.problems(config, check_data=False))
  # Scoring the discovery needs GT instances in data.dir.
  data = str(tmp_path / 'no_gt')
  image = np.zeros((64, 64, 3), np.uint8)
  mask_records.write_mask_dataset(data, [dict(id=f'ex{i}', image=image, masks={})
                                         for i in range(2)], num_shards=1)
  config = override(odin_config.get_config('test'), **{
      'data.dir': data, 'discovery.quality_every_steps': 5})
  assert any(p.startswith('config.discovery.quality_every_steps=5: the discovered masks')
             for p in config_check.problems(config))
