"""Where the views of an image meet: correspondences for the dense objectives.

Every correspondence in the code base follows the pipeline's convention
(WORKSPACE.md section 4, data_pipeline/input_pipeline.py): a view has `box`
float32 [B, 4] = (y0, x0, y1, x1), its crop window in NORMALISED original-image
coordinates, and `flip` int32 [B] (1 = mirrored left-right AFTER cropping).
View-normalised coordinates v in [0, 1]^2 (the centre of view pixel (r, c) of
an S x S view is ((r + .5) / S, (c + .5) / S)) map to the original by
  v_x <- 1 - v_x if flipped;  y = y0 + v_y (y1 - y0);  x = x0 + v_x (x1 - x0).

Coordinate systems used below:
  * original: normalised (y, x) in the original image (as `box`).
  * view: normalised (y, x) in [0, 1]^2 of a view.
  * view pixels: view * S (pixel r covers [r, r + 1]); boxes in view pixels are
    (x1, y1, x2, y2), the format of roi.roi_align / torchvision.
  * feature cells: an h x w map of stride s = S / h has its cell centres at
    view ((i + .5) / h, (j + .5) / w); a point v lies at cell coordinate
    v * h - 0.5, where integer values are cell centres (RoIAlign's aligned=True
    convention: pixel p -> p / s - 0.5); roi.bilinear_sample reads there.

All functions are pure, batched over B, with static shapes (jit-friendly).
Distances and sizes in the original image are measured in normalised units
(as PixPro/CLoVE do): the original image size is not in the batch.
"""

from typing import Tuple, Union

import jax
import jax.numpy as jnp

GridSize = Union[int, Tuple[int, int]]

# ReSim Sec. 4 (default W48-S32 on C4/P4, W32-S24 on P3): stride -> (window, step) px.
RESIM_WINDOWS = {16: (48, 32), 8: (32, 24)}


def _hw(grid: GridSize) -> Tuple[int, int]:
  return (grid, grid) if isinstance(grid, int) else tuple(grid)


def _split_box(box):
  """box [B, 4] -> y0, x0, y1, x1, each [B, 1] (broadcast over points)."""
  box = box.astype(jnp.float32)
  return tuple(box[:, None, i] for i in range(4))


def _flipped(flip):
  return (flip > 0)[:, None]


def view_to_original(points, box, flip):
  """View-normalised points -> original-normalised points (the pipeline's map).

  y = y0 + v_y (y1 - y0),  x = x0 + v'_x (x1 - x0),  v'_x = 1 - v_x if flipped.

  Args:
    points: [B, N, 2] (y, x) in view coordinates.
    box: [B, 4] (y0, x0, y1, x1) normalised original. flip: [B] int.
  Returns:
    [B, N, 2] (y, x) in original coordinates.
  """
  y0, x0, y1, x1 = _split_box(box)
  vy, vx = points[..., 0], points[..., 1]
  vx = jnp.where(_flipped(flip), 1.0 - vx, vx)
  return jnp.stack([y0 + vy * (y1 - y0), x0 + vx * (x1 - x0)], -1)


def original_to_view(points, box, flip):
  """Original-normalised points -> view-normalised points (inverse of the above).

  Points outside the crop window land outside [0, 1]. `box` must have a
  positive size (the pipeline's boxes always do).

  Args:
    points: [B, N, 2] (y, x) original. box: [B, 4]. flip: [B] int.
  Returns:
    [B, N, 2] (y, x) view coordinates.
  """
  y0, x0, y1, x1 = _split_box(box)
  vy = (points[..., 0] - y0) / (y1 - y0)
  vx = (points[..., 1] - x0) / (x1 - x0)
  vx = jnp.where(_flipped(flip), 1.0 - vx, vx)
  return jnp.stack([vy, vx], -1)


