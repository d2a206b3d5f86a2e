"""The network every method trains: encoder -> shared projector [-> predictor] + objective heads.

DetCon Sec. 3.1's f (ResNet encoder), g (projector) and q (predictor), shared
by all objectives: each view's vectors (global pool, mask pools, box pools:
the `pool` callable) are projected (and predicted) in ONE pass over their
concatenation along K, so they share the heads' BatchNorm statistics. The
objectives' own heads (LC's local projection, ReSim's FPN and region heads,
CLoVE's projection and NMHSA) are built by the objectives themselves
(Objective.heads) inside this module, under the names they give them.

Parameters: encoder (torchvision names, models/resnet.py), projector,
predictor (online side only), and the objectives' heads.
"""

from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dense_ssl.models import heads
from dense_ssl.models import resnet


class SSLNetwork(nn.Module):
  """images -> dict(features, projection, prediction, <objective head outputs>).

  Attributes:
    depth, width_multiplier, dtype, bn_axis_name: the ResNet (models/resnet.py).
    projector_hidden, projector_dim, projector_bn: the shared projector g.
    predictor_hidden, use_predictor: the shared predictor q (online only).
    objective_heads: callables `(feats, train=, dtype=, bn_axis_name=) -> dict`
      (Objective.heads with `online` bound), whose outputs join the result.
  """
  depth: int
  width_multiplier: int = 1
  projector_hidden: int = 4096
  projector_dim: int = 256
  projector_bn: bool = True
  predictor_hidden: int = 4096
  use_predictor: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = 'batch'
  objective_heads: Tuple[Callable, ...] = ()

  @nn.compact
  def __call__(self, images, *, pool: Callable, train: bool = True,
               heads_used: Optional[Tuple[int, ...]] = None):
    """images [B, S, S, 3]; pool: feats -> {slot: [B, K_slot, C]}.

    heads_used: indices into objective_heads to run (None: all). The local
    crops' pass runs only the heads of objectives that read them, so no
    other head's BatchNorm statistics see them.
    Returns features {'c2'..'c5'}, and for a non-empty pool 'projection'
    (and 'prediction') {slot: [B, K_slot, D]}, plus each head's outputs.
    """
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    feats = resnet.ResNet(depth=self.depth, width_multiplier=self.width_multiplier,
                          name='encoder', **kw)(images, train)
    out = dict(features=feats)
    pooled = pool(feats)
    if pooled:
      names = sorted(pooled)
      sizes = [pooled[n].shape[1] for n in names]
      vectors = jnp.concatenate([pooled[n].astype(jnp.float32) for n in names], axis=1)
      split = lambda x: dict(zip(names, jnp.split(x, np.cumsum(sizes)[:-1], axis=1)))
      z = heads.MLPHead(self.projector_hidden, self.projector_dim, use_bn=self.projector_bn,
                        name='projector', **kw)(vectors, train)
      out['projection'] = split(z)
      if self.use_predictor:
        out['prediction'] = split(heads.MLPHead(
            self.predictor_hidden, self.projector_dim, name='predictor', **kw)(z, train))
    for i, head in enumerate(self.objective_heads):
      if heads_used is None or i in heads_used:
        out.update(head(feats, train=train, **kw))
    # Whatever the compute dtype, the losses get float32: similarities at a
    # temperature of 0.1 and their softmax lose too much in bfloat16 (8 bits
    # of mantissa). The encoder's feature maps are float32 already.
    return jax.tree.map(lambda x: x.astype(jnp.float32)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, out)
