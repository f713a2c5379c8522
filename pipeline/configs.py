"""The pipeline's configuration: every hyperparameter and location, with the defaults the project runs on.

`TrainingConfig` travels as the Trainer's and Transform's `custom_config` (a plain dict), so the
same validated values reach every stage and every orchestrator.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from modules.adapters import AdapterConfig
from modules.backbone import DEFAULT_MODEL
from modules.glue import GlueTask, task_from_config

PIPELINE_NAME = "adapter-bert-glue"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the GLUE data of a machine of this project lives, unless --data_dir says otherwise.
DEFAULT_DATA_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, "outputs")
DISTRIBUTIONS = ("auto", "default", "multi_worker")  # TrainingConfig.distribution
PRECISIONS = ("float32", "mixed_bfloat16")  # TrainingConfig.precision: Keras mixed-precision policies


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What the Transform and Trainer stages need; validated on construction, before any work starts."""

    task: str = "mrpc"
    # The task description (GlueTask.to_spec()) every stage reads; None: the GLUE task named `task`. Always
    # filled in after construction, so the description travels with the config to every stage and pod.
    task_spec: Optional[Dict[str, Any]] = None
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
    # Training arithmetic. "mixed_bfloat16": float32 weights, bfloat16 matmuls; about 1.3x fewer CPU seconds a
    # step on CPUs with AVX512_BF16 or AMX (bench/README.md), slower on CPUs without. The exported model always
    # computes in float32.
    precision: str = "float32"
    # tf.distribute strategy of the Trainer: "auto" = MultiWorkerMirroredStrategy when TF_CONFIG describes a
    # cluster of more than one task, else the default (one-device) strategy; or one of them explicitly.
    distribution: str = "auto"

    def __post_init__(self) -> None:
        task = task_from_config({"task": self.task, "task_spec": self.task_spec})
        object.__setattr__(self, "task", task.name)
        object.__setattr__(self, "task_spec", task.to_spec())
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
        self.adapter_config()  # validates bottleneck size, non-linearity and placement

    def task_description(self) -> GlueTask:
        """The task this config trains on, from its serialized spec (no spec file or GLUE table needed)."""
        return task_from_config({"task_spec": self.task_spec})

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            bottleneck_size=self.bottleneck_size,
            non_linearity=self.non_linearity,
            placement=self.placement,
            train_layer_norms=self.train_layer_norms,
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainingConfig":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
