"""DetCon (Hénaff et al. 2021, Sec. 3.1): the contrastive detection loss over mask-pooled C5.

Per view: the mask is hard-assigned to the C5 grid (majority id per cell),
K = 16 ids are sampled among the ids present (the online and target
branches of a view share them), features are mask-pooled (h_m), projected
(g) and, on the online side, predicted (q). detcon_loss (Eqs. 1-3)
contrasts each prediction with the target projections of all masks of all
images in both views.

Two settings (config.objectives.detcon.shared_network):
  False  DetCon-B: BYOL-style, predictions of the online network against the
         EMA target's projections (configs/detcon_b.py).
  True   DetCon-S: SimCLR-style, one shared network, no predictor, no EMA;
         both views' projections serve as predictions and as targets and the
         gradient flows through both (configs/detcon_s.py). With a 1x1 grid
         mask it reduces to SimCLR (tests/test_method.py).

Config (config.objectives.detcon): weight, num_samples (16), temperature
(0.1), local_negatives (True; False: other masks of the same image are not
negatives), gather_negatives (True; False: negatives from this device only,
Table 5), shared_network. The masks are config.data.mask (a kind of data_pipeline/mask_kinds/).
"""

import jax
import jax.numpy as jnp

from data_pipeline import config_rules
from data_pipeline import mask_kinds
from dense_ssl.losses import detcon as detcon_losses
from dense_ssl.models import resnet
from dense_ssl.objectives import base
from dense_ssl.ops import mask_pool as mp

C5_STRIDE = resnet.C5_STRIDE


def sample_view_masks(rng, mask, num_samples, per_example=False):
  """mask [B, S, S] -> (cell_ids [B, S/32, S/32], ids [B, K]) for C5 (stride 32).

  `rng` is one key, or with per_example [B] keys (base.example_rngs).
  """
  grid = mask.shape[1] // C5_STRIDE
  cell_ids = mp.downsample_masks(mask, (grid, grid))
  if per_example:
    ids = jax.vmap(lambda r, c: mp.sample_mask_ids(r, c[None], num_samples)[0])(
        rng, cell_ids)
  else:
    ids = mp.sample_mask_ids(rng, cell_ids, num_samples)
  return cell_ids, ids


def mask_pool_fn(cell_ids, ids):
  """A pool for the network: C5 -> [B, K, C] masked means of the sampled ids."""
  return lambda feats: mp.mask_pool(feats['c5'], cell_ids, ids)


class DetCon(base.Objective):
  name = 'detcon'
  presets = {'test': dict(num_samples=4)}

  @classmethod
  def default_config(cls):
    return base.objective_config(num_samples=16, temperature=0.1, local_negatives=True,
                                 gather_negatives=True, shared_network=False)

  def __init__(self, config):
    super().__init__(config)
    shared = bool(self.c.shared_network)
    self.uses_target = not shared
    self.uses_predictor = not shared
    if shared:
      self.passes = frozenset({(base.ONLINE, 0), (base.ONLINE, 1)})

  @classmethod
  def validate(cls, config):
    problems = super().validate(config)
    problems += config_rules.check('objectives.detcon.num_samples',
                           config.objectives.detcon.num_samples, '>= 1', integer=True)
    mask = config.data.get('mask')
    if mask not in mask_kinds.names():
      problems.append(f'config.data.mask={mask!r}: DetCon (config.objectives.detcon) '
                      f'pools features over masks: choose one of '
                      f'{"|".join(mask_kinds.names())}')
    return problems

  def plan(self, batch, rng):
    k = self.c.num_samples
    b = batch['view1/image'].shape[0]
    rng1, rng2 = jax.random.split(rng)
    rng1, rng2 = base.example_rngs(rng1, b), base.example_rngs(rng2, b)
    c1, ids1 = sample_view_masks(rng1, batch['view1/mask'], k, True)
    c2, ids2 = sample_view_masks(rng2, batch['view2/mask'], k, True)
    return dict(pools=(mask_pool_fn(c1, ids1), mask_pool_fn(c2, ids2)), ids=(ids1, ids2))

  def init_pools(self, batch):
    c, ids = sample_view_masks(jax.random.key(0), jnp.asarray(batch['view1/mask']),
                               self.c.num_samples)
    return {'masks': mask_pool_fn(c, ids)}

  def pools(self, plan, view):
    return {'masks': plan['pools'][view]}

  def loss(self, ctx, plan, state):
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    if self.c.shared_network:
      z1, z2 = o1['projection']['masks'], o2['projection']['masks']
      args, kw = (z1, z2, z1, z2), dict(stop_gradient_targets=False)
    else:
      args, kw = (o1['prediction']['masks'], o2['prediction']['masks'],
                  t1['projection']['masks'], t2['projection']['masks']), {}
    loss, m = detcon_losses.detcon_loss(
        *args, *plan['ids'], temperature=self.c.temperature,
        local_negatives=self.c.local_negatives,
        axis_name=base.negatives_axis(self.c.gather_negatives), **kw)
    return loss, m, state
