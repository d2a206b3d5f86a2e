"""dense_ssl/ops/geometry.py: correspondences checked on real pipeline views.

A "coordinate image" (R = x, G = y pixel indices of the original, stored as
PNG) goes through data_pipeline.make_pretrain_dataset with colour off; the
decoded views then carry, in every pixel, the original point they show (up to
~0.6 px of bicubic clamping at window edges). Feature maps are those views
average-pooled by a stride, so a cell carries its own centre. Each geometry
function is checked by sampling such features at the places it says
correspond and comparing the original coordinates they carry.
"""

import sys

sys.modules.setdefault('triton', None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from data_pipeline import augment  # noqa: E402
from data_pipeline import input_pipeline as ip  # noqa: E402
from dense_ssl.ops import geometry as geo  # noqa: E402
from dense_ssl.ops import roi  # noqa: E402
from tests import fake_data  # noqa: E402
from tests import mask_records  # noqa: E402

H, W = 160, 224       # Original (non-square; <= 255 so indices fit uint8).
S = 32                # View size.
STRIDE = 4            # Feature stride: 8 x 8 maps.
G = S // STRIDE
# Tolerance in original pixels: bicubic clamping at view edges, uint8 PNG.
TOL_PX = 1.5
TOL = np.array([TOL_PX / H, TOL_PX / W])
NO_COLOR = dict(color_jitter_prob=0., grayscale_prob=0., blur_prob=(0., 0.),
                solarize_prob=(0., 0.))
MODES = {
    'crop': dict(view_modes=('crop', 'crop')),
    'shared_flip': dict(view_modes=('crop', 'crop'), shared_flip=True),
    'color_only': dict(view_modes=('color_only', 'crop')),
}


@pytest.fixture(scope='module')
def batches(tmp_path_factory):
  """{mode: dict(box_a, flip_a, img_a, box_b, flip_b, img_b)}, 16 images each.

  img_* float32 [N, S, S, 2]: the original normalised (y, x) each view pixel shows.
  """
  d = str(tmp_path_factory.mktemp('coord_image'))
  y, x = np.mgrid[:H, :W]
  exs = [dict(id=f'img{i}', image=np.stack([x, y, np.full_like(x, i)], -1).astype(np.uint8),
              masks={'gt': np.zeros((H, W), np.int32)}) for i in range(8)]
  mask_records.write_mask_dataset(d, exs, num_shards=1)
  out = {}
  for mode, kw in MODES.items():
    cfg = fake_data.data_config(dir=d, image_size=S, mask='gt', shuffle_buffer=8,
                                crop_area=(0.3, 1.0), color_on='host', **NO_COLOR, **kw)
    it = ip.make_pretrain_dataset(cfg, global_batch_size=8, seed=11).as_numpy_iterator()
    got = [next(it) for _ in range(2)]
    views = {}
    for v, name in (('view1', 'a'), ('view2', 'b')):
      img = np.concatenate([g[f'{v}/image'].reshape(-1, S, S, 3) for g in got])
      img = (img * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)) * 255
      views[f'img_{name}'] = np.stack([(img[..., 1] + .5) / H, (img[..., 0] + .5) / W],
                                      -1).astype(np.float32)
      views[f'box_{name}'] = np.concatenate([g[f'{v}/box'].reshape(-1, 4) for g in got])
      views[f'flip_{name}'] = np.concatenate([g[f'{v}/flip'].reshape(-1) for g in got])
    out[mode] = views
  return out


def features(img):
  """Average-pool a coordinate view by STRIDE: [N, G, G, 2], each cell its centre."""
  n = img.shape[0]
  return img.reshape(n, G, STRIDE, G, STRIDE, 2).mean((2, 4))


def test_pipeline_modes_cover_flips_and_identity(batches):
  crop = batches['crop']
  flips = np.concatenate([crop['flip_a'], crop['flip_b']])
  assert 0 < flips.sum() < len(flips)
  assert np.any(crop['flip_a'] != crop['flip_b'])
  shared = batches['shared_flip']
  np.testing.assert_array_equal(shared['flip_a'], shared['flip_b'])
  assert 0 < shared['flip_a'].sum() < len(shared['flip_a'])
  c = batches['color_only']
  np.testing.assert_array_equal(c['box_a'], np.tile([0., 0., 1., 1.], (16, 1)))
  assert not c['flip_a'].any()


