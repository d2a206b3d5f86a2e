"""bfloat16 compute (the accelerator presets) against float32 (the CPU presets).

The imagenet/coco presets set config.model.dtype='bfloat16': convolutions
and head matmuls in bfloat16, while parameters, optimiser state, BN
statistics and everything the losses read stay float32 (models/network.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import byol, detcon_b, detcon_s, scrl
from dense_ssl import method as method_lib
from dense_ssl.objectives.base import AXIS
from tests.fake_data import PER_DEVICE, fake_batch


def _configs(dtype):
  c = detcon_b.get_config('test')
  c.model.dtype = dtype
  return c


def _loss_and_grads(method, variables, batch, devices=4):
  """Loss and pmean'ed gradients of the online parameters, as the trainer's step."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), (AXIS,))

  def per_device(online, target, batch, rng):
    params = jax.lax.pcast(online['params'], AXIS, to='varying')
    f = lambda p: method.loss(p, online['batch_stats'], target, {}, batch, rng)[0]
    loss, grads = jax.value_and_grad(f)(params)
    return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS)

  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()),
                            out_specs=(P(), P())))
  return jax.device_get(f(jax.device_put(variables['online'], rep),
                          jax.device_put(variables['target'], rep),
                          jax.device_put(batch, shard),
                          jax.device_put(jax.random.PRNGKey(3), rep)))


def test_a_bfloat16_step_matches_the_float32_step():
  """Same parameters, same batch: the loss within 1%, the gradients close.

  Tolerances: bfloat16 keeps 8 bits of mantissa (2^-9 = 0.2% relative
  rounding per operation). Measured on this batch (ResNet-10, 64 px, BN
  statistics over 8 examples): loss 3.0307 vs 3.0383 (rel. 2.5e-3),
  gradient cosine 0.969 with no layer below 0.96 (the rounding spreads
  evenly), norm ratio 1.027. Bounds: loss 1%, cosine 0.95, norm 10%. A
  wrong dtype path (bfloat16 logits) is the next test's to catch.
  """
  batch = fake_batch(8, 7)
  m32, m16 = method_lib.Method(_configs('float32')), method_lib.Method(_configs('bfloat16'))
  init_rng = jax.random.PRNGKey(0)
  variables = m32.init(init_rng, {k: v[:PER_DEVICE] for k, v in batch.items()})
  v16 = m16.init(init_rng, {k: v[:PER_DEVICE] for k, v in batch.items()})
  # The same parameters either way: float32, whatever the compute dtype.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v16['online']['params']))
  jax.tree.map(np.testing.assert_array_equal, variables['online'], v16['online'])

  loss32, g32 = _loss_and_grads(m32, variables, batch)
  loss16, g16 = _loss_and_grads(m16, variables, batch)
  assert np.isfinite(loss16)
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)]).astype(np.float64)
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)]).astype(np.float64)
  cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  assert cosine > 0.95, cosine
  np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a), rtol=0.1)
  # Every gradient float32 (the optimiser's and the EMA's arithmetic).
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(g16))


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
