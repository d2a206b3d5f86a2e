"""Masks the network discovers (Odin: Hénaff et al., ECCV 2022): config.data.mask='discovered'.

Odin replaces DetCon's hand-crafted masks with segmentations that a
discovery network finds in its own features: a slowly moving copy of the
representation network embeds each image, its feature map is clustered,
and the clusters, carried into the two augmented views through their crop
and flip, are the masks of DetCon's contrastive loss. As the features
improve, so do the masks. In the training step, before the objectives plan
their masks (dense_ssl/method.py):

  1. x = whole/image [B, S_d, S_d, 3]: the host's whole, uncropped,
     unflipped, un-coloured view (data.discovery_view_size), ImageNet-normalised.
  2. F = f_xi(x)[feature]: the EMA target encoder (xi, BYOL's
     xi <- tau xi + (1 - tau) theta) in inference mode (running BN
     statistics: each image is segmented on its own, so 1 and N devices
     agree), at config.discovery.feature (C4: stride 16; h = S_d / 16).
  3. Per image, spherical k-means on the h x w cells of F (ops/kmeans.py):
     K = num_clusters, num_iterations Lloyd steps from K distinct cells drawn
     with keys from (seed, step, global example index): the cluster map
     c [B, h, w] over the whole image.
  4. View k's mask: c carried through the view's box and flip, nearest, at
     the view's size (geometry.resample_map_to_view): mask_k(p) =
     c(floor(h y), floor(w x)) with (y, x) = view_to_original(p).
No gradient reaches any parameter through 1-4 (the target is
stop-gradient'ed; the masks are integers).

Assumptions (ours; Odin's method and implementation sections were not
available to us, README Known gaps): the discovery network IS the BYOL/DetCon-B
EMA target (one decay, tau), not a second copy with its own schedule; it
runs in inference mode; it clusters the encoder's C4 map of a whole-image
view at the views' size (not a projection, not a larger crop; the demo
preset: C3 of a 128 px view, a map of about the same 14-16 cells a side);
k-means is spherical (cosine), K = 8, 10 iterations, one random start. The
views and the loss are DetCon-B's (configs/odin.py).

DiscoveryQuality measures the discovery while it trains: the ABO of the
discovered masks against GT instances (data_pipeline/masks/quality.py, the
measure of data_pipeline/mask_quality.py) on a fixed set of scenes.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import view_config
from dense_ssl.models import resnet
from dense_ssl.objectives import base
from dense_ssl.ops import color
from dense_ssl.ops import geometry
from dense_ssl.ops import kmeans

MASK_KIND = 'discovered'
WHOLE_IMAGE = 'whole/image'


def uses_discovery(config):
  """True when config.data.mask asks for discovered masks."""
  return view_config.read(config.data, 'mask') == MASK_KIND


def encoder(config):
  """The discovery network's encoder: config.model's ResNet, per-device BN (inference)."""
  m = config.model
  return resnet.ResNet(depth=int(m.depth), width_multiplier=int(m.width_multiplier),
                       dtype=jnp.dtype(m.dtype), bn_axis_name=None)


def encoder_variables(target_variables):
  """The EMA target's encoder variables (stop-gradient), from Method's target dict."""
  return jax.lax.stop_gradient({'params': target_variables['params']['encoder'],
                                'batch_stats': target_variables['batch_stats']['encoder']})


def whole_view_input(images):
  """whole/image (uint8, or float already normalised on the host) -> float32 network input."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return color.normalize(images.astype(jnp.float32) / 255.0)
  return images.astype(jnp.float32)


def cluster_maps(config, variables, images, keys):
  """The discovery of a batch: images [B, S_d, S_d, 3], keys [B] -> int32 [B, h, w].

  Steps 1-3 of the module docstring; `variables`: encoder_variables(...).
  """
  d = config.discovery
  feats = encoder(config).apply(variables, whole_view_input(images), train=False)
  f = jax.lax.stop_gradient(feats[d.feature])
  b, h, w, c = f.shape
  labels, _ = kmeans.kmeans(f.reshape(b, h * w, c), keys,
                            num_clusters=int(d.num_clusters),
                            num_iterations=int(d.num_iterations))
  return labels.reshape(b, h, w)


def view_names(batch):
  """The view prefixes of a batch that carry a geometry (global views, then local crops)."""
  names, k = [], 1
  while f'view{k}/box' in batch:
    names.append(f'view{k}')
    k += 1
  return names


def discover_masks(config, target_variables, batch, rng):
  """(batch with view{k}/mask int32 [B, S_k, S_k] for every view, metrics).

  Runs inside the per-device step (the mapped axis AXIS bound: keys from
  global example indices, base.example_rngs). rng: this step's discovery
  stream. metrics: discovery_clusters, the mean number of non-empty
  clusters per image (a collapse to one cluster shows here).
  """
  images = batch[WHOLE_IMAGE]
  keys = base.example_rngs(rng, images.shape[0])
  clusters = cluster_maps(config, encoder_variables(target_variables), images, keys)
  out = dict(batch)
  for v in view_names(batch):
    size = batch[f'{v}/image'].shape[1]
    out[f'{v}/mask'] = geometry.resample_map_to_view(clusters, batch[f'{v}/box'],
                                                     batch[f'{v}/flip'], size)
  k = int(config.discovery.num_clusters)
  present = (clusters.reshape(clusters.shape[0], -1)[:, :, None] == jnp.arange(k)).any(1)
  return out, {'discovery_clusters': present.sum(-1).astype(jnp.float32).mean()}