@pytest.mark.parametrize('mode', list(MODES))
def test_points_map_both_ways(batches, mode):
  d = batches[mode]
  v = (np.arange(S) + .5) / S
  pix = np.stack(np.meshgrid(v, v, indexing='ij'), -1).reshape(1, -1, 2)
  pix = jnp.asarray(np.repeat(pix, 16, 0), jnp.float32)
  for name in ('a', 'b'):
    box, flip = jnp.asarray(d[f'box_{name}']), jnp.asarray(d[f'flip_{name}'])
    orig = geo.view_to_original(pix, box, flip)
    shown = d[f'img_{name}'].reshape(16, -1, 2)
    assert np.all(np.abs(orig - shown) <= TOL)
    # Back: the original point each pixel shows is at that pixel's centre.
    back = geo.original_to_view(jnp.asarray(shown), box, flip)
    assert np.all(np.abs(back - pix) * S <= TOL_PX * S * np.array(
        [1 / H, 1 / W]) / (box[:, None, 2:] - box[:, None, :2]) + 1e-4)


@pytest.mark.parametrize('mode', list(MODES))
def test_cell_correspondence_samples_the_same_point(batches, mode):
  d = batches[mode]
  fa, fb = features(d['img_a']), features(d['img_b'])
  coords, valid = geo.cell_correspondence(d['box_a'], d['flip_a'], d['box_b'],
                                          d['flip_b'], G, G)
  assert coords.shape == (16, G * G, 2) and valid.shape == (16, G * G)
  sampled = np.asarray(roi.bilinear_sample(jnp.asarray(fb), coords))
  own = fa.reshape(16, -1, 2)
  # Where bilinear sampling is exact (inside B's cell-centre hull) the point
  # read in B is the very point A's cell shows.
  interior = np.all((coords >= 0) & (coords <= G - 1), -1)
  assert interior.sum() > 100
  assert np.all(np.abs(sampled - own)[interior] <= TOL)
  # Validity = the point lies in B's window (checked away from the edges).
  y0, x0, y1, x1 = [d['box_b'][:, None, i] for i in range(4)]
  margin = np.minimum.reduce([own[..., 0] - y0, y1 - own[..., 0],
                              own[..., 1] - x0, x1 - own[..., 1]])
  clear = np.abs(margin) > 2 * TOL.max()
  np.testing.assert_array_equal(np.asarray(valid)[clear], (margin > 0)[clear])
  assert np.asarray(valid).any() and not np.asarray(valid).all()


@pytest.mark.parametrize('mode', list(MODES))
def test_scrl_boxes_pool_the_same_region_in_both_views(batches, mode):
  d = batches[mode]
  out = jax.jit(geo.sample_boxes_in_overlap, static_argnames=(
      'size_a', 'size_b', 'num_boxes', 'min_size'))(
          jax.random.key(0), d['box_a'], d['flip_a'], d['box_b'], d['flip_b'],
          size_a=S, size_b=S, num_boxes=4, min_size=6.)
  valid = np.asarray(out['valid'])
  assert valid.sum() >= 16

  def pool(img, boxes):  # Stride-1 "features": the coordinate view itself.
    return np.asarray(roi.roi_align(jnp.asarray(img), boxes, spatial_scale=1.,
                                    sampling_ratio=2, aligned=True))[:, :, 0, 0]

  pa, pb = pool(d['img_a'], out['boxes_a']), pool(d['img_b'], out['boxes_b'])
  o = np.asarray(out['original'])
  centre = (o[..., :2] + o[..., 2:]) / 2
  assert np.all(np.abs(pa - centre)[valid] <= TOL)
  assert np.all(np.abs(pb - centre)[valid] <= TOL)
  # Boxes lie in both views and are at least min_size px there.
  for name in ('a', 'b'):
    bx = np.asarray(out[f'boxes_{name}'])[valid]
    assert np.all(bx >= -1e-3) and np.all(bx <= S + 1e-3)
    assert np.all(bx[:, 2:] - bx[:, :2] >= 6. - 1e-3)