def cell_centres(grid: GridSize):
  """View coordinates of an h x w feature map's cell centres, row-major.

  Returns:
    [h * w, 2] (y, x) = ((i + .5) / h, (j + .5) / w), index i * w + j.
  """
  h, w = _hw(grid)
  y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
  x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
  yy, xx = jnp.meshgrid(y, x, indexing='ij')
  return jnp.stack([yy.ravel(), xx.ravel()], -1)


def cell_centres_in_original(box, flip, grid: GridSize):
  """Original coordinates of every feature-cell centre of a view.

  Returns:
    [B, h * w, 2] (y, x) normalised original, row-major cells.
  """
  pts = cell_centres(grid)
  return view_to_original(jnp.broadcast_to(pts, (box.shape[0],) + pts.shape), box, flip)


# Normalised distance below a cell boundary that resample_map_to_view treats
# as on it: ~2.5x the float32 error of view_to_original (measured <= 1.8e-7).
_ON_BOUNDARY = 5e-7


def resample_map_to_view(label_map, box, flip, size: int):
  """A map over the whole original image, carried into a view (nearest).

  Odin's discovery clusters the un-cropped image; each view's mask is that
  cluster map seen through the view's crop box and flip. View pixel (r, c)
  reads the map cell under its centre: with (y, x) = view_to_original(
  ((r + .5) / S, (c + .5) / S)), cell (min(floor(y h), h - 1),
  min(floor(x w), w - 1)). This is the pipeline's label crop
  (augment.crop_and_resize_labels: half-pixel nearest, the flip applied to the
  column indices) whenever the original's pixels tile the map's cells.

  A centre exactly on a cell boundary (frequent: pixel-aligned windows at
  integer scale factors) reads the cell after it, as exact arithmetic does
  (and the pipeline, in tests/test_discovery_ops.py). float32 lands such a
  centre up to ~2e-7 either side, so one
  less than _ON_BOUNDARY below a boundary counts as on it. Where cells are
  whole pixels no other centre comes that close (>= 1 / (2 S H): 5.6e-7 for
  S = 224, H = 4000 px); elsewhere the shift is immaterial.

  Args:
    label_map: int [B, h, w], the map over the original image.
    box: [B, 4] (y0, x0, y1, x1) the view's crop window. flip: [B] int.
    size: the view side S (pixels).
  Returns:
    int32 [B, S, S].
  """
  bsz, h, w = label_map.shape
  pts = cell_centres_in_original(box, flip, size)              # [B, S * S, 2]
  cell = jnp.floor((pts + _ON_BOUNDARY) * jnp.array([h, w], jnp.float32)).astype(jnp.int32)
  row = jnp.clip(cell[..., 0], 0, h - 1)
  col = jnp.clip(cell[..., 1], 0, w - 1)
  flat = label_map.reshape(bsz, h * w).astype(jnp.int32)
  return jnp.take_along_axis(flat, row * w + col, axis=1).reshape(bsz, size, size)


def overlap_box(box_a, box_b):
  """Intersection of two views' crop windows (SCRL's IS(v1, v2)), original coords.

  Flips do not matter: a flip mirrors the content inside the same window.

  Args:
    box_a, box_b: [B, 4] (y0, x0, y1, x1).
  Returns:
    (overlap [B, 4] (y0, x0, y1, x1), valid [B] bool: positive area). Where
    invalid the box has y1 <= y0 or x1 <= x0.
  """
  lo = jnp.maximum(box_a[:, :2], box_b[:, :2])
  hi = jnp.minimum(box_a[:, 2:], box_b[:, 2:])
  return jnp.concatenate([lo, hi], -1), jnp.all(hi > lo, -1)


