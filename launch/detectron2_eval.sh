#!/usr/bin/env bash
# Fine-tunes and evaluates a converted backbone with Detectron2 (transfer
# evaluation of WORKSPACE.md section 6). Checks everything first, prints the exact
# command, then runs Detectron2's tools/train_net.py (through
# detectron2_configs/train_net_ssl.py, which only registers one extra ROI head).
#
#   WEIGHTS=detcon_b_r50.pkl DETECTRON2_DIR=~/src/detectron2 \
#   DETECTRON2_DATASETS=~/datasets TASK=coco_1x NUM_GPUS=8 \
#     bash launch/detectron2_eval.sh [Detectron2 config opts...]
#
# A CPU smoke test (two iterations, then the COCO evaluation; minutes) on the
# demo scenes written as COCO by `python -m data_pipeline.export_coco
# --out_dir=/tmp/d2data` (WORKSPACE.md section 6.5 has the full command):
#   NUM_GPUS=0 DETECTRON2_DATASETS=/tmp/d2data TASK=coco_1x ... bash \
#     launch/detectron2_eval.sh SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 \
#     TEST.PRECISE_BN.NUM_ITER 2 MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 ...
#
# The same settings as flags: --weights= --detectron2_dir= --datasets=
# --task= --num_gpus= --out_dir= --python=; --dry_run prints and stops;
# --resume continues a run in OUT_DIR. Anything else is passed to train_net.py
# as config opts, e.g. `SOLVER.IMS_PER_BATCH 8 SOLVER.BASE_LR 0.01`.
#
#   WEIGHTS              .pkl from `python -m dense_ssl.convert --to=detectron2`
#   DETECTRON2_DIR       a Detectron2 source checkout (tools/, configs/)
#   DETECTRON2_DATASETS  dataset root in Detectron2's layout (coco/, VOC2007/,
#                        VOC2012/, cityscapes/)
#   TASK                 coco_1x | coco_2x | voc | cityscapes
#   NUM_GPUS             GPUs on this machine (default: all that nvidia-smi sees);
#                        0 runs on the CPU in one process (MODEL.DEVICE cpu,
#                        --num-gpus 1): a smoke test with a tiny schedule and
#                        data (WORKSPACE.md section 6.5), not an evaluation.
#                        SyncBN needs no change there: with one process torch's
#                        SyncBatchNorm computes plain BatchNorm.
#   OUT_DIR              default eval/<TASK>; results: OUT_DIR/metrics.json,
#                        OUT_DIR/log.txt, OUT_DIR/inference/, OUT_DIR/results.txt
#   PYTHON               interpreter of the Detectron2 environment (default python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "detectron2_eval.sh: ERROR: $*" >&2; exit 1; }

dry_run=0
resume="${RESUME:-0}"
opts=()
for arg in "$@"; do
  case "$arg" in
    --weights=*) WEIGHTS="${arg#*=}" ;;
    --detectron2_dir=*) DETECTRON2_DIR="${arg#*=}" ;;
    --datasets=*) DETECTRON2_DATASETS="${arg#*=}" ;;
    --task=*) TASK="${arg#*=}" ;;
    --num_gpus=*) NUM_GPUS="${arg#*=}" ;;
    --out_dir=*) OUT_DIR="${arg#*=}" ;;
    --python=*) PYTHON="${arg#*=}" ;;
    --dry_run) dry_run=1 ;;
    --resume) resume=1 ;;
    # The usage is the header comment (from line 2 to the first non-comment).
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    --*) die "unknown flag $arg (see --help); Detectron2 config opts are KEY VALUE pairs without dashes" ;;
    *) opts+=("$arg") ;;
  esac
done
PYTHON="${PYTHON:-python3}"

# ---- the task ---------------------------------------------------------------
TASK="${TASK:-}"
case "$TASK" in
  coco_1x)    config=coco_mask_rcnn_R_50_FPN_1x.yaml ;;
  coco_2x)    config=coco_mask_rcnn_R_50_FPN_2x.yaml ;;
  voc)        config=voc_faster_rcnn_R_50_C4_24k.yaml ;;
  cityscapes) config=cityscapes_mask_rcnn_R_50_FPN.yaml ;;
  "") die "set TASK (or --task=) to one of: coco_1x coco_2x voc cityscapes" ;;
  *) die "TASK=$TASK is not one of: coco_1x coco_2x voc cityscapes" ;;
esac
[ -f "$repo/detectron2_configs/$config" ] || die "missing $repo/detectron2_configs/$config"

