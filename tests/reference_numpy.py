"""Independent float64 numpy references for the pure math of dense_ssl.

Written from the DetCon paper (Sec. 3.1) and FACTS.md §6, deliberately in the
slow, literal form (one-hot + average-pool + argmax; explicit loops over ROIs)
so that they share no vectorisation with the JAX code they check.
"""

import numpy as np


def downsample_masks_ref(masks, grid_hw):
  """One-hot over id values, average-pool to the grid, argmax (ties: first)."""
  masks = np.asarray(masks)
  b, hh, ww = masks.shape
  h, w = grid_hw
  sh, sw = hh // h, ww // w
  num_ids = int(masks.max()) + 1
  out = np.zeros((b, h, w), np.int64)
  for n in range(b):
    onehot = np.zeros((hh, ww, num_ids), np.float64)
    onehot[np.arange(hh)[:, None], np.arange(ww)[None, :], masks[n]] = 1.0
    pooled = onehot.reshape(h, sh, w, sw, num_ids).mean(axis=(1, 3))
    out[n] = np.argmax(pooled, axis=-1)  # numpy argmax: first max = smallest id
  return out


def mask_pool_ref(features, cell_ids, ids):
  """h_m = sum_ij m_ij h[i, j] / sum_ij m_ij for each sampled id (Sec. 3.1)."""
  features = np.asarray(features, np.float64)
  b, k = ids.shape
  out = np.zeros((b, k, features.shape[-1]))
  for n in range(b):
    for s in range(k):
      m = (np.asarray(cell_ids[n]) == ids[n, s]).astype(np.float64)
      if m.sum() > 0:
        out[n, s] = (m[..., None] * features[n]).sum((0, 1)) / m.sum()
  return out


def _normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(v):
  v = np.asarray(v, np.float64)
  m = v.max()
  return m + np.log(np.exp(v - m).sum())


def _detcon_one_direction(pa, ta, tb, ids_a, ids_b, temperature,
                          local_negatives):
  """Loss of view a's predictions; also returns positives per ROI."""
  num_images, k = ids_a.shape
  total = 0.0
  npos_all = []
  for i in range(num_images):
    for r in range(k):
      m = ids_a[i, r]
      logits, is_pos = [], []
      # Targets of the other view: every mask of every image.
      for j in range(num_images):
        for s in range(k):
          same_obj = (j == i) and (ids_b[j, s] == m)
          if j == i and not local_negatives and not same_obj:
            continue  # other masks of the same image are not negatives
          logits.append(pa[i, r] @ tb[j, s] / temperature)
          is_pos.append(same_obj)
      # Targets of the same view: never positives.
      for j in range(num_images):
        for s in range(k):
          if j == i and (ids_a[j, s] == m or not local_negatives):
            continue  # its own id (itself included) is removed
          logits.append(pa[i, r] @ ta[j, s] / temperature)
          is_pos.append(False)
      npos = sum(is_pos)
      npos_all.append(npos)
      if npos == 0:
        continue  # weight 0
      log_z = _logsumexp(logits)
      ce = -np.mean([l - log_z for l, p in zip(logits, is_pos) if p])
      duplicates = sum(ids_a[i, s] == m for s in range(k))
      total += ce / duplicates
  return total / (num_images * k), npos_all


def detcon_loss_ref(pred1, pred2, target1, target2, ids1, ids2,
                    temperature=0.1, local_negatives=True):
  """DetCon loss (FACTS.md §6): loss(1 -> 2) + loss(2 -> 1), float64.

  Returns (loss, mean positives per ROI over both directions).
  """
  p1, p2 = _normalize(pred1), _normalize(pred2)
  t1, t2 = _normalize(target1), _normalize(target2)
  ids1, ids2 = np.asarray(ids1), np.asarray(ids2)
  l12, n12 = _detcon_one_direction(p1, t1, t2, ids1, ids2, temperature,
                                   local_negatives)
  l21, n21 = _detcon_one_direction(p2, t2, t1, ids2, ids1, temperature,
                                   local_negatives)
  return l12 + l21, float(np.mean(n12 + n21))


def nt_xent_ref(z1, z2, temperature=0.1):
  """SimCLR NT-Xent, mean of both directions, float64, explicit loops."""
  z = [_normalize(z1), _normalize(z2)]
  n = z[0].shape[0]
  losses = []
  for a, b in ((0, 1), (1, 0)):
    total = 0.0
    for i in range(n):
      pos = z[a][i] @ z[b][i] / temperature
      logits = [z[a][i] @ z[b][j] / temperature for j in range(n)]
      logits += [z[a][i] @ z[a][j] / temperature for j in range(n) if j != i]
      total += -(pos - _logsumexp(logits))
    losses.append(total / n)
  return 0.5 * (losses[0] + losses[1])


def byol_loss_ref(pred, target):
  p, t = _normalize(pred), _normalize(target)
  return float(np.mean(2 - 2 * (p * t).sum(-1)))


def _bilinear_ref(grid, y, x):
  """Bilinear read of a [H, W] map at (y, x), clamped to the border (valid points only)."""
  h, w = grid.shape
  y = min(max(y, 0.0), h - 1.0)
  x = min(max(x, 0.0), w - 1.0)
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * grid[y0, x0] + (1 - ly) * lx * grid[y0, x1]
          + ly * (1 - lx) * grid[y1, x0] + ly * lx * grid[y1, x1])


