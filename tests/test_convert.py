"""dense_ssl/convert.py, dense_ssl/export/ and checkpoint.restore_encoder.

References are independent of the code under test: torchvision's own ResNets
(strict load, forward outputs), and a hand-written table of Detectron2 names.
Checkpoints are hand-made TrainStates saved by dense_ssl.checkpoint's
Checkpointer (the trainer's), plus one workdir the real trainer writes.
"""

import functools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

# The CUDA torch wheel's triton segfaults when loaded after TensorFlow
# (conftest imports TF first); the CPU reference needs no triton.
sys.modules.setdefault('triton', None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dense_ssl import checkpoint as ckpt_lib  # noqa: E402
from dense_ssl import convert  # noqa: E402
from dense_ssl.export import conversion  # noqa: E402
from dense_ssl.export import detectron2_format as d2  # noqa: E402
from dense_ssl.export import torchvision_format as tvf  # noqa: E402
from dense_ssl.export import verify  # noqa: E402
from dense_ssl.models.resnet import ResNet  # noqa: E402
from tests import subprocess_env  # noqa: E402
from tests import trained_run as trained_run_lib  # noqa: E402

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 64  # Small inputs keep the forward passes fast; C5 is 2x2.
# Stage tables by hand (He et al. 2016, Table 1; ResNet-10: one basic block
# per stage), for torchvision's ResNet class.
_TORCHVISION_STAGES = {10: ('BasicBlock', [1, 1, 1, 1]),
                       18: ('BasicBlock', [2, 2, 2, 2]),
                       34: ('BasicBlock', [3, 4, 6, 3]),
                       50: ('Bottleneck', [3, 4, 6, 3]),
                       101: ('Bottleneck', [3, 4, 23, 3]),
                       152: ('Bottleneck', [3, 8, 36, 3])}


def _torchvision_resnet(depth):
  """torchvision's own ResNet: its builder, or its ResNet class for R10."""
  if depth == 10:
    from torchvision.models import resnet as tv  # pylint: disable=g-import-not-at-top
    return tv.ResNet(tv.BasicBlock, [1, 1, 1, 1])
  return getattr(torchvision.models, f'resnet{depth}')(weights=None)


@functools.lru_cache(maxsize=None)
def _random_encoder(depth, width=1, seed=0):
  """(params, batch_stats) of our Flax ResNet with nothing at init values.

  Conv kernels are re-drawn at He scale; BN scales, biases, means and
  variances are random (the last BN of each block is zero at init: not here).
  """
  model = ResNet(depth=depth, width_multiplier=width)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3)),
                         train=False))
  rng = np.random.default_rng(seed)

  def param(path, s):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(s.shape[:3])
      return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(
          np.float32)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  def stat(path, s):
    if path[-1].key == 'mean':
      return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(param, shapes['params'])
  stats = jax.tree_util.tree_map_with_path(stat, shapes['batch_stats'])
  return _to_dict(params), _to_dict(stats)


def _to_dict(tree):
  if hasattr(tree, 'items'):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def _images(seed=1, n=2):
  return np.random.default_rng(seed).standard_normal(
      (n, IMAGE, IMAGE, 3)).astype(np.float32)


def _flax_c2_c5(depth, params, stats, images):
  out = ResNet(depth=depth).apply({'params': params, 'batch_stats': stats},
                                  images, train=False)
  return [np.asarray(out[f'c{i}']) for i in range(2, 6)]


def _torchvision_c2_c5(model, images):
  """layer1..layer4 outputs of a torchvision ResNet (forward hooks), NHWC."""
  feats = []
  hooks = [getattr(model, f'layer{i}').register_forward_hook(
      lambda m, i, o: feats.append(o.detach().numpy().transpose(0, 2, 3, 1)))
           for i in range(1, 5)]
  model.eval()
  with torch.no_grad():
    model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  for h in hooks:
    h.remove()
  return feats


def _assert_close(ours, ref, rtol=1e-4):
  for k, (a, b) in enumerate(zip(ours, ref)):
    assert a.shape == b.shape, (k, a.shape, b.shape)
    scale = np.max(np.abs(b))
    assert scale > 1e-3, f'C{k + 2} is degenerate (all ~0): a useless test'
    err = np.max(np.abs(a - b))
    assert err <= rtol * scale, f'C{k + 2}: max|diff| {err} vs max|ref| {scale}'


def _tv_tensors(state):
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


# ---------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('depth', sorted(_TORCHVISION_STAGES))
def test_torchvision_layout_is_torchvisions_state_dict(depth):
  """Names (in order) and shapes derived from models/resnet.py's layout."""
  arch = tvf.ResNetArchitecture(depth)
  block, stages = _TORCHVISION_STAGES[depth]
  assert arch.block == {'BasicBlock': 'basic', 'Bottleneck': 'bottleneck'}[block]
  assert list(arch.stages) == stages
  want = {k: tuple(v.shape) for k, v in
          _torchvision_resnet(depth).state_dict().items()}
  got = tvf.expected_torchvision_shapes(arch)
  assert list(got) == list(want)
  assert dict(got) == want
  assert list(tvf.expected_torchvision_shapes(arch, include_fc=False)) == [
      k for k in want if not k.startswith('fc.')]


