"""The embedded demo dataset: synthetic multi-object scenes with instance masks.

Each scene is a textured background with 3-8 textured objects of five shape
kinds (ellipse, rectangle, triangle, polygon, star), roughly 8%-45% of the
image side, each cut from a different image shipped inside scikit-image and
tinted with its own colour, partly occluding one another. The ground-truth
map numbers the visible objects 1..N in paint order (0 = background): these
are DetCon's "oracle" masks, so objects are painted as coherent regions that
stand out from the background, and every one keeps at least
MIN_VISIBLE_PIXELS visible pixels (a candidate that would leave any object
smaller is dropped before painting). GT is exactly the painted regions: no
antialiasing, no blur.

Semantic classes: every object has one class, its shape kind, whatever its
random tint, texture, size or rotation: CLASS_NAMES[c] for class id c, i.e.
0 background, 1 ellipse, 2 rectangle, 3 triangle, 4 polygon, 5 star. The
class map (`class_map`) gives every pixel its object's class: it is the GT
instance map with each instance id replaced by that object's class, so
occlusion is the instance map's (a pixel belongs to the top object) and
background pixels are 0.

Appearance (`appearance`): 'random' (the default, and the demo's) draws every
object's texture from all textures but the background's, so nothing but
the outline tells a class; 'class_texture' draws an object's texture from
its shape kind's own pool (CLASS_TEXTURES: textures k, k + 5, ... for
SHAPES[k]), so a class also has a characteristic surface, as natural
categories do (tint, size and rotation stay random). The shapes, the GT and
the class map are the same in both; only the object pixels differ. The mask
study (benchmarks/mask_ablation.py --scenes=class_texture) uses it because
on 'random' scenes the SSL objectives learn little about the class within
CPU budgets (WORKSPACE.md section 5).

Splits: scene indices are the split. The mask precompute takes train scenes
from index 0 and held-out ones from SPLIT_FIRST_INDEX['val'] (1,000,000) or
['test'] (2,000,000) (precompute_masks --split_name=val), so a split never
shares a scene with another while it has at most 1,000,000 scenes.

Pure and deterministic: scene `index` of `seed` depends only on
np.random.default_rng([seed, index]), so it is the same bytes whatever the
process or call order (for given numpy and scikit-image versions).

  image, gt = generate_scene(7)            # uint8 [128, 128, 3], int32 [128, 128]
  image, gt, cls = generate_labelled_scene(7)   # + int32 [128, 128] class map
  image, gt, cls = generate_labelled_scene(7, appearance='class_texture')
  for image_id, image, gt in iterate_scenes(2000): ...
  for image_id, image, gt, cls in iterate_scenes(200, start=10**6, classes=True): ...
"""

import functools

import numpy as np
from skimage import data as skdata
from skimage import draw
from skimage import transform

DEFAULT_NUM_EXAMPLES = 2000
DEFAULT_SIZE = 128
MIN_SIZE = 32
MIN_VISIBLE_PIXELS = 20
MIN_OBJECTS, MAX_OBJECTS = 3, 8
SHAPES = ('ellipse', 'rectangle', 'triangle', 'polygon', 'star')
# Class ids of the class map: 0 background, then SHAPES[k] has class k + 1.
CLASS_NAMES = ('background',) + SHAPES
# First scene index of each split (precompute_masks --split_name); a split of
# n scenes is indices first .. first + n - 1.
SPLIT_FIRST_INDEX = {'train': 0, 'val': 1_000_000, 'test': 2_000_000}
SPLIT_STRIDE = 1_000_000

# Images inside the scikit-image wheel that load offline (no pooch download):
# natural photos and textures. Grey ones are tinted; colour ones keep a little
# of their own colour.
_TEXTURES = ('brick', 'grass', 'gravel', 'camera', 'moon', 'coins', 'cell',
             'clock', 'page', 'text', 'astronaut', 'coffee', 'chelsea', 'rocket',
             'hubble_deep_field', 'immunohistochemistry', 'retina', 'colorwheel')
_TEXTURE_SIDE = 192
APPEARANCES = ('random', 'class_texture')
# 'class_texture': SHAPES[k] draws its textures from CLASS_TEXTURES[k]
# (indices into _TEXTURES; disjoint, every texture in one pool).
CLASS_TEXTURES = tuple(tuple(range(k, len(_TEXTURES), len(SHAPES)))
                       for k in range(len(SHAPES)))
