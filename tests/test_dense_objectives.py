"""MoCo-v2, ReSim and CLoVE: losses on hand-built cases and float64 references,
the NMHSA predictor, devices, the MoCo queue through checkpoints, real steps.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs import clove as clove_config
from configs import detcon_b_lc
from configs import resim as resim_config
from dense_ssl import optim
from dense_ssl import train
from dense_ssl.losses import clove as clove_losses
from dense_ssl.losses import moco as moco_losses
from dense_ssl.losses import resim as resim_losses
from dense_ssl.objectives import clove as clove_objective
from tests.fake_data import blocky_whole_view
from tests.fake_data import fake_batch
from tests.test_train import one_step
from tests.test_train import override


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x):
  m = x.max(-1, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


# ------------------------------------------------------------------ MoCo ---

def test_moco_loss_equals_float64_infonce():
  r = np.random.default_rng(0)
  q, k = r.normal(size=(6, 8)), r.normal(size=(6, 8))
  queue = _unit(r.normal(size=(32, 8)))
  loss, _ = moco_losses.moco_loss(jnp.float32(q), jnp.float32(k), jnp.float32(queue),
                                  temperature=0.2)
  qn, kn = _unit(q), _unit(k)
  logits = np.concatenate([(qn * kn).sum(-1, keepdims=True), qn @ queue.T], -1) / 0.2
  want = np.mean(_logsumexp(logits) - logits[:, 0])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # The true key is easy to find against random negatives when q == k.
  easy, acc = moco_losses.moco_loss(jnp.float32(q), jnp.float32(q), jnp.float32(queue))
  assert float(easy) < float(loss) and float(acc) == 1.0


def test_enqueue_is_a_fifo_that_wraps():
  queue = jnp.zeros((8, 2))
  keys = jnp.arange(8.0).reshape(4, 2) + 1
  queue, ptr = moco_losses.enqueue(queue, jnp.int32(0), keys)
  assert int(ptr) == 4
  queue, ptr = moco_losses.enqueue(queue, ptr, keys + 100)
  queue, ptr = moco_losses.enqueue(queue, ptr, keys + 200)
  assert int(ptr) == 4
  np.testing.assert_array_equal(queue[:4], keys + 200)    # Oldest overwritten.
  np.testing.assert_array_equal(queue[4:], keys + 100)


# ----------------------------------------------------------------- ReSim ---

def test_region_contrast_equals_float64_reference_and_ignores_invalid():
  r = np.random.default_rng(1)
  q, k = r.normal(size=(2, 5, 8)), r.normal(size=(2, 5, 8))
  neg = _unit(r.normal(size=(20, 8)))
  valid = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
  q_nan = q.copy()
  q_nan[~valid] = np.nan                                   # Invalid slots may hold anything.
  loss, m = resim_losses.region_contrast_loss(jnp.float32(q_nan), jnp.float32(k),
                                              jnp.asarray(valid), jnp.float32(neg),
                                              temperature=0.2)
  qn, kn = _unit(q), _unit(k)
  logits = np.concatenate([(qn * kn).sum(-1)[..., None], qn @ neg.T], -1) / 0.2
  ce = _logsumexp(logits) - logits[..., 0]
  np.testing.assert_allclose(float(loss), ce[valid].mean(), rtol=1e-5)
  assert float(m['valid_windows_per_image']) == 3.5


def test_region_contrast_low_at_true_windows_high_when_shuffled():
  r = np.random.default_rng(2)
  feats = r.normal(size=(1, 12, 16)).astype(np.float32)
  key_map = r.normal(size=(2, 6, 6, 16)).astype(np.float32)
  neg = resim_losses.key_map_negatives(jnp.asarray(key_map))
  assert neg.shape == (2 * 4 * 4, 16)
  np.testing.assert_allclose(np.linalg.norm(neg, axis=-1), 1.0, rtol=1e-5)
  valid = jnp.ones((1, 12), bool)
  good, _ = resim_losses.region_contrast_loss(feats, feats, valid, neg)
  bad, _ = resim_losses.region_contrast_loss(feats, feats[:, ::-1], valid, neg)
  assert float(good) < 0.5 * float(bad)


# ----------------------------------------------------------------- CLoVE ---

def _hard_negative_reference(pred, target, positive, k):
  out = np.zeros(pred.shape)
  for b in range(pred.shape[0]):
    for i in range(pred.shape[1]):
      cand = [j for j in range(target.shape[1]) if not positive[b, i, j]]
      cand.sort(key=lambda j: -float(pred[b, i] @ target[b, j]))
      use = cand[1:k]                      # Top k, the hardest dropped.
      if use:
        out[b, i] = target[b, use].mean(0)
  return out


def test_hard_negatives_are_the_top_k_non_neighbours_without_the_hardest():
  r = np.random.default_rng(3)
  pred, target = _unit(r.normal(size=(2, 6, 8))), _unit(r.normal(size=(2, 9, 8)))
  positive = r.random((2, 6, 9)) < 0.3
  positive[0, 0] = True                       # No negative left: zero vector.
  for k in (3, 10):
    got, _ = clove_losses.hard_negative_mean(jnp.float32(pred), jnp.float32(target),
                                             jnp.asarray(positive), top_k=k)
    np.testing.assert_allclose(got, _hard_negative_reference(pred, target, positive, k),
                               atol=1e-6)


def test_clove_loss_lower_when_predictions_match_their_neighbours():
  r = np.random.default_rng(4)
  target = r.normal(size=(2, 16, 32)).astype(np.float32)
  positive = np.broadcast_to(np.eye(16, dtype=bool), (2, 16, 16))
  kw = dict(top_k=10, margin=0.5, lam=1.0)
  good, m = clove_losses.clove_loss(target, target, positive, **kw)
  shuffled = target[:, r.permutation(16)]
  bad, _ = clove_losses.clove_loss(shuffled, target, positive, **kw)
  assert float(good) < float(bad)
  np.testing.assert_allclose(float(m['positive_cos']), 1.0, rtol=1e-5)
  # Eq. 2 by hand for one pair set: mean of max(0, -cos_pos + cos_neg + mu).
  t = _unit(target.astype(np.float64))
  neg = _unit(_hard_negative_reference(t, t, positive, 10))
  want = np.maximum(0, -1.0 + (t * neg).sum(-1) + 0.5).mean()
  np.testing.assert_allclose(float(good), want, rtol=1e-5)


def test_normalised_attention_matches_a_numpy_reference():
  x = np.random.default_rng(5).normal(size=(2, 3, 3, 16)).astype(np.float32)
  mod = clove_objective.NormalizedMultiHeadAttention(num_heads=4, temperature=0.1)
  params = mod.init(jax.random.key(0), x)['params']
  got = mod.apply({'params': params}, x)
  p = jax.tree.map(np.asarray, params)
  f = x.reshape(2, 9, 16).astype(np.float64)
  proj = lambda n: np.einsum('bld,dhk->blhk', f, p[n]['kernel']) + p[n]['bias']
  q, k, v = _unit(proj('query')), _unit(proj('key')), proj('value')
  logits = np.einsum('blhd,bmhd->bhlm', q, k) / 0.1
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  y = np.einsum('bhlm,bmhd->blhd', attn, v)
  want = np.einsum('blhd,hdo->blo', y, p['out']['kernel']) + p['out']['bias']
  np.testing.assert_allclose(np.asarray(got).reshape(2, 9, 16), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------ devices and real steps ---

def _config(module, **overrides):
  return override(module.get_config('test'), **overrides)


# 1 vs 4 devices for CLoVE, MoCo, ReSim-C4 and Odin's discovery: one composed
# step, test_composed_one_device_equals_four_devices below.


# --------------------------------------------------------------- multi-crop ---

def multicrop_batch(n, num_local, *, local_size=32, seed=4, uint8=False):
  """fake_batch plus `num_local` local crops view3... with random boxes and flips."""
  batch = fake_batch(n, seed)
  r = np.random.default_rng(seed)
  batch['view2/box'] = np.tile(np.array([0.1, 0.2, 0.9, 1.0], np.float32), (n, 1))
  batch['view2/flip'] = np.array([0, 1] * (n // 2), np.int32)
  for k in range(num_local):
    v = f'view{3 + k}'
    batch[f'{v}/image'] = r.normal(size=(n, local_size, local_size, 3)).astype(np.float32)
    batch[f'{v}/mask'] = np.zeros((n, local_size, local_size), np.int32)
    y0, x0, side = r.uniform(0, .6, n), r.uniform(0, .6, n), r.uniform(.2, .4, n)
    batch[f'{v}/box'] = np.stack([y0, x0, y0 + side, x0 + side], -1).astype(np.float32)
    batch[f'{v}/flip'] = r.integers(0, 2, n).astype(np.int32)
  if uint8:
    for k in range(2 + num_local):
      v = f'view{k + 1}'
      batch[f'{v}/image'] = r.integers(0, 256, batch[f'{v}/image'].shape).astype(np.uint8)
      batch[f'{v}/mask'] = batch[f'{v}/mask'].astype(np.uint8)
  return batch


def test_multicrop_clove_equals_the_float64_mean_of_its_terms():
  """CLoVE with 2 local crops: (l_12 + l_21 + sum_k (l_k1 + l_k2)) / 6, each term
  re-derived in float64 numpy (Eq. 1 pairs, Eq. 2 loss) from the network's outputs."""
  from dense_ssl import method as method_lib   # pylint: disable=g-import-not-at-top
  from dense_ssl.objectives import base        # pylint: disable=g-import-not-at-top
  from tests import reference_numpy as ref      # pylint: disable=g-import-not-at-top
  config = _config(clove_config, **{'data.num_local_crops': 2, 'data.local_crop_size': 32,
                                    'objectives.clove.margin': 0.5})
  method = method_lib.Method(config)
  batch = multicrop_batch(4, 2)
  variables = method.init(jax.random.PRNGKey(0), batch)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (base.AXIS,))

  def per_device(online, target, batch):
    ctx, plans, _, _ = method.forward(online['params'], online['batch_stats'], target,
                                      batch, jax.random.PRNGKey(1))
    total, metrics, _ = method.objectives[0].loss(ctx, plans['clove'], {})
    return ctx.online, ctx.target, ctx.online_local, total, metrics

  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(),) * 3,
                            out_specs=jax.sharding.PartitionSpec(), check_vma=False))
  (o1, o2), (t1, t2), local, total, metrics = jax.device_get(
      f(variables['online'], variables['target'], batch))
  assert len(local) == 2 and local[0]['dense_prediction'].shape[1:3] == (1, 1)
  c = config.objectives.clove
  flat = lambda x: np.asarray(x, np.float64).reshape(x.shape[0], -1, x.shape[-1])

  def term(o, sv, t, tv):
    grid_s, grid_t = o['dense_prediction'].shape[1:3], t['dense'].shape[1:3]
    pos = ref.neighbour_pairs_ref(batch[f'{sv}/box'], batch[f'{sv}/flip'],
                                  batch[f'{tv}/box'], batch[f'{tv}/flip'], grid_s, grid_t,
                                  c.t_pos)
    return ref.clove_loss_ref(flat(o['dense_prediction']), flat(t['dense']), pos,
                              c.top_k, c.margin, c.lam)

  terms = [term(o1, 'view1', t2, 'view2'), term(o2, 'view2', t1, 'view1')]
  local_terms = [term(o, v, t, tv) for o, v in zip(local, ('view3', 'view4'))
                 for t, tv in ((t1, 'view1'), (t2, 'view2'))]
  np.testing.assert_allclose(total, np.mean(terms + local_terms), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_local'], np.mean(local_terms), rtol=1e-5)
  assert all(t > 0 for t in local_terms)   # Every local crop found neighbours.


# DetCon-B across device layouts: tests/test_multiprocess.py (2 processes x 2
# devices = 1 x 4) and tests/test_losses.py (its gathered negatives).
def test_composed_one_device_equals_four_devices():
  """One step program for every 1-vs-4-device check of the dense objectives:
  CLoVE with a uint8 local crop coloured in the step, MoCo-v2's queue, ReSim-C4
  (negatives gathered over devices) and DetCon on Odin's masks discovered in
  the step (keys from global example indices, inference-mode BN): the same
  masks, loss and update on 1 and 4 devices, BYOL's EMA included. (The mean
  over several local crops: the float64 test above. ReSim-FPN's P3 negatives
  come from each device's own images, as in the paper, so its loss does depend
  on the split of the batch.)"""
  config = _config(clove_config, **{
      'optimizer.base_lr': 1.0, 'data.num_local_crops': 1, 'data.local_crop_size': 32,
      'objectives.moco.weight': 1.0, 'objectives.resim.weight': 1.0,
      'objectives.detcon.weight': 1.0, 'data.mask': 'discovered'})
  batch = multicrop_batch(8, 1, uint8=True)
  batch = {k: v for k, v in batch.items() if not k.endswith('/mask')}
  batch['whole/image'] = blocky_whole_view(8)
  before, s1, m1 = one_step(config, batch, 1)
  _, s4, m4 = one_step(config, batch, 4)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
  assert m1['clove_loss_local'] > 0
  assert m1['discovery_clusters'] == m4['discovery_clusters'] > 1
  for name in ('moco', 'resim', 'detcon', 'clove'):
    assert np.isfinite(m1[f'{name}_loss']), name
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s1.online_params,
                       before.online_params)
  assert max(jax.tree.leaves(moved)) > 1e-4
  close = lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
  for a, b in [(s1.online_params, s4.online_params),
               (s1.online_batch_stats, s4.online_batch_stats),
               (s1.target_params, s4.target_params),
               (s1.method_state, s4.method_state)]:   # MoCo's queue, in order.
    jax.tree.map(close, a, b)
  assert int(s1.method_state['moco']['pointer']) == 8
  # BYOL's EMA: xi_1 = tau_0 xi_0 + (1 - tau_0) theta_1, and xi_0 = theta_0.
  tau = float(optim.ema_tau(0, 10, config.ema.base))
  np.testing.assert_allclose(m1['tau'], tau, rtol=1e-7)
  jax.tree.map(
      lambda t, o0, o1: np.testing.assert_allclose(t, tau * o0 + (1 - tau) * o1,
                                                   rtol=1e-5, atol=1e-7),
      s1.target_params,
      {k: before.online_params[k] for k in s1.target_params},
      {k: s1.online_params[k] for k in s1.target_params})


