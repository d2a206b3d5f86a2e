#!/usr/bin/env bash
# The main job on the embedded demo data, on CPU:
#   1. generates the demo scenes and precomputes their FH + ground-truth masks,
#      and a held-out split of other scenes (class maps: the probes' labels),
#   2. renders one two-view batch to a PNG (masks, crops, correspondences),
#   3. pretrains DetCon-B with the `demo` preset (checkpoints + TensorBoard),
#      with the online dense probe and, every $EVAL_EVERY steps, the held-out
#      probe (at step 0: the random-init floor),
#   4. plots the loss curve, and whether the features learn, to PNGs.
# Re-running resumes: masks are kept, training continues from its last
# checkpoint (or says it is finished).
#
#   bash launch/demo.sh                      # everything under ./out/demo
#   OUT=/tmp/demo bash launch/demo.sh        # elsewhere
#   bash launch/demo.sh --config.total_steps=50   # extra args go to the trainer
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"

OUT="${OUT:-$PWD/out/demo}"
MASKS="$OUT/masks"
HELD_OUT="$OUT/masks_val"
WORKDIR="$OUT/detcon_b"
EVAL_EVERY="${EVAL_EVERY:-50}"
mkdir -p "$OUT"

echo "== 1/4 demo data and masks -> $MASKS"
if [ -f "$MASKS/manifest.json" ]; then
  echo "masks already there (delete $MASKS to rebuild)"
else
  python -m data_pipeline.precompute_masks --source=demo --out_dir="$MASKS" \
    --fh_scales=250,500 --fh_min_sizes=50,100 --examples_per_shard=250
fi
if [ -f "$HELD_OUT/manifest.json" ]; then
  echo "held-out masks already there (delete $HELD_OUT to rebuild)"
else
  python -m data_pipeline.precompute_masks --source=demo --split_name=val \
    --num_examples=128 --out_dir="$HELD_OUT" --fh_scales= --fh_min_sizes=
fi

echo "== 2/4 one batch rendered -> $OUT/batch.png"
python -m dense_ssl.visualize --data_dir="$MASKS" --out="$OUT/batch.png" \
  --mask=gt --num_examples=4 --image_size=128

echo "== 3/4 DetCon-B pretraining (configs/detcon_b.py:demo) -> $WORKDIR"
python -m dense_ssl.main --config=configs/detcon_b.py:demo --workdir="$WORKDIR" \
  --config.data.dir="$MASKS" --config.eval_data_dir="$HELD_OUT" \
  --config.eval_every_steps="$EVAL_EVERY" "$@"

echo "== 4/4 loss curve -> $OUT/loss.png, learning -> $OUT/learning.png"
python -m dense_ssl.plot_curves --workdir="$WORKDIR" --out="$OUT/loss.png" --tags=train/loss
python -m dense_ssl.plot_curves --workdir="$WORKDIR" --out="$OUT/learning.png" --learning

cat <<MSG

Done. Outputs:
  masks (TFRecords + manifest.json): $MASKS
  a batch with masks and correspondences: $OUT/batch.png
  checkpoints:                        $WORKDIR/checkpoints
  TensorBoard logs:                   tensorboard --logdir $WORKDIR
  loss curve:                         $OUT/loss.png
  online + held-out probes vs floor:  $OUT/learning.png
MSG
