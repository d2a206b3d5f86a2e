"""XLA_FLAGS for the processes the tests start: conftest's flags, another device count."""

import os
import re

_COUNT = re.compile(r'--xla_force_host_platform_device_count=\d+')


def xla_flags(num_devices=None, flags=None):
  """`flags` (default: this process's XLA_FLAGS) with the
  simulated CPU device count set to `num_devices` (None: the flag removed)."""
  flags = _COUNT.sub('', os.environ.get('XLA_FLAGS', '') if flags is None else flags)
  if num_devices is not None:
    flags += f' --xla_force_host_platform_device_count={num_devices}'
  return ' '.join(flags.split())
