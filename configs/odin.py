r"""Odin: DetCon-B on masks the network discovers (Hénaff et al., ECCV 2022).

No mask precompute: data.mask = 'discovered' (dense_ssl/discovery.py). The
host ships a whole, un-augmented view of each image beside the two crops;
in the step the EMA target network (the discovery network) embeds it, its
C4 map is clustered per image by k-means (config.discovery: K = 8, 10
iterations), and each view's mask is the cluster map carried through the
view's crop and flip. DetCon-B's loss and setting otherwise (configs/detcon_b.py:
ResNet-50, 224 px, batch 4096, 16 masks per view, temperature 0.1, LARS
0.2 x batch/256, EMA 0.996, 1000 epochs). Which of these are Odin's and
which are our assumptions: dense_ssl/discovery.py and README's Known gaps.
Any mask dataset works (only its images are read); the demo's and COCO's
GT maps let the run score its discovery (config.discovery.quality_every_steps:
discovery/abo beside FH's discovery/abo_fh).

  python -m dense_ssl.main --config=configs/odin.py:imagenet --workdir=WORKDIR \
      --config.data.dir=MASKS_DIR
  python -m dense_ssl.main --config=configs/odin.py:coco --workdir=WORKDIR \
      --config.data.dir=COCO_MASKS_DIR --config.discovery.quality_every_steps=5000
  python -m dense_ssl.main --config=configs/odin.py:demo --workdir=out/demo/odin
  python -m dense_ssl.main --config=configs/odin.py:test --workdir=/tmp/t \
      --config.data.dir=MASKS_DIR
Switches: --config.discovery.num_clusters=K, --config.discovery.feature=c5,
--config.data.discovery_view_size=448 (a larger whole view: a finer map).
"""

from configs import common


def setting(c):
  c.data.mask = 'discovered'


def get_config(arg=None):
  return common.make('odin', arg, weights=dict(detcon=1.0), setting=setting)