@pytest.mark.parametrize('depth', [10, 18, 50])
def test_torchvision_round_trip(depth):
  params, stats = _random_encoder(depth)
  state, added = tvf.flax_resnet_to_torchvision(params, stats)
  model = _torchvision_resnet(depth)
  model.load_state_dict(_tv_tensors(state), strict=True)
  assert list(state) == list(model.state_dict())  # torchvision's own order
  assert state['bn1.num_batches_tracked'].dtype == np.int64
  assert not state['fc.weight'].any() and not state['fc.bias'].any()
  assert sorted(added) == sorted(
      [k for k in state if k.endswith('num_batches_tracked')] +
      ['fc.weight', 'fc.bias'])
  # Layout: torchvision OIHW == Flax HWIO transposed.
  np.testing.assert_array_equal(
      state['layer1.0.conv1.weight'],
      params['layer1_0']['conv1']['kernel'].transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(state['layer4.0.downsample.1.running_var'],
                                stats['layer4_0']['downsample_bn']['var'])
  images = _images()
  _assert_close(_flax_c2_c5(depth, params, stats, images),
                _torchvision_c2_c5(model, images))


def test_torchvision_drop_fc_loads_non_strict():
  params, stats = _random_encoder(18)
  state, _ = tvf.flax_resnet_to_torchvision(params, stats, include_fc=False)
  assert not any(k.startswith('fc.') for k in state)
  result = torchvision.models.resnet18(weights=None).load_state_dict(
      _tv_tensors(state), strict=False)
  assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight']
  assert not result.unexpected_keys


def test_infer_architecture():
  for depth in (10, 18, 50):
    assert tvf.infer_architecture(_random_encoder(depth)[0]) == (
        tvf.ResNetArchitecture(depth))
  params, _ = _zeros_encoder(50, 2)
  assert tvf.infer_architecture(params) == tvf.ResNetArchitecture(50, 2)
  params, _ = _random_encoder(18)
  no_block = {k: v for k, v in params.items() if k != 'layer3_1'}
  with pytest.raises(tvf.ArchitectureError, match=r'\[2, 2, 1, 2\] match no'):
    tvf.infer_architecture(no_block)
  with pytest.raises(tvf.ArchitectureError, match='not a dense_ssl'):
    tvf.infer_architecture({'conv1': params['conv1']})


# ---------------------------------------------------------------------------
# Detectron2 names
# ---------------------------------------------------------------------------

_NORM = ('norm.weight', 'norm.bias', 'norm.running_mean', 'norm.running_var')


def _hand_written_detectron2_r50():
  """Every Detectron2 key of a ResNet-50 backbone with its shape, by hand.

  Stem: conv1 7x7 3->64 + norm. Stages res2..res5 with [3, 4, 6, 3]
  bottleneck blocks, inner width 64, 128, 256, 512, output 4x; block 0 of
  every stage has a shortcut (1x1 conv + norm); stride sits on conv2.
  """
  expected = {'stem.conv1.weight': (64, 3, 7, 7)}
  expected.update({f'stem.conv1.{n}': (64,) for n in _NORM})
  stages = {'res2': (3, 64, 256, 64), 'res3': (4, 128, 512, 256),
            'res4': (6, 256, 1024, 512), 'res5': (3, 512, 2048, 1024)}
  for stage, (blocks, inner, out, stage_in) in stages.items():
    for i in range(blocks):
      cin = stage_in if i == 0 else out
      p = f'{stage}.{i}'
      expected[f'{p}.conv1.weight'] = (inner, cin, 1, 1)
      expected[f'{p}.conv2.weight'] = (inner, inner, 3, 3)
      expected[f'{p}.conv3.weight'] = (out, inner, 1, 1)
      for n in _NORM:
        expected[f'{p}.conv1.{n}'] = (inner,)
        expected[f'{p}.conv2.{n}'] = (inner,)
        expected[f'{p}.conv3.{n}'] = (out,)
      if i == 0:
        expected[f'{p}.shortcut.weight'] = (out, cin, 1, 1)
        for n in _NORM:
          expected[f'{p}.shortcut.{n}'] = (out,)
  return expected


def test_detectron2_names_resnet50_match_hand_written_table():
  expected = _hand_written_detectron2_r50()
  assert len(expected) == 53 * 5  # 53 convs, each weight + 4 norm tensors
  params, stats = _random_encoder(50)
  state, _ = tvf.flax_resnet_to_torchvision(params, stats)
  model, skipped = d2.torchvision_to_detectron2(state)
  assert {k: v.shape for k, v in model.items()} == expected
  skipped_names = [n for n, _ in skipped]
  assert sorted(skipped_names) == sorted(
      ['fc.weight', 'fc.bias'] +
      [k for k in state if k.endswith('num_batches_tracked')])
  # Values: BN of res3.0.conv2 is Flax layer2_0/bn2.
  np.testing.assert_array_equal(model['res3.0.conv2.norm.running_mean'],
                                stats['layer2_0']['bn2']['mean'])
  np.testing.assert_array_equal(model['res5.0.shortcut.norm.weight'],
                                params['layer4_0']['downsample_bn']['scale'])


def test_detectron2_pickle_round_trip_through_torchvision(tmp_path):
  params, stats = _random_encoder(50)
  state, _ = tvf.flax_resnet_to_torchvision(params, stats)
  model, _ = d2.torchvision_to_detectron2(state)
  path = str(tmp_path / 'r50.pkl')
  d2.write_detectron2_pickle(path, model)
  raw = open(path, 'rb').read()
  # Loadable by numpy 1.x too: no numpy 2-only module paths in the pickle.
  assert b'numpy._core' not in raw and b'numpy.core' not in raw
  with open(path, 'rb') as f:
    obj = pickle.load(f, encoding='latin1')  # how Detectron2 reads it
  assert obj['__author__'] == 'dense_ssl' and obj['matching_heuristics']
  assert all(isinstance(v, np.ndarray) for v in obj['model'].values())
  back = d2.detectron2_to_torchvision(obj['model'])
  back.update(tvf.zero_fc(2048))
  tv = torchvision.models.resnet50(weights=None)
  tv.load_state_dict(_tv_tensors(back), strict=True)
  images = _images(seed=3)
  _assert_close(_flax_c2_c5(50, params, stats, images),
                _torchvision_c2_c5(tv, images))


def test_detectron2_config_keys():
  keys = d2.detectron2_config_keys(tvf.ResNetArchitecture(50, 2))
  assert keys['MODEL.RESNETS.DEPTH'] == 50
  assert keys['MODEL.RESNETS.STEM_OUT_CHANNELS'] == 128
  assert keys['MODEL.RESNETS.WIDTH_PER_GROUP'] == 128
  assert keys['MODEL.RESNETS.RES2_OUT_CHANNELS'] == 512
  assert keys['MODEL.RESNETS.STRIDE_IN_1X1'] is False
  assert keys['INPUT.FORMAT'] == 'RGB'
  with pytest.raises(tvf.ArchitectureError, match='RES2_OUT_CHANNELS'):
    d2.detectron2_config_keys(tvf.ResNetArchitecture(18, 2))
  with pytest.raises(tvf.ArchitectureError, match='DEPTH 200'):
    d2.detectron2_config_keys(tvf.ResNetArchitecture(200))
  with pytest.raises(tvf.ArchitectureError, match=r'DEPTH 10 .*\[1, 1, 1, 1\]'):
    d2.detectron2_config_keys(tvf.ResNetArchitecture(10))
  keys = d2.detectron2_config_keys(tvf.ResNetArchitecture(200),
                                        allow_custom_depth=True)
  assert keys['MODEL.RESNETS.DEPTH'] == 200


# ---------------------------------------------------------------------------
# FPN
# ---------------------------------------------------------------------------


def _hand_made_fpn(in_channels=(256, 512, 1024, 2048), dim=256, seed=0):
  rng = np.random.default_rng(seed)
  fpn = {}
  for k, c in zip((2, 3, 4, 5), in_channels):
    fpn[f'lateral_{k}'] = {
        'kernel': rng.standard_normal((1, 1, c, dim)).astype(np.float32),
        'bias': rng.standard_normal((dim,)).astype(np.float32)}
    fpn[f'output_{k}'] = {
        'kernel': rng.standard_normal((3, 3, dim, dim)).astype(np.float32),
        'bias': rng.standard_normal((dim,)).astype(np.float32)}
  return fpn


def test_fpn_mapping():
  fpn = _hand_made_fpn(in_channels=(8, 16, 32, 64), dim=4)
  out = d2.flax_fpn_to_detectron2(
      fpn, in_channels={2: 8, 3: 16, 4: 32, 5: 64})
  expected = {}
  for k, c in zip((2, 3, 4, 5), (8, 16, 32, 64)):
    expected[f'fpn_lateral{k}.weight'] = (4, c, 1, 1)
    expected[f'fpn_lateral{k}.bias'] = (4,)
    expected[f'fpn_output{k}.weight'] = (4, 4, 3, 3)
    expected[f'fpn_output{k}.bias'] = (4,)
  assert {k: v.shape for k, v in out.items()} == expected
  # weight[o, i, h, w] == kernel[h, w, i, o]
  kern = fpn['output_3']['kernel']
  assert out['fpn_output3.weight'][2, 1, 0, 2] == kern[0, 2, 1, 2]
  np.testing.assert_array_equal(out['fpn_lateral5.bias'],
                                fpn['lateral_5']['bias'])
  # Detectron2's own check: a conv with these weights == the Flax conv.
  x = np.random.default_rng(1).standard_normal((1, 5, 5, 4)).astype(np.float32)
  ours = jax.lax.conv_general_dilated(
      x, kern, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + fpn['output_3']['bias']
  ref = torch.nn.functional.conv2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
      torch.from_numpy(out['fpn_output3.weight']),
      torch.from_numpy(out['fpn_output3.bias']), padding=1)
  np.testing.assert_allclose(np.asarray(ours),
                             ref.numpy().transpose(0, 2, 3, 1), atol=1e-4)

  # A level a method does not train may be absent (ReSim-FPN has no P2)...
  del fpn['output_4']
  partial = d2.flax_fpn_to_detectron2(fpn)
  assert 'fpn_output4.weight' not in partial and 'fpn_lateral4.weight' in partial
  # ... but a conv without its bias, or an FPN without laterals, is an error.
  del fpn['output_3']['bias']
  with pytest.raises(tvf.ArchitectureError, match='output_3'):
    d2.flax_fpn_to_detectron2(fpn)
  with pytest.raises(tvf.ArchitectureError, match='no lateral'):
    d2.flax_fpn_to_detectron2({'output_3': _hand_made_fpn(dim=4)['output_3']})
  with pytest.raises(tvf.ArchitectureError, match='C2 of the encoder'):
    d2.flax_fpn_to_detectron2(
        _hand_made_fpn(in_channels=(8, 16, 32, 64), dim=4),
        in_channels={2: 9, 3: 16, 4: 32, 5: 64})


def _state_tree(params, stats, with_target=True, fpn=None):
  """A restored TrainState (dense_ssl/state.py) laid out as the trainer saves it.

  Methods without an EMA target (SimCLR, DetCon-S) save empty target dicts.
  """
  head = {'linear1': {'kernel': np.ones((2, 3), np.float32)}}
  head_stats = {'bn1': {'mean': np.zeros((3,), np.float32),
                        'var': np.ones((3,), np.float32)}}
  online = {'encoder': params, 'projector': head}
  if fpn is not None:
    online['fpn'] = fpn
  return {
      'step': np.array(3, np.int32), 'rng': np.zeros((2,), np.uint32),
      'online_params': online,
      'online_batch_stats': {'encoder': stats, 'projector': head_stats},
      'target_params': {'encoder': params} if with_target else {},
      'target_batch_stats': {'encoder': stats} if with_target else {},
      'opt_state': {'0': {'trace': {'encoder': params, 'projector': head}}},
      'method_state': {'queue': np.zeros((4, 2), np.float32)}}


def _encoder(state, network='online', run_name=None):
  return ckpt_lib.RestoredEncoder.from_state(state, network, 3,
                                             run_name=run_name)


def test_fpn_exported_with_the_encoder_for_detectron2_only():
  params, stats = _random_encoder(18)
  tree = _state_tree(params, stats, with_target=False,
                     fpn=_hand_made_fpn((64, 128, 256, 512)))
  net = _encoder(tree)
  assert net.fpn_path == 'state/online_params/fpn'
  exp = conversion.export_encoder(net, 'detectron2')
  assert exp.tensors['fpn_lateral3.weight'].shape == (256, 128, 1, 1)
  assert exp.detectron2_keys['MODEL.FPN.NORM'] == ''
  assert exp.sources['fpn_output2.bias'] == 'state/online_params/fpn/output_2/bias'
  assert not [s for s in exp.skipped if 'fpn' in s[0]]
  exp = conversion.export_encoder(net, 'torchvision')
  assert not any(k.startswith('fpn') for k in exp.tensors)
  fpn_skipped = [s for s in exp.skipped if '/fpn/' in s[0]]
  assert len(fpn_skipped) == 16
  assert all('FPN' in reason for _, _, reason in fpn_skipped)


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


def test_wrong_architecture_requests_fail_clearly():
  params, stats = _random_encoder(18)
  net = _encoder(_state_tree(params, stats))
  with pytest.raises(conversion.ConversionError,
                     match='--depth=50 but .* ResNet-18'):
    conversion.export_encoder(net, 'torchvision', depth=50)
  with pytest.raises(conversion.ConversionError, match='--width_multiplier=2'):
    conversion.export_encoder(net, 'torchvision', width=2)
  with pytest.raises(conversion.ConversionError,
                     match='config declares ResNet-50'):
    conversion.export_encoder(net, 'detectron2',
                              declared=tvf.ResNetArchitecture(50))
  # Inconsistent shapes: one kernel with the wrong input width.
  bad = {**params, 'layer2_1': {**params['layer2_1'], 'conv1': {
      'kernel': np.zeros((3, 3, 64, 128), np.float32)}}}
  with pytest.raises(conversion.ConversionError,
                     match=r'layer2.1.conv1.weight: shape \(128, 64, 3, 3\)'):
    conversion.export_encoder(_encoder(_state_tree(bad, stats)), 'torchvision')
  # A missing BN statistic.
  short = {**stats, 'bn1': {'mean': stats['bn1']['mean']}}
  with pytest.raises(conversion.ConversionError,
                     match='missing bn1.running_var'):
    conversion.export_encoder(_encoder(_state_tree(params, short)),
                              'torchvision')
  # A leaf torchvision has no place for: refused, not dropped.
  extra = {**params, 'bn1': {**params['bn1'], 'extra': np.zeros((64,))}}
  with pytest.raises(conversion.ConversionError,
                     match="'bn1/extra' has no torchvision counterpart"):
    conversion.export_encoder(_encoder(_state_tree(extra, stats)),
                              'torchvision')
  # No EMA target (SimCLR, DetCon-S save empty target dicts).
  with pytest.raises(ckpt_lib.CheckpointError,
                     match='a simclr checkpoint has no target encoder'):
    _encoder(_state_tree(params, stats, with_target=False), 'target',
             run_name='simclr')
  # Not a TrainState: the encoder is not where the trainer keeps it.
  moved = _state_tree(params, stats)
  moved['online_params'] = {'backbone': params}
  with pytest.raises(ckpt_lib.CheckpointError,
                     match="online_params has no encoder.*'backbone'"):
    _encoder(moved)


def _zeros_encoder(depth, width):
  model = ResNet(depth=depth, width_multiplier=width)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  zeros = lambda t: _to_dict(jax.tree.map(
      lambda s: np.zeros(s.shape, np.float32), t))
  return zeros(shapes['params']), zeros(shapes['batch_stats'])


def test_architectures_torchvision_cannot_express():
  for depth, width, pattern in ((200, 1, 'no ResNet-200'),
                                (50, 2, 'width multiplier')):
    params, stats = _zeros_encoder(depth, width)
    net = _encoder(_state_tree(params, stats, with_target=False))
    with pytest.raises(conversion.ConversionError, match=pattern):
      conversion.export_encoder(net, 'torchvision')
  # ResNet-200: Detectron2 refuses unless asked, then the keys say DEPTH 200.
  params, stats = _zeros_encoder(200, 1)
  net = _encoder(_state_tree(params, stats, with_target=False))
  with pytest.raises(conversion.ConversionError, match='depth table'):
    conversion.export_encoder(net, 'detectron2')
  exp = conversion.export_encoder(net, 'detectron2',
                                  allow_custom_detectron2_depth=True)
  assert exp.detectron2_keys['MODEL.RESNETS.DEPTH'] == 200
  assert len([k for k in exp.tensors if k.endswith('conv3.weight')]) == 66
  # R18 x2: no Detectron2 keys express it.
  params, stats = _zeros_encoder(18, 2)
  net = _encoder(_state_tree(params, stats, with_target=False))
  with pytest.raises(conversion.ConversionError, match='RES2_OUT_CHANNELS'):
    conversion.export_encoder(net, 'detectron2')


def test_resnet10_exports_like_the_other_depths(tmp_path):
  """torchvision: its ResNet class (no builder); Detectron2: a custom depth."""
  params, stats = _random_encoder(10)
  net = _encoder(_state_tree(params, stats))
  exp = conversion.export_encoder(net, 'torchvision')
  assert exp.arch == tvf.ResNetArchitecture(10)
  out = str(tmp_path / 'r10.pth')
  conversion.write_export(exp, out)
  text = conversion.listing(exp, out, net)
  assert ('load into torchvision.models.resnet.ResNet(BasicBlock, '
          '[1, 1, 1, 1])') in text
  assert 'verify OK' in verify.verify_export(exp, net, out, rtol=1e-4,
                                             image_size=64, batch_size=2)
  with pytest.raises(conversion.ConversionError, match='depth table'):
    conversion.export_encoder(net, 'detectron2')
  exp = conversion.export_encoder(net, 'detectron2',
                                  allow_custom_detectron2_depth=True)
  assert len(exp.tensors) == 12 * 5  # stem + 4 x (2 convs) + 3 shortcuts
  out = str(tmp_path / 'r10.pkl')
  conversion.write_export(exp, out)
  assert 'blocks per stage [1, 1, 1, 1]' in conversion.listing(exp, out, net)
  assert 'verify OK' in verify.verify_export(exp, net, out, rtol=1e-4,
                                             image_size=64, batch_size=2)


def test_skipped_tensors_are_listed_with_reasons():
  params, stats = _random_encoder(18)
  tree = _state_tree(params, stats)
  net = _encoder(tree, 'target')
  assert (net.params_path, net.batch_stats_path) == (
      'state/target_params/encoder', 'state/target_batch_stats/encoder')
  exp = conversion.export_encoder(net, 'torchvision')
  reasons = {path: reason for path, _, reason in exp.skipped}
  n_params = len(tvf.flatten(params))
  n_stats = len(tvf.flatten(stats))
  # step, rng; method_state (1); online encoder params + stats; online
  # projector (1 param, 2 stats); optimizer (encoder + projector).
  assert len(reasons) == 2 + 1 + n_params + n_stats + 3 + n_params + 1
  for path in ('state/step', 'state/rng'):
    assert 'bookkeeping' in reasons[path], path
  assert 'pretraining method' in reasons['state/method_state/queue']
  assert 'optimizer' in reasons['state/opt_state/0/trace/encoder/conv1/kernel']
  assert '--network=online' in reasons[
      'state/online_params/encoder/conv1/kernel']
  assert '--network=online' in reasons[
      'state/online_batch_stats/encoder/bn1/mean']
  assert 'not exported' in reasons['state/online_params/projector/linear1/kernel']
  assert exp.sources['layer4.0.downsample.1.running_var'] == (
      'state/target_batch_stats/encoder/layer4_0/downsample_bn/var')
  assert exp.sources['layer1.1.conv2.weight'] == (
      'state/target_params/encoder/layer1_1/conv2/kernel')
  # Exporting the online network: the projector is a head, the target the
  # other network.
  exp = conversion.export_encoder(_encoder(tree, 'online'), 'torchvision')
  reasons = {path: reason for path, _, reason in exp.skipped}
  assert 'head' in reasons['state/online_params/projector/linear1/kernel']
  assert 'head' in reasons['state/online_batch_stats/projector/bn1/var']
  assert '--network=target' in reasons[
      'state/target_params/encoder/layer4_1/conv2/kernel']


def test_verify_fails_loudly_on_a_bad_file(tmp_path):
  params, stats = _random_encoder(18)
  net = _encoder(_state_tree(params, stats))
  exp = conversion.export_encoder(net, 'detectron2')
  # A layout bug of the kind verify exists for: a kernel not transposed right.
  w = exp.tensors['res3.1.conv2.weight']
  exp.tensors['res3.1.conv2.weight'] = np.ascontiguousarray(
      w.transpose(0, 1, 3, 2))
  out = str(tmp_path / 'bad.pkl')
  conversion.write_export(exp, out)
  with pytest.raises(conversion.ConversionError, match='verify FAILED'):
    verify.verify_export(exp, net, out, rtol=1e-4, image_size=64,
                         batch_size=2)
  assert os.path.exists(out + '.unverified') and not os.path.exists(out)


# ---------------------------------------------------------------------------
# Checkpoints written by dense_ssl.checkpoint -> restore_encoder, the command
# ---------------------------------------------------------------------------


def _cli_env():
  """A fresh 1-device process: it reads checkpoints saved from 4 devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=subprocess_env.xla_flags(None))


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'dense_ssl.convert', *args],
                        cwd=REPO, env=_cli_env(), capture_output=True,
                        text=True, timeout=600)


def _np(tree):
  return jax.tree.map(np.asarray, _to_dict(tree))


def _save_run(workdir, states, name, depth=18):
  """Saves {step: TrainState} with the trainer's Checkpointer, replicated
  over the 4 test devices as the trainer holds it, and a config.json."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  ckpt_lib.save_config(workdir, ml_collections.ConfigDict(
      {'name': name, 'model': {'depth': depth, 'width_multiplier': 1}}))
  repl = NamedSharding(Mesh(np.array(jax.devices()), ('batch',)), P())
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=5, async_save=False)
  for step, state in states.items():
    checkpointer.save(step, jax.device_put(state, repl), dict(step=step))
  checkpointer.close()


