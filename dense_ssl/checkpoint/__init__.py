"""Orbax checkpoints of the TrainState, and the config saved beside them.

Layout of a workdir:
  config.json                    the full config of the run (process 0)
  checkpoints/<step>/state/      the TrainState (orbax StandardSave, a pytree
                                 with online_params, online_batch_stats,
                                 target_params, target_batch_stats,
                                 opt_state, step, rng, method_state)
  checkpoints/<step>/meta/       JSON: step, total_steps, data position, ...
  events.out.tfevents.*          TensorBoard scalars (process 0)

Orbax writes each step to a temporary folder and renames it when complete
(atomic), in a background thread (async), and keeps the last N. Every
process calls save/restore: with several hosts orbax coordinates them.

A complete step can still be damaged afterwards (a truncated array file, a
deleted _METADATA). `Checkpointer.restore_newest` then names the step and
the file, moves the step folder aside into `checkpoints_corrupt/<step>.<time>`
(never deletes it) and falls back to the newest step that restores; with
several processes they all take the same decision (each tries the same step,
the verdicts are all-gathered, and process 0 moves the folder). A checkpoint
that reads fine but does not fit this run's TrainState (another optimiser,
another method) is not damaged: that is `RunMismatchError`, and
`config_differences` says which config keys differ from config.json.

Tools that read a finished run (dense_ssl.convert, .evaluate, .flip_test)
need no model: `restore_encoder` restores the state's raw tree and takes the
encoder from where the TrainState always keeps it (a damaged latest step is
skipped; every tool says so in `fallback_lines`' words):
  online_params['encoder'], online_batch_stats['encoder']   the online network
  target_params['encoder'], target_batch_stats['encoder']   the EMA target
                                           (empty dicts: the method has none)
  online_params['fpn'], target_params['fpn']                ReSim-FPN's FPN
                                           (params only: it has no BN)

The jobs, one module each: layout.py (paths, errors), manager.py (the
trainer's saves and fall back), damage.py (what is damaged, in one line),
run_config.py (config.json), encoder.py (the tools' restore).
"""

from dense_ssl.checkpoint.damage import describe_restore_failure
from dense_ssl.checkpoint.damage import quiet_closed_loop_noise
from dense_ssl.checkpoint.damage import structure_difference
from dense_ssl.checkpoint.encoder import DamagedCheckpointError
from dense_ssl.checkpoint.encoder import fallback_lines
from dense_ssl.checkpoint.encoder import restore_encoder
from dense_ssl.checkpoint.encoder import RestoredEncoder
from dense_ssl.checkpoint.layout import available_steps
from dense_ssl.checkpoint.layout import CheckpointError
from dense_ssl.checkpoint.layout import checkpoint_dir
from dense_ssl.checkpoint.layout import CORRUPT_DIR
from dense_ssl.checkpoint.layout import META_ITEM
from dense_ssl.checkpoint.layout import NETWORKS
from dense_ssl.checkpoint.layout import RunMismatchError
from dense_ssl.checkpoint.layout import STATE_ITEM
from dense_ssl.checkpoint.manager import Checkpointer
from dense_ssl.checkpoint.run_config import check_config_matches
from dense_ssl.checkpoint.run_config import config_differences
from dense_ssl.checkpoint.run_config import read_config
from dense_ssl.checkpoint.run_config import save_config

__all__ = [
    'available_steps', 'check_config_matches', 'checkpoint_dir', 'CheckpointError',
    'Checkpointer', 'config_differences', 'CORRUPT_DIR', 'DamagedCheckpointError',
    'describe_restore_failure', 'fallback_lines', 'META_ITEM', 'NETWORKS',
    'quiet_closed_loop_noise', 'read_config', 'restore_encoder', 'RestoredEncoder',
    'RunMismatchError', 'save_config', 'STATE_ITEM', 'structure_difference',
]
