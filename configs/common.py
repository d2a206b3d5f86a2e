"""Every pretraining config is built here: the defaults, and one function per preset.

A config file names its objectives' weights and the method's paper setting
and calls `make(name, arg, weights=..., setting=...)`, the one path:

  1. base_config(name, **weights): EVERY key's default (the only place a
     default is stated; the readers in data_pipeline/ and dense_ssl/ take
     keys and name a missing one), and every registered objective's
     subtree in its paper setting (dense_ssl/objectives/, weight 0 = off);
  2. setting(c): the method's paper hyper-parameters (the config file's),
     then a named variant of them (`variants`, e.g. SCRL's paper200), which
     builds on the imagenet preset;
  3. apply_preset(c, preset): the preset, ONE function each (PRESETS), on
     the whole config, each objective's `presets` entry included:
       imagenet  the paper's setting on ImageNet (ResNet-50, 224 px), bfloat16
       coco      COCO pretraining: FH masks at scales {500, 1000, 1500}, one per example
       demo      the embedded demo dataset on a CPU: ResNet-18, 96 px, minutes
       test      seconds: for tests and smoke runs (ResNet-10, 64 px)
     A preset reads the setting (its optimiser, its mask kind) but never
     undoes it: nothing is fixed up after it.
The preset is the text after ':' in --config=configs/<name>.py:<preset>.
Since config.objectives holds every objective's subtree, any objective can
be switched on from the command line: --config.objectives.scrl.weight=0.5.
"""

import ml_collections

from dense_ssl import objectives

def make(name, arg, *, weights, setting=None, variants=None):
  """Config `name` for the preset or variant named by `arg` (see the module docstring).

  weights: objective name -> weight (the others 0); setting(c): the paper's
  hyper-parameters; variants: {name: fn(c)}, changes on top of the setting,
  built with the imagenet preset. 'paper' (or no argument) is 'imagenet'.
  """
  arg = (arg or 'imagenet').strip()
  arg = 'imagenet' if arg == 'paper' else arg
  variants = variants or {}
  if arg not in PRESETS and arg not in variants:
    raise ValueError(f'Unknown config preset {arg!r} for {name}: choose one of '
                     f'{", ".join(tuple(PRESETS) + tuple(variants))} '
                     f'(e.g. --config=configs/{name}.py:demo).')
  c = base_config(name, **weights)
  if setting is not None:
    setting(c)
  if arg in variants:
    variants[arg](c)
  return apply_preset(c, 'imagenet' if arg in variants else arg)


