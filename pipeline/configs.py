"""Where the pipeline runs: its name and the default locations of data and outputs.

The training hyperparameters and their validation are `modules.config.TrainingConfig`.
"""
from __future__ import annotations

import os

PIPELINE_NAME = "adapter-bert-glue"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the GLUE data of a machine of this project lives, unless --data_dir says otherwise.
DEFAULT_DATA_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, "outputs")