_MAX_ATTEMPTS = 100


@functools.lru_cache(maxsize=None)
def textures(side=_TEXTURE_SIDE):
  """The textures: a tuple of (rgb float32 [side, side, 3], luminance [side, side]).

  Loaded and resized once per process and side; values in [0, 1].
  """
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
    im = transform.resize(im, (side, side), order=1, anti_aliasing=True,
                          preserve_range=True).astype(np.float32)
    out.append((im, im.mean(-1)))
  return tuple(out)


def _hsv_to_rgb(h, s, v):
  """One colour: h, s, v in [0, 1] -> float32 [3]."""
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                   (v, p, q)][i], np.float32)


def _tinted_texture(rng, tex_index, size, hue, where):
  """Colours float32 [K, 3] of the K pixels `where` of a tinted texture crop.

  The crop is [size, size] from texture `tex_index`, rotated by a multiple of
  90 degrees and maybe flipped. The same random draws are made whatever
  `where` is, so the scene does not depend on how much of it is visible.
  """
  side = max(_TEXTURE_SIDE, size)
  rgb, lum = textures(side)[tex_index]
  y, x = rng.integers(0, side - size + 1, size=2)
  turns = int(rng.integers(4))
  flip = rng.random() < 0.5
  tint = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
  contrast = rng.uniform(0.5, 1.0)

  def view(a):
    a = np.rot90(a[y:y + size, x:x + size], turns)
    return a[:, ::-1] if flip else a

  # Only the visible pixels are gathered and tinted: most of a crop is hidden.
  pixels, lum = view(rgb)[where], view(lum)[where][:, None]
  # Mostly the tint modulated by the texture's luminance: colour tells the
  # objects apart, the texture makes them look like surfaces, not flat fills.
  out = tint * (1 - contrast + contrast * 1.6 * lum) * 0.8 + 0.2 * pixels
  return np.clip(out, 0, 1)


def _shape_mask(rng, kind, size, scale=1.0):
  """A boolean [size, size] mask of one object of `kind` at a random place."""
  r = rng.uniform(0.04, 0.225) * size * scale  # Half-extent: 8%-45% of the side.
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
      # Slightly larger: a triangle covers less of its circle than the others.
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * 1.15
    elif kind == 'polygon':
      n = int(rng.integers(5, 9))
      t = np.sort(rng.uniform(0, 2 * np.pi, n))
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * rng.uniform(0.75, 1.0, (n, 1))
    else:  # Star: alternating outer and inner vertices.
      n = int(rng.integers(4, 7))
      t = np.arange(2 * n) * np.pi / n
      rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
      pts = np.stack([np.sin(t), np.cos(t)], -1) * r * 1.15 * rad[:, None]
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cy, cx]
    rr, cc = draw.polygon(pts[:, 0], pts[:, 1], shape=mask.shape)
  mask[rr, cc] = True
  return mask


def _owners(masks, size):
  """Paint order -> int32 [size, size] index of the top object (-1 = background)."""
  owner = np.full((size, size), -1, np.int32)
  for i, m in enumerate(masks):
    owner[m] = i
  return owner


def check_appearance(appearance):
  if appearance not in APPEARANCES:
    raise ValueError(f'demo scene appearance {appearance!r}: choose one of {APPEARANCES}')


def object_texture(rng, kind, bg_tex, appearance='random'):
  """The texture index of an object of shape kind `kind` (one draw from `rng`).

  Never the background's texture `bg_tex`. 'random': any other texture;
  'class_texture': one of CLASS_TEXTURES[kind].
  """
  num_tex = len(_TEXTURES)
  if appearance == 'random':
    return int((bg_tex + 1 + rng.integers(num_tex - 1)) % num_tex)
  pool = [t for t in CLASS_TEXTURES[kind] if t != bg_tex]
  return int(pool[rng.integers(len(pool))])


