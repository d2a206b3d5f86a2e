#!/usr/bin/env bash
# Mask precompute (data_pipeline.precompute_masks) as an Apache Beam pipeline
# on a Flink or Spark cluster, through Beam's FlinkRunner / SparkRunner.
#
#   ENGINE=flink FLINK_MASTER=flink-jm:8081 SOURCE=folder:/shared/imagenet/train \
#   OUT_DIR=/shared/masks/imagenet ENVIRONMENT_TYPE=EXTERNAL \
#   ENVIRONMENT_CONFIG=localhost:50000 \
#   bash launch/beam_cluster.sh --fh_scales=1000 --fh_min_sizes=1000 --num_shards=1024
#   ENGINE=spark SPARK_MASTER_URL=spark://spark-master:7077 SOURCE=demo \
#   OUT_DIR=gs://BUCKET/masks/demo bash launch/beam_cluster.sh
#
# Required: ENGINE (flink | spark), FLINK_MASTER (host:port of the Flink REST
# endpoint) for flink or SPARK_MASTER_URL (spark://host:port) for spark,
# SOURCE (folder:DIR, tfds:NAME:SPLIT with DATA_DIR, or demo), OUT_DIR.
# Optional: DATA_DIR, ENVIRONMENT_TYPE (DOCKER, Beam's default | EXTERNAL |
# PROCESS) with ENVIRONMENT_CONFIG (EXTERNAL: the worker pool address; PROCESS:
# its JSON), SDK_CONTAINER_IMAGE (DOCKER), PARALLELISM (flink --parallelism),
# JOB_SERVER_JAR (a local Beam Flink/Spark job server jar; without it Beam
# downloads the one of its version, which needs Java and Maven Central here),
# PYTHON (default: .venv/bin/python of this checkout, with requirements-beam.txt),
# DRY_RUN=1 (print the command, run nothing). Extra arguments go to
# precompute_masks (its flags, or more Beam pipeline options).
#
# Where the workers run, and what they see:
#   * DOCKER (default): each task manager / executor starts Beam's SDK container
#     and pip-installs data_pipeline from setup.py (--setup_file, staged through
#     the job server). The container sees no host folder: OUT_DIR (and DATA_DIR)
#     must be gs:// and SOURCE tfds: or demo.
#   * EXTERNAL: start a Beam worker pool in this project's environment on every
#     node (PYTHONPATH=<this checkout> .venv/bin/python -m
#     apache_beam.runners.worker.worker_pool_main --service_port=50000) and set
#     ENVIRONMENT_CONFIG=localhost:50000. The workers then see the node's file
#     systems: OUT_DIR, a folder: SOURCE and --user_masks may be on a shared
#     mount (NFS, Lustre, ...) at the same path on this machine and every node.
# The command waits for the job; the job's last step writes OUT_DIR/manifest.json.
# Exit status: precompute_masks' (0 ok, 1 every input failed, 2 usage error or
# failed job). Resume: run the same command again; complete shards are skipped.
set -euo pipefail

die() { echo "beam_cluster.sh: ERROR: $*" >&2; exit 1; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

[ -n "${ENGINE:-}" ] || die "set ENGINE to flink or spark (see the header of launch/beam_cluster.sh)"
case "$ENGINE" in
  flink) master_var=FLINK_MASTER ;;
  spark) master_var=SPARK_MASTER_URL ;;
  *) die "ENGINE=$ENGINE: use flink or spark" ;;
esac
for v in "$master_var" SOURCE OUT_DIR; do
  [ -n "${!v:-}" ] || die "set $v (see the header of launch/beam_cluster.sh)"
done
ENVIRONMENT_TYPE="${ENVIRONMENT_TYPE:-DOCKER}"
case "$ENVIRONMENT_TYPE" in
  DOCKER)
    case "$OUT_DIR" in
      gs://*) ;;
      *) die "OUT_DIR=$OUT_DIR: DOCKER workers see no host folder; use a gs:// OUT_DIR, \
or ENVIRONMENT_TYPE=EXTERNAL with worker pools on the nodes (see the header)" ;;
    esac
    case "$SOURCE" in
      folder:*) die "SOURCE=$SOURCE: DOCKER workers see no host folder; use \
ENVIRONMENT_TYPE=EXTERNAL with worker pools on the nodes (see the header)" ;;
    esac ;;
  EXTERNAL|PROCESS)
    [ -n "${ENVIRONMENT_CONFIG:-}" ] || die "set ENVIRONMENT_CONFIG for ENVIRONMENT_TYPE=$ENVIRONMENT_TYPE" ;;
  *) die "ENVIRONMENT_TYPE=$ENVIRONMENT_TYPE: use DOCKER, EXTERNAL or PROCESS" ;;
esac
case "$SOURCE" in
  tfds:*) [ -n "${DATA_DIR:-}" ] || die "set DATA_DIR (the prepared TFDS folder) for SOURCE=$SOURCE" ;;
esac
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
if [ "${DRY_RUN:-0}" != 1 ]; then
  [ -x "$PYTHON" ] || die "$PYTHON not found: run 'source launch/setup_env.sh requirements-beam.txt' first, or set PYTHON"
  "$PYTHON" -c 'import apache_beam' 2>/dev/null || die \
    "$PYTHON has no Apache Beam: $PYTHON -m pip install -r requirements-beam.txt"
fi

cmd=(env PYTHONPATH="$repo" "$PYTHON" -m data_pipeline.precompute_masks)
if [ "$ENGINE" = flink ]; then
  cmd+=(--runner=FlinkRunner --flink_master="$FLINK_MASTER")
  [ -n "${PARALLELISM:-}" ] && cmd+=(--parallelism="$PARALLELISM")
  [ -n "${JOB_SERVER_JAR:-}" ] && cmd+=(--flink_job_server_jar="$JOB_SERVER_JAR")
else
  cmd+=(--runner=SparkRunner --spark_master_url="$SPARK_MASTER_URL")
  [ -n "${JOB_SERVER_JAR:-}" ] && cmd+=(--spark_job_server_jar="$JOB_SERVER_JAR")
fi
cmd+=(--environment_type="$ENVIRONMENT_TYPE")
[ -n "${ENVIRONMENT_CONFIG:-}" ] && cmd+=(--environment_config="$ENVIRONMENT_CONFIG")
if [ "$ENVIRONMENT_TYPE" = DOCKER ]; then
  cmd+=(--setup_file="$repo/setup.py")
  [ -n "${SDK_CONTAINER_IMAGE:-}" ] && cmd+=(--sdk_container_image="$SDK_CONTAINER_IMAGE")
fi
cmd+=(--source="$SOURCE" --out_dir="$OUT_DIR")
[ -n "${DATA_DIR:-}" ] && cmd+=(--data_dir="$DATA_DIR")
cmd+=("$@")
echo "+ ${cmd[*]}"
[ "${DRY_RUN:-0}" = 1 ] || { cd "$repo" && exec "${cmd[@]}"; }