@pytest.mark.parametrize('mode', list(MODES))
def test_resim_windows_pool_the_same_region(batches, mode):
  d = batches[mode]
  wq, wk, valid = geo.resim_windows(d['box_a'], d['flip_a'], d['box_b'], d['flip_b'],
                                    size_q=S, size_k=S, window=8, stride=4)
  assert wq.shape == (16, 49, 4) and valid.shape == (16, 49)
  valid = np.asarray(valid)
  assert valid.sum() > 50 and not valid.all()

  def pool(img, boxes):
    return np.asarray(roi.roi_align(jnp.asarray(img), boxes, spatial_scale=1.,
                                    sampling_ratio=2, aligned=True))[:, :, 0, 0]

  pq, pk = pool(d['img_a'], wq), pool(d['img_b'], wk)
  assert np.all(np.abs(pq - pk)[valid] <= 2 * TOL)
  # Valid exactly when the window's region lies inside the key crop window:
  # its pooled corners (from the query view) must be in the key box.
  corners_q = np.concatenate([np.asarray(wq)[..., :2], np.asarray(wq)[..., 2:]], 1)
  corners_q = np.clip(corners_q.reshape(16, -1, 2)[..., ::-1] / S, 0, 1)
  corners = np.asarray(geo.view_to_original(corners_q, d['box_a'], d['flip_a']))
  y0, x0, y1, x1 = [d['box_b'][:, None, i] for i in range(4)]
  inside = ((corners[..., 0] >= y0 - 1e-5) & (corners[..., 0] <= y1 + 1e-5) &
            (corners[..., 1] >= x0 - 1e-5) & (corners[..., 1] <= x1 + 1e-5))
  np.testing.assert_array_equal(valid, inside.reshape(16, 2, 49).all(1))


@pytest.mark.parametrize('mode', list(MODES))
def test_neighbour_pairs_from_carried_coordinates(batches, mode):
  d = batches[mode]
  ca, cb = features(d['img_a']).reshape(16, -1, 2), features(d['img_b']).reshape(16, -1, 2)
  for t_pos in (0.7, 2.0):
    pairs = np.asarray(geo.neighbour_pairs(d['box_a'], d['flip_a'], d['box_b'],
                                           d['flip_b'], G, G, t_pos=t_pos))
    assert pairs.shape == (16, G * G, G * G) and pairs.any()
    diag = lambda b: np.hypot((b[:, 2] - b[:, 0]) / G, (b[:, 3] - b[:, 1]) / G)
    scale = np.maximum(diag(d['box_a']), diag(d['box_b']))
    dist = np.linalg.norm(ca[:, :, None] - cb[:, None], axis=-1) / scale[:, None, None]
    clear = np.abs(dist - t_pos) > 0.05
    np.testing.assert_array_equal(pairs[clear], (dist < t_pos)[clear])


# ----------------------------------------------------------- pure unit tests ---

def test_flip_mirrors_within_the_window_and_round_trips():
  box = jnp.array([[.2, .1, .6, .5]] * 2)
  flip = jnp.array([0, 1])
  pts = jnp.array([[[0., 0.], [.25, .75], [1., 1.]]] * 2)
  orig = geo.view_to_original(pts, box, flip)
  np.testing.assert_allclose(orig[0], [[.2, .1], [.3, .4], [.6, .5]], atol=1e-6)
  np.testing.assert_allclose(orig[1], [[.2, .5], [.3, .2], [.6, .1]], atol=1e-6)
  np.testing.assert_allclose(geo.original_to_view(orig, box, flip), pts, atol=1e-6)
  px = geo.original_boxes_to_view_pixels(jnp.array([[[.3, .2, .4, .3]]] * 2), box, flip, 40)
  np.testing.assert_allclose(px[0, 0], [10, 10, 20, 20], atol=1e-4)
  np.testing.assert_allclose(px[1, 0], [20, 10, 30, 20], atol=1e-4)  # (S-r, S-l).
  back = geo.view_pixel_boxes_to_original(px, box, flip, 40)
  np.testing.assert_allclose(back, [[[.3, .2, .4, .3]]] * 2, atol=1e-6)


def test_overlap_box():
  a = jnp.array([[0., 0., .5, .5], [0., 0., .5, .5], [.1, .1, .9, .9]])
  b = jnp.array([[.25, .25, 1., 1.], [.5, .5, 1., 1.], [0., 0., 1., 1.]])
  box, valid = geo.overlap_box(a, b)
  np.testing.assert_allclose(box[0], [.25, .25, .5, .5])
  np.testing.assert_allclose(box[2], [.1, .1, .9, .9])
  np.testing.assert_array_equal(valid, [True, False, True])


