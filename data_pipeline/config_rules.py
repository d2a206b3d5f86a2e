"""The words of a config check: `check(key, value, rule)` -> [] or one problem line.

Used by dense_ssl/config_check.py, the objectives' `validate` hooks
(dense_ssl/objectives/) and the mask kinds' checks (data_pipeline/mask_kinds/),
so that every range problem reads the same (pure Python, in the lowest
layer so both packages can import it):
`config.<key>=<value>: must be <rule>`.
"""

import math
import numbers

# rule -> (test, words): the ranges `check` knows.
_RULES = {
    '> 0': (lambda v: v > 0, 'must be > 0'),
    '>= 0': (lambda v: v >= 0, 'must be >= 0'),
    '>= 1': (lambda v: v >= 1, 'must be >= 1'),
    '>= 2': (lambda v: v >= 2, 'must be >= 2'),
    'in [0, 1]': (lambda v: 0 <= v <= 1, 'must be in [0, 1]'),
    'in [0, 1)': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    'in (0, 1]': (lambda v: 0 < v <= 1, 'must be in (0, 1]'),
}


def is_number(value, integer=False):
  """A finite int/float (not bool); with integer, an int."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  if integer:
    return isinstance(value, numbers.Integral)
  return math.isfinite(float(value))


def check(key, value, rule, *, integer=False):
  """[] or one problem line `config.<key>=<value>: must be <rule>`.

  `key` is the dotted path under config (e.g. 'objectives.detcon.num_samples');
  `rule` one of _RULES ('> 0', '>= 0', '>= 1', '>= 2', 'in [0, 1]', 'in [0, 1)',
  'in (0, 1]'); integer: the value must also be an int.
  """
  test, words = _RULES[rule]
  if not is_number(value, integer) or not test(value):
    return [f'config.{key}={value!r}: {words}' + (' (an integer)' if integer else '')]
  return []


def image_size(key, value, stride, *, zero_means=None):
  """[] or one problem line for an image side that must be a multiple of `stride`.

  The network's C5 stride (dense_ssl/models/resnet.C5_STRIDE): every view
  and feature map then has whole cells. zero_means: what 0 stands for when
  it is allowed (e.g. 'data.image_size'), else 0 is refused.
  """
  zero = f'0 ({zero_means}) or ' if zero_means else ''
  if value == 0 and zero_means and is_number(value, integer=True):
    return []
  if not is_number(value, integer=True) or value <= 0:
    return [f'config.{key}={value!r}: must be {zero}a positive multiple of {stride}'
            + (' (an integer)' if zero_means else '')]
  if value % stride:
    lower = max(stride, value // stride * stride)
    return [f'config.{key}={value}: must be {zero}a multiple of {stride} (the ResNet\'s '
            f'C5 stride), e.g. {lower} or {lower + stride}']
  return []
