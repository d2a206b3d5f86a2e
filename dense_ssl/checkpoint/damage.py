"""What is wrong with a checkpoint that does not restore, in one line; no asyncio noise.

Orbax and tensorstore say which file failed only in the text of their
errors (no structured field in orbax-checkpoint 0.12.8): describe_restore_failure
reads that text, and tests/test_faults.py pins the wording of the pinned
versions by damaging real checkpoints (a truncated array file, a deleted
_METADATA).
"""

import logging as py_logging
import os
import re
import sys
from typing import Dict, Optional, Tuple

import jax


_NOISE_FILTER_INSTALLED = False


def _is_read_failure_echo(text):
  return any(s in text for s in ('OCDBT', 'TensorStore', 'reading array index'))


class _AsyncioEchoFilter(py_logging.Filter):
  """Drops asyncio's 'Future/Task exception was never retrieved' for failed array reads.

  A read abandoned while it was still a bare future is reported as a Future;
  one already wrapped in a task (more often on a loaded machine) as a Task.
  """

  def filter(self, record):
    message = record.getMessage()
    return not (message.startswith(('Future exception was never retrieved',
                                    'Task exception was never retrieved'))
                and _is_read_failure_echo(message))


def quiet_closed_loop_noise():
  """Drops the echoes of a failed restore, which the caller reports in one line.

  When one array read of an orbax restore fails, orbax's event loop ends
  while tensorstore still completes the other reads: each completion then
  reports 'RuntimeError: Event loop is closed' through sys.unraisablehook,
  orbax's abandoned read coroutines report their own errors the same way,
  and asyncio logs 'Future exception was never retrieved' for each: hundreds
  of traceback lines after the real error. Only those reports are dropped.
  """
  global _NOISE_FILTER_INSTALLED
  if _NOISE_FILTER_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    value = unraisable.exc_value
    code = getattr(unraisable.object, 'cr_code', None)
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    if code is not None and '/orbax/' in code.co_filename and _is_read_failure_echo(
        str(value)):
      return
    previous(unraisable)

  sys.unraisablehook = hook
  py_logging.getLogger('asyncio').addFilter(_AsyncioEchoFilter())
  _NOISE_FILTER_INSTALLED = True


def _chain(error):
  """The exception and its causes/contexts, outermost first."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def describe_restore_failure(error: BaseException, step_dir) -> str:
  """One line: which file of the step folder is damaged, and how."""
  step_dir = str(step_dir).rstrip('/')
  rel = lambda path: os.path.relpath(str(path), step_dir) if '://' not in step_dir else str(path)
  text = '\n'.join(str(e) for e in _chain(error))
  # A deleted/missing metadata file (orbax: "... (named _METADATA) does not exist at DIR").
  m = re.search(r'named (\w+)\) does not exist at (\S+?)\.?$', text, re.M)
  if m:
    return f'{rel(os.path.join(m[2], m[1]))} is missing'
  # A truncated array file (tensorstore, OCDBT): the value's size names the file.
  m = re.search(r'Error reading "([^"/]+)[^"]*" in OCDBT database at local file "([^"]+)"'
                r'.*?is not valid for value of size (\d+)', text, re.S)
  if m:
    array, database, size = m[1], m[2], int(m[3])
    culprits = []
    for root, _, files in os.walk(database):
      culprits += [os.path.join(root, f) for f in files
                   if os.path.getsize(os.path.join(root, f)) == size]
    where = (f'{rel(culprits[0])} is truncated ({size} bytes)' if len(culprits) == 1
             else f'an array file under {rel(database)} is truncated ({size} bytes)')
    return f'{where}: reading array {array} goes past its end'
  for e in _chain(error):
    if isinstance(e, FileNotFoundError) and getattr(e, 'filename', None):
      return f'{rel(e.filename)} is missing'
  innermost = _chain(error)[-1]
  error = innermost if str(innermost).strip() else error
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(first) > 300:
    first = first[:300] + '...'
  return f'{type(error).__name__}: {first}'


def _key_name(k):
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_shapes(tree) -> Dict[str, Tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


def structure_difference(saved_tree, target) -> Optional[str]:
  """None if the saved metadata tree has the target's leaves and shapes, else a line."""
  saved, wanted = _leaf_shapes(saved_tree), _leaf_shapes(target)
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  if only_saved or only_wanted:
    parts = []
    if only_saved:
      parts.append(f'{len(only_saved)} arrays only in the checkpoint, e.g. {only_saved[0]}')
    if only_wanted:
      parts.append(f'{len(only_wanted)} only in this run, e.g. {only_wanted[0]}')
    return '; '.join(parts)
  shapes = [k for k in sorted(wanted) if saved[k] != wanted[k]]
  if shapes:
    k = shapes[0]
    return (f'{len(shapes)} arrays have other shapes, e.g. {k}: {saved[k]} in the '
            f'checkpoint, {wanted[k]} now')
  return None