def _hand_made_state(step, online, target, fpn=None):
  """A TrainState of the trainer's layout around (params, batch_stats) pairs."""
  import optax  # pylint: disable=g-import-not-at-top
  from dense_ssl import state as state_lib  # pylint: disable=g-import-not-at-top
  head = {'linear1': {'kernel': np.full((512, 8), 0.5, np.float32),
                      'bias': np.zeros((8,), np.float32)}}
  online_params = {'encoder': online[0], 'projector': head}
  if fpn is not None:
    online_params['fpn'] = fpn
  return state_lib.TrainState(
      step=np.array(step, np.int32),
      online_params=online_params,
      online_batch_stats={'encoder': online[1]},
      target_params={'encoder': target[0]} if target else {},
      target_batch_stats={'encoder': target[1]} if target else {},
      opt_state=optax.sgd(0.1, momentum=0.9).init(online_params),
      rng=np.array([0, step], np.uint32),
      method_state={})


@pytest.fixture(scope='module')
def r18_run(tmp_path_factory):
  """A DetCon-B-like workdir: hand-made ResNet-18 TrainStates at steps 1, 2
  (online and EMA target all different), saved by the trainer's Checkpointer.
  Returns (workdir, {step: {'online'|'target': (params, batch_stats)}})."""
  workdir = str(tmp_path_factory.mktemp('r18'))
  nets = {step: {'online': _random_encoder(18, seed=10 * step),
                 'target': _random_encoder(18, seed=10 * step + 1)}
          for step in (1, 2)}
  _save_run(workdir, {s: _hand_made_state(s, n['online'], n['target'])
                      for s, n in nets.items()}, 'detcon_b')
  return workdir, nets


