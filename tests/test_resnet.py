"""dense_ssl/models/resnet.py and heads.py against torchvision and by hand."""

import functools
import os

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')

import sys  # noqa: E402

# The CUDA torch wheel pulls in triton, whose native library segfaults when
# loaded after TensorFlow (conftest imports TF first). The CPU reference needs
# no triton: make `import triton` fail so torch treats it as absent.
sys.modules.setdefault('triton', None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from dense_ssl.models import resnet  # noqa: E402
from dense_ssl.models.heads import MLPHead  # noqa: E402

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')


def _torch_to_flax(state_dict):
  """This test's own torchvision -> Flax mapping (OIHW->HWIO, BN renames)."""
  params, stats = {}, {}
  for name, t in state_dict.items():
    if name.startswith('fc.') or name.endswith('num_batches_tracked'):
      continue
    parts = name.split('.')
    if parts[0].startswith('layer'):
      block = f'{parts[0]}_{parts[1]}'
      rest = parts[2:]
      if rest[0] == 'downsample':
        rest = [['downsample_conv', 'downsample_bn'][int(rest[1])]] + rest[2:]
      path = (block, rest[0])
    else:
      path = (parts[0],)
    leaf = parts[-1]
    a = t.detach().numpy()
    if leaf == 'weight' and a.ndim == 4:
      params[path + ('kernel',)] = a.transpose(2, 3, 1, 0)
    elif leaf == 'weight':
      params[path + ('scale',)] = a
    elif leaf == 'bias':
      params[path + ('bias',)] = a
    elif leaf == 'running_mean':
      stats[path + ('mean',)] = a
    elif leaf == 'running_var':
      stats[path + ('var',)] = a
    else:
      raise AssertionError(name)
  return params, stats


def _torchvision_resnet(depth):
  """torchvision's builder; ResNet-10 (no builder) from its ResNet class."""
  if depth == 10:
    from torchvision.models import resnet as tv  # pylint: disable=g-import-not-at-top
    return tv.ResNet(tv.BasicBlock, [1, 1, 1, 1])
  return getattr(torchvision.models, f'resnet{depth}')()


def _randomize_bn(model, gen):
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.weight.data = torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5
      m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
      m.running_mean = torch.randn(m.running_mean.shape, generator=gen) * 0.1
      m.running_var = torch.rand(m.running_var.shape, generator=gen) + 0.5


def _torch_features(model, x):
  x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  out = {}
  for i in range(1, 5):
    x = getattr(model, f'layer{i}')(x)
    out[f'c{i + 1}'] = x.detach().numpy().transpose(0, 2, 3, 1)
  return out


def _load(flax_tree, mapped):
  flat = traverse_util.flatten_dict(flax_tree)
  assert set(flat) == set(mapped), set(flat) ^ set(mapped)
  for k, v in flat.items():
    assert v.shape == mapped[k].shape, (k, v.shape, mapped[k].shape)
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in mapped.items()})


def _assert_close(got, want, rtol=1e-4):
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('depth', [10, 18, 50])
def test_matches_torchvision(depth):
  gen = torch.Generator().manual_seed(depth)
  torch.manual_seed(depth)
  tv = _torchvision_resnet(depth)
  _randomize_bn(tv, gen)
  x = torch.randn(2, 3, 64, 64, generator=gen)

  model = resnet.ResNet(depth=depth)
  xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), xj)
  mapped_p, mapped_s = _torch_to_flax(tv.state_dict())
  # 1:1 names: every Flax leaf filled from exactly one torchvision tensor.
  variables = {'params': _load(shapes['params'], mapped_p),
               'batch_stats': _load(shapes['batch_stats'], mapped_s)}

  tv.eval()
  with torch.no_grad():
    want = _torch_features(tv, x)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, xj)
  for k in ('c2', 'c3', 'c4', 'c5'):
    assert got[k].dtype == jnp.float32 and got[k].shape == want[k].shape
    _assert_close(np.asarray(got[k]), want[k])

  if depth == 18:
    # Train-mode BN (batch statistics) matches torch's train mode too.
    tv.train()
    with torch.no_grad():
      want = _torch_features(tv, x)
    got, _ = jax.jit(lambda v, x: model.apply(
        v, x, train=True, mutable=['batch_stats']))(variables, xj)
    for k in ('c2', 'c3', 'c4', 'c5'):
      _assert_close(np.asarray(got[k]), want[k], rtol=2e-4)


