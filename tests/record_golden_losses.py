"""Records tests/golden/method_losses.json: each method's initial variables and loss.

Run once with the DEDICATED method classes (dense_ssl/methods/, before the
one-method redesign of issue 11) so that the composed configs can be checked
against what the code computed before:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m tests.record_golden_losses

Inputs are fixed: each config's `test` preset at 64 px, a fake batch of 8
(seed 7; view 2 cropped to [0.1, 0, 0.9, 0.8] -- [0, 0, 0.9, 0.9] for ReSim, so
that its windows fit -- every other image flipped),
init key 0, step key 3, 4 devices. Random choices (DetCon's mask ids, SCRL's
boxes, MoCo's initial queue) come from the objective's stream, which after the
redesign is derived from the objective's NAME: stream(rng, name) =
fold_in(rng, crc32(name) & 0x7fffffff). The dedicated methods are fed that
stream here, so both sides make the same random choices.
"""

import hashlib
import json
import os
import zlib

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import byol, clove, detcon_b, detcon_b_lc, detcon_s, lc_byol, moco, resim, scrl, simclr
from dense_ssl import methods
from dense_ssl.methods import base, compose
from tests.test_methods import fake_batch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden', 'method_losses.json')
# name -> (config module, overrides, the objective whose stream the dedicated method gets)
CASES = {
    'byol': (byol, {}, None),
    'simclr': (simclr, {}, None),
    'detcon_b': (detcon_b, {}, 'detcon'),
    'detcon_s': (detcon_s, {}, 'detcon'),
    'lc_byol': (lc_byol, {}, None),
    'scrl': (scrl, {}, 'scrl'),
    'moco': (moco, {}, None),
    'resim': (resim, {}, None),           # view 2 = [0, 0, 0.9, 0.9]: a C4 window fits
    'resim_fpn': (resim, {'loss.resim_variant': 'fpn'}, None),
    'clove': (clove, {}, None),
    'detcon_b_lc': (detcon_b_lc, {}, None),
}


def stream_id(name):
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def golden_batch(name=''):
  batch = fake_batch(8, 7)
  batch['view2/flip'] = np.array([0, 1] * 4, np.int32)
  box = [0.0, 0.0, 0.9, 0.9] if name.startswith('resim') else [0.1, 0.0, 0.9, 0.8]
  batch['view2/box'] = np.tile(np.array(box, np.float32), (8, 1))
  return batch


def fingerprint(tree):
  """{top-level module: [leaves, size, sum, sum of squares]} and a hash of path:shape."""
  out, names = {}, []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [str(getattr(k, 'key', k)) for k in path]
    x = np.asarray(leaf, np.float64)
    names.append(f'{"/".join(keys)}:{list(x.shape)}')
    entry = out.setdefault(keys[0], [0, 0, 0.0, 0.0])
    entry[0] += 1
    entry[1] += int(x.size)
    entry[2] += float(x.sum())
    entry[3] += float((x * x).sum())
  return dict(modules=out, layout=hashlib.sha256('\n'.join(sorted(names)).encode()).hexdigest())


def run(method, variables, method_state, batch, rng):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), (base.AXIS,))

  def per_device(online, target, mstate, batch, rng):
    args = (online['params'], online['batch_stats'], target, batch, rng)
    if method.has_state:
      loss, (_, _, metrics, _) = method.loss(*args, method_state=mstate)
    else:
      loss, (_, _, metrics) = method.loss(*args)
    return jax.lax.pmean(loss, base.AXIS), jax.lax.pmean(metrics, base.AXIS)

  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P(base.AXIS))
  f = jax.jit(jax.shard_map(per_device, mesh=mesh,
                            in_specs=(P(), P(), P(), P(base.AXIS), P()),
                            out_specs=(P(), P())))
  target = variables['target']
  return f(jax.device_put(variables['online'], rep),
           jax.device_put(target, rep) if target is not None else None,
           jax.device_put(method_state, rep), jax.device_put(batch, shard),
           jax.device_put(rng, rep))


def main():
  compose._RNG_STREAM.update({n: stream_id(n) for n in compose._RNG_STREAM})  # pylint: disable=protected-access
  results = {}
  for name, (module, overrides, stream) in CASES.items():
    batch = golden_batch(name)
    sample = {k: v[:2] for k, v in batch.items()}
    config = module.get_config('test')
    for k, v in overrides.items():
      node = config
      *path, last = k.split('.')
      for p in path:
        node = node[p]
      node[last] = v
    config.data.image_size = 64
    method = methods.get_method(config)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(0))
    variables = method.init(init_rng, sample)
    method_state = (method.init_method_state(jax.random.fold_in(init_rng, 1))
                    if method.has_state else {})
    rng = jax.random.PRNGKey(3)
    if stream:
      rng = jax.random.fold_in(rng, stream_id(stream))
    loss, metrics = jax.device_get(run(method, variables, method_state, batch, rng))
    results[name] = dict(
        loss=float(loss),
        metrics={k: float(v) for k, v in sorted(metrics.items())},
        online=fingerprint(variables['online']),
        target=fingerprint(variables['target']) if variables['target'] else None,
        method_state=fingerprint(method_state) if method_state else None)
    print(f'{name:12s} loss {float(loss):.6f}')
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  print('wrote', OUT)


if __name__ == '__main__':
  main()