def local_contrastive_loss_ref(target_local, online_local, coords, valid, temperature):
  """LC-loss Eqs. 2-4, float64 loops: for each valid cell p_c of I_c, the NLL map
  -log softmax_k(cos(F_xi(p_c), F_theta(k)) / tau) over I_sc's cells, read at p_sc
  by bilinear interpolation; mean over the valid pairs of the batch."""
  t = _normalize(target_local)
  o = _normalize(online_local)
  b, hs, ws, _ = o.shape
  values = []
  for n in range(b):
    cells = t[n].reshape(-1, t.shape[-1])
    for i, f in enumerate(cells):
      if not valid[n, i]:
        continue
      logits = (o[n] @ f) / temperature                      # [hs, ws]
      nll = _logsumexp(logits.ravel()) - logits
      values.append(_bilinear_ref(nll, float(coords[n, i, 0]), float(coords[n, i, 1])))
  return float(np.mean(values)) if values else 0.0


def scrl_loss_ref(pred1, pred2, target1, target2, valid):
  """SCRL Eqs. 2-3: sum over valid boxes of ||q_bar - z'_bar||^2 in both directions,
  divided by the number of valid boxes of the batch."""
  p1, p2, t1, t2 = (_normalize(x) for x in (pred1, pred2, target1, target2))
  total, count = 0.0, 0
  b, k = np.asarray(valid).shape
  for n in range(b):
    for s in range(k):
      if valid[n, s]:
        total += np.sum((p1[n, s] - t2[n, s]) ** 2) + np.sum((p2[n, s] - t1[n, s]) ** 2)
        count += 1
  return total / max(count, 1)


def infonce_ref(query, key, queue, temperature):
  """MoCo's InfoNCE (ReSim Eq. 4): mean over queries of
  -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_queue exp(q.k-/tau))."""
  q, k = _normalize(query), _normalize(key)
  queue = np.asarray(queue, np.float64)
  losses = []
  for i in range(q.shape[0]):
    logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / temperature
    losses.append(_logsumexp(logits) - logits[0])
  return float(np.mean(losses))


def neighbour_pairs_ref(box_a, flip_a, box_b, flip_b, grid_a, grid_b, t_pos=0.7):
  """CLoVE Eq. 1 with PixPro's normalisation, cell by cell: [B, La, Lb] bool.

  Cell (i, j) of an h x w view has its centre at ((i + .5) / h, (j + .5) / w)
  in view coordinates; mirrored x when flipped; mapped into the original by
  the crop box. Pair when the distance over the larger cell diagonal (in
  original coordinates) is below t_pos.
  """
  def centres(box, flip, grid):
    h, w = grid
    y0, x0, y1, x1 = np.asarray(box, np.float64)
    out = []
    for i in range(h):
      for j in range(w):
        vy, vx = (i + 0.5) / h, (j + 0.5) / w
        if flip:
          vx = 1 - vx
        out.append((y0 + vy * (y1 - y0), x0 + vx * (x1 - x0)))
    return np.array(out)

  def diag(box, grid):
    y0, x0, y1, x1 = np.asarray(box, np.float64)
    return np.hypot((y1 - y0) / grid[0], (x1 - x0) / grid[1])

  out = []
  for b in range(len(box_a)):
    pa = centres(box_a[b], flip_a[b], grid_a)
    pb = centres(box_b[b], flip_b[b], grid_b)
    scale = max(diag(box_a[b], grid_a), diag(box_b[b], grid_b))
    d = np.array([[np.linalg.norm(p - q) for q in pb] for p in pa])
    out.append(d / scale < t_pos)
  return np.array(out)


def clove_loss_ref(pred, target, positive, top_k=10, margin=100.0, lam=1.0):
  """CLoVE Eq. 2, one direction, averaged over the pairs (losses/clove.py).

  pred [B, La, D], target [B, Lb, D], positive [B, La, Lb]. F_neg of a cell:
  the mean of the normalised target cells ranked 2nd ... k-th by similarity
  among ALL cells with the positives ranked last (as a top-k of min(k, Lb)
  with positives at -inf), the hardest dropped, positives never used; the
  zero vector when none is left.
  """
  c, f = _normalize(pred), _normalize(target)
  k = min(top_k, f.shape[1])
  hinges = []
  for b in range(len(c)):
    for i in range(c.shape[1]):
      sims = f[b] @ c[b, i]
      negatives = [j for j in np.argsort(-sims, kind='stable')
                   if not positive[b, i, j]][:k]
      used = negatives[1:]
      f_neg = f[b, used].mean(0) if used else np.zeros(f.shape[-1])
      norm = np.linalg.norm(f_neg)
      neg_cos = c[b, i] @ (f_neg / norm) if norm > 0 else 0.0
      for j in range(f.shape[1]):
        if positive[b, i, j]:
          hinges.append(max(0.0, -lam * (c[b, i] @ f[b, j]) + neg_cos + margin))
  return float(np.mean(hinges)) if hinges else 0.0
