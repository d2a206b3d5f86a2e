"""The GPU step benchmark (benchmarks/gpu_step.py) on this CPU, at the test preset.

One real run of both methods (ResNet-10, 64 px, per-device batch 2, two
timed steps), whose FLOPs the CPU lowering (a GPU's fallback) must match;
the batch search and the out-of-memory handling against fake tries.
"""

import json
import types

import jax
import numpy as np
import pytest

from benchmarks import gpu_step
from configs import detcon_b


def _fits_up_to(largest, log, peak=None):
  """A try that fits per-device batches <= largest (optionally with compiler peaks)."""

  def try_batch(b):
    log.append(b)
    return gpu_step.Trial(b, fits=b <= largest, seconds=1.0,
                          peak_bytes=peak(b) if peak else None,
                          state_bytes=2e9 if peak else None)

  return try_batch


def test_search_doubles_then_bisects_to_the_granularity():
  tried = []
  best, trials = gpu_step.find_max_batch(_fits_up_to(100, tried), start=64, granularity=16,
                                         max_tries=10, log=lambda s: None)
  assert best == 96
  assert tried == [64, 128, 96, 112] and len(trials) == 4


def test_search_stops_after_max_tries_with_the_best_so_far():
  tried = []
  best, _ = gpu_step.find_max_batch(_fits_up_to(100, tried), start=64, granularity=16,
                                    max_tries=3, log=lambda s: None)
  assert (best, tried) == (96, [64, 128, 96])


def test_search_follows_the_memory_line_where_there_is_one():
  # Peak 2 GB of state + 0.1 GB per example; 100 examples fill the device.
  tried = []
  best, _ = gpu_step.find_max_batch(
      _fits_up_to(100, tried, peak=lambda b: 2e9 + 1e8 * b), start=64, granularity=16,
      max_tries=10, limit_bytes=2e9 + 1e8 * 100.5, log=lambda s: None)
  assert best == 96
  assert tried == [64, 96]   # Straight to 96; by the line, 112 cannot fit.


def test_search_steps_below_a_failure_the_memory_line_did_not_predict():
  # The compiler's peaks say 100 examples fit; the runtime's own buffers allow 90.
  tried = []
  best, _ = gpu_step.find_max_batch(
      _fits_up_to(90, tried, peak=lambda b: 2e9 + 1e8 * b), start=64, granularity=16,
      max_tries=10, limit_bytes=2e9 + 1e8 * 100.5, log=lambda s: None)
  assert best == 80 and tried == [64, 96, 80]


def test_search_reports_none_when_nothing_fits():
  tried = []
  best, _ = gpu_step.find_max_batch(_fits_up_to(8, tried), start=64, granularity=16,
                                    log=lambda s: None)
  assert best is None and tried == [64, 32, 16]


def _bench_that_fails_with(error, monkeypatch):
  class Lowered:

    def compile(self):
      raise error

  monkeypatch.setattr(gpu_step, 'lower_step', lambda *a: Lowered())
  spec = {'view1/image': ((8, 8, 3), np.uint8), 'view1/mask': ((8, 8), np.uint16)}
  return gpu_step.Bench(name='fake', config=None, spec=spec, host_state={}, hyper={},
                        mesh=types.SimpleNamespace(local_devices=[0], size=1))


def test_a_try_out_of_memory_does_not_fit(monkeypatch):
  oom = jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                   'allocate 81604378624 bytes.')
  trial = gpu_step.prepare_variant(_bench_that_fails_with(oom, monkeypatch), 64, 'uint8')
  assert not trial.fits and trial.error.startswith('RESOURCE_EXHAUSTED')


def test_a_try_that_fails_otherwise_raises(monkeypatch):
  other = jax.errors.JaxRuntimeError('INVALID_ARGUMENT: a bug')
  with pytest.raises(jax.errors.JaxRuntimeError, match='a bug'):
    gpu_step.prepare_variant(_bench_that_fails_with(other, monkeypatch), 64, 'uint8')


def test_synthetic_batch_has_the_pipeline_shapes():
  spec = {'view1/image': ((64, 64, 3), np.uint8), 'view1/mask': ((64, 64), np.uint16),
          'view1/box': ((4,), np.float32), 'view1/flip': ((), np.int32)}
  b = gpu_step.synthetic_batch(spec, 2, 3)
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
      k: ((2, 3) + s, np.dtype(d)) for k, (s, d) in spec.items()}
  assert len(np.unique(b['view1/mask'][0, 0][::16, ::16])) <= 8   # 4 x 4 blocks.
  assert (b['view1/mask'][0, 0][:16, :16] == b['view1/mask'][0, 0, 0, 0]).all()
  assert (b['view1/box'] == [0, 0, 1, 1]).all() and not b['view1/flip'].any()


def test_overrides_take_literals_and_tuples():
  c = gpu_step.apply_overrides(detcon_b.get_config('test'),
                               ['model.depth=18', 'data.crop_area=(0.2', '1.0)',
                                'data.mask=grid'])
  assert (c.model.depth, tuple(c.data.crop_area), c.data.mask) == (18, (0.2, 1.0), 'grid')


def test_flops_come_from_the_cpu_lowering_where_the_device_has_no_count(monkeypatch):
  monkeypatch.setattr(gpu_step, 'compiled_flops', lambda compiled: 0.0)
  monkeypatch.setattr(gpu_step, 'cpu_lowered_flops', lambda bench: 7e9)
  bench = types.SimpleNamespace(compiled={gpu_step.TRAINER: None})
  assert gpu_step.step_flops(bench) == (7e9, 'CPU lowering', 7e9)


def test_one_cpu_run_writes_the_table_and_the_device_description(tmp_path):
  # One method: the alternation of rounds is the same code for one or two,
  # and each method adds three step compiles to the suite.
  out = str(tmp_path / 'gpu_step.md')
  rows = gpu_step.run(methods=('detcon_b',), preset='test', batch_sizes=['2'],
                      steps=2, warmup=1, out=out, log=lambda s: None)

  text = open(out).read()
  assert '| method | per-device batch | step ms |' in text
  device = json.load(open(tmp_path / 'gpu_target.json'))
  assert device['device_kind'] and device['jax'] and device['jaxlib']
  assert [r['method'] for r in rows] == ['detcon_b']
  for r in rows:
    assert f'| {r["method"]} | 2 |' in text
    assert r['per_device'] == 2 and not r['errors']
    assert r['step_s'] > 0
    np.testing.assert_allclose(r['images_per_s'], r['global_batch'] / r['step_s'])
    assert r['flops_per_step'] > 0 and r['flops_source'] == 'compiled executable'
    # The unoptimised CPU lowering (what a GPU without a count falls back
    # to) counts what the compiled program does, within a few percent.
    assert r['cpu_lowered_flops'] == pytest.approx(r['flops_per_step'], rel=0.05)
    assert r['mfu'] is None   # A CPU has no peak in the table.
    # A difference of two noisy medians: at this size (two steps on busy
    # cores) it can fall a little below 0; on a GPU it is the recipe's share.
    assert r['color_share'] == pytest.approx(1 - r['float_step_s'] / r['step_s'])
    assert -1 < r['color_share'] < 1
