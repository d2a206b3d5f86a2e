"""The mask precompute as a package; the command is data_pipeline/precompute_masks.py.

What is stored and why is in that module's docstring (also its --help). One
job per module, imported in this order (no module imports a later one):

  errors.py        PrecomputeError (usage) and ImageFailure (one bad input)
  decode.py        image decoding and validation; when the original bytes are kept
  label_maps.py    FH, GT (panoptic / painted instances) and user label maps
  sources.py       folder / tfds / demo sources: items, shard positions, iteration
  shards.py        the output folder (etils.epath), ShardTask, one record, one
                   shard and its completion sidecar, atomic writes
  plan.py          Params, their checks, the job plan (params.json, resume) and
                   the manifest
  local_runner.py  the local mode: a 'spawn' process pool and progress lines
  beam_runner.py   the Apache Beam mode (--runner; apache_beam is optional)
"""
