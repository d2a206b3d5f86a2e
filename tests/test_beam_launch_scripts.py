"""launch/beam_dataflow.sh and launch/beam_cluster.sh: early checks, printed commands."""

import ast
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VARS = ('PROJECT', 'REGION', 'TEMP_LOCATION', 'SOURCE', 'OUT_DIR', 'DATA_DIR', 'JOB_NAME',
         'MAX_WORKERS', 'MACHINE_TYPE', 'ENGINE', 'FLINK_MASTER', 'SPARK_MASTER_URL',
         'ENVIRONMENT_TYPE', 'ENVIRONMENT_CONFIG', 'SDK_CONTAINER_IMAGE', 'PARALLELISM',
         'JOB_SERVER_JAR', 'PYTHON', 'DRY_RUN')


def run(script, **env):
  full = {k: v for k, v in os.environ.items() if k not in _VARS}
  full.update(env)
  return subprocess.run(['bash', os.path.join(REPO, 'launch', script), '--num_shards=64'],
                        capture_output=True, text=True, env=full, timeout=60)


DATAFLOW = dict(PROJECT='proj', REGION='us-central1', TEMP_LOCATION='gs://b/tmp',
                SOURCE='tfds:imagenet2012:train', DATA_DIR='gs://b/tfds',
                OUT_DIR='gs://b/masks')


def test_beam_dataflow_checks_variables_and_prints_command():
  for missing in ('PROJECT', 'REGION', 'TEMP_LOCATION', 'SOURCE', 'OUT_DIR'):
    env = {k: v for k, v in DATAFLOW.items() if k != missing}
    out = run('beam_dataflow.sh', DRY_RUN='1', **env)
    assert out.returncode == 1 and f'set {missing}' in out.stderr, (missing, out.stderr)
  out = run('beam_dataflow.sh', DRY_RUN='1', **{**DATAFLOW, 'OUT_DIR': '/local/masks'})
  assert out.returncode == 1 and 'OUT_DIR must be a gs:// path' in out.stderr
  out = run('beam_dataflow.sh', DRY_RUN='1', **{**DATAFLOW, 'DATA_DIR': ''})
  assert out.returncode == 1 and 'set DATA_DIR' in out.stderr
  out = run('beam_dataflow.sh', DRY_RUN='1', **{**DATAFLOW, 'SOURCE': 'folder:/x'})
  assert out.returncode == 1 and 'folder:' in out.stderr
  out = run('beam_dataflow.sh', DRY_RUN='1', JOB_NAME='masks-1', MAX_WORKERS='32',
            MACHINE_TYPE='n2-standard-8', **DATAFLOW)
  assert out.returncode == 0, out.stderr
  assert (f'-m data_pipeline.precompute_masks --runner=DataflowRunner --project=proj'
          f' --region=us-central1 --temp_location=gs://b/tmp --job_name=masks-1'
          f' --setup_file={REPO}/setup.py --source=tfds:imagenet2012:train'
          f' --out_dir=gs://b/masks --data_dir=gs://b/tfds --max_num_workers=32'
          f' --worker_machine_type=n2-standard-8 --num_shards=64') in out.stdout


def test_beam_cluster_flink_and_spark():
  out = run('beam_cluster.sh', DRY_RUN='1')
  assert out.returncode == 1 and 'set ENGINE' in out.stderr
  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='flink', SOURCE='demo', OUT_DIR='gs://b/m')
  assert out.returncode == 1 and 'set FLINK_MASTER' in out.stderr
  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='spark', SOURCE='demo', OUT_DIR='gs://b/m')
  assert out.returncode == 1 and 'set SPARK_MASTER_URL' in out.stderr
  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='flink', FLINK_MASTER='jm:8081',
            SOURCE='demo')
  assert out.returncode == 1 and 'set OUT_DIR' in out.stderr
  # DOCKER workers see no host folder.
  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='flink', FLINK_MASTER='jm:8081',
            SOURCE='demo', OUT_DIR='/shared/m')
  assert out.returncode == 1 and 'ENVIRONMENT_TYPE=EXTERNAL' in out.stderr

  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='flink', FLINK_MASTER='jm:8081',
            SOURCE='folder:/shared/imgs', OUT_DIR='/shared/m', ENVIRONMENT_TYPE='EXTERNAL',
            ENVIRONMENT_CONFIG='localhost:50000', PARALLELISM='16')
  assert out.returncode == 0, out.stderr
  assert ('-m data_pipeline.precompute_masks --runner=FlinkRunner --flink_master=jm:8081'
          ' --parallelism=16 --environment_type=EXTERNAL'
          ' --environment_config=localhost:50000 --source=folder:/shared/imgs'
          ' --out_dir=/shared/m --num_shards=64') in out.stdout
  assert '--setup_file' not in out.stdout

  out = run('beam_cluster.sh', DRY_RUN='1', ENGINE='spark',
            SPARK_MASTER_URL='spark://sm:7077', SOURCE='demo', OUT_DIR='gs://b/m')
  assert out.returncode == 0, out.stderr
  assert ('--runner=SparkRunner --spark_master_url=spark://sm:7077 --environment_type=DOCKER'
          f' --setup_file={REPO}/setup.py --source=demo --out_dir=gs://b/m'
          ' --num_shards=64') in out.stdout


def test_setup_py_pins_match_requirements():
  with open(os.path.join(REPO, 'setup.py')) as f:
    tree = ast.parse(f.read())
  (pins,) = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             and getattr(n.targets[0], 'id', '') == 'WORKER_REQUIREMENTS']
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    reqs = {line.strip() for line in f if '==' in line and not line.startswith('#')}
  assert pins and set(pins) <= reqs, set(pins) - reqs
