"""What every objective shares: the interface, its random stream, the per-device helpers.

The one method (dense_ssl/method.py) trains a weighted set of objectives,

  loss = sum over config.objectives of  weight_name x L_name,

over one network (models/network.py): the encoder runs once per view and
branch (online, EMA target), every objective's pooled vectors (global,
masks, boxes) share one projector and predictor pass, and each objective
adds its own heads. An objective is ONE file of this package: its loss
term, its heads and its config subtree `config.objectives.<name>`
(`weight` and its hyper-parameters).

Interface (class attributes and methods; all optional but `name` and `loss`):
  name             key in config.objectives and in the registry (__init__.py)
  is_global        a global objective (byol, simclr, moco): at most one is on
  uses_target      reads the EMA target network
  uses_predictor   needs the shared MLP predictor on the online side
  has_state        keeps state outside the networks (MoCo's queue)
  uses_local_crops reads the multi-crop local views (config.data.num_local_crops):
                   the online network then also runs on them, once, on all
                   local crops of the device batch together (Context.online_local)
  passes           the (branch, view) forward passes it reads
  default_config() -> its config subtree in the paper's setting (classmethod)
  presets          {preset: {key: value}}: its subtree's overrides in a preset
                   (demo, test: smaller heads, a shorter queue), applied by
                   the one preset function (configs/common.py apply_preset)
  heads(feats, train=, online=, dtype=, bn_axis_name=) -> {output name: value}
                   builds its own Flax heads inside the network; online=False
                   for the EMA target (heads only the online side has are
                   skipped there)
  plan(batch, rng) per-step random choices (mask ids, boxes, windows)
  pools(plan, view) {slot: feats -> [B, K, C]} vectors for the shared heads
  init_pools(batch) the same, for init (shapes only, no mapped axis)
  init_state(rng)  its part of TrainState.method_state
  loss(ctx, plan, state) -> (loss, metrics, new_state)
  validate(config) -> [problem lines] (classmethod): its subtree's values out
                   of range, or what it needs elsewhere in the config; one
                   line per problem naming the full key
                   (`config.objectives.<name>.<key>=<value>: must be ...`),
                   via `config_rules.check`. Called for active objectives before anything
                   starts (dense_ssl/config_check.py); the base class checks
                   every `temperature` / `*_temperature` > 0.

`ctx` (Context) holds the network outputs of the passes the objectives
read (None elsewhere), the online outputs of each local crop (when an
objective uses them; the EMA target sees only the global views, as in
SwAV/DINO-style multi-crop) and the batch. Everything runs inside the per-device
step with the mapped axis AXIS bound.
"""

import dataclasses
import zlib
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from data_pipeline import config_rules

AXIS = 'batch'  # The data-parallel mesh axis: cross-replica BN and gathers.
ONLINE, TARGET = 'online', 'target'
ALL_PASSES = frozenset({(ONLINE, 0), (ONLINE, 1), (TARGET, 0), (TARGET, 1)})


def stream(rng, name):
  """The objective's own key: derived from its NAME, not its place in a list.

  Adding or removing an objective never changes another's random choices.
  """
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass
class Context:
  """What the loss terms read: outputs of the (branch, view) passes, and the batch."""
  online: Tuple[Optional[dict], Optional[dict]]
  target: Tuple[Optional[dict], Optional[dict]]
  batch: Any
  # Online outputs of each local crop, in order (views G+1 ... G+N); () when
  # there are none or no objective uses them. `local_views`: their batch
  # prefixes ('view3', ...), for their box/flip.
  online_local: Tuple[dict, ...] = ()
  local_views: Tuple[str, ...] = ()


def objective_config(weight=0.0, **hyper):
  """An objective's config subtree: `weight` (0 = off) and its hyper-parameters."""
  return ml_collections.ConfigDict(dict(weight=float(weight), **hyper))


class Objective:
  """Base class of one loss term; see the module docstring."""
  name = ''
  is_global = False
  uses_target = True
  uses_predictor = False
  has_state = False
  uses_local_crops = False
  passes = ALL_PASSES
  presets = {}

  @classmethod
  def default_config(cls):
    """config.objectives.<name>: weight 0 (off) and the paper's hyper-parameters."""
    return objective_config()

  def __init__(self, config):
    """`config` has passed dense_ssl/config_check.py (its `validate` hook included)."""
    self.config = config
    self.c = config.objectives[self.name]      # This objective's subtree.

  def heads(self, feats, *, train, online, dtype, bn_axis_name):
    del feats, train, online, dtype, bn_axis_name
    return {}

  def plan(self, batch, rng):
    del batch, rng
    return None

  def pools(self, plan, view):
    del plan, view
    return {}

  def init_pools(self, batch):
    return self.pools(self.plan(batch, jax.random.key(0)), 0)

  def init_state(self, rng):
    del rng
    return {}

  def loss(self, ctx, plan, state):
    raise NotImplementedError

  @classmethod
  def validate(cls, config):
    """Problems of config.objectives.<name> (one line each; [] if none).

    Overrides call super().validate(config) and add their own checks.
    """
    c = config.objectives[cls.name]
    problems = []
    for key in c:
      if key == 'temperature' or key.endswith('_temperature'):
        problems += config_rules.check(f'objectives.{cls.name}.{key}', c[key], '> 0')
    return problems


# ------------------------------------------------------ per-device helpers ---

def global_pool(feats):
  """Mean of C5 over space as one slot: [B, h, w, C] -> [B, 1, C] (SimCLR/BYOL's h)."""
  return feats['c5'].mean(axis=(1, 2))[:, None]


def negatives_axis(gather):
  """Axis to gather negatives over, or None for this device only (DetCon Table 5)."""
  return AXIS if gather else None


def example_rngs(rng, batch_size):
  """One key per example of this device, from the example's GLOBAL index.

  Random choices made per example (e.g. which mask ids to sample) then do
  not depend on how the global batch is split over devices: 1 and 4
  devices give the same update. Needs the axis AXIS bound.
  """
  first = jax.lax.axis_index(AXIS) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(batch_size))


def gather_replicated(x, axis_name=AXIS):
  """all_gather (tiled) whose result is typed as replicated over the axis.

  Plain `lax.all_gather`'s output counts as device-varying under shard_map,
  so it cannot become replicated state (MoCo's queue); `to='invarying'`
  types it as the same on every device (one all-gather, no all-reduce).
  """
  return jax.lax.all_gather(x, axis_name, tiled=True, to='invarying')