def base_config(name, **weights):
  """The shared defaults; `weights`: objective name -> weight (the others 0)."""
  c = ml_collections.ConfigDict()
  c.name = name                    # The run's name, for logs and checkpoints.
  c.seed = 0

  c.batch_size = 4096              # Global, over all devices of all hosts.
  c.total_epochs = 1000.0
  c.total_steps = 0                # > 0 overrides total_epochs (smoke runs, tests).
  c.warmup_epochs = 10.0

  c.optimizer = ml_collections.ConfigDict(dict(
      name='lars', base_lr=0.2, weight_decay=1.5e-6, momentum=0.9, eta=1e-3,
      nesterov=False, b1=0.9, b2=0.999))
  c.ema = ml_collections.ConfigDict(dict(base=0.996, schedule='cosine'))
  # The shared network: encoder, projector g and predictor q (DetCon Sec. 3.1).
  c.model = ml_collections.ConfigDict(dict(
      depth=50, width_multiplier=1, projector_hidden=4096, projector_dim=256,
      projector_bn=True, predictor_hidden=4096, dtype='float32'))
  c.objectives = objectives.default_configs()
  for objective, weight in weights.items():
    if objective not in c.objectives:
      raise ValueError(f'unknown objective {objective!r}; known: {sorted(c.objectives)}')
    c.objectives[objective].weight = float(weight)

  c.data = ml_collections.ConfigDict(dict(
      dir='',                     # Mask dataset (precompute_masks --out_dir); required.
      split='train',
      image_size=224,
      mask='fh',                  # fh | gt | user | grid | discovered
      fh_scale=1000,              # A stored FH scale, or -1: one stored scale per example.
      grid_size=4,
      crop_area=(0.08, 1.0),
      crop_aspect=(3 / 4, 4 / 3),
      view_modes=('crop', 'crop'),
      shared_flip=False,
      color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
      grayscale_prob=0.2,
      blur_prob=(1.0, 0.1),
      blur_sigma=(0.1, 2.0),
      solarize_prob=(0.0, 0.2),
      shuffle_buffer=10_000,
      file_parallel_reads=8,
      # Multi-crop (SwAV, Caron et al. 2020; DINO, Caron et al. 2021; the
      # views: data_pipeline/view_config.py): N local crops after the global
      # views, read only by objectives that use them (CLoVE: Sec. 5.1, Table
      # 8, "2 global 224 px + 6 local 96 px" in its public code). Their area
      # range is SwAV's (0.05, 0.14), their colour DINO's local-crop recipe
      # (blur p = 0.5, no solarisation): CLoVE's paper states neither, both
      # are assumptions.
      num_local_crops=0,
      local_crop_size=96,
      local_crop_area=(0.05, 0.14),
      local_blur_prob=0.5,
      local_solarize_prob=0.0,
      # The colour recipe runs in the training step (dense_ssl/ops/color.py):
      # the host ships uint8 views; 'host' applies it in tf.data instead.
      color_on='device',
      prefetch_to_device=2,       # Batches put on the devices ahead of the step.
      # mask='discovered' (Odin): the host also ships the whole image, resized
      # to this many pixels (0: image_size), uncropped, unflipped, no colour;
      # the step clusters its features into the views' masks (config.discovery).
      discovery_view_size=0,
  ))
  # Mask discovery (Odin, Hénaff et al. 2022; dense_ssl/discovery.py), used
  # when data.mask='discovered': the EMA target network (in inference mode)
  # embeds the whole-image view; its `feature` map is clustered per image by
  # spherical k-means (num_clusters, num_iterations); each view's mask is the
  # cluster map carried through the view's crop and flip. quality_every_steps
  # (0: never): the discovered masks' ABO against GT instances on the first
  # quality_images of data.dir, logged as discovery/abo (beside FH's).
  c.discovery = ml_collections.ConfigDict(dict(
      num_clusters=8, num_iterations=10, feature='c4', quality_every_steps=0,
      quality_images=64))

  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.keep_checkpoints = 3

  # Online evaluation (dense_ssl/online_eval.py): linear probes trained in
  # the step on the stop-gradient features, for what the data has (image
  # labels: a classifier on pooled C5; class maps: a per-pixel probe on C4
  # and C5). False: none, whatever the data has.
  c.online_eval = True
  c.probe_optimizer = ml_collections.ConfigDict(dict(name='adamw', lr=1e-3, weight_decay=0.0))
  # Held-out evaluation (dense_ssl/online_eval.py HeldOutEval), every
  # eval_every_steps (0: never) and at the last step, of the online encoder
  # on the mask dataset at eval_data_dir: the frozen-feature dense probe
  # (dense_ssl/evaluate.py; trained on the first probe_train_images of
  # data.dir) where it stores class maps, and kNN top-1 on pooled C5
  # (dense_ssl/knn.py: k = 20, T = 0.07, as DINO) where it stores image
  # labels. The random-init floor: the same at step 0.
  c.eval_every_steps = 0
  c.eval_data_dir = ''
  c.eval = ml_collections.ConfigDict(dict(
      feature='c4', probe_steps=500, probe_lr=0.01, batch_size=32,
      probe_train_images=1024, knn_k=20, knn_temperature=0.07))
  return c


def apply_preset(c, preset):
  """Applies preset PRESETS[preset] to the whole config; returns it."""
  if preset not in PRESETS:
    raise ValueError(f'Unknown config preset {preset!r} for {c.name}: choose one of '
                     f'{", ".join(PRESETS)} (e.g. --config=configs/{c.name}.py:demo).')
  PRESETS[preset](c)
  # Each objective's own overrides (smaller heads, a shorter queue).
  for name, cls in objectives.REGISTRY.items():
    c.objectives[name].update(cls.presets.get(preset, {}))
  return c


