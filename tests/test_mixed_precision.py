"""bfloat16 compute (the accelerator presets) against float32 (the CPU presets).

The imagenet/coco presets set config.model.dtype='bfloat16': convolutions
and head matmuls in bfloat16, while parameters, optimiser state, BN
statistics and everything the losses read stay float32 (models/network.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import byol, detcon_b, detcon_s, scrl
from dense_ssl import method as method_lib
from dense_ssl.objectives.base import AXIS
from tests.fake_data import PER_DEVICE, fake_batch


def test_a_bfloat16_step_matches_the_float32_step():
  """The trainer's step (4 devices) from the same state on the same batch,
  computed in bfloat16 and in float32: the same loss within 1%, the same
  update direction; the bfloat16 step's state stays float32.

  Tolerances: bfloat16 keeps 8 bits of mantissa (2^-9 = 0.2% relative
  rounding per operation). Measured on this batch (DetCon-B, ResNet-10,
  64 px, BN statistics over 8 examples): loss 3.7177 vs 3.7145 (rel.
  8.4e-4), cosine of the two parameter updates (LARS: each layer's update
  is its gradient direction scaled by the layer's norm) 0.988, norm ratio
  1.005.
  Bounds: loss 1%, cosine 0.95, norm 10%. A wrong dtype path (bfloat16
  logits) is the next test's to catch.
  """
  from tests.test_train import one_step  # pylint: disable=g-import-not-at-top
  batch = fake_batch(8, 7)
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    config = detcon_b.get_config('test')
    config.model.dtype = dtype
    runs[dtype] = one_step(config, batch, 4)
  (before32, after32, m32), (before16, after16, m16) = runs['float32'], runs['bfloat16']
  # The same parameters either way: float32, whatever the compute dtype.
  jax.tree.map(np.testing.assert_array_equal, before32.online_params, before16.online_params)
  for tree in (after16.online_params, after16.target_params, after16.online_batch_stats,
               after16.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree)} <= {np.dtype('float32'),
                                                        np.dtype('int32')}
  assert m16['loss'].dtype == np.float32 and np.isfinite(m16['loss'])
  np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=1e-2)

  def update(before, after):
    return np.concatenate([np.ravel(np.asarray(y, np.float64) - np.asarray(x, np.float64))
                           for x, y in zip(jax.tree.leaves(before.online_params),
                                           jax.tree.leaves(after.online_params))])

  a, b = update(before32, after32), update(before16, after16)
  cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  assert cosine > 0.95, cosine
  np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a), rtol=0.1)


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs inside it (jit, shard_map, custom rules)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


@pytest.mark.parametrize('module,has_logits', [(detcon_b, True), (detcon_s, True),
                                               (byol, False), (scrl, False)])
def test_bfloat16_convolutions_but_float32_logits_and_losses(module, has_logits):
  """In a bfloat16 step the convolutions are bfloat16; every exp/log (softmax,
  cross-entropy) and sqrt/rsqrt (normalisation: BYOL's and SCRL's cosine
  losses, BatchNorm's variance) reads float32, and float32 matmuls exist (the
  logits)."""
  config = module.get_config('test')
  config.model.dtype = 'bfloat16'
  method = method_lib.Method(config)
  batch = fake_batch(8, 7)
  variables = method.init(jax.random.PRNGKey(0), {k: v[:PER_DEVICE] for k, v in batch.items()})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (AXIS,))

  def per_device(online, target, batch, rng):
    return method.loss(online['params'], online['batch_stats'], target, {}, batch, rng)[0]

  f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()), out_specs=P(),
                    check_vma=False)
  jaxpr = jax.make_jaxpr(f)(variables['online'], variables['target'], batch,
                            jax.random.PRNGKey(3))
  eqns = list(_equations(jaxpr.jaxpr))
  convs = [e for e in eqns if e.primitive.name == 'conv_general_dilated']
  assert convs and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in convs)
  # Softmax / cross-entropy (exp, log) and L2 normalisation (sqrt, rsqrt).
  softmax_ops = [e for e in eqns if e.primitive.name in ('exp', 'log', 'logistic',
                                                         'sqrt', 'rsqrt')]
  assert softmax_ops
  low = [(e.primitive.name, str(v.aval)) for e in softmax_ops for v in e.invars
         if hasattr(v, 'aval') and v.aval.dtype in (jnp.bfloat16, jnp.float16)]
  assert not low, low
  if not has_logits:   # BYOL / SCRL: cosine regression, no similarity matrix.
    return
  # The logits: matmuls whose operands are the (normalised) head outputs.
  dots = [e for e in eqns if e.primitive.name == 'dot_general']
  float32_dots = [e for e in dots if all(v.aval.dtype == jnp.float32 for v in e.invars)]
  assert float32_dots, 'no float32 matmul: the logits would be bfloat16'
