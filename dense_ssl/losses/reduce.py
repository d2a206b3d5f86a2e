"""Means over valid entries of the GLOBAL batch, inside the per-device step."""

import jax
import jax.numpy as jnp


def global_masked_mean(values, valid, axis_name=None):
  """Sum of values[valid] over all devices / their count, per device.

  Each device returns (its sum) * n_devices / N_global, so the trainer's
  pmean of the loss (and of the gradients) is the mean over every valid
  entry of the global batch: 1 and N devices agree whatever the split of
  valid entries. No valid entry anywhere: 0 with zero (finite) gradients.

  Args:
    values: float array; entries where `valid` is False are ignored (even NaN).
    valid: bool array of the same shape.
    axis_name: the mapped data-parallel axis, or None (this device only).
  Returns:
    (mean scalar float32, number of valid entries of this device as float32).
  """
  w = valid.astype(jnp.float32)
  total = jnp.sum(jnp.where(valid, values, 0.0))
  count = jnp.sum(w)
  scale, global_count = 1.0, count
  if axis_name is not None:
    scale = jax.lax.psum(1.0, axis_name)
    global_count = jax.lax.psum(count, axis_name)
  return total * scale / jnp.maximum(global_count, 1.0), count
