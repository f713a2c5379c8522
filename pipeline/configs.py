"""Where the pipeline runs, and what decides whether its data and its model may go on: names, default
locations, the release gate's margin and the data checks' thresholds.

The training hyperparameters and their validation are `modules.config.TrainingConfig`.
"""
from __future__ import annotations

import dataclasses
import os

from modules.glue import GlueTask

PIPELINE_NAME = "adapter-bert-glue"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the GLUE data of a machine of this project lives, unless --data_dir says otherwise.
DEFAULT_DATA_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, "outputs")
# A model is blessed only if its main metric beats the best constant predictor's score on the same eval split by
# at least this much (absolute). 0.01 is about 4 of MRPC's 408 dev examples, 3 of RTE's 277: more than rounding,
# less than what a model that learned the task gains (docs/failure_behaviour.md lists the floors per task).
DEFAULT_CONSTANT_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class DataChecks:
    """Thresholds of the checks that stop a run, before training, on data that cannot train a useful model.

    components/trainability_gate.py applies them (the label skew threshold through the schema GlueSchemaGen
    writes); each is a flag of the same name. Every real GLUE task passes the defaults by a wide margin; the
    measured values are in docs/failure_behaviour.md.
    """

    # Every class needs at least this fraction of an even share of the training examples (0.1: at least 5% each
    # of 2 classes, 3.3% of 3), and at least one example.
    min_class_share: float = 0.1
    # Largest L-infinity distance between the class distributions of train and an eval split (largest
    # difference of one class's share).
    max_label_linf: float = 0.2
    # Largest Jensen-Shannon divergence between the score histograms of train and an eval split (regression).
    max_label_js: float = 0.1
    # Largest share of an eval split's examples whose (sentence1, sentence2) pair is also in train.
    max_pair_overlap: float = 0.05

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not 0 <= value <= 1:
                raise ValueError(f"--{field.name} must be in [0, 1], got {value!r}.")

    def max_label_skew(self, task: GlueTask) -> float:
        """The threshold of the task's label comparator: Jensen-Shannon for a score, L-infinity for classes."""
        return self.max_label_js if task.is_regression else self.max_label_linf