@pytest.fixture(scope='module')
def simclr_workdir(tmp_path_factory):
  """A SimCLR-like workdir: one network, empty target dicts."""
  workdir = str(tmp_path_factory.mktemp('simclr'))
  online = _random_encoder(18, seed=5)
  _save_run(workdir, {1: _hand_made_state(1, online, None)}, 'simclr')
  return workdir, online


def _assert_tree_equal(got, want):
  assert jax.tree.structure(_to_dict(got)) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, _to_dict(got), want)


def test_restore_encoder(r18_run, simclr_workdir, tmp_path):
  workdir, nets = r18_run
  assert ckpt_lib.available_steps(workdir) == [1, 2]
  assert ckpt_lib.read_config(workdir)['model']['depth'] == 18
  for step, network in ((None, 'online'), (2, 'target'), (1, 'online'),
                        (1, 'target')):
    enc = ckpt_lib.restore_encoder(workdir, step, network)
    assert enc.step == (step or 2) and enc.network == network
    _assert_tree_equal(enc.params, nets[enc.step][network][0])
    _assert_tree_equal(enc.batch_stats, nets[enc.step][network][1])
    assert enc.fpn is None and enc.fpn_path is None
    assert isinstance(enc.params['conv1']['kernel'], np.ndarray)
    assert enc.params_path == f'state/{network}_params/encoder'
  # Errors: one line each, naming what to do.
  with pytest.raises(ckpt_lib.CheckpointError, match='no checkpoints found'):
    ckpt_lib.restore_encoder(str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r'--step=7: .* available: \[1, 2\]'):
    ckpt_lib.restore_encoder(workdir, 7)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match='a simclr checkpoint has no target encoder'):
    ckpt_lib.restore_encoder(simclr_workdir[0], network='target')
  with pytest.raises(ValueError, match='ema'):
    ckpt_lib.restore_encoder(workdir, network='ema')
  assert ckpt_lib.read_config(str(tmp_path)) is None


