"""The inputs (--source): folder, tfds and demo sources, their items and shards.

`open_source` runs in the main process and learns what a source holds (a
picklable Source); `shard_positions` says which items a shard holds and
`iterate_items` yields them in the worker. The rules (ids, which items go to
which shard) are in data_pipeline/precompute_masks.py's docstring ("Sources"),
as is how a folder's class-subfolder layout gives image labels (folder_labels).
"""

import dataclasses
import hashlib
import os

import numpy as np

from data_pipeline.masks import label_maps
from data_pipeline.masks.errors import ImageFailure
from data_pipeline.masks.errors import PrecomputeError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


@dataclasses.dataclass
class Item:
  """One input as a worker sees it: `load()` returns bytes or an RGB array."""
  id: str
  path: str
  load: object
  gt: object = None  # None, or a callable returning int [H, W].
  classes: object = None  # None, or a callable returning the class map int [H, W].
  label: int = None       # The image-level class label (records.IMAGE_LABEL), or None.


@dataclasses.dataclass(frozen=True)
class Source:
  """What the main process learned about --source (picklable; sent to workers)."""
  kind: str                    # folder | tfds | demo
  description: str
  num_items: int
  has_gt: bool
  has_classes: bool = False    # a semantic class map next to GT (records.CLASS_MASK)
  class_names: tuple = ()      # the class map's names, index = id (manifest 'class_names')
  label_names: tuple = ()      # image labels' names, index = label; () = none stored
  root: str = ''               # folder
  builder_dir: str = ''        # tfds: the prepared, versioned dataset folder
  tfds_name: str = ''
  tfds_split: str = ''
  gt_kind: str = ''            # tfds: '' | panoptic | objects/<key>
  demo_seed: int = 0
  image_size: int = 0
  demo_first_index: int = 0    # demo: scene index of item 0 (the split's range)
  demo_appearance: str = 'random'   # demo: demo_dataset.APPEARANCES
  fingerprint: str = ''


@dataclasses.dataclass
class Skipped:
  """What a folder listing left out: files by extension, folders with a reason."""
  by_extension: dict = dataclasses.field(default_factory=dict)   # '.tif' -> count
  folders: list = dataclasses.field(default_factory=list)        # {'path', 'reason'}

  def as_json(self):
    return {'count': sum(self.by_extension.values()),
            'by_extension': dict(sorted(self.by_extension.items())),
            'folders': list(self.folders)}


def printable(name):
  """A path as text that any JSON / terminal takes (undecodable bytes as \\xNN)."""
  return os.fsencode(name).decode('utf-8', 'backslashreplace')


