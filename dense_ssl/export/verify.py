"""Numerical check of a conversion: Flax encoder vs the converted torch network.

Both run in eval mode (BN running statistics) on the same random batch; the
file written is read back (a Detectron2 pickle renamed back to torchvision
names), loaded into torchvision's ResNet with strict=True, and C2..C5
(torchvision layer1..layer4) must agree within float32 tolerance.
"""

import dataclasses
import os
from typing import Dict, Mapping, Optional

import numpy as np

from dense_ssl.export import detectron2_format
from dense_ssl.export import torchvision_format
from dense_ssl.export.conversion import ConversionError
from dense_ssl.export.conversion import Export
from dense_ssl.export.torchvision_format import ResNetArchitecture

# Default of --verify_rtol (max|diff| / max|ref| per stage): float32 through
# ~50 layers with different convolution algorithms differs by ~1e-6 relative;
# a wrong layout, padding or BN mapping gives O(1).
DEFAULT_RTOL = 1e-4


def load_strict(model, state: Mapping[str, np.ndarray]):
  """load_state_dict(strict=True) from numpy arrays."""
  torch, _ = torchvision_format.import_torch()
  model.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
      strict=True)
  return model


def torch_features(model, images_nhwc: np.ndarray) -> Dict[str, np.ndarray]:
  """torchvision eval-mode layer1..layer4 outputs as NHWC {'c2'..'c5'}."""
  torch, _ = torchvision_format.import_torch()
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
  model = load_strict(torchvision_format.build_torch_resnet(arch), torch_state)
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


def read_back_as_torchvision(export: Export, out: str) -> Dict[str, np.ndarray]:
  """Reads the written file and returns torchvision-named arrays (with fc)."""
  if export.to == 'torchvision':
    state = torchvision_format.read_state_dict(out)
  else:
    state = dict(detectron2_format.detectron2_to_torchvision(
        detectron2_format.read_detectron2_pickle(out)['model']))
  if 'fc.weight' not in state:
    state.update(torchvision_format.zero_fc(export.arch.c5_channels))
  return state


def verify_export(export: Export, encoder, out: str, *, rtol: float,
                  image_size: int, batch_size: int) -> str:
  """Compares `encoder` (params, batch_stats) with the file `out`.

  Returns the report text; raises ConversionError (after moving the file to
  OUT.unverified) when a stage differs beyond rtol.
  """
  state = read_back_as_torchvision(export, out)
  diffs = compare_outputs(
      export.arch, encoder.params, encoder.batch_stats, state,
      image_size=image_size, batch_size=batch_size)
  lines = [f'verify: Flax ResNet vs torchvision ({export.arch}, eval mode, '
           f'random batch {batch_size}x{image_size}x{image_size}x3)']
  for d in diffs.values():
    lines.append(f'  {d.name} {str(d.shape):<20} max|diff| {d.max_abs_diff:.3e}'
                 f'  max|ref| {d.max_abs_ref:.3e}  relative {d.rel_diff:.3e}')
  problem = check_diffs(diffs, rtol)
  if problem:
    # Keep the file for inspection, under a name nobody loads by accident.
    os.replace(out, out + '.unverified')
    raise ConversionError('\n'.join(lines) + '\nverify FAILED: ' + problem +
                          f'\nthe converted file was moved to {out}.unverified;'
                          ' do not use it. Please report this with the listing.')
  lines.append(f'verify OK (relative tolerance {rtol:g})')
  if any(k.startswith('fpn_') for k in export.tensors):
    lines.append('(the FPN tensors are renamed and transposed only; the '
                 'check covers the ResNet)')
  return '\n'.join(lines)
