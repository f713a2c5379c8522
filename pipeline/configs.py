"""The pipeline's configuration: every hyperparameter and location, with the defaults the project runs on.

`TrainingConfig` travels as the Trainer's and Transform's `custom_config` (a plain dict), so the
same validated values reach every stage and every orchestrator.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict

from modules.adapters import AdapterConfig
from modules.backbone import DEFAULT_MODEL
from modules.glue import GlueTask, get_task

PIPELINE_NAME = "adapter-bert-glue"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the GLUE data of a machine of this project lives, unless --data_dir says otherwise.
DEFAULT_DATA_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, "outputs")
# A model is blessed only if its main metric beats the best constant predictor's score on the same eval split by
# at least this much (absolute). 0.01 is about 4 of MRPC's 408 dev examples, 3 of RTE's 277: more than rounding,
# less than what a model that learned the task gains (docs/failure_behaviour.md lists the floors per task).
DEFAULT_CONSTANT_MARGIN = 0.01
DISTRIBUTIONS = ("auto", "default", "multi_worker")  # TrainingConfig.distribution
# TrainingConfig.precision: Keras mixed-precision policies, or "auto" (trainer.resolve_precision: mixed_bfloat16
# on CPUs with native bfloat16 arithmetic, float32 elsewhere).
PRECISIONS = ("float32", "mixed_bfloat16", "auto")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What the Transform and Trainer stages need; validated on construction, before any work starts."""

    task: str = "mrpc"
    model: str = DEFAULT_MODEL
    bottleneck_size: int = 64
    non_linearity: str = "gelu"
    placement: str = "houlsby"
    train_layer_norms: bool = True
    full_finetune: bool = False
    batch_size: int = 32
    epochs: int = 3
    max_seq_length: int = 128
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    bucketing: bool = True
    # AdapterDrop: no adapters (and frozen layer norms) in the lowest K layers, which then run forward only.
    adapter_drop: int = 0
    # With adapter_drop > 0: compute the frozen prefix's output for each training example once (float16, in
    # memory) and train the layers above it on that every epoch (modules/prefix_cache.py).
    prefix_cache: bool = True
    # Training arithmetic. "mixed_bfloat16": float32 weights, bfloat16 matmuls; about 1.3x fewer CPU seconds a
    # step on CPUs with AVX512_BF16 or AMX (bench/README.md), slower on CPUs without. The exported model always
    # computes in float32.
    precision: str = "float32"
    # tf.distribute strategy of the Trainer: "auto" = MultiWorkerMirroredStrategy when TF_CONFIG describes a
    # cluster of more than one task, else the default (one-device) strategy; or one of them explicitly.
    distribution: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", get_task(self.task).name)
        for flag in ("batch_size", "epochs", "max_seq_length"):
            value = getattr(self, flag)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{flag} must be a positive integer, got {value!r}.")
        if self.max_seq_length < 3:
            raise ValueError(f"--max_seq_length must leave room for [CLS] and two [SEP] tokens (>= 3), got {self.max_seq_length}.")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        self.adapter_config()  # validates bottleneck size, non-linearity, placement and adapter_drop
        if self.full_finetune and self.adapter_drop:
            raise ValueError("--adapter_drop leaves adapters out of layers: it cannot be combined with --full_finetune.")

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            bottleneck_size=self.bottleneck_size,
            non_linearity=self.non_linearity,
            placement=self.placement,
            train_layer_norms=self.train_layer_norms,
            adapter_drop=self.adapter_drop,
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainingConfig":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


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
