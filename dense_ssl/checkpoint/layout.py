"""Where a run keeps its checkpoints, and the errors every checkpoint reader raises."""

import os
from typing import List

from etils import epath


STATE_ITEM = 'state'  # the orbax item of the TrainState (Checkpointer.save)
META_ITEM = 'meta'
NETWORKS = ('online', 'target')
CORRUPT_DIR = 'checkpoints_corrupt'  # damaged steps are moved here, never deleted


def checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


class CheckpointError(RuntimeError):
  """A workdir cannot give what was asked; the message says what to do."""


class RunMismatchError(ValueError):
  """A readable checkpoint whose TrainState does not fit this run's."""

  def __init__(self, step, detail):
    self.step, self.detail = step, detail
    super().__init__(f'the checkpoint of step {step} does not fit this run\'s '
                     f'TrainState ({detail})')


def available_steps(workdir) -> List[int]:
  """Steps with a complete checkpoint, ascending (orbax writes each step to a
  temporary folder and renames it to the bare number when complete)."""
  directory = epath.Path(checkpoint_dir(workdir))
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and p.is_dir())