# ---- Detectron2 -------------------------------------------------------------
DETECTRON2_DIR="${DETECTRON2_DIR:-}"
[ -n "$DETECTRON2_DIR" ] || die "set DETECTRON2_DIR to a Detectron2 source checkout (git clone https://github.com/facebookresearch/detectron2; see WORKSPACE.md section 6)"
[ -f "$DETECTRON2_DIR/tools/train_net.py" ] || die "DETECTRON2_DIR=$DETECTRON2_DIR has no tools/train_net.py: not a Detectron2 source checkout"
[ -f "$DETECTRON2_DIR/configs/Base-RCNN-FPN.yaml" ] || die "DETECTRON2_DIR=$DETECTRON2_DIR has no configs/Base-RCNN-FPN.yaml"
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found; set PYTHON to the interpreter of your Detectron2 environment"
"$PYTHON" -c "import detectron2, torch" 2>/dev/null || die "$PYTHON cannot import detectron2 (and torch): build it from source first, in that environment after torch, 'setuptools<81' and wheel: $PYTHON -m pip install --no-build-isolation -e \"$DETECTRON2_DIR\" (WORKSPACE.md section 6.2)"
if [ "$TASK" = cityscapes ]; then
  "$PYTHON" -c "import cityscapesscripts" 2>/dev/null || die "TASK=cityscapes evaluates with cityscapesscripts: $PYTHON -m pip install cityscapesscripts"
fi

# ---- data -------------------------------------------------------------------
DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-}"
[ -n "$DETECTRON2_DATASETS" ] || die "set DETECTRON2_DATASETS to the dataset root (Detectron2's layout, datasets/README.md in its checkout)"
[ -d "$DETECTRON2_DATASETS" ] || die "DETECTRON2_DATASETS=$DETECTRON2_DATASETS is not a directory"
case "$TASK" in
  coco_*) need=(coco/annotations/instances_train2017.json coco/annotations/instances_val2017.json coco/train2017 coco/val2017) ;;
  voc) need=(VOC2007/Annotations VOC2007/ImageSets/Main/trainval.txt VOC2007/ImageSets/Main/test.txt VOC2007/JPEGImages VOC2012/Annotations VOC2012/ImageSets/Main/trainval.txt VOC2012/JPEGImages) ;;
  cityscapes) need=(cityscapes/leftImg8bit/train cityscapes/leftImg8bit/val cityscapes/gtFine/train cityscapes/gtFine/val) ;;
esac
for p in "${need[@]}"; do
  [ -e "$DETECTRON2_DATASETS/$p" ] || die "TASK=$TASK needs $DETECTRON2_DATASETS/$p (Detectron2's dataset layout)"
done

# ---- GPUs -------------------------------------------------------------------
visible=0
if command -v nvidia-smi >/dev/null; then
  visible="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi
if [ -z "${NUM_GPUS:-}" ]; then
  [ "$visible" -gt 0 ] || die "no GPU visible (nvidia-smi): set NUM_GPUS to the GPUs to use, or NUM_GPUS=0 to run on the CPU (one process; only for a smoke test with a tiny schedule, e.g. SOLVER.MAX_ITER 2)"
  NUM_GPUS="$visible"
fi
[[ "$NUM_GPUS" =~ ^(0|[1-9][0-9]*)$ ]] || die "NUM_GPUS=$NUM_GPUS: need the number of GPUs (nvidia-smi sees $visible), or 0 for the CPU"
if [ "$visible" -gt 0 ] && [ "$NUM_GPUS" -gt "$visible" ]; then
  die "NUM_GPUS=$NUM_GPUS but nvidia-smi sees only $visible GPUs"
fi
if [ "$NUM_GPUS" = 0 ]; then
  # One process on the CPU. Detectron2's launch() starts no workers for one
  # process and initialises no process group, so SyncBN layers (our configs)
  # fall back to plain BatchNorm: no config change is needed.
  device_opts=(MODEL.DEVICE cpu)
  num_procs=1
else
  device_opts=()
  num_procs="$NUM_GPUS"
fi

# ---- weights: format, and the architecture keys they need -------------------
WEIGHTS="${WEIGHTS:-}"
[ -n "$WEIGHTS" ] || die "set WEIGHTS to a converted backbone (.pkl from: python -m dense_ssl.convert --workdir=... --to=detectron2 --out=FILE.pkl)"
[ -f "$WEIGHTS" ] || die "WEIGHTS=$WEIGHTS does not exist"
WEIGHTS="$(cd "$(dirname "$WEIGHTS")" && pwd)/$(basename "$WEIGHTS")"
# Reads the pickle with plain Python (no dense_ssl needed in this environment)
# and prints the MODEL.RESNETS.* opts of its architecture.
arch_opts="$("$PYTHON" - "$WEIGHTS" "$TASK" <<'PY'
import pickle, re, sys
path, task = sys.argv[1], sys.argv[2]
def fail(msg):
  sys.exit(f'detectron2_eval.sh: ERROR: WEIGHTS={path}: {msg}')
try:
  with open(path, 'rb') as f:
    obj = pickle.load(f, encoding='latin1')
except Exception as e:
  fail(f'not a pickle ({type(e).__name__}: {e}). A .pth from --to=torchvision '
       'is not a Detectron2 file: convert again with --to=detectron2.')
