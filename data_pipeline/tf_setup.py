"""TensorFlow is used for tf.data only: imported quietly and kept off every accelerator.

Every module of this repository gets TensorFlow from `hide_accelerators()`
(or `import_tensorflow()`), never by importing it first itself, so that the
first import, wherever it happens, is the quiet one.
"""

import functools
import os
import re
import sys
import tempfile

# What TensorFlow's native libraries print on import, before any logging
# setting can apply (its C++ logging is absl's, uninitialised at import, so
# TF_CPP_MIN_LOG_LEVEL does not reach these lines from TF 2.19 on; 2.21 is
# pinned): the
# oneDNN notice (an INFO line, twice: two libraries), absl's note that it is
# uninitialised, and the CUDA stubs' "no driver" notices on a CPU host.
# Anything else it prints (a real warning or error) is passed on.
_IMPORT_NOISE = re.compile(
    r'oneDNN custom operations are on'
    r'|All log messages before absl::InitializeLog\(\) is called'
    r'|Could not find cuda drivers on your machine'
    r'|Unable to register cu(DNN|FFT|BLAS) factory'
    r'|computation placer already registered'
    r'|failed call to cuInit'
    r'|TF-TRT Warning: Could not find TensorRT'
    r'|This TensorFlow binary is optimized to use available CPU instructions'
    r'|To enable the following instructions: .* rebuild TensorFlow')


def import_tensorflow():
  """The tensorflow module, imported with the native stderr captured: the
  start-up notices above are dropped, anything else is passed on."""
  if 'tensorflow' in sys.modules:
    return sys.modules['tensorflow']
  # TF's runtime INFO lines ("TFRecordDataset `buffer_size` is unspecified",
  # one per dataset) are off unless asked for; its warnings and errors stay.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  # oneDNN's kernels off: tf.data here crops, resizes and decodes, which
  # they do not speed up, and on a CPU without AVX-512 they print "oneDNN
  # supports DT_INT32 only on platforms with AVX-512" mid-run (a runtime
  # notice no filter above reaches). TF_ENABLE_ONEDNN_OPTS=1 turns them on.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode('utf-8', 'replace')
      kept = [line for line in text.splitlines() if line and not _IMPORT_NOISE.search(line)]
      if kept:
        sys.stderr.write('\n'.join(kept) + '\n')
        sys.stderr.flush()
  return tf


@functools.cache
def hide_accelerators():
  """Hides GPUs/TPUs from TensorFlow so that JAX owns all accelerator memory.

  Call before TF builds any op. Returns the tensorflow module for convenience.
  """
  tf = import_tensorflow()
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # Already initialised (devices fixed) or kind unknown on this build.
      pass
  return tf
