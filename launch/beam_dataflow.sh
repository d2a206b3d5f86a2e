#!/usr/bin/env bash
# Mask precompute (data_pipeline.precompute_masks) as an Apache Beam pipeline
# on Google Cloud Dataflow.
#
#   PROJECT=my-project REGION=us-central1 TEMP_LOCATION=gs://BUCKET/beam-tmp \
#   SOURCE=tfds:imagenet2012:train DATA_DIR=gs://BUCKET/tfds \
#   OUT_DIR=gs://BUCKET/masks/imagenet \
#   bash launch/beam_dataflow.sh --fh_scales=1000 --fh_min_sizes=1000 --num_shards=1024
#
# Required: PROJECT, REGION, TEMP_LOCATION (gs://, Dataflow's staging and temp
# files), SOURCE (tfds:NAME:SPLIT or demo: Dataflow workers cannot read a
# folder: source or --user_masks, which are read with POSIX file APIs), OUT_DIR
# (gs://: every worker writes its shards there). DATA_DIR (gs://, the prepared
# TFDS folder) is required for tfds: sources. Optional: JOB_NAME
# (precompute-masks-<UTC time>), MAX_WORKERS (--max_num_workers),
# MACHINE_TYPE (--worker_machine_type, e.g. n2-standard-8: one FH shard per
# vCPU), PYTHON (default: .venv/bin/python of this checkout, which needs
# requirements.txt, requirements-beam.txt and apache-beam[gcp] of the same
# version), DRY_RUN=1 (print the command, run nothing). Extra arguments go to
# precompute_masks (its flags, or more Beam / Dataflow pipeline options).
#
# Workers get data_pipeline and its pinned dependencies from setup.py
# (--setup_file): Beam builds an sdist of it here, stages it in TEMP_LOCATION
# and pip-installs it on each worker (a --requirements_file alone would not ship
# the data_pipeline package). The command waits for the job: the job's last
# step writes OUT_DIR/manifest.json, and the exit status is precompute_masks'
# (0 ok, 1 every input failed, 2 usage error or failed job). Resume: run the
# same command again; complete shards are skipped. Follow the job in the
# Dataflow console (project PROJECT, region REGION).
set -euo pipefail

die() { echo "beam_dataflow.sh: ERROR: $*" >&2; exit 1; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

for v in PROJECT REGION TEMP_LOCATION SOURCE OUT_DIR; do
  [ -n "${!v:-}" ] || die "set $v (see the header of launch/beam_dataflow.sh)"
done
case "$TEMP_LOCATION" in gs://*) ;; *) die "TEMP_LOCATION must be a gs:// path" ;; esac
case "$OUT_DIR" in
  gs://*) ;;
  *) die "OUT_DIR must be a gs:// path: every Dataflow worker writes its shards there" ;;
esac
case "$SOURCE" in
  tfds:*)
    [ -n "${DATA_DIR:-}" ] || die "set DATA_DIR (gs://..., the prepared TFDS folder) for SOURCE=$SOURCE"
    case "$DATA_DIR" in gs://*) ;; *) die "DATA_DIR must be a gs:// path: the workers read it" ;; esac ;;
  demo) ;;
  *) die "SOURCE=$SOURCE: use tfds:NAME:SPLIT (with DATA_DIR=gs://...) or demo; folder: \
sources need a file system the workers mount (launch/beam_cluster.sh)" ;;
esac
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
JOB_NAME="${JOB_NAME:-precompute-masks-$(date -u +%Y%m%d-%H%M%S)}"
beam_version="$(sed -n 's/^apache-beam==//p' "$repo/requirements-beam.txt")"
if [ "${DRY_RUN:-0}" != 1 ]; then
  [ -x "$PYTHON" ] || die "$PYTHON not found: run 'source launch/setup_env.sh requirements-beam.txt' first, or set PYTHON"
  "$PYTHON" -c 'import apache_beam.io.gcp.gcsio, google.cloud.storage' 2>/dev/null || die \
    "$PYTHON lacks Apache Beam's GCP support: $PYTHON -m pip install -r requirements-beam.txt 'apache-beam[gcp]==$beam_version'"
fi

cmd=(env PYTHONPATH="$repo" "$PYTHON" -m data_pipeline.precompute_masks
     --runner=DataflowRunner --project="$PROJECT" --region="$REGION"
     --temp_location="$TEMP_LOCATION" --job_name="$JOB_NAME"
     --setup_file="$repo/setup.py"
     --source="$SOURCE" --out_dir="$OUT_DIR")
[ -n "${DATA_DIR:-}" ] && cmd+=(--data_dir="$DATA_DIR")
[ -n "${MAX_WORKERS:-}" ] && cmd+=(--max_num_workers="$MAX_WORKERS")
[ -n "${MACHINE_TYPE:-}" ] && cmd+=(--worker_machine_type="$MACHINE_TYPE")
cmd+=("$@")
echo "+ ${cmd[*]}"
[ "${DRY_RUN:-0}" = 1 ] || { cd "$repo" && exec "${cmd[@]}"; }
