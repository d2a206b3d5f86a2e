"""The embedded demo dataset: synthetic multi-object scenes with instance masks.

Each scene is a textured background with 3-8 textured objects of five shape
kinds (ellipse, rectangle, triangle, polygon, star), each object cut from a
different image shipped inside scikit-image and tinted with its own colour,
at 10%-50% of the image side, partly occluding one another. The ground-truth
map numbers the visible objects 1..N in paint order (0 = background): these
are DetCon's "oracle" masks, so objects are painted as coherent, distinct
regions and every one keeps at least MIN_VISIBLE_PIXELS visible pixels.

Pure and deterministic: scene `index` of `seed` depends only on
np.random.default_rng([seed, index]), so it is the same bytes whatever the
process, call order or machine (numpy's PCG64 and scikit-image's drawing
are platform independent).

  image, gt = generate_scene(7)            # uint8 [128, 128, 3], int32 [128, 128]
  for image_id, image, gt in iterate_scenes(2000): ...
"""

import functools

import numpy as np
from skimage import data as skdata
from skimage import draw
from skimage import transform

DEFAULT_NUM_EXAMPLES = 2000
DEFAULT_SIZE = 128
MIN_VISIBLE_PIXELS = 20
SHAPES = ('ellipse', 'rectangle', 'triangle', 'polygon', 'star')

# Images inside the scikit-image wheel (no download): natural photos and
# textures. Grey ones are tinted; colour ones are colour-shifted.
_TEXTURES = ('brick', 'grass', 'gravel', 'camera', 'moon', 'coins', 'cell',
             'clock', 'page', 'text', 'astronaut', 'coffee', 'chelsea', 'rocket',
             'hubble_deep_field', 'immunohistochemistry', 'retina', 'colorwheel')
_TEXTURE_SIDE = 192


@functools.lru_cache(maxsize=None)
def textures():
  """The texture images as float32 [192, 192, 3] in [0, 1] (cached per process)."""
  out = []
  for name in _TEXTURES:
    im = np.asarray(getattr(skdata, name)(), np.float32)
    if im.max() > 1:
      im = im / 255.0
    if im.ndim == 2:
      im = np.repeat(im[..., None], 3, -1)
    im = im[..., :3]
    # A centred square, resized once: crops of it are the textures.
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    im = transform.resize(im, (_TEXTURE_SIDE, _TEXTURE_SIDE), order=1,
                          anti_aliasing=True, preserve_range=True)
    out.append(im.astype(np.float32))
  return tuple(out)


def _hsv_to_rgb(h, s, v):
  """One colour: h, s, v in [0, 1] -> float [3]."""
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                   (v, p, q)][i], np.float32)


def _texture_patch(rng, index, size, hue):
  """A [size, size, 3] crop of texture `index`, rotated/flipped and tinted."""
  tex = textures()[index]
  y, x = rng.integers(0, _TEXTURE_SIDE - size + 1, size=2)
  patch = tex[y:y + size, x:x + size]
  patch = np.rot90(patch, int(rng.integers(4)))
  if rng.random() < 0.5:
    patch = patch[:, ::-1]
  tint = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
  lum = patch.mean(-1, keepdims=True)
  # Mostly the tint modulated by the texture's luminance: colour tells the
  # objects apart, the texture makes them look like surfaces, not flat fills.
  contrast = rng.uniform(0.5, 1.0)
  out = tint * (1 - contrast + contrast * 1.6 * lum) * 0.8 + 0.2 * patch
  return np.clip(out, 0, 1)