if not isinstance(obj, dict) or 'model' not in obj:
  fail('no "model" dict: not a Detectron2 checkpoint.')
if not obj.get('matching_heuristics'):
  fail('"matching_heuristics" is not set: short names like res2.0.conv1.weight '
       'would not load. Convert with python -m dense_ssl.convert --to=detectron2.')
model = obj['model']
if 'stem.conv1.weight' not in model:
  fail('no stem.conv1.weight: not a ResNet backbone with Detectron2 names.')
blocks = {s: len({k.split('.')[1] for k in model if k.startswith(f'res{s}.')})
          for s in (2, 3, 4, 5)}
bottleneck = 'res2.0.conv3.weight' in model
table = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34 if not bottleneck else 50,
         (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
depth = table.get(tuple(blocks[s] for s in (2, 3, 4, 5)))
if depth is None:
  fail(f'blocks per stage {list(blocks.values())} are not a Detectron2 ResNet '
       '(MODEL.RESNETS.DEPTH 18/34/50/101/152).')
if task == 'voc' and not bottleneck:
  fail('the C4 (VOC) recipe needs a bottleneck ResNet (50/101/152).')
stem = model['stem.conv1.weight'].shape[0]
opts = [f'MODEL.RESNETS.DEPTH {depth}', f'MODEL.RESNETS.STEM_OUT_CHANNELS {stem}']
if bottleneck:
  opts += [f'MODEL.RESNETS.WIDTH_PER_GROUP {stem}',
           f'MODEL.RESNETS.RES2_OUT_CHANNELS {4 * stem}']
else:
  opts += ['MODEL.RESNETS.RES2_OUT_CHANNELS 64']
if any(k.startswith('fpn_') for k in model):
  print('note: WEIGHTS has FPN weights (fpn_lateral*/fpn_output*, with biases). '
        'These configs use FPN.NORM SyncBN, under which only the conv weights '
        'load; add MODEL.FPN.NORM "" to transfer them as trained (ReSim).',
        file=sys.stderr)
print(' '.join(opts))
PY
)" || exit 1

# ---- output -----------------------------------------------------------------
OUT_DIR="${OUT_DIR:-eval/$TASK}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ -f "$OUT_DIR/last_checkpoint" ] && [ "$resume" != 1 ]; then
  die "OUT_DIR=$OUT_DIR already holds a run (last_checkpoint); pass --resume (or RESUME=1) to continue it, or choose another OUT_DIR"
fi
# Our configs name Detectron2's as _BASE_: "detectron2/...": stage them next
# to a link to this checkout's configs/ (the repository is left untouched).
mkdir -p "$OUT_DIR/configs"
cp "$repo"/detectron2_configs/*.yaml "$OUT_DIR/configs/"
ln -sfn "$DETECTRON2_DIR/configs" "$OUT_DIR/configs/detectron2"

cmd=("$PYTHON" "$repo/detectron2_configs/train_net_ssl.py"
     --config-file "$OUT_DIR/configs/$config" --num-gpus "$num_procs")
[ "$resume" = 1 ] && cmd+=(--resume)
# shellcheck disable=SC2206
cmd+=(MODEL.WEIGHTS "$WEIGHTS" OUTPUT_DIR "$OUT_DIR" $arch_opts "${device_opts[@]}" "${opts[@]}")

echo "task:     $TASK ($config)"
echo "weights:  $WEIGHTS"
echo "data:     DETECTRON2_DATASETS=$DETECTRON2_DATASETS"
if [ "$NUM_GPUS" = 0 ]; then
  echo "device:   CPU, one process (NUM_GPUS=0; SyncBN computes plain BatchNorm): a smoke test, not an evaluation"
else
  echo "GPUs:     $NUM_GPUS (the configs' SOLVER.IMS_PER_BATCH is the global batch; scale SOLVER.BASE_LR with it if you change it)"
fi
echo "output:   $OUT_DIR"
# Quoted for the shell, so that the line can be pasted (e.g. "(128,)").
printf -v shown '%q ' "${cmd[@]}"
echo "command:  DETECTRON2_DIR=$DETECTRON2_DIR DETECTRON2_DATASETS=$DETECTRON2_DATASETS ${shown% }"
[ "$dry_run" = 1 ] && { echo "(--dry_run: not running)"; exit 0; }

export DETECTRON2_DIR DETECTRON2_DATASETS
"${cmd[@]}" 2>&1 | tee -a "$OUT_DIR/stdout.txt"
status="${PIPESTATUS[0]}"
[ "$status" = 0 ] || die "train_net.py exited with status $status; see $OUT_DIR/log.txt"
# Detectron2 prints the final evaluation as a copypaste block: keep it.
grep -A3 'copypaste' "$OUT_DIR/stdout.txt" | tail -n 24 > "$OUT_DIR/results.txt" || true
echo "done: final metrics in $OUT_DIR/results.txt and $OUT_DIR/metrics.json; logs in $OUT_DIR/log.txt"
