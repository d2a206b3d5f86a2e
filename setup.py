"""Packages data_pipeline for Apache Beam workers: `--setup_file=./setup.py`.

Only for the Beam mode of data_pipeline.precompute_masks on remote workers
(Dataflow, Flink, Spark; launch/beam_dataflow.sh, launch/beam_cluster.sh).
Beam builds an sdist of this on the launching machine, stages it, and every
worker pip-installs it (with install_requires) before it runs a bundle. This
is Beam's documented way to ship a local multi-module package; a
--requirements_file alone would not ship data_pipeline itself. The project
itself is not installed this way (launch/setup_env.sh + PYTHONPATH).

install_requires: what the workers import (the mask precompute, not JAX),
pinned as in requirements.txt (tests/test_beam_launch_scripts.py checks
that they match).
"""

import setuptools

WORKER_REQUIREMENTS = [
    'absl-py==2.5.1',
    'etils==1.15.0',  # epath: the output folder (tensorflow-datasets adds its extras).
    'numpy==2.4.6',
    'pillow==12.3.0',
    'scikit-image==0.26.0',
    'tensorflow-cpu==2.21.0',
    'tensorflow-datasets==4.9.10',
]

setuptools.setup(
    name='dense-ssl-data-pipeline',
    version='0.1.0',
    description='dense_ssl mask precompute (data_pipeline) for Apache Beam workers',
    packages=['data_pipeline', 'data_pipeline.masks'],
    install_requires=WORKER_REQUIREMENTS,
    python_requires='>=3.10',
)