def _shape_mask(rng, kind, size):
  """A boolean [size, size] mask of one object of `kind` at a random place."""
  r = rng.uniform(0.05, 0.25) * size           # Half-extent: 10%-50% of the side.
  cy, cx = rng.uniform(0.1 * size, 0.9 * size, size=2)
  angle = rng.uniform(0, np.pi)
  mask = np.zeros((size, size), bool)
  if kind == 'ellipse':
    ry, rx = r, r * rng.uniform(0.45, 1.0)
    rr, cc = draw.ellipse(cy, cx, ry, rx, shape=mask.shape, rotation=angle)
  else:
    if kind == 'rectangle':
      a = rng.uniform(0.4, 1.0)
      pts = np.array([[-1, -a], [-1, a], [1, a], [1, -a]], np.float64) * r
    elif kind == 'triangle':
      t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * 1.2
    elif kind == 'polygon':
      n = int(rng.integers(5, 9))
      t = np.sort(rng.uniform(0, 2 * np.pi, n))
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * rng.uniform(0.75, 1.0, (n, 1))
    else:  # star
      n = int(rng.integers(4, 7))
      t = np.arange(2 * n) * np.pi / n
      rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * 1.2 * rad[:, None]
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cy, cx]
    rr, cc = draw.polygon(pts[:, 0], pts[:, 1], shape=mask.shape)
  mask[rr, cc] = True
  return mask


def _owners(masks):
  """Paint order -> [H, W] index of the top object (-1 = background)."""
  owner = np.full(masks[0].shape, -1, np.int32)
  for i, m in enumerate(masks):
    owner[m] = i
  return owner


def generate_scene_with_classes(index, seed=0, size=DEFAULT_SIZE):
  """Scene `index` of `seed`: (image uint8 [S, S, 3], gt int32 [S, S], classes).

  gt: 0 background, 1..N the visible objects in paint order (3 <= N <= 8).
  classes: int32 [N], the shape kind of each object (an index into SHAPES).
  """
  rng = np.random.default_rng([seed, index])
  num_tex = len(textures())
  target = int(rng.integers(3, 9))
  bg_tex = int(rng.integers(num_tex))
  bg_hue = rng.random()
  masks, kinds = [], []
  for _ in range(60):                          # Attempts; ~target are enough.
    if len(masks) == target:
      break
    kind = int(rng.integers(len(SHAPES)))
    m = _shape_mask(rng, SHAPES[kind], size)
    owner = _owners(masks + [m])
    counts = np.bincount(owner.ravel() + 1, minlength=len(masks) + 2)[1:]
    # Keep it only if every object (old and new) stays clearly visible.
    if counts.min() >= MIN_VISIBLE_PIXELS:
      masks.append(m)
      kinds.append(kind)
  owner = _owners(masks) if masks else np.full((size, size), -1, np.int32)
  image = _texture_patch(rng, bg_tex, size, bg_hue)
  image *= rng.uniform(0.55, 0.8)              # Backgrounds a little darker.
  for i in range(len(masks)):
    tex = int((bg_tex + 1 + rng.integers(num_tex - 1)) % num_tex)  # Not the bg's.
    # Hues kept away from the background's so objects stand out from it.
    hue = (bg_hue + rng.uniform(0.2, 0.8)) % 1.0
    patch = _texture_patch(rng, tex, size, hue)
    sel = owner == i
    image[sel] = patch[sel]
  noise = rng.normal(0, 0.02, image.shape).astype(np.float32)
  image = np.clip(image + noise, 0, 1)
  image = (image * 255 + 0.5).astype(np.uint8)
  gt = (owner + 1).astype(np.int32)
  return image, gt, np.asarray(kinds, np.int32)


def generate_scene(index, seed=0, size=DEFAULT_SIZE):
  """Scene `index` of `seed`: (image uint8 [S, S, 3], gt int32 [S, S])."""
  image, gt, _ = generate_scene_with_classes(index, seed, size)
  return image, gt


def scene_id(index):
  return f'demo/{index:06d}'


def iterate_scenes(num_examples, seed=0, size=DEFAULT_SIZE, start=0):
  """Yields (image_id, image, gt) for scenes start .. start + num_examples - 1."""
  for i in range(start, start + num_examples):
    image, gt = generate_scene(i, seed, size)
    yield scene_id(i), image, gt
