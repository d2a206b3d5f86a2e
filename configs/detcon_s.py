r"""DetCon-S: SimCLR with the contrastive detection loss (Hénaff et al. 2021).

Paper setting (imagenet preset): SimCLR's optimisation -- LARS base LR 0.3 x
batch/256, WD 1e-6, temperature 0.1, batch 4096, 1000 epochs; one shared
network, no predictor, no EMA; FH masks at scale 1000, 16 masks per view.

  python -m dense_ssl.main --config=configs/detcon_s.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  CONFIG=configs/detcon_s.py:imagenet ACCELERATOR_TYPE=v4-64 ... bash launch/tpu_pod.sh

On TPU: v4-64 (128 per chip). On a v4-32 (256 per chip) the step fits at 90%
of the HBM the compiler allows: its similarity matrices over all 4096 x 16
gathered mask vectors are differentiated on both sides (no target network),
9 GiB per chip more than SimCLR (benchmarks/results/tpu_compile.md).
  python -m dense_ssl.main --config=configs/detcon_s.py:demo --workdir=out/demo/detcon_s
"""

from configs import common


def setting(c):
  """SimCLR's optimisation, one shared network (no predictor, no EMA)."""
  c.objectives.detcon.shared_network = True
  c.optimizer.update(base_lr=0.3, weight_decay=1e-6)


def get_config(arg=None):
  return common.make('detcon_s', arg, weights=dict(detcon=1.0), setting=setting)
