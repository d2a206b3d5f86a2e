"""torch-side checks of a conversion: strict load and equal C2..C5 outputs.

torch is imported lazily: it lives in requirements-torch.txt, not in the core
requirements.
"""

import dataclasses
import sys
from typing import Dict, Mapping, Optional

import numpy as np

from dense_ssl.export.torchvision_names import ResNetArchitecture

TORCH_MISSING = ('dense_ssl.convert needs torch and torchvision for this; '
                 'install them with `pip install -r requirements-torch.txt` '
                 '(or pass --noverify to skip the numerical check).')

# Default of --verify_rtol (max|diff| / max|ref| per stage): float32 through
# ~50 layers with different convolution algorithms differs by ~1e-6 relative;
# a wrong layout, padding or BN mapping gives O(1).
DEFAULT_RTOL = 1e-4


def import_torch():
  """Returns (torch, torchvision) or raises ImportError with the fix."""
  # The PyPI torch wheel's triton segfaults when loaded after TensorFlow
  # (TF may be imported later, too); the CPU checks here need no triton, so
  # torch must treat it as absent.
  sys.modules.setdefault('triton', None)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{TORCH_MISSING} ({e})') from e
  return torch, torchvision


def torch_available() -> bool:
  try:
    import_torch()
    return True
  except ImportError:
    return False


def build_torch_resnet(arch: ResNetArchitecture):
  """torchvision's ResNet for `arch`, built from torchvision's own classes.

  Depths 18..152 at width 1 are exactly `torchvision.models.resnet{depth}()`.
  For depth 200 (blocks [3, 24, 36, 3]) and width multipliers, which
  torchvision ships no builder for, the same ResNet/BasicBlock/Bottleneck
  classes are assembled with the wider stem and stages (used only by
  --verify of Detectron2 exports).
  """
  torch, torchvision = import_torch()
  from torchvision.models import resnet as tv  # pylint: disable=g-import-not-at-top
  block = tv.BasicBlock if arch.block == 'basic' else tv.Bottleneck
  layers = list(arch.stages)
  if arch.width_multiplier == 1 and arch.depth in (18, 34, 50, 101, 152):
    model = getattr(torchvision.models, f'resnet{arch.depth}')(weights=None)
  else:
    model = tv.ResNet(block, layers)
  w = arch.width_multiplier
  if w != 1:
    nn = torch.nn
    model.inplanes = 64 * w
    model.conv1 = nn.Conv2d(3, 64 * w, kernel_size=7, stride=2, padding=3,
                            bias=False)
    model.bn1 = nn.BatchNorm2d(64 * w)
    for s, n in enumerate(layers):
      setattr(model, f'layer{s + 1}',
              model._make_layer(block, 64 * w * 2**s, n,  # pylint: disable=protected-access
                                stride=1 if s == 0 else 2))
    model.fc = nn.Linear(arch.c5_channels, 1000)
  return model


def load_strict(model, state: Mapping[str, np.ndarray]):
  """load_state_dict(strict=True) from numpy arrays."""
  torch, _ = import_torch()
  model.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
      strict=True)
  return model


def torch_features(model, images_nhwc: np.ndarray) -> Dict[str, np.ndarray]:
  """torchvision eval-mode layer1..layer4 outputs as NHWC {'c2'..'c5'}."""
  torch, _ = import_torch()
  model.eval()
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for s in range(1, 5):
      x = getattr(model, f'layer{s}')(x)
      out[f'c{s + 1}'] = x.numpy().transpose(0, 2, 3, 1)
  return out


def flax_features(arch: ResNetArchitecture, params, batch_stats,
                  images_nhwc: np.ndarray) -> Dict[str, np.ndarray]:
  """Our Flax ResNet in eval mode (running BN statistics), float32."""
  import jax  # pylint: disable=g-import-not-at-top
  from dense_ssl.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
  model = ResNet(depth=arch.depth, width_multiplier=arch.width_multiplier)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  # Full float32 convolutions: on GPUs XLA may otherwise use TF32 (~1e-3
  # relative error), which would fail the check on a correct conversion.
  with jax.default_matmul_precision('float32'):
    out = fn({'params': params, 'batch_stats': batch_stats}, images_nhwc)
  return {k: np.asarray(v) for k, v in out.items()}


@dataclasses.dataclass
class StageDiff:
  name: str            # c2..c5 (torchvision layer1..layer4)
  shape: tuple
  max_abs_diff: float
  max_abs_ref: float   # scale of the reference output

  @property
  def rel_diff(self) -> float:
    """max |flax - torch| / max |torch|: scale-free."""
    return self.max_abs_diff / max(self.max_abs_ref, 1e-12)


def compare_outputs(arch: ResNetArchitecture, params, batch_stats,
                    torch_state: Mapping[str, np.ndarray], *,
                    image_size: int = 64, batch_size: int = 2,
                    seed: int = 0) -> Dict[str, StageDiff]:
  """Runs Flax and the converted torchvision model on one random batch.

  Returns {c2..c5: StageDiff}. The batch is standard-normal, like
  ImageNet-normalised images.
  """
  images = np.random.default_rng(seed).standard_normal(
      (batch_size, image_size, image_size, 3)).astype(np.float32)
  model = load_strict(build_torch_resnet(arch), torch_state)
  ref = torch_features(model, images)
  ours = flax_features(arch, params, batch_stats, images)
  diffs = {}
  for k in ('c2', 'c3', 'c4', 'c5'):
    if ours[k].shape != ref[k].shape:
      raise AssertionError(
          f'{k}: Flax output {ours[k].shape} vs torchvision {ref[k].shape}.')
    diffs[k] = StageDiff(k, ref[k].shape,
                         float(np.max(np.abs(ours[k] - ref[k]))),
                         float(np.max(np.abs(ref[k]))))
  return diffs


def check_diffs(diffs: Mapping[str, StageDiff],
                rtol: float = DEFAULT_RTOL) -> Optional[str]:
  """None if every stage is within rtol, else a message naming the stages."""
  bad = [d for d in diffs.values() if not d.rel_diff <= rtol]
  if not bad:
    return None
  return ('Flax and torchvision outputs differ beyond float32 tolerance '
          f'(relative {rtol:g}): ' + ', '.join(
              f'{d.name} max|diff| {d.max_abs_diff:.3g} '
              f'(relative {d.rel_diff:.3g})' for d in bad))