def cell_correspondence(box_a, flip_a, box_b, flip_b, grid_a: GridSize,
                        grid_b: GridSize):
  """Sub-pixel location in view B's feature grid of each cell centre of view A.

  LC-loss Sec. 3 (Eq. 3-4): grid points p_c of I_c (view A, colour-only) have
  sub-pixel correspondences p_sc in I_sc (view B); NLL(p_c, .) is read there
  by bilinear interpolation, and pairs falling outside I_sc are dropped.
  Location u = v_B * (h_B, w_B) - 0.5, v_B the point in B's view coordinates:
  integer u are B's cell centres (RoIAlign aligned=True; read it with
  roi.bilinear_sample). Inside B means v_B in [0, 1]^2, i.e. u in
  [-0.5, h_B - 0.5]; the outer half-cell band reads the border cell.

  Args:
    box_a, box_b: [B, 4]. flip_a, flip_b: [B] int.
    grid_a, grid_b: feature grids (h, w) or h of views A and B.
  Returns:
    (coords [B, hA * wA, 2] (row, col) in B's cell units,
     valid [B, hA * wA] bool: the point lies inside view B).
  """
  hb, wb = _hw(grid_b)
  orig = cell_centres_in_original(box_a, flip_a, grid_a)
  v = original_to_view(orig, box_b, flip_b)
  valid = jnp.all((v >= 0.0) & (v <= 1.0), -1)
  coords = v * jnp.array([hb, wb], jnp.float32) - 0.5
  return coords, valid


def original_boxes_to_view_pixels(boxes, box, flip, size: int):
  """Boxes in original coordinates -> (x1, y1, x2, y2) in a view's pixels.

  A flipped view's x-range is mirrored, (l, r) -> (S - r, S - l) (SCRL code).

  Args:
    boxes: [B, K, 4] (y0, x0, y1, x1) normalised original.
    box: [B, 4] the view's crop window. flip: [B] int. size: view side S (px).
  Returns:
    [B, K, 4] (x1, y1, x2, y2) float32 view pixels.
  """
  lo = original_to_view(boxes[..., :2], box, flip) * size
  hi = original_to_view(boxes[..., 2:], box, flip) * size
  top, bottom = jnp.minimum(lo[..., 0], hi[..., 0]), jnp.maximum(lo[..., 0], hi[..., 0])
  left, right = jnp.minimum(lo[..., 1], hi[..., 1]), jnp.maximum(lo[..., 1], hi[..., 1])
  return jnp.stack([left, top, right, bottom], -1)


def view_pixel_boxes_to_original(boxes, box, flip, size: int):
  """(x1, y1, x2, y2) view-pixel boxes -> (y0, x0, y1, x1) original (inverse).

  Args:
    boxes: [B, K, 4] view pixels. box: [B, 4]. flip: [B] int. size: S.
  Returns:
    [B, K, 4] normalised original.
  """
  a = view_to_original(jnp.stack([boxes[..., 1], boxes[..., 0]], -1) / size, box, flip)
  b = view_to_original(jnp.stack([boxes[..., 3], boxes[..., 2]], -1) / size, box, flip)
  return jnp.concatenate([jnp.minimum(a, b), jnp.maximum(a, b)], -1)


def box_iou(a, b):
  """IoU of (y0, x0, y1, x1) boxes. a: [..., N, 4], b: [..., M, 4] -> [..., N, M]."""
  lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0.0), -1)
  area_a = jnp.prod(a[..., 2:] - a[..., :2], -1)
  area_b = jnp.prod(b[..., 2:] - b[..., :2], -1)
  union = area_a[..., :, None] + area_b[..., None, :] - inter
  return inter / jnp.maximum(union, 1e-12)


