r"""Converts a pretrained encoder to PyTorch: torchvision or Detectron2.

  python -m dense_ssl.convert --workdir=out/detcon_b --to=torchvision \
      --out=detcon_b_r50.pth
  python -m dense_ssl.convert --workdir=out/detcon_b --to=detectron2 \
      --out=detcon_b_r50.pkl [--network=target] [--step=N]

Reads the workdir's latest checkpoint (or --step), takes the ResNet encoder of
the online network (or the EMA target with --network=target) from the
TrainState (dense_ssl.checkpoint.restore_encoder), and writes
  --to=torchvision  a state_dict (.pth) that torchvision.models.resnet{D}()
                    loads with strict=True (ResNet-10, which has no builder:
                    torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])).
                    A pretraining checkpoint has no classifier: `fc` is written
                    zero-initialised (flagged in the listing) so the strict
                    load works; --drop_fc leaves it out (then load with
                    strict=False).
  --to=detectron2   a pickle {"model": {name: ndarray}, "__author__":
                    "dense_ssl", "matching_heuristics": True} with Detectron2
                    names (dense_ssl/export/detectron2_format.py), plus the FPN
                    of methods that train one; prints the config keys
                    (MODEL.RESNETS.*) that build the matching backbone.
Every exported tensor (name, shape) and every skipped one (with the reason)
is printed and written to OUT.txt. --verify (on by default when torch is
importable) runs the Flax encoder and the converted torchvision network (for
Detectron2 files: after renaming back) on one random batch and fails when
C2..C5 differ beyond float32 tolerance (dense_ssl/export/verify.py).
Exit status 0 on success, 1 with `dense_ssl.convert: ERROR: ...` on stderr
(one line; --verbose adds the traceback). A damaged latest checkpoint (a
truncated array file, a deleted _METADATA) is skipped with one line naming
it, for the newest checkpoint that restores (--step=N chooses one).
"""

import os
import sys

# The PyPI torch wheel bundles triton, whose native library segfaults the
# process when loaded after TensorFlow (which orbax may import). The CPU work
# here needs no triton: hide it before torch loads.
sys.modules.setdefault('triton', None)
from typing import Any, Dict, Optional  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from dense_ssl import checkpoint  # noqa: E402
from dense_ssl import cli  # noqa: E402
from dense_ssl.export import conversion  # noqa: E402
from dense_ssl.export import torchvision_format  # noqa: E402
from dense_ssl.export import verify as verify_lib  # noqa: E402
from dense_ssl.export.conversion import ConversionError  # noqa: E402

PROG = 'dense_ssl.convert'
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to read.')
_STEP = flags.DEFINE_integer('step', None,
                             'Checkpoint step; default: the latest.')
_NETWORK = flags.DEFINE_enum(
    'network', 'online', list(checkpoint.NETWORKS),
    'Which encoder: the online network (default) or the EMA target.')
_TO = flags.DEFINE_enum('to', None, ['torchvision', 'detectron2'],
                        'Output format.')
_OUT = flags.DEFINE_string('out', None, 'Output file (.pth or .pkl).')
_VERIFY = flags.DEFINE_bool(
    'verify', None, 'Compare Flax and torch outputs after converting; '
    'default: on when torch is importable.')
_DROP_FC = flags.DEFINE_bool(
    'drop_fc', False, '--to=torchvision: write no fc (load with '
    'strict=False) instead of a zero-initialised one.')
_DEPTH = flags.DEFINE_integer(
    'depth', None, 'Expected ResNet depth; refuse a checkpoint that differs.')
_WIDTH = flags.DEFINE_integer(
    'width_multiplier', None,
    'Expected width multiplier; refuse a checkpoint that differs.')
_ALLOW_CUSTOM_DEPTH = flags.DEFINE_bool(
    'allow_custom_detectron2_depth', False,
    'Write Detectron2 weights for ResNet-10/200 although Detectron2\'s '
    'build_resnet_backbone cannot build them (for a custom backbone).')
_RTOL = flags.DEFINE_float(
    'verify_rtol', verify_lib.DEFAULT_RTOL,
    'Largest accepted max|flax - torch| / max|torch| per stage.')
