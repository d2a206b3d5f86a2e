"""TensorFlow is used for tf.data only: keep it off every accelerator."""

import functools


@functools.cache
def hide_accelerators():
  """Hides GPUs/TPUs from TensorFlow so that JAX owns all accelerator memory.

  Call before TF builds any op. Returns the tensorflow module for convenience.
  """
  import tensorflow as tf

  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # Already initialised (devices fixed) or kind unknown on this build.
      pass
  return tf
