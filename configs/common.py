"""Shared defaults and presets for every pretraining config.

A config is a set of objective weights plus overrides. A config file builds
its paper setting on `base_config(name, preset, **weights)` and calls
`apply_preset(config, preset)`; presets:
  imagenet  the paper's setting on ImageNet (ResNet-50, 224 px, batch 4096)
  coco      COCO pretraining: FH masks at scales {500, 1000, 1500}, one per example
  demo      the embedded demo dataset on a CPU: ResNet-18, 96 px, minutes
  test      seconds: for tests and smoke runs (ResNet-10, 64 px)
The preset is the text after ':' in --config=configs/<name>.py:<preset>.

config.objectives holds EVERY registered objective's subtree
(dense_ssl/objectives/, weight 0 = off), so any objective can be switched on
from the command line: --config.objectives.scrl.weight=0.5.
"""

import ml_collections

from dense_ssl import objectives

PRESETS = ('imagenet', 'coco', 'demo', 'test')


def preset_name(arg):
  """The preset named by the config argument ('paper' is 'imagenet'), validated."""
  preset = (arg or 'imagenet').strip()
  return 'imagenet' if preset == 'paper' else preset


def base_config(name, preset, **weights):
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
  c.objectives = objectives.default_configs(preset)
  for objective, weight in weights.items():
    if objective not in c.objectives:
      raise ValueError(f'unknown objective {objective!r}; known: {sorted(c.objectives)}')
    c.objectives[objective].weight = float(weight)

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
      # Multi-crop (data_pipeline/view_config.py): N local crops after the
      # global views; read only by objectives that use them (CLoVE).
      num_local_crops=0,
      local_crop_size=96,
      local_crop_area=(0.05, 0.14),
      local_blur_prob=0.5,
      local_solarize_prob=0.0,
      # The colour recipe runs in the training step (dense_ssl/ops/color.py):
      # the host ships uint8 views; 'host' applies it in tf.data instead.
      color_on='device',
      prefetch_to_device=2,       # Batches put on the devices ahead of the step.
  ))

  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.keep_checkpoints = 3
  return c


def apply_preset(c, preset):
  """Applies the preset's overrides of model, data and schedule; returns the config."""
  if preset not in PRESETS:
    raise ValueError(f'Unknown config preset {preset!r} for {c.name}: choose one of '
                     f'{", ".join(PRESETS)} (e.g. --config=configs/{c.name}.py:demo).')
  if preset in ('imagenet', 'coco'):
    # Accelerator presets compute in bfloat16 (the MXU's native type; ~0.7x
    # the HBM of float32: dense_ssl.compile_check). Parameters, optimiser
    # state, BN statistics, the EMA and every head output the losses read
    # stay float32 (models/network.py), so logits at temperature 0.1 are
    # never bfloat16. The CPU presets (demo, test) keep float32.
    c.model.dtype = 'bfloat16'
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
    c.model.depth = 10           # One basic block per stage: the trainer tests' tiny net.
    c.model.projector_hidden = 64
    c.model.projector_dim = 32
    c.model.predictor_hidden = 64
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