def sample_boxes_in_overlap(rng, box_a, flip_a, box_b, flip_b, *,
                            size_a: int, size_b: int, num_boxes: int = 10,
                            min_size: float = 32.0, iou_threshold: float = 0.5,
                            max_tries: int = 50):
  """SCRL's random RoIs in the intersection of two views (SCRL Sec. 3.1, Eq. 1).

  In the overlap IS (original coords, size H^ x W^):
    w ~ U(W_min, W^), x ~ U(0, W^ - w), h ~ U(H_min, H^), y ~ U(0, H^ - h),
  W_min, H_min = `min_size` view pixels, taken in whichever view magnifies the
  overlap less, so every box is at least min_size px wide and high in BOTH
  views. A candidate is kept only if its IoU with every earlier kept box of the
  image is < iou_threshold (IoU is the same in either view and the original:
  the maps are per-axis affine). Each of the K slots draws `max_tries`
  candidates at once and keeps the first acceptable one; a slot with none is
  marked invalid (SCRL's code would keep the last candidate anyway; we never
  return boxes that break the rules). An image whose overlap is empty or
  smaller than the minimum has all slots invalid.

  Args:
    rng: PRNG key.
    box_a, box_b: [B, 4] crop windows. flip_a, flip_b: [B] int.
    size_a, size_b: view sides in pixels (static).
    num_boxes: K (10 in SCRL). min_size: pixels at view scale (32 in SCRL).
    iou_threshold: 0.5 in SCRL. max_tries: candidates per slot (50 in SCRL).
  Returns:
    dict(boxes_a [B, K, 4], boxes_b [B, K, 4]: (x1, y1, x2, y2) in each view's
    pixels (flip-aware), original [B, K, 4] (y0, x0, y1, x1), valid [B, K]
    bool). Invalid slots hold the whole view (finite pooling); mask the loss.
  """
  bsz = box_a.shape[0]
  box_a, box_b = box_a.astype(jnp.float32), box_b.astype(jnp.float32)
  inter, nonempty = overlap_box(box_a, box_b)
  # Normalised size of min_size px in each view; the larger one binds.
  ext_a, ext_b = box_a[:, 2:] - box_a[:, :2], box_b[:, 2:] - box_b[:, :2]
  min_hw = jnp.maximum(min_size / size_a * ext_a, min_size / size_b * ext_b)
  ov_hw = inter[:, 2:] - inter[:, :2]
  image_ok = nonempty & jnp.all(ov_hw >= min_hw, -1)
  slack = jnp.maximum(ov_hw - min_hw, 0.0)

  u = jax.random.uniform(rng, (num_boxes, bsz, max_tries, 4))
  hw = min_hw[None, :, None] + u[..., :2] * slack[None, :, None]       # Eq. 1
  lo = inter[None, :, None, :2] + u[..., 2:] * jnp.maximum(ov_hw[None, :, None] - hw, 0.0)
  candidates = jnp.concatenate([lo, lo + hw], -1)                      # [K, B, T, 4]

  # Slots are filled in order; a scan keeps the earlier boxes visible.
  def step(carry, xs):
    kept, kept_ok = carry
    cand, k = xs
    iou = box_iou(cand, kept)
    clash = jnp.any((iou >= iou_threshold) & kept_ok[:, None, :], -1)
    first = jnp.argmax(~clash, -1)
    ok = image_ok & jnp.any(~clash, -1)
    chosen = jnp.take_along_axis(cand, first[:, None, None], 1)[:, 0]
    kept = kept.at[:, k].set(chosen)
    kept_ok = kept_ok.at[:, k].set(ok)
    return (kept, kept_ok), None

  # Derived from the inputs so that, inside shard_map, the carry has the
  # inputs' per-device (varying) type, as the scan body's outputs do.
  init = (jnp.zeros((bsz, num_boxes, 4), jnp.float32) + 0.0 * inter[:, None, :],
          jnp.zeros((bsz, num_boxes), bool) & image_ok[:, None])
  (original, valid), _ = jax.lax.scan(step, init, (candidates, jnp.arange(num_boxes)))
  boxes_a = original_boxes_to_view_pixels(original, box_a, flip_a, size_a)
  boxes_b = original_boxes_to_view_pixels(original, box_b, flip_b, size_b)
  whole_a = jnp.array([0.0, 0.0, size_a, size_a], jnp.float32)
  whole_b = jnp.array([0.0, 0.0, size_b, size_b], jnp.float32)
  return dict(boxes_a=jnp.where(valid[..., None], boxes_a, whole_a),
              boxes_b=jnp.where(valid[..., None], boxes_b, whole_b),
              original=jnp.where(valid[..., None], original,
                                 jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)),
              valid=valid)