def test_scrl_box_rules():
  rng = np.random.default_rng(0)
  n = 64
  lo = rng.uniform(0, .5, (n, 2))
  box_a = np.concatenate([lo, lo + rng.uniform(.4, .5, (n, 2))], 1).astype(np.float32)
  lo = rng.uniform(0, .5, (n, 2))
  box_b = np.concatenate([lo, lo + rng.uniform(.4, .5, (n, 2))], 1).astype(np.float32)
  box_b[0] = [.95, .95, 1., 1.]     # No overlap.
  box_a[1], box_b[1] = [0., 0., .5, .5], [.45, .45, 1., 1.]  # Overlap < 32 px.
  flip_a, flip_b = rng.integers(0, 2, n), rng.integers(0, 2, n)
  fn = jax.jit(geo.sample_boxes_in_overlap,
               static_argnames=('size_a', 'size_b', 'num_boxes', 'min_size'))
  out = fn(jax.random.key(3), box_a, flip_a, box_b, flip_b, size_a=224, size_b=160,
           num_boxes=10, min_size=32.)
  valid, o = np.asarray(out['valid']), np.asarray(out['original'])
  assert out['boxes_a'].shape == (n, 10, 4) and valid.dtype == bool
  assert not valid[:2].any()           # Masked out, not crashed.
  assert valid.mean() > 0.5
  ov, _ = geo.overlap_box(box_a, box_b)
  ov = np.asarray(ov)[:, None]
  assert np.all((o[..., :2] >= ov[..., :2] - 1e-6) & (o[..., 2:] <= ov[..., 2:] + 1e-6)
                | ~valid[..., None])
  for name, size in (('a', 224), ('b', 160)):
    bx = np.asarray(out[f'boxes_{name}'])
    assert np.all(bx[valid][:, 2:] - bx[valid][:, :2] >= 32. - 1e-2)
    assert np.isfinite(bx).all() and np.all(bx >= -1e-3) and np.all(bx <= size + 1e-3)
  iou = np.asarray(geo.box_iou(o, o))
  k = np.arange(10)
  pair = valid[:, :, None] & valid[:, None, :] & (k[:, None] != k[None, :])
  assert np.all(iou[pair] < 0.5)
  # Boxes in the two views are the same region: map both back to the original.
  for name, box, flip, size in (('a', box_a, flip_a, 224), ('b', box_b, flip_b, 160)):
    back = geo.view_pixel_boxes_to_original(out[f'boxes_{name}'], box, flip, size)
    np.testing.assert_allclose(np.asarray(back)[valid], o[valid], atol=1e-5)
  # With few tries and a tight overlap some slots fail the IoU rule: invalid.
  tight = fn(jax.random.key(1), box_a, flip_a, box_a, flip_a, size_a=32, size_b=32,
             num_boxes=10, min_size=24.)
  assert not np.asarray(tight['valid']).all()


def test_resim_default_windows():
  assert geo.sliding_windows(224, *geo.RESIM_WINDOWS[16]).shape == (36, 4)
  assert geo.sliding_windows(224, *geo.RESIM_WINDOWS[8]).shape == (81, 4)
  box = jnp.array([[.1, .2, .7, .8]])
  # Same view as key: every window maps onto itself and is valid.
  wq, wk, valid = geo.resim_windows(box, jnp.array([1]), box, jnp.array([1]),
                                    size_q=224, size_k=224, window=48, stride=32)
  np.testing.assert_allclose(wq, wk, atol=1e-3)
  assert np.asarray(valid).all()
  # Key = the same window, flipped: windows are mirrored.
  _, wk, valid = geo.resim_windows(box, jnp.array([0]), box, jnp.array([1]),
                                   size_q=224, size_k=224, window=48, stride=32)
  np.testing.assert_allclose(wk[0, 0], [176., 0., 224., 48.], atol=1e-3)


def test_neighbour_pairs_identical_views_and_threshold():
  box = jnp.array([[0., 0., 1., 1.]])
  flip = jnp.array([0])
  # Same view: only a cell itself is within 0.7 diagonals (neighbours are at 1/sqrt2).
  pairs = geo.neighbour_pairs(box, flip, box, flip, 7, 7, t_pos=0.7)
  np.testing.assert_array_equal(pairs[0], np.eye(49, dtype=bool))
  pairs = geo.neighbour_pairs(box, flip, box, flip, 7, 7, t_pos=0.75)
  assert np.asarray(pairs[0]).sum(1).max() == 5  # Self + 4 edge neighbours.