def list_folder(root):
  """(sorted relative paths with '/' of the images under `root`, Skipped).

  Symlinked folders are followed; a folder reached twice (a symlink loop, or
  two links to one folder) is listed once, the other paths are in
  Skipped.folders. Files whose extension is not an image extension are
  counted in Skipped.by_extension ('' for none).
  """
  out, skipped, seen = [], Skipped(), {}

  def key(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino

  def rel(path):
    return os.path.relpath(path, root).replace(os.sep, '/')

  seen[key(root)] = '.'
  for d, dirs, files in os.walk(root, followlinks=True):
    keep = []
    for name in sorted(dirs):
      path = os.path.join(d, name)
      try:
        k = key(path)
      except OSError as e:  # A broken link, or no permission.
        skipped.folders.append({'path': printable(rel(path)),
                                'reason': f'cannot be listed: {e.strerror}'})
        continue
      if k in seen:
        first, here = seen[k], rel(path)
        loop = first == '.' or here.startswith(first + '/')
        what = ('a symlink loop back to' if loop
                else 'another path to the folder listed as')
        skipped.folders.append({'path': printable(here),
                                'reason': f'{what} {printable(first)} (not followed)'})
        continue
      seen[k] = rel(path)
      keep.append(name)
    dirs[:] = keep
    for f in files:
      ext = os.path.splitext(f)[1].lower()
      if ext in IMAGE_EXTENSIONS:
        out.append(rel(os.path.join(d, f)))
      else:
        ext = printable(ext)
        skipped.by_extension[ext] = skipped.by_extension.get(ext, 0) + 1
  return sorted(out), skipped


def folder_labels(spec, ids):
  """The class names of a folder in class-subfolder layout, else ().

  `ids`: every image path under the folder, relative, with '/'. The layout of
  torchvision's ImageFolder: root/<class>/.../<image>, the class is the
  first-level subfolder (images may sit deeper below it), ids = the sorted
  names of the subfolders that hold images. Labelled when no image lies
  directly in the folder and at least two class folders hold images; a flat
  folder (every image directly in it) or a single subfolder has none. Images
  both directly in the folder and in subfolders are refused (PrecomputeError
  naming the folder): --nolabels stores no labels and takes any layout.
  """
  top = [i for i in ids if '/' not in i]
  if len(top) == len(ids):
    return ()
  if top:
    nested = next(i for i in ids if '/' in i)
    raise PrecomputeError(
        f'--source={spec}: mixed layout: {len(top)} images lie directly in the folder'
        f' (e.g. {printable(top[0])}) and {len(ids) - len(top)} in subfolders (e.g.'
        f' {printable(nested)}). Image labels need one subfolder per class'
        ' (root/<class>/<image>) and a flat folder has none: move the images into'
        ' one layout, or pass --nolabels to store no image labels')
  names = tuple(sorted({i.split('/', 1)[0] for i in ids}))
  return names if len(names) >= 2 else ()


def demo_first_index(split_name, first_index=None):
  """The demo scene index where split `split_name` starts.

  --demo_first_index when given, else demo_dataset.SPLIT_FIRST_INDEX[split]
  (train 0, val 1,000,000, test 2,000,000); other split names need the flag.
  """
  from data_pipeline import demo_dataset
  if first_index is not None:
    if first_index < 0:
      raise PrecomputeError(f'--demo_first_index={first_index}: must be >= 0')
    return int(first_index)
  if split_name not in demo_dataset.SPLIT_FIRST_INDEX:
    raise PrecomputeError(
        f'--source=demo --split_name={split_name}: the demo knows the splits'
        f' {", ".join(demo_dataset.SPLIT_FIRST_INDEX)} (scene ranges from'
        f' {demo_dataset.SPLIT_FIRST_INDEX}); for another split name give'
        ' --demo_first_index=N, the scene index where it starts')
  return demo_dataset.SPLIT_FIRST_INDEX[split_name]


def open_source(spec, *, data_dir=None, num_examples=None, demo_seed=0,
                image_size=128, limit=None, split_name='train', first_index=None,
                demo_appearance='random', labels=True):
  """Parses --source and enumerates it. Returns (Source, folder ids or None, Skipped).

  With `labels` (--labels) the Source's label_names are the image labels'
  names where the source has them (folder_labels; a TFDS `label` ClassLabel's
  names), else ().

  Demo: the scenes first .. first + n - 1, first = demo_first_index(split_name,
  first_index); a default range that would run into the next split's is refused.
  """
  kind, _, rest = (spec or '').partition(':')
  ids, skipped = None, Skipped()
  if kind == 'folder':
    root = os.path.abspath(rest)
    if not rest or not os.path.isdir(root):
      raise PrecomputeError(f'--source=folder:{rest}: {root!r} is not a directory')
    ids, skipped = list_folder(root)
    # From the whole listing: --limit must not renumber the classes.
    label_names = folder_labels(spec, ids) if labels else ()
    if limit:
      ids = ids[:limit]
    if not ids:
      other = skipped.as_json()
      raise PrecomputeError(
          f'--source=folder:{rest}: no images found (extensions'
          f' {", ".join(IMAGE_EXTENSIONS)}, any case, recursive)'
          + (f'; skipped {other["count"]} other files by extension:'
             f' {other["by_extension"]}' if other['count'] else ''))
    digest = hashlib.sha256('\n'.join(ids).encode('utf-8', 'surrogateescape'))
    src = Source('folder', f'folder:{root}', len(ids), False, root=root,
                 label_names=label_names, fingerprint=digest.hexdigest())
  elif kind == 'tfds':
    src = _open_tfds(rest, data_dir, limit, labels)
  elif kind == 'demo' and not rest:
    from data_pipeline import demo_dataset  # Lazy: only the demo needs it.
    n = demo_dataset.DEFAULT_NUM_EXAMPLES if num_examples is None else num_examples
    n = min(n, limit) if limit else n
    if n <= 0:
      raise PrecomputeError(f'--num_examples={n}: the demo needs at least one scene')
    first = demo_first_index(split_name, first_index)
    if first_index is None and n > demo_dataset.SPLIT_STRIDE:
      raise PrecomputeError(
          f'--num_examples={n}: split {split_name!r} starts at scene {first} and the'
          f' next split {demo_dataset.SPLIT_STRIDE} scenes later; use at most'
          f' {demo_dataset.SPLIT_STRIDE} scenes, or --demo_first_index')
    if demo_appearance not in demo_dataset.APPEARANCES:
      raise PrecomputeError(f'--demo_appearance={demo_appearance!r}: choose one of'
                            f' {", ".join(demo_dataset.APPEARANCES)}')
    # Train's description (first index 0) is the one runs had before splits;
    # the default appearance is the one they had before appearances.
    where = f', first={first}' if first else ''
    if demo_appearance != 'random':
      where += f', appearance={demo_appearance}'
    src = Source('demo', f'demo(seed={demo_seed}, size={image_size}{where})', n, True,
                 has_classes=True, class_names=tuple(demo_dataset.CLASS_NAMES),
                 demo_seed=demo_seed, image_size=image_size,
                 demo_first_index=first, demo_appearance=demo_appearance)
  else:
    raise PrecomputeError(f'--source={spec!r}: use folder:DIR, tfds:NAME:SPLIT'
                          ' (e.g. tfds:imagenet2012:train, tfds:coco/2017_panoptic:train)'
                          ' or demo')
  return src, ids, skipped


def _tfds_gt_kind(features):
  if 'panoptic_image' in features.keys():
    return 'panoptic'
  if 'objects' in features.keys():
    inner = getattr(features['objects'], 'feature', None)
    for key in ('segmentation', 'mask'):
      try:
        if type(inner[key]).__name__ == 'Image':
          return f'objects/{key}'
      except (KeyError, TypeError):
        pass
  return ''


def _has_panoptic_labels(features):
  """True when a panoptic dataset lists each segment's id and category label.

  TFDS's coco/2017_panoptic: panoptic_objects = Sequence({id: int64 (the
  segment's panoptic id R + 256 G + 65536 B), label: ClassLabel(133), ...}).
  """
  if 'panoptic_objects' not in features.keys():
    return False
  inner = getattr(features['panoptic_objects'], 'feature', None)
  try:
    keys = inner.keys()
  except AttributeError:
    return False
  return 'id' in keys and 'label' in keys


def _tfds_label_names(features):
  """The names of a TFDS `label` ClassLabel feature (imagenet2012's), else ()."""
  if 'label' not in features.keys():
    return ()
  names = getattr(features['label'], 'names', None)
  return tuple(names) if type(features['label']).__name__ == 'ClassLabel' and names else ()


def _tfds_class_names(features):
  """The `class` map's names for coco/2017_panoptic: 'VOID', then the panoptic categories."""
  names = getattr(features['panoptic_objects'].feature['label'], 'names', None)
  return ('VOID', *names) if names else ()


def _open_tfds(rest, data_dir, limit, labels=True):
  name, _, split = rest.rpartition(':')
  if not name or not split:
    raise PrecomputeError(f'--source=tfds:{rest}: use tfds:NAME:SPLIT, e.g.'
                          ' tfds:imagenet2012:train or tfds:coco/2017_panoptic:train')
  if not data_dir:
    raise PrecomputeError(f'--source=tfds:{rest} needs --data_dir: the folder holding'
                          ' the prepared TFDS dataset (this tool never downloads)')
  from data_pipeline import tf_setup
  tf_setup.hide_accelerators()
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PrecomputeError(f'--source=tfds:{rest}: TFDS has no dataset {name!r}'
                          f' ({first})') from None
  if not builder.is_prepared():
    raise PrecomputeError(
        f'TFDS dataset {name!r} is not prepared under --data_dir={data_dir} (looked for'
        f' {builder.data_dir}). This tool never downloads: prepare it first, e.g.'
        f' `tfds build {name} --data_dir={data_dir}` (ImageNet: put the archives in'
        f' {os.path.join(data_dir, "downloads", "manual")} first).')
  splits = builder.info.splits
  if split not in splits:
    raise PrecomputeError(f'--source=tfds:{rest}: split {split!r} not in {name}; it'
                          f' has {sorted(splits.keys())}')
  features = builder.info.features
  if 'image' not in features.keys():
    raise PrecomputeError(f'TFDS dataset {name} has no "image" feature (it has'
                          f' {sorted(features.keys())})')
  n = splits[split].num_examples
  n = min(n, limit) if limit else n
  if n <= 0:
    raise PrecomputeError(f'--source=tfds:{rest}: split {split!r} is empty')
  gt_kind = _tfds_gt_kind(features)
  builder_dir = os.fspath(builder.data_dir)
  has_classes = gt_kind == 'panoptic' and _has_panoptic_labels(features)
  return Source('tfds', f'tfds:{name}:{split} ({builder_dir})', n, bool(gt_kind),
                has_classes=has_classes,
                class_names=_tfds_class_names(features) if has_classes else (),
                label_names=_tfds_label_names(features) if labels else (),
                builder_dir=builder_dir, tfds_name=name, tfds_split=split,
                gt_kind=gt_kind,
                fingerprint=f'{name}:{builder.info.version}:{split}:{n}')


def shard_positions(source, num_shards, index):
  """The item positions of shard `index`: folder sources interleave, others are ranges."""
  n = source.num_items
  if source.kind == 'folder':
    return range(index, n, num_shards)
  return range(index * n // num_shards, (index + 1) * n // num_shards)


def iterate_items(source, positions, folder_ids=None):
  """Yields the Items of one shard (runs in the worker)."""
  if source.kind == 'folder':
    label_ids = {name: i for i, name in enumerate(source.label_names)}
    for rel in folder_ids:
      path = os.path.join(source.root, rel)
      label = label_ids[rel.split('/', 1)[0]] if label_ids else None
      yield Item(rel, path, lambda path=path: _read_file(path), label=label)
  elif source.kind == 'demo':
    if not positions:
      return
    from data_pipeline import demo_dataset
    first = source.demo_first_index
    scenes = demo_dataset.iterate_scenes(len(positions), seed=source.demo_seed,
                                         size=source.image_size,
                                         start=first + positions.start, classes=True,
                                         appearance=source.demo_appearance)
    for pos, (image_id, image, gt, cls) in zip(positions, scenes):
      yield Item(str(image_id), f'demo[{first + pos}]', lambda image=image: image,
                 gt=lambda gt=gt: np.asarray(gt), classes=lambda cls=cls: cls)
  else:
    yield from _iterate_tfds(source, positions)


def _read_file(path):
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise ImageFailure(f'cannot read file: {e}') from None


def _text(v):
  return v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)


def _iterate_tfds(source, positions):
  if not positions:
    return
  from data_pipeline import tf_setup
  tf_setup.hide_accelerators()
  import tensorflow_datasets as tfds
  # Read-only from the prepared files: workers need no dataset code.
  builder = tfds.builder_from_directory(source.builder_dir)
  skip = tfds.decode.SkipDecoding()
  decoders = {'image': skip}
  if source.gt_kind == 'panoptic':
    decoders['panoptic_image'] = skip
  elif source.gt_kind.startswith('objects/'):
    decoders['objects'] = {source.gt_kind.split('/', 1)[1]: skip}
  ds = builder.as_dataset(
      split=f'{source.tfds_split}[{positions.start}:{positions.stop}]',
      decoders=decoders, shuffle_files=False,
      read_config=tfds.ReadConfig(add_tfds_id=True))
  for pos, ex in zip(positions, tfds.as_numpy(ds)):
    image_id = next((_text(ex[k]) for k in ('image/filename', 'file_name', 'filename')
                     if k in ex), _text(ex['tfds_id']))
    gt = classes = None
    if source.gt_kind == 'panoptic':
      gt = lambda png=ex['panoptic_image']: label_maps.panoptic_to_instances(png)
      if source.has_classes:
        objs = ex['panoptic_objects']
        classes = (lambda png=ex['panoptic_image'], ids=objs['id'], labels=objs['label']:
                   label_maps.panoptic_to_classes(png, ids, labels))
    elif source.gt_kind.startswith('objects/'):
      pngs = list(ex['objects'][source.gt_kind.split('/', 1)[1]])
      gt = lambda pngs=pngs: label_maps.png_masks_to_instances(pngs)
    label = int(ex['label']) if source.label_names else None
    yield Item(image_id, f'tfds:{source.tfds_name}:{source.tfds_split}[{pos}]',
               lambda data=ex['image']: data, gt=gt, classes=classes, label=label)
