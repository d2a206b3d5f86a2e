"""Shared defaults and presets for every pretraining config.

A config file builds its method's paper settings on `base_config()` and
calls `apply_preset(config, arg)`; presets:
  imagenet  the paper's setting on ImageNet (ResNet-50, 224 px, batch 4096)
  coco      COCO pretraining: FH masks at scales {500, 1000, 1500}, one per example
  demo      the embedded demo dataset on a CPU: ResNet-18, 96 px, minutes
  test      seconds: for tests and smoke runs
The preset is the text after ':' in --config=configs/<method>.py:<preset>.
"""

import ml_collections

PRESETS = ('imagenet', 'coco', 'demo', 'test')


def base_config(method):
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0

  c.batch_size = 4096              # Global, over all devices of all hosts.
  c.total_epochs = 1000.0
  c.total_steps = 0                # > 0 overrides total_epochs (smoke runs, tests).
  c.warmup_epochs = 10.0

  c.optimizer = ml_collections.ConfigDict(dict(
      name='lars', base_lr=0.2, weight_decay=1.5e-6, momentum=0.9, eta=1e-3,
      nesterov=False, b1=0.9, b2=0.999))
  c.ema = ml_collections.ConfigDict(dict(base=0.996, schedule='cosine'))
  c.loss = ml_collections.ConfigDict(dict(
      temperature=0.1, num_samples=16, local_negatives=True, gather_negatives=True))
  c.model = ml_collections.ConfigDict(dict(
      depth=50, width_multiplier=1, projector_hidden=4096, projector_dim=256,
      predictor_hidden=4096, dtype='float32'))

  c.data = ml_collections.ConfigDict(dict(
      dir='',                     # Mask dataset (precompute_masks --out_dir); required.
      split='train',
      image_size=224,
      mask='fh',                  # fh | gt | user | grid
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
  ))

  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.keep_checkpoints = 3
  return c


def composed_config(method, **weights):
  """base_config + what methods/compose.py reads: every objective's weight and keys.

  All eight objectives are listed (0 = off) with their papers' defaults, so
  any of them can be switched on from the command line, e.g.
  --config.objectives.scrl=1.0 on top of configs/detcon_b_lc.py.
  """
  c = base_config(method)
  c.objectives = ml_collections.ConfigDict(
      {n: float(weights.pop(n, 0.0)) for n in (
          'byol', 'simclr', 'moco', 'detcon', 'lc', 'scrl', 'resim', 'clove')})
  if weights:
    raise ValueError(f'unknown objectives {sorted(weights)}')
  l, m = c.loss, c.model
  # MoCo-v2 (global; ReSim's Table 7).
  l.moco_queue_size = 65536
  l.moco_temperature = 0.2
  m.projector_bn = True            # MoCo-v2's head has no BN: configs/moco.py sets False.
  # LC-loss.
  l.lc_temperature = 0.1
  m.local_hidden = 0               # 0: 2048 x width.
  m.local_dim = 256
  # SCRL (sampling_ratio and min_box_size follow data.image_size: finish_composed).
  l.num_boxes = 10
  l.min_box_size = 32.0
  l.box_iou_threshold = 0.5
  l.sampling_ratio = 7
  l.roi_aligned = True
  # ReSim.
  l.resim_variant = 'c4'           # c4 | fpn
  l.resim_temperature = 0.2
  l.resim_negative_kernel = 3
  m.region_dim = 128               # Sec. 3.4's two 3x3 convs; 0: none (official FPN code).
  m.fpn_dim = 256
  # CLoVE.
  l.clove_t_pos = 0.7
  l.clove_top_k = 10
  l.clove_margin = 100.0           # The paper's mu (Sec. 6).
  l.clove_lambda = 1.0
  m.dense_hidden = 4096
  m.dense_dim = 256
  m.dense_attention_heads = 8
  m.dense_attention_temperature = 0.1   # Not stated in the paper: an assumption.
  return c


def finish_composed(c):
  """Keys that follow the preset's view size; call after apply_preset."""
  size = c.data.image_size
  c.loss.min_box_size = 32.0 * size / 224    # SCRL's 32 px at 224 px views.
  c.loss.sampling_ratio = max(1, size // 32)
  return c


def apply_preset(c, arg):
  """Applies the preset named by the config argument; returns the config."""
  preset = (arg or 'imagenet').strip()
  if preset == 'paper':
    preset = 'imagenet'
  if preset not in PRESETS:
    raise ValueError(f'Unknown config preset {preset!r} for {c.method}: choose one of '
                     f'{", ".join(PRESETS)} (e.g. --config=configs/{c.method}.py:demo).')
  if preset == 'coco':
    # DetCon Sec. 3.2: FH with s in {500, 1000, 1500}, c = s, on COCO. Its
    # appendix A.3 (COCO schedule) is not in our copy of the paper: we keep the
    # ImageNet optimiser and run 800 epochs of COCO train2017 (118k images) at
    # batch 1024 -- a documented choice, not the paper's.
    c.data.fh_scale = -1
    c.batch_size = 1024
    c.total_epochs = 800.0
  elif preset == 'demo':
    c.model.depth = 18
    c.model.projector_hidden = 512
    c.model.projector_dim = 128
    c.model.predictor_hidden = 512
    c.data.dir = 'out/demo/masks'
    c.data.image_size = 96       # C5 grid 3 x 3; ~2 s/step on 2 cores at batch 32.
    c.data.fh_scale = 500
    c.data.shuffle_buffer = 2000
    c.data.crop_area = (0.2, 1.0)
    c.batch_size = 32
    # The paper's 0.2 x 32/256 = 0.025 barely moves LARS weights in 125 steps
    # (measured: loss 2.18 -> 1.99 at 60 steps vs 2.17 -> 1.86 with these);
    # a short run also wants a faster-moving target.
    c.optimizer.base_lr = 8.0
    c.ema.base = 0.99
    c.total_epochs = 2.0
    c.warmup_epochs = 0.2
    c.log_every_steps = 10
    c.ckpt_every_steps = 50
  elif preset == 'test':
    c.model.depth = 18
    c.model.projector_hidden = 64
    c.model.projector_dim = 32
    c.model.predictor_hidden = 64
    c.loss.num_samples = 4
    c.data.image_size = 64
    c.data.mask = 'gt'
    c.data.shuffle_buffer = 16
    c.data.file_parallel_reads = 1
    c.batch_size = 8
    c.total_steps = 2
    c.warmup_epochs = 0.0
    c.log_every_steps = 1
    c.ckpt_every_steps = 1
    c.keep_checkpoints = 2
  return c
