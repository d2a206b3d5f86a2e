"""dense_ssl/ops/roi.py against torchvision and a float64 numerical integral."""

import sys

sys.modules.setdefault('triton', None)  # Before torch (see conftest.py).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from dense_ssl.ops import roi  # noqa: E402

B, H, W, C, K = 2, 7, 9, 3, 8


def random_boxes(rng, k, scale, margin):
  """[B, k, 4] (x1, y1, x2, y2) px, some partly or fully outside the map."""
  x = rng.uniform(-margin, W / scale + margin, size=(B, k, 2))
  y = rng.uniform(-margin, H / scale + margin, size=(B, k, 2))
  boxes = np.stack([x.min(-1), y.min(-1), x.max(-1), y.max(-1)], -1)
  boxes[:, 0] = [2., 3., 2.5, 3.5]          # A tiny box (below one cell).
  boxes[:, 1] = [-30., -30., -20., -20.]    # Wholly outside.
  return boxes.astype(np.float32)


def torchvision_roi_align(features, boxes, **kw):
  rois = torch.cat([torch.cat([torch.full((boxes.shape[1], 1), float(b)),
                               torch.from_numpy(boxes[b])], 1)
                    for b in range(boxes.shape[0])])
  out = torchvision.ops.roi_align(torch.from_numpy(features).permute(0, 3, 1, 2),
                                  rois, **kw)
  n = kw['output_size']
  return out.permute(0, 2, 3, 1).numpy().reshape(boxes.shape[:2] + (n, n, -1))


@pytest.mark.parametrize('aligned', [False, True])
@pytest.mark.parametrize('output_size,sampling_ratio,scale', [
    (1, 1, 1 / 32), (1, 2, 1 / 32), (2, 2, 0.25), (2, 3, 0.5), (1, 4, 1.0)])
def test_roi_align_matches_torchvision(aligned, output_size, sampling_ratio, scale):
  rng = np.random.default_rng(sampling_ratio * 10 + output_size)
  f = rng.normal(size=(B, H, W, C)).astype(np.float32)
  boxes = random_boxes(rng, K, scale, margin=2 / scale)
  fn = jax.jit(roi.roi_align, static_argnames=('output_size', 'spatial_scale',
                                               'sampling_ratio', 'aligned'))
  got = fn(jnp.asarray(f), jnp.asarray(boxes), output_size=output_size,
           spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
  want = torchvision_roi_align(f, boxes, output_size=output_size,
                               spatial_scale=scale, sampling_ratio=sampling_ratio,
                               aligned=aligned)
  assert got.shape == (B, K, output_size, output_size, C)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def test_roi_align_rejects_adaptive_sampling():
  with pytest.raises(ValueError, match='sampling_ratio'):
    roi.roi_align(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 1, 4)),
                  spatial_scale=1., sampling_ratio=0)