def sliding_windows(size: int, window: int, stride: int):
  """A view's sliding windows, (x1, y1, x2, y2) pixels, row-major.

  Windows start at 0, stride, ... while they fit: n = (S - window) // stride + 1
  per side (ReSim slides a fixed-size window over the query view).

  Returns:
    [n * n, 4] float32.
  """
  n = (size - window) // stride + 1
  if n < 1:
    raise ValueError(f'dense_ssl/ops/geometry.py: window {window} px does not fit'
                     f' a {size} px view; use a smaller window or larger view')
  start = jnp.arange(n, dtype=jnp.float32) * stride
  yy, xx = jnp.meshgrid(start, start, indexing='ij')
  yy, xx = yy.ravel(), xx.ravel()
  return jnp.stack([xx, yy, xx + window, yy + window], -1)


def resim_windows(box_q, flip_q, box_k, flip_k, *, size_q: int, size_k: int,
                  window: int, stride: int, tolerance: float = 1e-3):
  """ReSim's windows over the query view, mapped into the key view (ReSim Sec. 3).

  Windows u_q slide over the whole query view (`sliding_windows`); each is
  mapped through the original image into the key view, u_k (mirrored where
  the two flips differ). A pair is valid when u_k lies fully inside the key
  view (then u_q is inside the overlap of the views); the official code labels
  the others -1 (FACTS.md §7). Defaults per stride: RESIM_WINDOWS
  (48 px stride 32 on stride-16 maps, 32 px stride 24 on stride-8 maps).

  Args:
    box_q, box_k: [B, 4] crop windows. flip_q, flip_k: [B] int.
    size_q, size_k: view sides in pixels. window, stride: pixels.
    tolerance: pixels a key window may exceed the key view by (rounding).
  Returns:
    (windows_q [B, N, 4], windows_k [B, N, 4] (x1, y1, x2, y2) view pixels,
     valid [B, N] bool). Pool them with roi.precise_roi_pool, spatial_scale =
     1 / stride of the map.
  """
  grid = sliding_windows(size_q, window, stride)
  wq = jnp.broadcast_to(grid, (box_q.shape[0],) + grid.shape)
  orig = view_pixel_boxes_to_original(wq, box_q, flip_q, size_q)
  wk = original_boxes_to_view_pixels(orig, box_k, flip_k, size_k)
  valid = jnp.all((wk >= -tolerance) & (wk <= size_k + tolerance), -1)
  return wq, wk, valid


def neighbour_pairs(box_a, flip_a, box_b, flip_b, grid_a: GridSize,
                    grid_b: GridSize, t_pos: float = 0.7):
  """CLoVE / PixPro pixel-to-neighbourhood positives (CLoVE Eq. 1).

  M = {(i, j) : d(p_i^A, p_j^B) / max(diag_A, diag_B) < T_pos}, p the cell
  centres in original (normalised) coordinates and diag a view's cell diagonal
  there, sqrt((h_box / h)^2 + (w_box / w)^2) (PixPro's normalisation).

  Args:
    box_a, box_b: [B, 4]. flip_a, flip_b: [B] int. grid_a, grid_b: feature grids.
    t_pos: threshold (0.7 in CLoVE and PixPro).
  Returns:
    [B, hA * wA, hB * wB] bool, row-major cells.
  """
  pa = cell_centres_in_original(box_a, flip_a, grid_a)
  pb = cell_centres_in_original(box_b, flip_b, grid_b)

  def diag(box, grid):
    h, w = _hw(grid)
    return jnp.hypot((box[:, 2] - box[:, 0]) / h, (box[:, 3] - box[:, 1]) / w)

  scale = jnp.maximum(diag(box_a, grid_a), diag(box_b, grid_b))
  dist = jnp.sqrt(jnp.sum((pa[:, :, None] - pb[:, None, :]) ** 2, -1))
  return dist / scale[:, None, None] < t_pos