# The trainer on real data: MoCo, LC, SCRL and ReSim-FPN (its FPN exported to
# Detectron2) composed on DetCon-B in tests/test_train.py's resume test;
# CLoVE's multi-crop pipeline here.
def test_one_real_step_of_clove(data_dir, tmp_path):
  config = _config(clove_config, **{'data.dir': data_dir, 'total_steps': 1})
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  metrics = out['metrics']
  assert out['finished'] and np.isfinite(metrics['train/loss'])
  assert metrics['train/clove_positive_pairs_per_image'] > 0


def test_paper_presets():
  c = resim_config.get_config('paper')
  moco = c.objectives.moco
  assert (c.batch_size, c.total_epochs, moco.queue_size) == (256, 200.0, 65536)
  assert c.optimizer.name == 'sgd' and c.optimizer.base_lr == 0.03
  assert (c.ema.base, c.ema.schedule, moco.temperature) == (0.999, 'constant', 0.2)
  assert c.model.projector_dim == 128 and not c.model.projector_bn and c.data.shared_flip
  assert (moco.weight, c.objectives.resim.weight, c.objectives.resim.variant) == (1, 1, 'c4')
  assert resim_config.get_config('in100').objectives.moco.queue_size == 16384
  c = clove_config.get_config('paper')
  assert (c.batch_size, c.optimizer.base_lr, c.optimizer.weight_decay) == (2048, 1.0, 2e-5)
  cl = c.objectives.clove
  assert (cl.t_pos, cl.top_k, cl.attention_heads, cl.hidden, cl.dim) == (0.7, 10, 8, 4096, 256)
  c = detcon_b_lc.get_config('paper')
  weights = {n: s.weight for n, s in c.objectives.items() if s.weight}
  assert (weights, c.data.mask) == ({'detcon': 0.9, 'lc': 0.1}, 'fh')