def test_bilinear_sample_is_a_one_point_roi_align():
  # A zero-size aligned box with one sample reads exactly its point.
  rng = np.random.default_rng(1)
  f = rng.normal(size=(B, H, W, C)).astype(np.float32)
  pts = np.stack([rng.uniform(-1.5, H + .5, (B, 40)),
                  rng.uniform(-1.5, W + .5, (B, 40))], -1).astype(np.float32)
  got = roi.bilinear_sample(jnp.asarray(f), jnp.asarray(pts))
  px = pts + 0.5  # Cell coords -> pixel coords at stride 1 (aligned=True).
  boxes = np.concatenate([px[..., ::-1], px[..., ::-1]], -1)
  want = torchvision_roi_align(f, boxes, output_size=1, spatial_scale=1.,
                               sampling_ratio=1, aligned=True)[:, :, 0, 0]
  np.testing.assert_allclose(got, want, atol=2e-6)
  # Inside the map it is plain bilinear interpolation.
  y, x = 2.25, 3.75
  want = (.75 * .25 * f[:, 2, 3] + .75 * .75 * f[:, 2, 4] + .25 * .25 * f[:, 3, 3]
          + .25 * .75 * f[:, 3, 4])
  got = roi.bilinear_sample(jnp.asarray(f), jnp.tile(jnp.array([y, x]), (B, 1, 1)))[:, 0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def prroi_by_midpoint_rule(f, box, scale, out, n=2000):
  """PrRoIPool by an n x n midpoint rule per bin, float64, evaluating the
  zero-padded bilinear surface directly (independent of the closed form)."""
  h, w, _ = f.shape
  pad = np.zeros((h + 3, w + 3, f.shape[-1]))
  pad[1:h + 1, 1:w + 1] = f  # pad[i + 1] = F[i]; zero outside.
  x1, y1, x2, y2 = np.asarray(box, np.float64) * scale
  bh, bw = max(y2 - y1, 0) / out, max(x2 - x1, 0) / out
  res = np.zeros((out, out, f.shape[-1]))
  if bh * bw == 0:
    return res
  t = (np.arange(n) + 0.5) / n

  def taps(p, length):
    p = np.clip(p, -1.0, length)  # Surface is zero beyond [-1, length].
    lo = np.floor(p).astype(int)
    return lo + 1, lo + 2, p - lo

  for py in range(out):
    ylo, yhi, ly = taps(y1 + (py + t) * bh, h)
    for px in range(out):
      xlo, xhi, lx = taps(x1 + (px + t) * bw, w)
      v = ((1 - ly)[:, None, None] * (1 - lx)[None, :, None] * pad[ylo][:, xlo]
           + (1 - ly)[:, None, None] * lx[None, :, None] * pad[ylo][:, xhi]
           + ly[:, None, None] * (1 - lx)[None, :, None] * pad[yhi][:, xlo]
           + ly[:, None, None] * lx[None, :, None] * pad[yhi][:, xhi])
      res[py, px] = v.mean((0, 1))
  return res


@pytest.mark.parametrize('output_size,scale', [(1, 1 / 16), (2, 0.5)])
def test_precise_roi_pool_matches_numerical_integral(output_size, scale):
  rng = np.random.default_rng(output_size)
  f = rng.normal(size=(1, H, W, 2)).astype(np.float32)
  x = rng.uniform(-2 / scale, (W + 1) / scale, size=(1, 5, 2))
  y = rng.uniform(-2 / scale, (H + 1) / scale, size=(1, 5, 2))
  boxes = np.stack([x.min(-1), y.min(-1), x.max(-1), y.max(-1)], -1)
  boxes[0, 0] = [-1.5 / scale, -0.5 / scale, 2.2 / scale, 1.3 / scale]  # Partly outside.
  boxes[0, 1] = [1.1 / scale, 2.3 / scale, 1.1 / scale, 4. / scale]    # Zero width.
  boxes = boxes.astype(np.float32)
  got = np.asarray(jax.jit(roi.precise_roi_pool, static_argnames=(
      'spatial_scale', 'output_size'))(jnp.asarray(f), jnp.asarray(boxes),
                                       spatial_scale=scale, output_size=output_size))
  for k in range(boxes.shape[1]):
    want = prroi_by_midpoint_rule(f[0].astype(np.float64), boxes[0, k], scale,
                                  output_size, n=2000 if output_size == 1 else 1000)
    np.testing.assert_allclose(got[0, k], want, atol=2e-5, err_msg=f'box {k}')
  np.testing.assert_array_equal(got[0, 1], 0.)


def test_precise_roi_pool_exact_cases_and_gradients():
  f = jnp.arange(12., dtype=jnp.float32).reshape(1, 3, 4, 1)
  # Inside the cell-coordinate hull [0, 2] x [0, 3] the surface is affine in
  # each axis, so the mean is the value at the box centre.
  box = jnp.array([[[0.5, 0.25, 2.5, 1.75]]])  # x1, y1, x2, y2 (scale 1).
  got = roi.precise_roi_pool(f, box, spatial_scale=1.)
  np.testing.assert_allclose(got[0, 0, 0, 0, 0], 4 * 1.0 + 1.5, rtol=1e-6)
  # aligned=True shifts by half a cell: same value for the shifted box.
  got = roi.precise_roi_pool(f, box + 0.5, spatial_scale=1., aligned=True)
  np.testing.assert_allclose(got[0, 0, 0, 0, 0], 5.5, rtol=1e-6)
  # A constant map: the box mean is the covered fraction of the surface's mass.
  ones = jnp.ones((1, 3, 4, 1))
  got = roi.precise_roi_pool(ones, jnp.array([[[-1., 0., 0., 1.]]]), spatial_scale=1.)
  np.testing.assert_allclose(got[0, 0, 0, 0, 0], 0.5, rtol=1e-6)  # Tent's half.
  # Differentiable in features and boxes (ReSim back-propagates through both).
  g_f, g_b = jax.grad(lambda a, b: roi.precise_roi_pool(
      a, b, spatial_scale=1.).sum(), argnums=(0, 1))(f, box)
  assert np.isfinite(g_f).all() and np.isfinite(g_b).all()
  np.testing.assert_allclose(g_f.sum(), 1.0, rtol=1e-6)  # Weights sum to one inside.