def imagenet(c):
  """The paper's setting, computed in bfloat16 on accelerators.

  bfloat16 is the MXU's native type (~0.7x the HBM of float32:
  dense_ssl.compile_check). Parameters, optimiser state, BN statistics, the
  EMA and every head output the losses read stay float32
  (models/network.py), so logits at temperature 0.1 are never bfloat16.
  The CPU presets (demo, test) keep float32.
  """
  c.model.dtype = 'bfloat16'


def coco(c):
  """COCO train2017 (118k images): FH maps at every stored scale, one per example.

  DetCon Sec. 3.2: FH with s in {500, 1000, 1500}, c = s, on COCO. Its
  appendix A.3 (COCO schedule) is not in our copy of the paper: we keep the
  method's optimiser and run 800 epochs at batch 1024 -- a documented
  choice, not the paper's.
  """
  imagenet(c)
  c.data.fh_scale = -1
  c.batch_size = 1024
  c.total_epochs = 800.0


def _cpu_network(c, *, depth, hidden, dim):
  c.model.update(depth=depth, projector_hidden=hidden, projector_dim=dim,
                 predictor_hidden=hidden)
  # Multi-crop off: local crops small enough for these views (32 px, a 1 x 1
  # C5 map) hit XLA:CPU's slow path for 3x3 convolutions on tiny maps
  # (WORKSPACE.md section 8): 4 such crops made the demo step 3.5x slower
  # (13-17 vs 3.7-5 s/step, measured). Multi-crop on CPU:
  # --config.data.num_local_crops=4 --config.data.local_crop_size=32.
  c.data.num_local_crops = 0


def demo(c):
  """The embedded demo dataset (launch/demo.sh) on a CPU: ResNet-18, 96 px, minutes."""
  _cpu_network(c, depth=18, hidden=512, dim=128)
  c.data.update(dir='out/demo/masks', image_size=96,   # C5 3 x 3; ~2 s/step at batch 32.
                fh_scale=500, shuffle_buffer=2000, crop_area=(0.2, 1.0))
  c.batch_size = 32
  # The paper's LARS 0.2 x 32/256 = 0.025 barely moves the weights in 125
  # steps (measured: loss 2.18 -> 1.99 at 60 steps vs 2.17 -> 1.86 with 8.0);
  # SGD (MoCo, ReSim) takes 8x its paper LR (not tuned). A short run also
  # wants a faster-moving target.
  if c.optimizer.name == 'lars':
    c.optimizer.base_lr = 8.0
  else:
    c.optimizer.base_lr *= 8
  c.ema.base = 0.99
  c.total_epochs = 2.0
  c.warmup_epochs = 0.2
  c.log_every_steps = 10
  c.ckpt_every_steps = 50
  # The held-out probe on CPU (launch/demo.sh turns it on with
  # --config.eval_every_steps and the held-out scenes in eval_data_dir).
  c.eval.update(probe_steps=300, probe_train_images=256, batch_size=32)
  # Odin (configs/odin.py): a cluster map of about ImageNet's resolution (C4 of
  # 224 px: 14 x 14) at the demo's size: C3 of a 128 px whole view, 16 x 16
  # (C4 of 96 px would be 6 x 6); +9% on the step (benchmarks/discovery_cost.py).
  # Its ABO on 64 demo scenes every 25 steps.
  c.data.discovery_view_size = 128
  c.discovery.update(feature='c3', quality_every_steps=25)


def test(c):
  """Seconds, for tests and smoke runs: ResNet-10 (one basic block per stage), 64 px."""
  _cpu_network(c, depth=10, hidden=64, dim=32)
  c.data.update(image_size=64, shuffle_buffer=16, file_parallel_reads=1)
  if c.data.mask == 'fh':
    c.data.mask = 'gt'     # The tests' datasets store GT maps (tests/mask_records.py).
  c.batch_size = 8
  c.total_steps = 2
  c.warmup_epochs = 0.0
  c.log_every_steps = 1
  c.ckpt_every_steps = 1
  c.keep_checkpoints = 2
  c.eval.update(probe_steps=20, probe_train_images=16, batch_size=8)
  c.discovery.update(num_clusters=4, num_iterations=3, quality_images=8)


PRESETS = dict(imagenet=imagenet, coco=coco, demo=demo, test=test)
