"""The mask precompute as a package; the command is data_pipeline/precompute_masks.py.

What is stored and why is in that module's docstring (also its --help). One
job per module, imported in this order (no module imports a later one):

  errors.py        PrecomputeError (usage), ImageFailure (one bad input),
                   Interrupted (a signal stopped the run)
  decode.py        image decoding and validation; when the original bytes are kept
  label_maps.py    FH, GT (panoptic / painted instances), class and user label maps
  quality.py       mask quality: DetCon's Average Best Overlap (ABO) with GT
                   (numpy only; the workers and data_pipeline/mask_quality.py)
  sources.py       folder / tfds / demo sources: items, shard positions, iteration
  shards.py        the output folder (etils.epath), ShardTask, one record, one
                   shard and its completion sidecar, atomic writes
  lock.py          --out_dir's lock file (one job per folder; stale locks)
  plan.py          Params, their checks, the job plan (params.json, lock,
                   verification of complete shards, resume) and the manifest
  local_runner.py  the local mode: a 'spawn' process pool, progress lines, signals
  beam_runner.py   the Apache Beam mode (--runner; apache_beam is optional)
"""
