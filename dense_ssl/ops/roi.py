"""Region pooling: RoIAlign (SCRL), Precise RoI Pooling (ReSim), point sampling.

All three read a feature map at continuous coordinates. Both RoI operators are
separable: a bin's output is sum_ij wy[i] wx[j] F[i, j], so each box becomes
two small 1-D weight matrices over the map's rows and columns and the pooling
is one einsum. Shapes stay fixed (no per-box loops or data-dependent sizes),
which keeps them jit-friendly and differentiable in features and boxes.

Coordinate conventions (shared with dense_ssl/ops/geometry.py):
  * Boxes are (x1, y1, x2, y2) in input-pixel coordinates, pixel r covering
    [r, r + 1] (torchvision's format); `spatial_scale` = 1 / stride maps them
    onto the feature map.
  * Feature cell i sits at continuous coordinate i. With `aligned=True` a pixel
    coordinate p maps to p * spatial_scale - 0.5, so a feature cell's centre in
    the image, (i + .5) * stride, lands on i (torchvision's aligned=True). This
    is the convention of geometry.cell_correspondence and of `bilinear_sample`.
  * Precise RoI Pooling as ReSim's code uses it has no half-pixel offset
    (FACTS.md §7 "ReSim's windows"): `aligned=False` there by default.
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _one_hot(index, length, dtype):
  return (index[..., None] == jnp.arange(length)).astype(dtype)


def _linear_tap_weights(points, length):
  """torchvision's 1-D bilinear weights of points on an axis of `length` cells.

  Rules of torchvision's roi_align kernel (bilinear_interpolate): a point
  beyond [-1, length] contributes 0; a point in [-1, 0] is clamped to 0; a
  point at or past length - 1 reads the last cell. Because the 2-D rule is
  the product of the two axes' rules, the 2-D weights are wy[i] * wx[j].

  Args:
    points: [...] continuous coordinates (cell i at coordinate i).
    length: number of cells on the axis.
  Returns:
    [..., length] weights (two non-zero taps summing to 1, or all 0).
  """
  inside = (points >= -1.0) & (points <= length)
  p = jnp.maximum(points, 0.0)
  low = jnp.floor(p).astype(jnp.int32)
  at_end = low >= length - 1
  low = jnp.where(at_end, length - 1, low)
  high = jnp.where(at_end, length - 1, low + 1)
  frac = jnp.where(at_end, 0.0, p - low)
  w = ((1.0 - frac)[..., None] * _one_hot(low, length, points.dtype) +
       frac[..., None] * _one_hot(high, length, points.dtype))
  return w * inside[..., None].astype(points.dtype)


def _pool_separable(features, wy, wx):
  """out[b,k,p,q,c] = sum_ij wy[b,k,p,i] wx[b,k,q,j] F[b,i,j,c]."""
  return jnp.einsum('bkpi,bkqj,bijc->bkpqc', wy, wx, features,
                    precision=_HIGHEST)


def _scaled_edges(boxes, spatial_scale, offset):
  """boxes [B, K, 4] (x1, y1, x2, y2) -> feature-space (y1, x1, y2, x2) each [B, K]."""
  boxes = boxes.astype(jnp.float32)
  x1, y1, x2, y2 = [boxes[..., i] * spatial_scale - offset for i in range(4)]
  return y1, x1, y2, x2


def roi_align(features, boxes, *, output_size=1, spatial_scale,
              sampling_ratio=2, aligned=False):
  """RoIAlign (Mask R-CNN, He et al. 2017) with torchvision.ops.roi_align semantics.

  Bin (p, q) of a box averages n x n bilinear samples (n = sampling_ratio) at
    y = y1 + p * bh + (iy + .5) * bh / n,  x = x1 + q * bw + (ix + .5) * bw / n,
  where (x1, y1, x2, y2) = box * spatial_scale (- 0.5 if aligned) and
  bh = (y2 - y1) / output_size (with aligned=False the box size is first
  raised to at least 1 cell, as torchvision does). SCRL pools each box with
  1x1 RoIAlign on C5 (SCRL Sec. 3.1, p_i^k = RoIAlign(B_i^k, m_i)).

  torchvision's adaptive sampling (sampling_ratio <= 0, n = ceil(bin size))
  has data-dependent shapes, so a fixed n > 0 is required here.

  Args:
    features: [B, H, W, C] (NHWC).
    boxes: [B, K, 4] (x1, y1, x2, y2) in input-pixel coordinates.
    output_size: int, the bins per side.
    spatial_scale: feature cells per input pixel (1 / stride).
    sampling_ratio: fixed int > 0, samples per bin per axis.
    aligned: torchvision's half-pixel shift (-0.5 after scaling).
  Returns:
    [B, K, output_size, output_size, C] float32.
  """
  n = int(sampling_ratio)
  if n <= 0:
    raise ValueError(f'dense_ssl/ops/roi.py roi_align: sampling_ratio={sampling_ratio}'
                     ' must be a fixed int > 0 (adaptive sampling has no fixed shape)')
  _, h, w, _ = features.shape
  y1, x1, y2, x2 = _scaled_edges(boxes, spatial_scale, 0.5 if aligned else 0.0)
  roi_h, roi_w = y2 - y1, x2 - x1
  if not aligned:  # Legacy behaviour: boxes are at least one cell.
    roi_h, roi_w = jnp.maximum(roi_h, 1.0), jnp.maximum(roi_w, 1.0)
  bins = jnp.arange(output_size, dtype=jnp.float32)[:, None]
  taps = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n

  def axis_weights(start, size, length):
    step = (size / output_size)[..., None, None]
    pts = start[..., None, None] + (bins + taps) * step  # [B, K, out, n]
    return _linear_tap_weights(pts, length).mean(-2)     # [B, K, out, length]

  wy = axis_weights(y1, roi_h, h)
  wx = axis_weights(x1, roi_w, w)
  return _pool_separable(features.astype(jnp.float32), wy, wx)


def _tent_antiderivative(t):
  """T(t) = int_{-inf}^t max(0, 1 - |s|) ds: 0, (t+1)^2/2, 1 - (1-t)^2/2, 1."""
  t = jnp.clip(t, -1.0, 1.0)
  return jnp.where(t < 0, 0.5 * (t + 1.0) ** 2, 1.0 - 0.5 * (1.0 - t) ** 2)


def precise_roi_pool(features, boxes, *, spatial_scale, output_size=1,
                     aligned=False):
  """Precise RoI Pooling (Jiang et al., IoU-Net 2018, Eq. 3), as ReSim uses it.

  PrPool(bin, F) = int_{y1}^{y2} int_{x1}^{x2} f(y, x) dx dy / ((x2-x1)(y2-y1)),
  with f the bilinear interpolation of the map, f(y, x) = sum_ij F[i, j]
  tri(y - i) tri(x - j), tri(t) = max(0, 1 - |t|), and F = 0 outside the map
  (so f fades to 0 over the border cell and vanishes beyond -1 and H).
  Separable, so each bin's weights are closed-form 1-D integrals of the tent:
    wy[i] = T(y2 - i) - T(y1 - i),  T the tent's antiderivative (piecewise
  quadratic). Fixed shapes: the weights run over ALL rows and columns of the
  map (zero for cells the bin misses) rather than a per-box cell window, which
  costs O(H + W) per bin instead of a max-cells bound and is exact for any box.
  An empty bin (zero area) pools to 0, as in the reference CUDA kernel.

  Args:
    features: [B, H, W, C].
    boxes: [B, K, 4] (x1, y1, x2, y2) in input-pixel coordinates.
    spatial_scale: feature cells per input pixel (1 / stride).
    output_size: int, the bins per side.
    aligned: subtract 0.5 after scaling (off in PrRoIPool and ReSim; on gives
      the cell-centre convention of `roi_align(aligned=True)`).
  Returns:
    [B, K, output_size, output_size, C] float32.
  """
  _, h, w, _ = features.shape
  y1, x1, y2, x2 = _scaled_edges(boxes, spatial_scale, 0.5 if aligned else 0.0)
  bins = jnp.arange(output_size + 1, dtype=jnp.float32)

  def axis_weights(start, end, length):
    size = jnp.maximum(end - start, 0.0) / output_size          # [B, K]
    edges = start[..., None] + bins * size[..., None]           # [B, K, out+1]
    cum = _tent_antiderivative(edges[..., None] - jnp.arange(length))
    return cum[..., 1:, :] - cum[..., :-1, :], size             # [B, K, out, L]

  wy, bin_h = axis_weights(y1, y2, h)
  wx, bin_w = axis_weights(x1, x2, w)
  area = bin_h * bin_w
  total = _pool_separable(features.astype(jnp.float32), wy, wx)
  safe = jnp.where(area > 0, area, 1.0)[..., None, None, None]
  return jnp.where(area[..., None, None, None] > 0, total / safe, 0.0)


def bilinear_sample(features, points):
  """Reads features at continuous cell coordinates (one RoIAlign sample each).

  LC-loss Eq. 3-4 interpolate bilinearly at the true sub-pixel correspondence;
  geometry.cell_correspondence gives such points. Cell (i, j) sits at (i, j);
  torchvision's boundary rules apply (0 beyond [-1, H] x [-1, W], clamped to the
  border cell in the outer band), so a point in a view's outer half-cell reads
  the border cell.

  Args:
    features: [B, H, W, C].
    points: [B, N, 2] (row, col) in cell units.
  Returns:
    [B, N, C] float32.
  """
  b, h, w, c = features.shape
  y, x = points[..., 0].astype(jnp.float32), points[..., 1].astype(jnp.float32)
  inside = (y >= -1.0) & (y <= h) & (x >= -1.0) & (x <= w)
  y, x = jnp.maximum(y, 0.0), jnp.maximum(x, 0.0)

  def taps(p, length):
    low = jnp.floor(p).astype(jnp.int32)
    at_end = low >= length - 1
    low = jnp.where(at_end, length - 1, low)
    high = jnp.where(at_end, length - 1, low + 1)
    return low, high, jnp.where(at_end, 0.0, p - low)

  y0, y1, ly = taps(y, h)
  x0, x1, lx = taps(x, w)
  flat = features.astype(jnp.float32).reshape(b, h * w, c)

  def read(yi, xi):
    return jnp.take_along_axis(flat, (yi * w + xi)[..., None], axis=1)

  out = (((1 - ly) * (1 - lx))[..., None] * read(y0, x0) +
         ((1 - ly) * lx)[..., None] * read(y0, x1) +
         (ly * (1 - lx))[..., None] * read(y1, x0) +
         (ly * lx)[..., None] * read(y1, x1))
  return out * inside[..., None].astype(jnp.float32)
