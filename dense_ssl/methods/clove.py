"""CLoVE (Silva et al.): contextualised local embeddings, 2-view variant.

The online network projects C5 cell by cell (1x1 MLP 2048 -> 4096 -> 256,
BN without affine at the end) and contextualises it with a normalised
multi-head self-attention predictor (8 heads, queries and keys L2-normalised,
softmax(cos / tau); heads.NormalizedMultiHeadAttention). The EMA target
projects without attention. Positives: pixel-to-neighbourhood pairs whose
original-image distance over the larger cell diagonal is below T_pos = 0.7
(geometry.neighbour_pairs); loss: the margin ranking loss of Eq. 2 against the
mean of the top-k (k = 10, hardest dropped) in-image non-neighbour target
cells (losses/clove.py), both directions (view 1 -> 2 and 2 -> 1), averaged.

Deviation, named: the paper trains with multi-crop (2 global 224 px + 6
local 96 px views); the input pipeline makes two views, so this is CLoVE's
2-view setting (the paper's Table 8 reports both). Multi-crop is a
follow-up. tau of the attention is not stated in the paper: 0.1, config key
model.dense_attention_temperature (an assumption to ablate).
"""

from dense_ssl.losses import clove as clove_losses
from dense_ssl.methods import base
from dense_ssl.methods import compose
from dense_ssl.ops import geometry


class CLoVEObjective(compose.Objective):
  name = 'clove'

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    if m.dense_attention_heads and m.dense_dim % m.dense_attention_heads:
      raise ValueError(f'config.model.dense_dim={m.dense_dim} must be a multiple of '
                       f'config.model.dense_attention_heads={m.dense_attention_heads} '
                       '(the NMHSA splits the channels over the heads)')

  def network_heads(self):
    m = self.config.model
    return dict(dense_hidden=int(m.dense_hidden), dense_dim=int(m.dense_dim),
                dense_attention_heads=int(m.dense_attention_heads),
                dense_attention_temperature=float(m.dense_attention_temperature))

  def loss(self, ctx, plan, state):
    c, b = self.config.loss, ctx.batch
    (o1, o2), (t1, t2) = ctx.online, ctx.target
    grid = o1['dense_prediction'].shape[1:3]
    pos_12 = geometry.neighbour_pairs(b['view1/box'], b['view1/flip'], b['view2/box'],
                                      b['view2/flip'], grid, t2['dense'].shape[1:3],
                                      t_pos=c.clove_t_pos)
    flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
    kw = dict(top_k=int(c.clove_top_k), margin=float(c.clove_margin),
              lam=float(c.clove_lambda), axis_name=base.AXIS)
    loss_12, m12 = clove_losses.clove_loss(flat(o1['dense_prediction']), flat(t2['dense']),
                                           pos_12, **kw)
    loss_21, m21 = clove_losses.clove_loss(flat(o2['dense_prediction']), flat(t1['dense']),
                                           pos_12.transpose(0, 2, 1), **kw)
    metrics = {k: 0.5 * (m12[k] + m21[k]) for k in m12}
    return 0.5 * (loss_12 + loss_21), dict(metrics, loss_1to2=loss_12, loss_2to1=loss_21), state
