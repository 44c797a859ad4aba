"""Imported first by every entry script: this checkout's ``src/`` goes first on ``sys.path``.

The rules must run this checkout's package whatever environment runs them: the venv, a rule's conda
environment (``--software-deployment-method conda``, where Snakemake drops ``PYTHONPATH``), a SLURM
job, an environment that holds an older installed duvflow. Snakemake puts this folder
(``workflow/scripts``) on the path of every ``script:`` it runs, so ``import duvflow_checkout``
finds this file in all of them; the conda environment (``workflow/envs/duvflow.yaml``) provides the
pinned dependencies only.
"""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if sys.path[:1] != [SRC]:
    sys.path.insert(0, SRC)
