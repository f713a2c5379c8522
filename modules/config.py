"""The training configuration: every hyperparameter of the Transform and Trainer stages, with the project's defaults.

`TrainingConfig` travels as the Trainer's and Transform's `custom_config` (a plain dict), so the
same validated values reach every stage and every orchestrator. It lives in `modules/`, the bottom layer,
because the Trainer module reads it; the runners (`pipeline/`, `kubeflow/`) build it from their flags.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from modules.adapters import AdapterConfig
from modules.backbone import DEFAULT_MODEL
from modules.glue import GlueTask, task_from_config

DISTRIBUTIONS = ("auto", "default", "multi_worker")  # TrainingConfig.distribution
# TrainingConfig.precision: Keras mixed-precision policies, "bfloat16_matmul" (trainer.bfloat16_matmuls), or "auto"
# (trainer.resolve_precision: bfloat16_matmul on CPUs with native bfloat16 arithmetic and oneDNN, float32 elsewhere).
PRECISIONS = ("float32", "mixed_bfloat16", "bfloat16_matmul", "auto")
# TrainingConfig.xla: compile the train step with XLA; "auto" (trainer.resolve_xla): where whole runs are faster.
XLA_MODES = ("auto", "on", "off")
# TrainingConfig.serving_export: the serving SavedModel's arithmetic (modules/serving.py's export options).
SERVING_EXPORTS = ("float32", "xla", "bfloat16", "bfloat16_xla")
TRANSFORM_FIELDS = ("task", "task_spec", "model", "max_seq_length")  # TrainingConfig.transform_dict
# The TrainingConfig fields the Tuner searches (Houlsby et al. section 3.2), under these hyperparameter names.
TUNED_FIELDS = ("learning_rate", "bottleneck_size", "epochs")
HYPERBAND_EPOCHS = "tuner/epochs"  # KerasTuner's Hyperband: a trial's epochs are its budget, not a hyperparameter
STRATEGIES = ("grid", "random", "hyperband")  # TuningConfig.strategy
# What adapter_config.json records of how the adapters were trained (modules.trainer.run_fn).
RECORDED_TRAINING_FIELDS = ("learning_rate", "epochs", "batch_size", "warmup_ratio", "weight_decay", "seed")


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
    original_ln_before: bool = False  # the adapter reads LayerNorm(h + residual): AdapterHub's Pfeiffer (seq_bn)
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
    # Training arithmetic. "mixed_bfloat16": float32 weights, every layer computing in bfloat16; about 1.3x fewer
    # CPU seconds a step on CPUs with AVX512_BF16 or AMX (bench/README.md), slower on CPUs without.
    # "bfloat16_matmul": a float32 model whose train step multiplies matrices in bfloat16 and does everything else
    # in float32 (trainer.bfloat16_matmuls: a graph rewrite, or under XLA casts in the Dense layers). "auto" (the
    # default): bfloat16_matmul where the CPU has native bfloat16 and oneDNN is on, float32 elsewhere
    # (docs/results.md: the speed, and the accuracy on MRPC, RTE and STS-B with and without XLA). The exported
    # model computes as serving_export says, float32 by default, whatever the training arithmetic.
    precision: str = "auto"
    # The train step compiled by XLA (Keras jit_compile), batches then padded to their length bucket's bound so
    # that XLA compiles a few shapes instead of one per batch length. "auto" (trainer.resolve_xla): on one machine
    # without AdapterDrop's prefix cache, on with mixed_bfloat16, and with bfloat16_matmul in runs of 500 train
    # steps or more (MRPC: compiling costs what 3.5 later epochs save), where whole runs measured it faster.
    xla: str = "auto"
    # The exported SavedModel's model part (modules/serving.py): "float32" serves anywhere; "xla" XLA-compiles it,
    # the same answers (TF Serving then needs --xla_cpu_compilation_enabled=true); "bfloat16" stores the linear
    # layers' kernels in bfloat16 and multiplies in bfloat16, the rest in float32, within 1e-2 of float32's
    # probabilities, fast only on CPUs with native bfloat16; "bfloat16_xla" both.
    # The Evaluator and the release gate judge the exported model, so what is pushed is what was gated.
    serving_export: str = "float32"
    # tf.distribute strategy of the Trainer: "auto" = MultiWorkerMirroredStrategy when TF_CONFIG describes a
    # cluster of more than one task, else the default (one-device) strategy; or one of them explicitly.
    distribution: str = "auto"
    # Adapter-only weights to start from (a Trainer's adapters directory, its Model artifact, or one written by
    # `python -m pipeline.adapterhub import`); with epochs=0 they are exported, evaluated and pushed unchanged.
    warm_start: str = ""

    def __post_init__(self) -> None:
        task = task_from_config({"task": self.task, "task_spec": self.task_spec})
        object.__setattr__(self, "task", task.name)
        object.__setattr__(self, "task_spec", task.to_spec())
        for flag in ("batch_size", "epochs", "max_seq_length"):
            value = getattr(self, flag)
            if flag == "epochs" and self.warm_start and value == 0:
                continue  # serve the warm start as it is
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{flag} must be a positive integer, got {value!r}"
                                 + (" (0 only with --warm_start)." if flag == "epochs" else "."))
        if self.warm_start and self.full_finetune:
            raise ValueError("--warm_start gives adapter-only weights: it cannot start --full_finetune.")
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
        if self.xla not in XLA_MODES:
            raise ValueError(f"--xla must be one of {', '.join(XLA_MODES)}, got {self.xla!r}.")
        if self.serving_export not in SERVING_EXPORTS:
            raise ValueError(f"--serving_export must be one of {', '.join(SERVING_EXPORTS)}, "
                             f"got {self.serving_export!r}.")
        self.adapter_config()  # validates bottleneck size, non-linearity, placement and adapter_drop
        if self.full_finetune and self.adapter_drop:
            raise ValueError("--adapter_drop leaves adapters out of layers: it cannot be combined with --full_finetune.")

    def task_description(self) -> GlueTask:
        """The task this config trains on, from its serialized spec (no spec file or GLUE table needed)."""
        return task_from_config({"task_spec": self.task_spec})

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            bottleneck_size=self.bottleneck_size,
            non_linearity=self.non_linearity,
            placement=self.placement,
            train_layer_norms=self.train_layer_norms,
            original_ln_before=self.original_ln_before,
            adapter_drop=self.adapter_drop,
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def transform_dict(self) -> Dict[str, Any]:
        """What the Transform stage reads (modules.preprocessing.preprocessing_fn): the tokenization only, so a
        run that changes a training setting (learning rate, seed, epochs, ...) reuses the cached Transform."""
        return {key: value for key, value in self.to_dict().items() if key in TRANSFORM_FIELDS}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainingConfig":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The Tuner stage's search, as Houlsby et al. choose a recipe per task: the grid (the paper's by default),
    the strategy and trial budget, the holdout carved from train that scores the trials, and early stopping.

    Travels in the Tuner's custom_config under "tuning"; validated on construction (messages name the flag)."""

    learning_rates: Tuple[float, ...] = (3e-5, 3e-4, 3e-3)
    bottleneck_sizes: Tuple[int, ...] = (8, 64, 256)
    epochs: Tuple[int, ...] = (3, 20)  # Hyperband: its budget, from 1 epoch up to the largest
    strategy: str = "grid"
    # Trials at most; None: the whole grid (grid, random), Hyperband's first bracket (hyperband).
    max_trials: Optional[int] = None
    holdout_fraction: float = 0.1  # of each class of train (regression: of each integer score), seeded by --seed
    # 1: that one holdout; K >= 2: K folds of train (each 1/K), every trial trains once per fold and scores the mean.
    folds: int = 1
    patience: int = 3  # stop a trial after this many epochs without a better holdout score; 0: never
    hyperband_factor: int = 3

    def __post_init__(self) -> None:
        for flag, values, kind in (("tune_learning_rates", self.learning_rates, float),
                                   ("tune_bottleneck_sizes", self.bottleneck_sizes, int),
                                   ("tune_epochs", self.epochs, int)):
            values = tuple(values)
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
                raise ValueError(f"--{flag} must be a comma-separated list of positive numbers, got {values!r}.")
            if kind is int and any(int(v) != v for v in values):
                raise ValueError(f"--{flag} must be whole numbers, got {values!r}.")
            if len(set(values)) != len(values):
                raise ValueError(f"--{flag} lists a value twice: {values!r}.")
            object.__setattr__(self, flag[len("tune_"):], tuple(kind(v) for v in values))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--tune_strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}.")
        if self.max_trials is not None and (not isinstance(self.max_trials, int) or self.max_trials < 1):
            raise ValueError(f"--tune_max_trials must be a positive integer, got {self.max_trials!r}.")
        if not 0 < self.holdout_fraction <= 0.5:
            raise ValueError(f"--holdout_fraction must be in (0, 0.5], got {self.holdout_fraction!r}.")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise ValueError(f"--tune_folds must be an integer >= 1 (1: one holdout), got {self.folds!r}.")
        if self.folds > 1 and self.holdout_fraction != TuningConfig.holdout_fraction:
            raise ValueError(f"--holdout_fraction {self.holdout_fraction} sets one holdout, --tune_folds {self.folds} "
                             f"makes {self.folds} folds of 1/{self.folds} of train each: give one of the two.")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"--tune_patience must be an integer >= 0 (0: no early stopping), got {self.patience!r}.")
        if not isinstance(self.hyperband_factor, int) or self.hyperband_factor < 2:
            raise ValueError(f"--hyperband_factor must be an integer >= 2, got {self.hyperband_factor!r}.")

    def grid_size(self) -> int:
        """The number of distinct settings (Hyperband: of learning rate and bottleneck size)."""
        size = len(self.learning_rates) * len(self.bottleneck_sizes)
        return size if self.strategy == "hyperband" else size * len(self.epochs)

    def check_training(self, config: TrainingConfig) -> None:
        """Refuses training flags the search cannot honour."""
        if config.full_finetune:
            raise ValueError("--tune searches adapter settings (bottleneck size among them): it cannot be combined "
                             "with --full_finetune.")
        if config.warm_start:
            raise ValueError("--tune trains every trial from the backbone: it cannot be combined with --warm_start, "
                             "whose adapters fix the bottleneck size.")

    def to_dict(self) -> Dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TuningConfig":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def tuned_settings(hyperparameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The TrainingConfig fields a Tuner chose, from its best hyperparameters as the Trainer receives them
    (KerasTuner's HyperParameters config: {"values": {...}, ...}); {} without a Tuner."""
    values = (hyperparameters or {}).get("values", {})
    settings = {name: values[name] for name in TUNED_FIELDS if name in values}
    if HYPERBAND_EPOCHS in values:
        settings["epochs"] = values[HYPERBAND_EPOCHS]
    return settings
