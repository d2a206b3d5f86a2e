"""CLoVE (Silva et al.): contextualised local embeddings, 2-view setting.

The online network projects C5 cell by cell (1x1 MLP C5 -> hidden -> dim,
BN without affine at the end: 'dense_projector') and contextualises it with
a normalised multi-head self-attention predictor (NMHSA below:
'dense_predictor', online side only). The EMA target projects without
attention. Positives: pixel-to-neighbourhood pairs whose original-image
distance over the larger cell diagonal is below T_pos = 0.7
(geometry.neighbour_pairs); loss: the margin ranking loss of Eq. 2 against
the mean of the top-k (k = 10, hardest dropped) in-image non-neighbour
target cells (losses/clove.py), both directions (view 1 -> 2 and 2 -> 1),
averaged.

Multi-crop (the paper's best setting, Sec. 5.1 and Table 8; the public code
uses 2 global 224 px + 6 local 96 px views): with config.data.num_local_crops
= N > 0 the online network also sees the N local crops (Method.local_pass),
and every local crop's contextualised prediction is matched, by the same
pixel-to-neighbourhood rule on original-image coordinates, against the EMA
target's projection of each GLOBAL view. The paper does not say how local
crops enter the loss; assumptions, as in SwAV/DINO-style multi-crop: the
target sees only the global views; the loss is the mean over all (student
view, target view) terms with student != target, i.e. the 2 global terms
(1 -> 2, 2 -> 1) and 2 N local terms (local k -> global 1, local k -> global
2), each term as in the 2-view loss; N = 0 is exactly the 2-view loss. A
local 96 px crop of a ResNet-50 has a 3 x 3 C5 map (L = 9 cells).
The attention temperature is not stated in the paper: 0.1
(attention_temperature, an assumption to ablate).

Config (config.objectives.clove): weight, t_pos (0.7), top_k (10), margin
(the paper's mu, 100), lam (the paper's lambda, 1), hidden (4096), dim
(256), attention_heads (8; 0: no predictor), attention_temperature (0.1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipeline import config_rules
from dense_ssl.losses import clove as clove_losses
from dense_ssl.models import heads
from dense_ssl.objectives import base
from dense_ssl.ops import geometry


class NormalizedMultiHeadAttention(nn.Module):
  """CLoVE's predictor (Sec. 3.4, 6): normalised multi-head self-attention.

  Over the L = h * w cells of a projected map F [B, L, D], per head
  Attention(Q, K, V) = softmax(cos(Q, K^T) / tau) V with Q = F W^q, K = F W^k,
  V = F W^v (D -> D / heads each), queries and keys L2-normalised before the
  dot product; heads concatenated and mapped back to D by a linear layer.
  """
  num_heads: int = 8
  temperature: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [B, h, w, D] -> [B, h, w, D] float32 (not normalised)."""
    b, h, w, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'NMHSA: {d} channels do not split into {self.num_heads} heads')
    dh = d // self.num_heads
    x = jnp.asarray(x, self.dtype).reshape(b, h * w, d)
    proj = lambda name: nn.DenseGeneral((self.num_heads, dh), dtype=self.dtype,
                                        param_dtype=jnp.float32, name=name)(x)
    q, k, v = proj('query'), proj('key'), proj('value')       # [B, L, H, dh]
    normalize = lambda t: t * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(jnp.square(t.astype(jnp.float32)), -1, keepdims=True),
                    1e-12)).astype(t.dtype)
    logits = jnp.einsum('blhd,bmhd->bhlm', normalize(q), normalize(k)) / self.temperature
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    y = jnp.einsum('bhlm,bmhd->blhd', attn, v)
    y = nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                        name='out')(y)
    return y.astype(jnp.float32).reshape(b, h, w, d)