_IMAGE_SIZE = flags.DEFINE_integer('verify_image_size', 128,
                                   'Side of the random verification images.')
_BATCH = flags.DEFINE_integer('verify_batch', 2, 'Verification batch size.')
_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Print the traceback of a refusal too.')


def check_out(out: str) -> None:
  """Refuses an --out the converter could not write, before any work."""
  if not out:
    raise ConversionError('--out is empty: give the file to write, e.g. '
                          '--out=model.pth.')
  if os.path.isdir(out):
    raise ConversionError(
        f'--out={out} is a directory: give the file to write, e.g. '
        f'--out={os.path.join(out, "model.pth")}.')
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ConversionError(f'--out={out}: the folder {parent} does not exist; '
                          'create it first.')


def convert(workdir: str, to: str, out: str, *, step: Optional[int] = None,
            network: str = 'online', verify: Optional[bool] = None,
            drop_fc: bool = False, depth: Optional[int] = None,
            width_multiplier: Optional[int] = None,
            allow_custom_detectron2_depth: bool = False,
            rtol: float = verify_lib.DEFAULT_RTOL,
            image_size: int = 128, batch_size: int = 2,
            log=print) -> Dict[str, Any]:
  """The whole command; returns a report (step, arch, export, encoder, out,
  verify text). Raises ConversionError with the message the CLI prints."""
  if to not in ('torchvision', 'detectron2'):
    raise ConversionError(f'--to={to}: choose torchvision or detectron2.')
  if drop_fc and to != 'torchvision':
    raise ConversionError('--drop_fc only applies to --to=torchvision '
                          '(Detectron2 files never hold fc).')
  check_out(out)
  if verify is None:
    verify = torchvision_format.torch_available()
    if not verify:
      log(f'note: not verifying: {torchvision_format.TORCH_MISSING}')
  elif verify and not torchvision_format.torch_available():
    raise ConversionError(f'--verify: {torchvision_format.TORCH_MISSING}')
  try:
    encoder = checkpoint.restore_encoder(workdir, step, network)
    config = checkpoint.read_config(workdir)
  except checkpoint.CheckpointError as e:
    raise ConversionError(str(e)) from e
  for line in checkpoint.fallback_lines(encoder):
    log(f'{PROG}: {line}')
  declared = conversion.declared_architecture(config, workdir)
  if declared is None:
    log(f'note: {workdir}/config.json has no model.depth: the architecture '
        'is inferred from the checkpoint alone.')
  export = conversion.export_encoder(
      encoder, to, declared=declared, depth=depth, width=width_multiplier,
      drop_fc=drop_fc,
      allow_custom_detectron2_depth=allow_custom_detectron2_depth)
  conversion.write_export(export, out)
  text = conversion.listing(export, out, encoder)
  log(text)
  report = {'step': encoder.step, 'arch': export.arch, 'export': export,
            'encoder': encoder, 'out': out, 'verify': None}
  if verify:
    vtext = verify_lib.verify_export(export, encoder, out, rtol=rtol,
                                     image_size=image_size,
                                     batch_size=batch_size)
    log(vtext)
    text += '\n' + vtext
    report['verify'] = vtext
  with open(out + '.txt', 'w') as f:
    f.write(text + '\n')
  log(f'wrote {out} and the listing {out}.txt')
  return report


def main(argv):
  del argv   # Leftover arguments are refused by cli.flags_parser.
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  try:
    convert(_WORKDIR.value, _TO.value, _OUT.value, step=_STEP.value,
            network=_NETWORK.value, verify=_VERIFY.value,
            drop_fc=_DROP_FC.value, depth=_DEPTH.value,
            width_multiplier=_WIDTH.value,
            allow_custom_detectron2_depth=_ALLOW_CUSTOM_DEPTH.value,
            rtol=_RTOL.value, image_size=_IMAGE_SIZE.value,
            batch_size=_BATCH.value)
  except ConversionError as e:
    if _VERBOSE.value:
      logging.error('traceback of the refusal below', exc_info=True)
    cli.fail(PROG, str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'to', 'out'])
  app.run(main, flags_parser=cli.flags_parser(PROG))