_D2_NAME = (r'^(stem\.conv1\.(weight|norm\.(weight|bias|running_mean|'
            r'running_var))|res[2-5]\.\d+\.(conv[1-3]|shortcut)\.(weight|'
            r'norm\.(weight|bias|running_mean|running_var)))$')


def test_convert_cli_end_to_end(r18_run, tmp_path):
  """The CLI in a fresh 1-device process on a checkpoint saved from 4.

  References independent of the converter: the saved weights, our Flax
  ResNet on them, and torchvision.
  """
  workdir, nets = r18_run
  online, online_stats = nets[2]['online']
  target, target_stats = nets[2]['target']

  # torchvision, online network (the default).
  pth = str(tmp_path / 'online.pth')
  run = _cli(f'--workdir={workdir}', '--to=torchvision', f'--out={pth}',
             '--verify', '--verify_image_size=64')
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'online encoder of step 2 (state/online_params/encoder)' in run.stdout
  assert 'matches config.json' in run.stdout
  assert 'verify OK' in run.stdout
  for c in ('c2', 'c3', 'c4', 'c5'):
    assert re.search(rf'^  {c} .* relative (0\.000e\+00|\S+e-(0[5-9]|[1-9]\d))$',
                     run.stdout, re.M), c
  assert 'fc.weight' in run.stdout and 'zero-initialised' in run.stdout
  assert 'state/opt_state/' in run.stdout and 'optimizer state' in run.stdout
  assert 'Metadata file does not exist' not in run.stderr
  model = torchvision.models.resnet18(weights=None)
  model.load_state_dict(torch.load(pth, weights_only=True), strict=True)
  images = _images(seed=4)
  _assert_close(_flax_c2_c5(18, online, online_stats, images),
                _torchvision_c2_c5(model, images))
  with open(pth + '.txt') as f:
    assert 'verify OK' in f.read()

  # Detectron2, EMA target.
  pkl = str(tmp_path / 'target.pkl')
  run = _cli(f'--workdir={workdir}', '--to=detectron2', f'--out={pkl}',
             '--network=target', '--verify', '--verify_image_size=64')
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'target encoder of step 2 (state/target_params/encoder)' in run.stdout
  assert 'verify OK' in run.stdout
  assert 'MODEL.RESNETS.DEPTH: 18' in run.stdout
  # num_batches_tracked is not written: Detectron2's BN/SyncBN do have it.
  assert ("Detectron2's BN and SyncBN layers (the detectron2_configs/ recipe) "
          'do have this buffer') in run.stdout
  with open(pkl, 'rb') as f:
    obj = pickle.load(f, encoding='latin1')
  model_d2 = obj['model']
  assert obj['__author__'] == 'dense_ssl' and obj['matching_heuristics']
  assert len(model_d2) == 20 * 5  # R18: 20 convs, each weight + 4 norm
  assert all(re.match(_D2_NAME, k) for k in model_d2), sorted(model_d2)
  np.testing.assert_array_equal(model_d2['stem.conv1.weight'],
                                target['conv1']['kernel'].transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(
      model_d2['res5.0.shortcut.norm.running_var'],
      target_stats['layer4_0']['downsample_bn']['var'])
  with open(pkl + '.txt') as f:
    assert 'verify OK' in f.read()

  # A wrong-architecture request: exit 1 and a message, no file.
  bad = str(tmp_path / 'bad.pkl')
  run = _cli(f'--workdir={workdir}', '--to=detectron2', f'--out={bad}',
             '--depth=50', '--noverify')
  assert run.returncode == 1
  assert '--depth=50 but the checkpoint holds a ResNet-18' in run.stderr
  assert not os.path.exists(bad)
  # A missing step: exit 1, the steps there are.
  run = _cli(f'--workdir={workdir}', '--to=detectron2', f'--out={bad}',
             '--step=7', '--noverify')
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith(
      'dense_ssl.convert: ERROR: --step=7: no such checkpoint')
  assert 'available: [1, 2]' in run.stderr


def test_convert_in_process(r18_run, tmp_path):
  """--step, the target to torchvision, and refusals of a wrong workdir."""
  workdir, nets = r18_run
  lines = []
  out = str(tmp_path / 'step1_target.pth')
  report = convert.convert(workdir, 'torchvision', out, step=1,
                           network='target', verify=True, image_size=64,
                           log=lines.append)
  assert report['step'] == 1 and 'verify OK' in report['verify']
  torchvision.models.resnet18(weights=None).load_state_dict(
      torch.load(out, weights_only=True), strict=True)
  # Step 1's target, not step 2's.
  np.testing.assert_array_equal(
      torch.load(out)['conv1.weight'].numpy(),
      nets[1]['target'][0]['conv1']['kernel'].transpose(3, 2, 0, 1))
  with pytest.raises(convert.ConversionError, match=r'--step=7.*\[1, 2\]'):
    convert.convert(workdir, 'detectron2', out, step=7, log=lines.append)
  with pytest.raises(convert.ConversionError, match='no checkpoints'):
    convert.convert(str(tmp_path), 'detectron2', out, log=lines.append)
  with pytest.raises(convert.ConversionError, match='--drop_fc only'):
    convert.convert(workdir, 'detectron2', out, drop_fc=True,
                    log=lines.append)
  # A config.json that does not describe the checkpoint.
  other = str(tmp_path / 'other')
  shutil.copytree(workdir, other)
  with open(os.path.join(other, 'config.json')) as f:
    config = json.load(f)
  config['model']['depth'] = 50
  with open(os.path.join(other, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(convert.ConversionError,
                     match='config declares ResNet-50 but .* is ResNet-18'):
    convert.convert(other, 'detectron2', str(tmp_path / 'x.pkl'),
                    verify=False, log=lines.append)
  # No config.json: the architecture comes from the checkpoint alone.
  os.remove(os.path.join(other, 'config.json'))
  lines.clear()
  convert.convert(other, 'torchvision', str(tmp_path / 'y.pth'), verify=False,
                  log=lines.append)
  assert 'has no model.depth' in lines[0]
  assert '(read from the checkpoint)' in lines[1]


def test_simclr_workdir_has_no_target(simclr_workdir, tmp_path):
  workdir, (online, _) = simclr_workdir
  lines = []
  with pytest.raises(convert.ConversionError,
                     match='a simclr checkpoint has no target encoder.*'
                     '--network=online'):
    convert.convert(workdir, 'detectron2', str(tmp_path / 't.pkl'),
                    network='target', verify=False, log=lines.append)
  out = str(tmp_path / 'online.pkl')
  report = convert.convert(workdir, 'detectron2', out, verify=True,
                           image_size=32, log=lines.append)
  assert 'verify OK' in report['verify']
  model_d2 = d2.read_detectron2_pickle(out)['model']
  np.testing.assert_array_equal(
      model_d2['res2.1.conv2.weight'],
      online['layer1_1']['conv2']['kernel'].transpose(3, 2, 0, 1))


# ---------------------------------------------------------------------------
# The real trainer -> the command
# ---------------------------------------------------------------------------


@pytest.mark.xdist_group(trained_run_lib.XDIST_GROUP)
def test_end_to_end_train_then_convert(trained_run, tmp_path):
  """The real trainer's workdir (2 DetCon-B steps, conftest's shared run) ->
  convert, verified.

  References independent of the converter's own reading: the encoders that
  train_and_evaluate returned, our Flax ResNet on them, and torchvision. The
  test preset's depth is whatever configs/ say (Detectron2 has no ResNet-10:
  then the custom-depth flag). The command in a fresh process is
  test_convert_cli_end_to_end's.
  """
  workdir = trained_run.workdir
  online, online_stats = trained_run.encoders['online']
  target, target_stats = trained_run.encoders['target']
  depth = ckpt_lib.read_config(workdir)['model']['depth']
  # Trained weights: BN statistics moved, the EMA target is not the online.
  assert np.abs(online_stats['layer1_0']['bn1']['mean']).max() > 1e-4
  assert np.abs(online_stats['layer4_0']['bn2']['var'] - 1).max() > 1e-4
  assert not np.array_equal(online['conv1']['kernel'], target['conv1']['kernel'])

  # torchvision, online network (the default).
  pth = str(tmp_path / 'online.pth')
  lines = []
  report = convert.convert(workdir, 'torchvision', pth, verify=True, image_size=64,
                           log=lines.append)
  text = '\n'.join(lines)
  assert 'online encoder of step 2 (state/online_params/encoder)' in text
  assert 'matches config.json' in text
  assert 'verify OK' in report['verify']
  model = _torchvision_resnet(depth)
  model.load_state_dict(torch.load(pth, weights_only=True), strict=True)
  images = _images(seed=4)
  _assert_close(_flax_c2_c5(depth, online, online_stats, images),
                _torchvision_c2_c5(model, images))

  # Detectron2, EMA target.
  pkl = str(tmp_path / 'target.pkl')
  lines = []
  report = convert.convert(
      workdir, 'detectron2', pkl, network='target', verify=True, image_size=64,
      log=lines.append,
      allow_custom_detectron2_depth=depth not in (18, 34, 50, 101, 152))
  text = '\n'.join(lines)
  assert 'target encoder of step 2 (state/target_params/encoder)' in text
  assert 'verify OK' in report['verify']
  assert f'MODEL.RESNETS.DEPTH: {depth}' in text
  model_d2 = d2.read_detectron2_pickle(pkl)['model']
  n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
  assert len(model_d2) == n_convs * 5  # each conv: weight + 4 norm tensors
  assert all(re.match(_D2_NAME, k) for k in model_d2), sorted(model_d2)
  np.testing.assert_array_equal(model_d2['stem.conv1.weight'],
                                target['conv1']['kernel'].transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(
      model_d2['res5.0.shortcut.norm.running_var'],
      target_stats['layer4_0']['downsample_bn']['var'])


# ---------------------------------------------------------------------------
# Detectron2 recipe: configs and the launch script (no Detectron2 here)
# ---------------------------------------------------------------------------


def _load_config(name):
  """Our yaml with our own _BASE_ chain merged (Detectron2's bases left out)."""
  import yaml  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, 'detectron2_configs', name)) as f:
    cfg = yaml.safe_load(f)
  base = cfg.pop('_BASE_', '')
  if base.startswith('detectron2/'):
    assert base[len('detectron2/'):] in ('Base-RCNN-FPN.yaml',
                                         'Base-RCNN-C4.yaml')
    return cfg
  merged = _load_config(base)

  def merge(a, b):
    for k, v in b.items():
      if isinstance(v, dict) and isinstance(a.get(k), dict):
        merge(a[k], v)
      else:
        a[k] = v
  merge(merged, cfg)
  return merged


@pytest.mark.parametrize('name,fpn,max_iter,steps,batch', [
    ('coco_mask_rcnn_R_50_FPN_1x.yaml', True, 90000, '(60000, 80000)', 16),
    ('coco_mask_rcnn_R_50_FPN_2x.yaml', True, 180000, '(120000, 160000)', 16),
    ('voc_faster_rcnn_R_50_C4_24k.yaml', False, 24000, '(18000, 22000)', 16),
    ('cityscapes_mask_rcnn_R_50_FPN.yaml', True, 24000, '(18000,)', 8)])
def test_detectron2_configs_carry_the_ssl_overrides(name, fpn, max_iter, steps,
                                                    batch):
  cfg = _load_config(name)
  model = cfg['MODEL']
  assert cfg['INPUT']['FORMAT'] == 'RGB'
  assert model['PIXEL_MEAN'] == [123.675, 116.28, 103.53]
  assert model['PIXEL_STD'] == [58.395, 57.12, 57.375]
  assert model['RESNETS']['STRIDE_IN_1X1'] is False
  assert model['RESNETS']['NORM'] == 'SyncBN'
  assert model['BACKBONE']['FREEZE_AT'] == 0
  assert cfg['TEST']['PRECISE_BN']['ENABLED'] is True
  assert cfg['SOLVER']['MAX_ITER'] == max_iter
  assert cfg['SOLVER']['STEPS'] == steps
  assert cfg['SOLVER']['IMS_PER_BATCH'] == batch
  if fpn:
    assert model['FPN']['NORM'] == 'SyncBN'
    assert model['ROI_BOX_HEAD']['NORM'] == 'SyncBN'
    assert (model['ROI_BOX_HEAD']['NUM_CONV'],
            model['ROI_BOX_HEAD']['NUM_FC']) == (4, 1)
    assert model['ROI_MASK_HEAD']['NORM'] == 'SyncBN'
  else:
    assert model['ROI_HEADS']['NAME'] == 'Res5ROIHeadsExtraNorm'
    with open(os.path.join(REPO, 'detectron2_configs/train_net_ssl.py')) as f:
      assert 'class Res5ROIHeadsExtraNorm(Res5ROIHeads)' in f.read()


def test_detectron2_eval_script(tmp_path, r18_run):
  """bash -n, --help, and --dry_run against stand-ins for Detectron2."""
  script = os.path.join(REPO, 'launch', 'detectron2_eval.sh')
  assert subprocess.run(['bash', '-n', script]).returncode == 0
  usage = subprocess.run(['bash', script, '--help'], capture_output=True,
                         text=True)
  assert usage.returncode == 0 and 'TASK' in usage.stdout
  assert 'set -euo' not in usage.stdout

  pkl = str(tmp_path / 'r18.pkl')
  convert.convert(r18_run[0], 'detectron2', pkl, verify=False,
                  log=lambda s: None)
  d2 = tmp_path / 'd2src'
  for f in ('tools/train_net.py', 'configs/Base-RCNN-FPN.yaml'):
    (d2 / f).parent.mkdir(parents=True, exist_ok=True)
    (d2 / f).write_text('')
  stub = tmp_path / 'stub' / 'detectron2'
  stub.mkdir(parents=True)
  (stub / '__init__.py').write_text('')
  data = tmp_path / 'datasets'
  for p in ('coco/annotations', 'coco/train2017', 'coco/val2017',
            'VOC2007/Annotations', 'VOC2007/ImageSets/Main',
            'VOC2007/JPEGImages', 'VOC2012/Annotations',
            'VOC2012/ImageSets/Main', 'VOC2012/JPEGImages'):
    (data / p).mkdir(parents=True)
  for p in ('coco/annotations/instances_train2017.json',
            'coco/annotations/instances_val2017.json',
            'VOC2007/ImageSets/Main/trainval.txt',
            'VOC2007/ImageSets/Main/test.txt',
            'VOC2012/ImageSets/Main/trainval.txt'):
    (data / p).write_text('')
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'stub'),
             PYTHON=sys.executable, DETECTRON2_DIR=str(d2),
             DETECTRON2_DATASETS=str(data), NUM_GPUS='1', WEIGHTS=pkl)
  out_dir = tmp_path / 'eval'
  run = subprocess.run(['bash', script, '--task=coco_1x', '--dry_run',
                        f'--out_dir={out_dir}', 'SOLVER.IMS_PER_BATCH', '8'],
                       env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stdout + run.stderr
  assert f'--config-file {out_dir}/configs/coco_mask_rcnn_R_50_FPN_1x.yaml' in (
      run.stdout)
  assert f'MODEL.WEIGHTS {pkl}' in run.stdout
  assert ('MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.STEM_OUT_CHANNELS 64 '
          'MODEL.RESNETS.RES2_OUT_CHANNELS 64 SOLVER.IMS_PER_BATCH 8') in (
              run.stdout)
  assert os.path.realpath(out_dir / 'configs' / 'detectron2') == str(
      d2 / 'configs')
  assert (out_dir / 'configs' / 'Base-SSL-RCNN-FPN.yaml').exists()
  # C4 (VOC) needs a bottleneck ResNet; a torchvision .pth is no .pkl.
  run = subprocess.run(['bash', script, '--task=voc', '--dry_run',
                        f'--out_dir={out_dir}'], env=env, capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 1 and 'bottleneck ResNet' in run.stderr
  pth = str(tmp_path / 'r18.pth')
  torch.save({'conv1.weight': torch.zeros(1)}, pth)
  run = subprocess.run(['bash', script, '--task=coco_1x', '--dry_run',
                        f'--out_dir={out_dir}'], env=dict(env, WEIGHTS=pth),
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1 and 'convert again with --to=detectron2' in (
      run.stderr)