def _random_variables(model, x, seed=0):
  """Random variables of the right shapes without compiling an init."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), x)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':  # fan-in scaling keeps activations O(1)
      a = rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
    elif name == 'scale':
      a = rng.uniform(0.5, 1.5, size=s.shape)
    elif name == 'var':
      a = rng.uniform(0.5, 1.5, size=s.shape)
    else:  # bias, mean
      a = rng.normal(size=s.shape) * 0.1
    return jnp.asarray(a, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_cross_replica_bn_equals_single_device():
  """Train-mode BN with axis_name over 4 devices == one device, full batch.

  Each device holds 2 different images, so per-device statistics would give
  different outputs and running statistics.
  """
  mesh = Mesh(np.array(jax.devices()[:4]), ('batch',))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
  single = resnet.ResNet(depth=18)
  multi = resnet.ResNet(depth=18, bn_axis_name='batch')
  variables = _random_variables(single, x)

  def apply(model):
    def f(v, x):
      return model.apply(v, x, train=True, mutable=['batch_stats'])
    return f

  want, want_state = jax.jit(apply(single))(variables, x)
  # out_specs P() for the statistics: shard_map's check_vma verifies that
  # they are identical on every device (pmean'd), not just equal here.
  sharded = jax.jit(jax.shard_map(
      apply(multi), mesh=mesh, in_specs=(P(), P('batch')),
      out_specs=(P('batch'), P())))
  x_sh = jax.device_put(x, NamedSharding(mesh, P('batch')))
  got, got_state = sharded(variables, x_sh)
  for k in ('c2', 'c3', 'c4', 'c5'):
    _assert_close(np.asarray(got[k]), np.asarray(want[k]))
  for a, b in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    _assert_close(np.asarray(a), np.asarray(b))
  # The running statistics moved (momentum 0.9 towards the batch statistics).
  old = variables['batch_stats']['bn1']['mean']
  assert np.abs(np.asarray(got_state['batch_stats']['bn1']['mean'] - old)).max() > 1e-3


def _param_count(tree):
  return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


@pytest.mark.parametrize('depth', [34, 101, 152])
def test_param_shapes_match_torchvision(depth):
  """Every depth's tree maps 1:1 onto torchvision's, shapes included."""
  tv = getattr(torchvision.models, f'resnet{depth}')()
  shapes = jax.eval_shape(
      functools.partial(resnet.ResNet(depth=depth).init, train=False),
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  mapped_p, mapped_s = _torch_to_flax(tv.state_dict())
  _load(shapes['params'], mapped_p)
  _load(shapes['batch_stats'], mapped_s)


def test_resnet200_width2_shapes():
  model = resnet.ResNet(depth=200, width_multiplier=2, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), x)
  p = shapes['params']
  assert p['conv1']['kernel'].shape == (7, 7, 3, 128)
  assert p['conv1']['kernel'].dtype == jnp.float32
  stages = (3, 24, 36, 3)
  for i, n in enumerate(stages):
    assert f'layer{i + 1}_{n - 1}' in p and f'layer{i + 1}_{n}' not in p
    width = 128 * 2**i
    blk = p[f'layer{i + 1}_0']
    assert blk['conv1']['kernel'].shape[-1] == width
    assert blk['conv2']['kernel'].shape == (3, 3, width, width)
    assert blk['conv3']['kernel'].shape[-1] == 4 * width
    assert blk['downsample_conv']['kernel'].shape[-1] == 4 * width
    assert 'downsample_conv' not in p[f'layer{i + 1}_1']
  # Independent count: stem + blocks (convs + BN scale/bias).
  count = 7 * 7 * 3 * 128 + 2 * 128
  cin = 128
  for i, n in enumerate(stages):
    w = 128 * 2**i
    for j in range(n):
      count += cin * w + 9 * w * w + w * 4 * w + 2 * (w + w + 4 * w)
      if j == 0:
        count += cin * 4 * w + 2 * 4 * w
      cin = 4 * w
  assert _param_count(p) == count
  assert count / 1e6 == pytest.approx(250, rel=0.05)  # BYOL: R200x2 ~250M
  out = jax.eval_shape(functools.partial(model.apply, train=False), shapes, x)
  assert out['c5'].shape == (2, 7, 7, 4096) and out['c5'].dtype == jnp.float32
  assert resnet.c5_channels(200, 2) == 4096
  assert resnet.c5_channels(18) == 512 and resnet.c5_channels(50) == 2048
  assert resnet.c5_channels(10) == 512
  assert resnet.stage_channels(10) == (64, 128, 256, 512)
  assert resnet.stage_channels(50, 2) == (512, 1024, 2048, 4096)


@pytest.mark.parametrize('depth', sorted(resnet.RESNET_SPECS))
def test_layout_describes_the_parameter_tree(depth):
  """stem/blocks/block_convs (what the export derives names from) are the
  modules, channels and kernels of the Flax tree, for every depth."""
  shapes = jax.eval_shape(
      functools.partial(resnet.ResNet(depth=depth).init, train=False),
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))['params']
  described = {}
  for scope, specs in [((), [resnet.stem()])] + [
      ((b.name,), [s for s in b.convs[0] + (b.convs[1],) if s])
      for b in resnet.blocks(depth)]:
    for s in specs:
      described[scope + (s.conv, 'kernel')] = (s.kernel, s.kernel,
                                               s.in_channels, s.out_channels)
      described[scope + (s.bn, 'scale')] = (s.out_channels,)
      described[scope + (s.bn, 'bias')] = (s.out_channels,)
  flat = {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}
  assert flat == described
  _, stages = resnet.RESNET_SPECS[depth]
  assert [b.stage for b in resnet.blocks(depth)] == [
      s + 1 for s, n in enumerate(stages) for _ in range(n)]


def test_init_zero_last_bn_kaiming_and_bfloat16():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  v = jax.jit(lambda x: resnet.ResNet(depth=18).init(
      jax.random.PRNGKey(0), x, train=False))(x)
  p = v['params']
  for name, blk in p.items():
    if name.startswith('layer'):
      assert np.all(np.asarray(blk['bn2']['scale']) == 0)
      assert np.all(np.asarray(blk['bn1']['scale']) == 1)
      assert 'bias' not in blk['conv1']
  # kaiming_normal_(fan_out, relu): std sqrt(2 / (9 * 256)), untruncated.
  k = np.asarray(p['layer3_1']['conv2']['kernel'])  # 3x3x256x256
  np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 256)), rtol=0.02)
  assert np.abs(k).max() > 3.5 * np.sqrt(2 / (9 * 256))
  # Bottleneck: the last BN is bn3 (a lone block keeps the test cheap).
  blk = resnet._Block(kind='bottleneck', width=4, stride=2, dtype=jnp.float32,
                      bn_axis_name=None, bn_momentum=0.9, bn_epsilon=1e-5,
                      zero_init_last_bn=True)
  bp = blk.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)), False)['params']
  assert np.all(np.asarray(bp['bn3']['scale']) == 0)
  assert np.all(np.asarray(bp['bn2']['scale']) == 1)
  assert np.all(np.asarray(bp['downsample_bn']['scale']) == 1)
  no_zero = resnet.ResNet(depth=18, zero_init_last_bn=False)
  shapes = jax.eval_shape(functools.partial(no_zero.init, train=False),
                          jax.random.PRNGKey(0), x)
  assert shapes['params']['layer1_0']['bn2']['scale'].dtype == jnp.float32

  # bfloat16 compute: float32 params and outputs, close to float32 compute.
  p18 = dict(v['params'])
  ones = lambda t: jax.tree.map(jnp.ones_like, t)  # un-zero the last BNs
  p18 = {n: ({**b, 'bn2': ones(b['bn2'])} if n.startswith('layer') else b)
         for n, b in p18.items()}
  v = {'params': p18, 'batch_stats': v['batch_stats']}
  bf16 = resnet.ResNet(depth=18, dtype=jnp.bfloat16)
  fwd = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=False))
  out32 = fwd(resnet.ResNet(depth=18))(v, x)
  out16 = fwd(bf16)(v, x)
  assert out16['c5'].dtype == jnp.float32
  rel = (np.abs(np.asarray(out16['c5']) - np.asarray(out32['c5'])).max()
         / np.abs(np.asarray(out32['c5'])).max())
  assert 0 < rel < 0.1


def test_unsupported_depth_message():
  with pytest.raises(ValueError, match='model.depth'):
    resnet.c5_channels(42)


def test_mlp_head():
  """Linear -> BN (over all leading dims) -> ReLU -> Linear, by hand."""
  head = MLPHead(hidden_dim=16, output_dim=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
  v = head.init(jax.random.PRNGKey(1), x, train=True)
  y, new = head.apply(v, x, train=True, mutable=['batch_stats'])
  assert y.shape == (3, 5, 4) and y.dtype == jnp.float32
  p = jax.tree.map(np.asarray, v['params'])
  xf = np.asarray(x, np.float64).reshape(15, 8)
  h = xf @ p['linear1']['kernel'] + p['linear1']['bias']
  mu, var = h.mean(0), h.var(0)
  h = (h - mu) / np.sqrt(var + 1e-5) * p['bn1']['scale'] + p['bn1']['bias']
  want = np.maximum(h, 0) @ p['linear2']['kernel'] + p['linear2']['bias']
  np.testing.assert_allclose(np.asarray(y).reshape(15, 4), want, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(new['batch_stats']['bn1']['mean']),
                             0.1 * mu, rtol=1e-4, atol=1e-6)
  # Cross-replica BN under shard_map == one device on the full batch.
  mesh = Mesh(np.array(jax.devices()[:4]), ('batch',))
  multi = MLPHead(hidden_dim=16, output_dim=4, bn_axis_name='batch')
  f = jax.jit(jax.shard_map(
      lambda v, x: multi.apply(v, x, train=True, mutable=['batch_stats'])[0],
      mesh=mesh, in_specs=(P(), P('batch')), out_specs=P('batch')))
  x8 = jax.random.normal(jax.random.PRNGKey(2), (8, 5, 8))
  want8, _ = head.apply(v, x8, train=True, mutable=['batch_stats'])
  got8 = f(v, jax.device_put(x8, NamedSharding(mesh, P('batch'))))
  np.testing.assert_allclose(np.asarray(got8), np.asarray(want8), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize('depth,size', [(18, 224), (50, 224), (50, 96)])
def test_forward_macs_equal_torchvisions_counted_convolutions(depth, size):
  """The analytic count of the compile check = torchvision's convs counted by hooks."""
  model = getattr(torchvision.models, f'resnet{depth}')()
  counted = []

  def hook(module, inputs, output):
    k = module.kernel_size[0] * module.kernel_size[1]
    counted.append(output[0].numel() * k * module.in_channels // module.groups)

  for m in model.modules():
    if isinstance(m, torch.nn.Conv2d):
      m.register_forward_hook(hook)
  with torch.no_grad():
    model(torch.zeros(1, 3, size, size))
  assert resnet.forward_macs(depth, size) == sum(counted)