def placeholder_masks(batch):
  """Zero view masks for Method.init (shapes only: init plans no discovery)."""
  return dict(batch, **{f'{v}/mask': jnp.zeros(batch[f'{v}/image'].shape[:3], jnp.int32)
                        for v in view_names(batch)})


# ---------------------------------------------------------------- quality ---

def upsample_nearest(label_map, height, width):
  """int [h, w] -> [height, width]: pixel (i, j) takes cell (floor(h (i + .5) / H), ...)."""
  h, w = label_map.shape
  rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
  return label_map[rows[:, None], cols[None, :]]


def read_scenes(data_dir, data_config, limit):
  """The first `limit` records of data_dir: (whole views uint8 [N, S_d, S_d, 3], GT maps,
  FH maps or None), the whole view made exactly as the pipeline makes it."""
  from data_pipeline import augment  # pylint: disable=g-import-not-at-top  # TensorFlow.
  from data_pipeline import input_pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline import mask_quality  # pylint: disable=g-import-not-at-top
  from data_pipeline import records  # pylint: disable=g-import-not-at-top
  tf = input_pipeline.tf
  from data_pipeline import mask_kinds  # pylint: disable=g-import-not-at-top
  manifest = input_pipeline.read_manifest(data_dir)
  fh_kind = mask_kinds.REGISTRY['fh']
  fh = [n for n in manifest.get('mask_names') or [] if fh_kind.owns(n)]
  try:  # The map of data.fh_scale where it is stored (the FH a DetCon run would use).
    fh = fh_kind.choices(manifest, data_config)[:1] or fh[:1]
  except ValueError:
    fh = fh[:1]
  fh_name = fh[0] if fh else None
  size = view_config.discovery_view_size(data_config)
  wholes, gts, fhs = [], [], []
  for shard in manifest.get('shards') or []:
    for serialized in tf.data.TFRecordDataset(
        os.path.join(data_dir, shard['file'])).as_numpy_iterator():
      if len(gts) >= limit:
        break
      f = tf.io.parse_single_example(serialized, {
          records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
      image = tf.io.decode_image(f[records.IMAGE_ENCODED], channels=3,
                                 expand_animations=False)
      shape = tf.shape(image)
      wholes.append(augment.crop_and_resize_image_uint8(
          image, (0, 0, shape[0], shape[1]), size).numpy())
      maps = mask_quality.label_maps(serialized, [records.GT_MASK] + fh)
      gts.append(maps[records.GT_MASK])
      fhs.append(maps.get(fh_name))
    if len(gts) >= limit:
      break
  return np.stack(wholes), gts, (fhs if fh_name else None), fh_name


def abo(gts, masks):
  """ABO over images (data_pipeline/masks/quality.py AboStats) -> summary dict."""
  from data_pipeline.masks import quality  # pylint: disable=g-import-not-at-top
  stats = quality.AboStats()
  for g, m in zip(gts, masks):
    stats.add_image(g, m)
  return stats.summary()


class DiscoveryQuality:
  """discovery/abo every config.discovery.quality_every_steps, as a clu periodic action.

  On process 0, on the first config.discovery.quality_images scenes of
  config.data.dir (which must store GT maps): the discovery of the current
  EMA target (cluster_maps, the step's own function, with keys fixed per
  scene so the curve follows the network, not the draw), each cluster map
  upsampled (nearest) to the scene's GT resolution and scored by ABO against
  the GT instances. Logged: discovery/abo, discovery/masks_per_image, and,
  where the dataset stores FH maps, discovery/abo_fh (the first stored FH
  map's ABO on the same scenes: the hand-crafted masks' line to beat).
  Also at step 0 of a fresh run (the random-init network's discovery).
  """

  def __init__(self, config, total_steps):
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    self.config = config
    d = config.discovery
    if jax.process_index() == 0:   # The others only keep the schedule.
      self.images, self.gts, fhs, self.fh_name = read_scenes(
          config.data.dir, config.data, int(d.quality_images))
      self.fh = abo(self.gts, fhs) if fhs is not None else None
      self.keys = jax.vmap(
          lambda i: jax.random.fold_in(jax.random.key(int(config.seed)), i))(
              jnp.arange(len(self.gts)))
      self.fn = jax.jit(lambda variables, images, keys: cluster_maps(
          config, variables, images, keys))
    self.action = periodic_actions.PeriodicCallback(
        every_steps=int(d.quality_every_steps), on_steps=[total_steps],
        callback_fn=self.evaluate, pass_step_and_time=True)

  def scores(self, variables):
    """{discovery/*: value} of the discovery with encoder `variables` (host numpy)."""
    maps = np.asarray(self.fn(variables, self.images, self.keys))
    masks = [upsample_nearest(m, *g.shape) for m, g in zip(maps, self.gts)]
    s = abo(self.gts, masks)
    out = {'discovery/abo': s['abo'], 'discovery/masks_per_image': s['masks_per_image']}
    if self.fh is not None:
      out['discovery/abo_fh'] = self.fh['abo']
    return out

  def evaluate(self, step, t, state):
    del t
    if jax.process_index() != 0:
      return {}
    local = lambda tree: jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
    scalars = self.scores(local(encoder_variables(state.target_variables)))
    logging.info('discovery at step %d: ABO %.3f (%.1f masks per image)%s', step,
                 scalars['discovery/abo'], scalars['discovery/masks_per_image'],
                 f'; {self.fh_name} {scalars["discovery/abo_fh"]:.3f}'
                 if self.fh is not None else '')
    return scalars