class CLoVE(base.Objective):
  name = 'clove'
  uses_local_crops = True
  presets = {'demo': dict(hidden=512, dim=128), 'test': dict(hidden=64, dim=32)}

  @classmethod
  def default_config(cls):
    return base.objective_config(t_pos=0.7, top_k=10, margin=100.0, lam=1.0, hidden=4096,
                                 dim=256, attention_heads=8, attention_temperature=0.1)

  @classmethod
  def validate(cls, config):
    c, p = config.objectives.clove, 'objectives.clove'
    problems = (super().validate(config)
                + config_rules.check(f'{p}.t_pos', c.t_pos, '> 0')
                + config_rules.check(f'{p}.top_k', c.top_k, '>= 1', integer=True)
                + config_rules.check(f'{p}.margin', c.margin, '>= 0')
                + config_rules.check(f'{p}.lam', c.lam, '>= 0')
                + config_rules.check(f'{p}.hidden', c.hidden, '>= 1', integer=True)
                + config_rules.check(f'{p}.dim', c.dim, '>= 1', integer=True))
    heads_problems = config_rules.check(f'{p}.attention_heads', c.attention_heads, '>= 0',
                                integer=True)
    problems += heads_problems
    if (not heads_problems and c.attention_heads and config_rules.is_number(c.dim, True)
        and c.dim % c.attention_heads):
      problems.append(f'config.{p}.dim={c.dim}: must be a multiple of '
                      f'config.{p}.attention_heads={c.attention_heads} (the NMHSA '
                      'splits the channels over the heads)')
    return problems

  def heads(self, feats, *, train, online, dtype, bn_axis_name):
    out = {'dense': heads.MLPHead(int(self.c.hidden), int(self.c.dim), final_bn=True,
                                  dtype=dtype, bn_axis_name=bn_axis_name,
                                  name='dense_projector')(feats['c5'], train)}
    if online and self.c.attention_heads:
      out['dense_prediction'] = NormalizedMultiHeadAttention(
          int(self.c.attention_heads), float(self.c.attention_temperature), dtype=dtype,
          name='dense_predictor')(out['dense'])
    return out

  def loss(self, ctx, plan, state):
    b = ctx.batch
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    # attention_heads = 0: the projection predicts itself (no NMHSA).
    pred = lambda o: o.get('dense_prediction', o['dense'])
    flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
    kw = dict(top_k=int(self.c.top_k), margin=float(self.c.margin), lam=float(self.c.lam),
              axis_name=base.AXIS)

    def pairs(student, s_view, target, t_view):
      """Positives [B, L_s, L_t] of student view -> target view, from their geometry."""
      return geometry.neighbour_pairs(b[f'{s_view}/box'], b[f'{s_view}/flip'],
                                      b[f'{t_view}/box'], b[f'{t_view}/flip'],
                                      pred(student).shape[1:3], target['dense'].shape[1:3],
                                      t_pos=self.c.t_pos)

    def term(student, target, pos):
      """Eq. 2 for student view -> target view."""
      return clove_losses.clove_loss(flat(pred(student)), flat(target['dense']), pos, **kw)

    pos_12 = pairs(o1, 'view1', t2, 'view2')
    loss_12, m12 = term(o1, t2, pos_12)
    loss_21, m21 = term(o2, t1, pos_12.transpose(0, 2, 1))   # The pair rule is symmetric.
    metrics = {k: 0.5 * (m12[k] + m21[k]) for k in m12}
    metrics.update(loss_1to2=loss_12, loss_2to1=loss_21)
    if not ctx.online_local:
      return 0.5 * (loss_12 + loss_21), metrics, state
    local = [term(o, t, pairs(o, v, t, tv))[0]
             for o, v in zip(ctx.online_local, ctx.local_views)
             for t, tv in ((t1, 'view1'), (t2, 'view2'))]
    loss_local = sum(local) / len(local)
    total = (loss_12 + loss_21 + sum(local)) / (2 + len(local))
    return total, dict(metrics, loss_local=loss_local), state