def generate_scene_with_classes(index, seed=0, size=DEFAULT_SIZE, appearance='random'):
  """Scene `index` of `seed`, with the shape kind of each object.

  Args:
    index: scene number (any int >= 0).
    seed: dataset seed; scenes of different seeds are independent.
    size: image side in pixels (>= MIN_SIZE).
    appearance: 'random' or 'class_texture' (module docstring).

  Returns:
    image: uint8 [size, size, 3].
    gt: int32 [size, size]; 0 background, 1..N the visible objects in paint
      order (MIN_OBJECTS <= N <= MAX_OBJECTS), each >= MIN_VISIBLE_PIXELS.
    classes: int32 [N], object i + 1's shape kind (an index into SHAPES).
  """
  if size < MIN_SIZE:
    raise ValueError(f'demo scenes need size >= {MIN_SIZE} (objects of at least'
                     f' {MIN_VISIBLE_PIXELS} pixels), got {size}.')
  check_appearance(appearance)
  rng = np.random.default_rng([seed, index])
  num_tex = len(_TEXTURES)
  target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  bg_tex = int(rng.integers(num_tex))
  bg_hue = rng.random()
  masks, kinds = [], []
  for attempt in range(_MAX_ATTEMPTS):
    if len(masks) == target:
      break
    # Crowded scenes: later candidates are smaller, so the minimum is reached.
    scale = 1.0 if attempt < _MAX_ATTEMPTS // 2 else 0.5
    kind = int(rng.integers(len(SHAPES)))
    m = _shape_mask(rng, SHAPES[kind], size, scale)
    owner = _owners(masks + [m], size)
    counts = np.bincount(owner.ravel() + 1, minlength=len(masks) + 2)[1:]
    # Keep it only if every object (old and new) stays clearly visible.
    if counts.min() >= MIN_VISIBLE_PIXELS:
      masks.append(m)
      kinds.append(kind)
  if len(masks) < MIN_OBJECTS:  # Never seen for size >= MIN_SIZE; fail loudly.
    raise RuntimeError(f'demo scene {index} (seed {seed}, size {size}) placed only'
                       f' {len(masks)} objects.')
  owner = _owners(masks, size)
  image = np.empty((size, size, 3), np.float32)
  bg = owner < 0
  # Backgrounds a little darker, so the objects read as foreground.
  image[bg] = _tinted_texture(rng, bg_tex, size, bg_hue, bg) * rng.uniform(0.55, 0.8)
  for i in range(len(masks)):
    tex = object_texture(rng, kinds[i], bg_tex, appearance)
    # Hues kept away from the background's so objects stand out from it.
    hue = (bg_hue + rng.uniform(0.2, 0.8)) % 1.0
    sel = owner == i
    image[sel] = _tinted_texture(rng, tex, size, hue, sel)
  image += rng.normal(0, 0.02, image.shape).astype(np.float32)  # Sensor noise.
  image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
  return image, owner + 1, np.asarray(kinds, np.int32)


def generate_scene(index, seed=0, size=DEFAULT_SIZE, appearance='random'):
  """Scene `index` of `seed`: (image uint8 [size, size, 3], gt int32 [size, size]).

  See generate_scene_with_classes.
  """
  image, gt, _ = generate_scene_with_classes(index, seed, size, appearance)
  return image, gt


def class_map(gt, classes):
  """The per-pixel class map of a scene: int32 [H, W].

  Args:
    gt: int [H, W] instance map, 0 background, 1..N objects.
    classes: int [N], object i + 1's shape kind (an index into SHAPES).
  Returns:
    int32 [H, W]: 0 where gt is 0, classes[gt - 1] + 1 elsewhere (CLASS_NAMES).
  """
  lut = np.concatenate([[0], np.asarray(classes, np.int32) + 1]).astype(np.int32)
  return lut[np.asarray(gt)]


def generate_labelled_scene(index, seed=0, size=DEFAULT_SIZE, appearance='random'):
  """Scene `index` of `seed`: (image, gt, class map int32 [size, size]).

  The image and gt are generate_scene's; the class map is class_map's.
  """
  image, gt, classes = generate_scene_with_classes(index, seed, size, appearance)
  return image, gt, class_map(gt, classes)


def scene_id(index):
  """The image id of scene `index`, e.g. 'demo/000123'."""
  return f'demo/{index:06d}'


def iterate_scenes(num_examples, seed=0, size=DEFAULT_SIZE, start=0, classes=False,
                   appearance='random'):
  """Yields (image_id, image, gt) for scenes start .. start + num_examples - 1.

  With `classes`, (image_id, image, gt, class map) (generate_labelled_scene).
  """
  check_appearance(appearance)
  for i in range(start, start + num_examples):
    if classes:
      yield (scene_id(i),) + generate_labelled_scene(i, seed, size, appearance)
    else:
      image, gt = generate_scene(i, seed, size, appearance)
      yield scene_id(i), image, gt
