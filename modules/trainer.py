"""TFX Trainer module: trains the adapter BERT on the Transform output and exports the serving SavedModel.

`run_fn` is what the Trainer component calls. It reads the transformed examples, batches them by length
(dynamic padding: each batch is cut to its longest example), trains with AdamW under a linear warm-up and
decay schedule, logs per-epoch loss, GLUE metrics and examples/s to the console and TensorBoard, and exports
the serving SavedModel and the adapter-only weights beside it (their layout and outputs: modules/serving.py).

More than one machine: training runs under the tf.distribute strategy `TrainingConfig.distribution` names
("auto": MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster of more than one task, as Vertex AI,
Kubeflow's TFJob and other launchers set it on every worker; else the default one-device strategy). The
model is built and compiled inside the strategy's scope; every worker reads the same example order and keeps
its own part of each global batch of `batch_size` examples (data sharding), so a step on N workers is the
step one worker would take on the whole batch. Only the chief writes the model artifact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from modules import backbone as backbone_lib
from modules.bundle import adapters_directory
from modules.glue import FEATURE_LABEL, GlueTask
from modules.metrics import OUTPUT_LABEL, OUTPUT_SCORE, glue_metrics
from modules.adapters import AdapterConfig
from modules.model import (
    INPUT_NAMES,
    AdapterBertClassifier,
    bfloat16_dense_call,
    dense_layers,
    load_adapter_weights,
    read_adapter_config,
    save_adapter_weights,
)
from modules.preprocessing import LENGTH as LENGTH_FEATURE
from modules.config import RECORDED_TRAINING_FIELDS, TrainingConfig, tuned_settings
from modules.prefix_cache import EXAMPLE_INDEX, PrefixCache, build_prefix_cache
from modules.serving import (adapters_dir, bucket_inputs, export_serving_model, model_inputs, predict_outputs,
                             xla_length_bounds)

BUCKET_BOUNDARIES = (16, 32, 48, 64, 96, 128, 192, 256, 384)
# Which examples of a split a dataset reads (features -> scalar bool): the Tuner's holdout and the rest of train.
RowFilter = Callable[[Dict[str, tf.Tensor]], tf.Tensor]


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak * step / max(1, self.warmup_steps)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))
        return tf.where(step < self.warmup_steps, warmup, decay)

    def get_config(self) -> Dict[str, float]:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` (and every dataset made from it) without tf.data autotuning.

    Destroying an autotuned iterator waits for the tuner's next wake-up, 10 ms, 20 ms, 40 ms, ... after the
    iterator started: each epoch and each evaluation then ended with an idle wait of up to its own length (a
    5-step fit took 10.23 s, a 9-step one 20.47 s). The pipelines here are cheap next to the model anyway.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def read_transformed(file_patterns: List[str], feature_spec: Dict, rows: Optional[RowFilter] = None) -> tf.data.Dataset:
    """The examples of the files, in file order; with `rows`, only those it keeps."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No transformed examples match {file_patterns}.")
    records = without_autotune(tf.data.TFRecordDataset(files, compression_type="GZIP"))
    examples = records.batch(512).map(lambda r: tf.io.parse_example(r, feature_spec)).unbatch()
    return examples if rows is None else examples.filter(rows)


def make_dataset(
    file_patterns: List[str],
    feature_spec: Dict,
    batch_size: int,
    max_seq_length: int,
    shuffle_seed: Optional[int],
    bucketing: bool,
    prefix_cache: Optional[PrefixCache] = None,
    rows: Optional[RowFilter] = None,
    bucket_shapes: bool = False,
) -> tf.data.Dataset:
    """(features, label) batches; with `bucketing`, examples of similar length share a batch cut to its longest.

    With `bucket_shapes` (for XLA, which compiles each input shape once: a few instead of one per length), a batch
    is cut to its bucket's upper bound instead, and a bucket's last, partial batch is padded to `batch_size` rows:
    the batches are (features, label, weight), the padding rows weigh 0 and the real ones batch_size / n, so the
    loss (Keras divides the weighted sum by the rows) is the mean over the real rows, as without padding.

    With `prefix_cache` (built from the same files and rows) the features are the cached frozen prefix's output
    of the batch's examples instead of their token ids; shuffling and batching are the same. With `rows`, only
    the examples it keeps.
    """
    dataset = read_transformed(file_patterns, feature_spec, rows)
    if prefix_cache is not None:
        dataset = dataset.enumerate().map(lambda i, features: {**features, EXAMPLE_INDEX: i})
    if shuffle_seed is not None:
        dataset = dataset.shuffle(20_000, seed=shuffle_seed, reshuffle_each_iteration=True)
    bounds = bucket_bounds(max_seq_length)
    if bucketing:
        dataset = dataset.bucket_by_sequence_length(
            lambda features: tf.cast(features[LENGTH_FEATURE], tf.int32),
            bucket_boundaries=[b + 1 for b in bounds[:-1]],
            bucket_batch_sizes=[batch_size] * len(bounds),
        )
    else:
        dataset = dataset.batch(batch_size)

    def split(features: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, ...]:
        if bucketing and bucket_shapes:
            inputs = bucket_inputs(features, bounds)
        elif bucketing:
            inputs = model_inputs(features)
        else:
            inputs = {name: features[name] for name in INPUT_NAMES}
        if prefix_cache is not None:
            inputs = prefix_cache.inputs(features[EXAMPLE_INDEX], inputs["attention_mask"])
        if bucket_shapes:
            return full_batch(inputs, features[FEATURE_LABEL], batch_size)
        return inputs, features[FEATURE_LABEL]

    # Under a multi-worker strategy every worker reads all files in the same order and keeps its own part of
    # each global batch (auto-sharding by files would give workers different examples and step counts).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.map(split).prefetch(2).with_options(options)


def bucket_bounds(max_seq_length: int) -> List[int]:
    """The upper bounds of the length buckets, the last one max_seq_length."""
    return [b for b in BUCKET_BOUNDARIES if b < max_seq_length] + [max_seq_length]


def full_batch(inputs: Dict[str, tf.Tensor], label: tf.Tensor,
               batch_size: int) -> Tuple[Dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
    """A batch of n <= batch_size rows padded to batch_size, with weights batch_size / n for the real rows and 0
    for the padding (make_dataset's bucket_shapes)."""
    n = tf.shape(label)[0]
    padding = batch_size - n
    inputs = {name: tf.pad(value, [[0, padding], [0, 0]]) for name, value in inputs.items()}
    weights = tf.concat([tf.fill([n], batch_size / tf.cast(n, tf.float32)), tf.zeros([padding])], axis=0)
    return inputs, tf.pad(label, [[0, padding]]), weights


def _count(dataset: tf.data.Dataset) -> int:
    return int(dataset.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def evaluate(model: keras.Model, task: GlueTask, dataset: tf.data.Dataset) -> Dict[str, float]:
    """GLUE metrics of `model` on a dataset of (features, label) batches."""
    labels, predictions = [], []
    for features, label in dataset:
        outputs = predict_outputs(task, model(features, training=False))
        predictions.append(outputs[OUTPUT_SCORE if task.is_regression else OUTPUT_LABEL].numpy())
        labels.append(label.numpy())
    return glue_metrics(task, np.concatenate(labels), np.concatenate(predictions))


class EpochEta:
    """The remaining time of a training epoch, from the steps so far that traced no graph.

    A step that traces the train step's graph (the first step of the first epoch; any later step whose batch
    shape Keras has not generalised to yet) takes many times longer than the others (MiniLM on MRPC, 2 cores:
    about 20 s, then about 2 s a step): a rate that counts it predicts an epoch many times too long. Until `min_steps`
    steps without tracing have run, there is no estimate.
    """

    def __init__(self, total_steps: int, min_steps: int = 5):
        self.total_steps, self.min_steps = total_steps, min_steps
        self.steps = 0
        self.untraced_steps, self.untraced_seconds = 0, 0.0

    def add_step(self, seconds: float, traced: bool) -> None:
        self.steps += 1
        if not traced:
            self.untraced_steps += 1
            self.untraced_seconds += seconds

    def step_seconds(self) -> Optional[float]:
        """The mean time of a step that traces nothing, once `min_steps` such steps have run."""
        if self.untraced_steps < self.min_steps:
            return None
        return self.untraced_seconds / self.untraced_steps

    def remaining_seconds(self) -> Optional[float]:
        step_seconds = self.step_seconds()
        return None if step_seconds is None else max(0, self.total_steps - self.steps) * step_seconds


class ProgressLogger(keras.callbacks.Callback):
    """Per-epoch loss, eval GLUE metrics, examples/s and ETA to the log and TensorBoard; progress within epochs.
    With `patience`, it also stops training once the main metric has not beaten its best for that many epochs."""

    def __init__(self, task: GlueTask, eval_dataset: tf.data.Dataset, num_examples: int, epochs: int, log_dir: str,
                 batch_size: int, steps_per_epoch: int, log_every_seconds: float = 30.0, eval_name: str = "eval",
                 patience: int = 0):
        """eval_name: what eval_dataset is, in the records' keys, the log and TensorBoard ("holdout" in the Tuner).
        patience: early stopping (the Tuner's trials on the holdout); 0, the Trainer's: every epoch runs."""
        super().__init__()
        self.eval_name, self.patience = eval_name, patience
        self.best_epoch, self.best_value = 0, -np.inf
        self.task, self.eval_dataset, self.num_examples, self.epochs = task, eval_dataset, num_examples, epochs
        self.batch_size, self.steps_per_epoch, self.log_every_seconds = batch_size, steps_per_epoch, log_every_seconds
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "glue"))
        self.history: List[Dict[str, float]] = []
        self.epoch_start = self.last_log = self.last_step_end = 0.0
        self.eta = EpochEta(steps_per_epoch)
        self.traces = 0

    def tracing_count(self) -> int:
        """How many times Keras has traced the train step so far."""
        return self.model.train_tf_function.experimental_get_tracing_count()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_start = self.last_log = self.last_step_end = time.time()
        self.eta = EpochEta(self.steps_per_epoch)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now, traces = time.time(), self.tracing_count()
        self.eta.add_step(now - self.last_step_end, traced=traces > self.traces)
        self.last_step_end, self.traces = now, traces
        if now - self.last_log >= self.log_every_seconds:
            self.last_log = now
            seen = min((batch + 1) * self.batch_size, self.num_examples)
            remaining = self.eta.remaining_seconds()
            logging.info("  epoch %d: %d/%d examples, %.1f examples/s, loss %.4f%s", len(self.history) + 1, seen,
                         self.num_examples, seen / (now - self.epoch_start), (logs or {}).get("loss", float("nan")),
                         "" if remaining is None else f", epoch ETA {remaining:.0f} s")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        eval_start = time.time()
        seconds = eval_start - self.epoch_start
        metrics = evaluate(self.model, self.task, self.eval_dataset)
        eval_seconds = time.time() - eval_start
        record = {"epoch": epoch + 1, "loss": float(logs["loss"]), "examples_per_second": self.num_examples / seconds,
                  **{f"{self.eval_name}_{k}": v for k, v in metrics.items()}}
        self.history.append(record)
        # The next epochs trace nothing: they take as long as this one's steps that traced nothing.
        step_seconds = self.eta.step_seconds()
        train_seconds = seconds if step_seconds is None else step_seconds * self.steps_per_epoch
        eta = (train_seconds + eval_seconds) * (self.epochs - epoch - 1)
        logging.info("epoch %d/%d: loss %.4f, %s, %.1f examples/s, %.0f s, ETA %.0f s", epoch + 1, self.epochs,
                     record["loss"], ", ".join(f"{self.eval_name} {k} {v:.4f}" for k, v in metrics.items()),
                     record["examples_per_second"], seconds, eta)
        value = metrics[self.task.main_metric]
        if value > self.best_value:  # every GLUE metric is better when higher
            self.best_epoch, self.best_value = epoch + 1, value
        if self.patience and epoch + 1 - self.best_epoch >= self.patience and epoch + 1 < self.epochs:
            logging.info("stopping early: %s %s %.4f at epoch %d was not beaten in %d epochs", self.eval_name,
                         self.task.main_metric, self.best_value, self.best_epoch, self.patience)
            self.model.stop_training = True
        with self.writer.as_default(step=epoch + 1):
            for key, value in record.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        self.writer.flush()


def resolve_distribution(distribution: str = "auto") -> str:
    """"default" or "multi_worker": TrainingConfig.distribution, with "auto" decided by TF_CONFIG's cluster."""
    if distribution != "auto":
        return distribution
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return "multi_worker" if sum(len(tasks) for tasks in cluster.values()) > 1 else "default"


def distribution_strategy(distribution: str = "auto") -> tf.distribute.Strategy:
    """The strategy named by TrainingConfig.distribution ("auto", "default" or "multi_worker").

    Create it before any other TensorFlow op of the process: MultiWorkerMirroredStrategy configures the
    collective ops of the runtime, which is only possible at start-up.
    """
    if resolve_distribution(distribution) == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the artifacts: the "chief" task, else worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def adapter_flags(adapter: AdapterConfig) -> str:
    """The `python -m pipeline.run` flags that build adapters with these settings."""
    flags = f"--bottleneck_size {adapter.bottleneck_size} --non_linearity {adapter.non_linearity} --placement {adapter.placement}"
    return flags + (" --original_ln_before" if adapter.original_ln_before else "") + \
        ("" if adapter.train_layer_norms else " --freeze_layer_norms")


def warm_start_directory(config: TrainingConfig) -> str:
    """The adapters directory of config.warm_start, after checking (without building a model) that its adapter
    settings and number of labels are this run's; the backbone weights are checked when they are loaded."""
    directory = adapters_directory(config.warm_start)
    saved = read_adapter_config(directory)
    theirs, ours = AdapterConfig(**saved["adapter"]), config.adapter_config()
    if theirs != ours:
        raise ValueError(f"--warm_start {config.warm_start} holds adapters made with {adapter_flags(theirs)}; this run "
                         f"has {adapter_flags(ours)}: pass the same adapter flags.")
    num_labels = config.task_description().num_labels
    if saved["num_labels"] != num_labels:
        raise ValueError(f"--warm_start {config.warm_start} has {saved['num_labels']} outputs; task {config.task} has {num_labels}.")
    return directory


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU does bfloat16 arithmetic natively (AVX512_BF16 or AMX); False if cpuinfo is unreadable."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def onednn_enabled() -> bool:
    """Whether TensorFlow runs oneDNN's kernels and graph rewrites (TF_ENABLE_ONEDNN_OPTS; on by default on x86
    CPUs with AVX512-VNNI, AVX512-BF16 or AMX): bfloat16_matmuls is one of those rewrites."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def resolve_precision(precision: str) -> str:
    """TrainingConfig.precision resolved: "auto" is bfloat16_matmul on CPUs with native bfloat16 where oneDNN is
    on (faster, and accuracy-neutral on MRPC, RTE and STS-B, with and without XLA: docs/results.md), float32
    elsewhere (emulated bfloat16 is slower, and without oneDNN neither the rewrite nor XLA's oneDNN bfloat16
    products run)."""
    if precision != "auto":
        return precision
    native, onednn = cpu_has_native_bfloat16(), onednn_enabled()
    resolved = "bfloat16_matmul" if native and onednn else "float32"
    logging.info("--precision auto: %s (native bfloat16 arithmetic: %s; oneDNN: %s)", resolved,
                 "yes" if native else f"no, none of the CPU flags {'/'.join(BF16_CPU_FLAGS)}",
                 "on" if onednn else "off")
    return resolved


# The train steps from which XLA's compilation pays back with bfloat16_matmul (bench.training_modes, MiniLM on
# MRPC, batch 32, 2 cores: XLA's first epoch, compiling 5 bucket shapes, took 38 s longer than the rewrite's, and
# each later epoch of 115 steps 11 s less, so XLA is faster from about 4.5 epochs, 520 steps; docs/results.md).
XLA_MIN_STEPS = 500


def resolve_xla(config: TrainingConfig, precision: str, strategy: tf.distribute.Strategy, steps: int) -> bool:
    """Whether the train step is XLA-compiled: config.xla, with "auto" on for the bfloat16 precisions
    (`precision`, resolved) on one replica without AdapterDrop's prefix cache (whose batches have a shape per
    length): for mixed_bfloat16 always, for bfloat16_matmul in runs of at least XLA_MIN_STEPS train `steps`, where
    whole runs measured it faster than the rewrite without XLA (10 MRPC epochs: 1.53x float32 against 1.36x);
    off for float32, where whole runs gained little or lost (docs/results.md)."""
    if config.xla != "auto":
        return config.xla == "on"
    if strategy.num_replicas_in_sync > 1 or (config.adapter_drop and config.prefix_cache):
        return False
    return precision == "mixed_bfloat16" or (precision == "bfloat16_matmul" and steps >= XLA_MIN_STEPS)


# The ops TensorFlow's oneDNN auto mixed precision moves into bfloat16 after a matrix product (its "infer list",
# grappler/optimizers/auto_mixed_precision_lists.h, TensorFlow 2.16): bfloat16_matmuls takes them all out of it.
ONEDNN_INFER_LIST = (
    "Add", "AddN", "AddV2", "AvgPool", "AvgPool3D", "AvgPool3DGrad", "AvgPoolGrad", "BiasAdd", "BiasAddGrad",
    "BiasAddV1", "FusedBatchNormV2", "FusedBatchNormGradV2", "FusedBatchNormV3", "FusedBatchNormGradV3", "LeakyRelu",
    "LeakyReluGrad", "Mul", "Sub", "Elu", "EluGrad", "FloorDiv", "_FusedBatchNormEx", "Log", "Log1p", "LogSoftmax",
    "Prod", "RealDiv", "Reciprocal", "Selu", "SeluGrad", "Sigmoid", "SigmoidGrad", "Softmax", "Softplus",
    "SoftplusGrad", "Softsign", "SoftsignGrad", "Sqrt", "Tanh", "TanhGrad")
INFER_LIST_REMOVE = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_INFERLIST_REMOVE"


@contextlib.contextmanager
def bfloat16_matmuls(enabled: bool = True, model: Optional[keras.Model] = None) -> Iterator[None]:
    """TensorFlow functions first run inside multiply matrices in bfloat16 (oneDNN, float32 accumulation) and do
    every other op in float32, on float32 variables: grappler's oneDNN auto mixed precision with its infer list
    emptied, so a product's result is cast back to float32 at once. Why not mixed_bfloat16: on CPU, TensorFlow's
    bfloat16 elementwise kernels (GELU, softmax, LayerNorm, dropout) are slower than its float32 ones and round
    every intermediate; the products are where bfloat16 pays (bench.studies.train_step_profile). Grappler
    rewrites a function when it is first run, so later functions (the Evaluator's, serving) stay float32.

    XLA does not run grappler: for a `model` whose train step XLA compiles (model.jit_compile), its Dense layers
    cast their input and kernel to bfloat16 themselves while the context lasts (model.bfloat16_dense_call), the same
    arithmetic for every linear layer; the attention's two batch products (tf.matmul inside transformers'
    attention, about 5% of the model's FLOPs at length 128) stay float32."""
    if not enabled:
        yield
        return
    if model is not None and model.jit_compile:
        with _bfloat16_dense_products(model):
            yield
        return
    previous_options = tf.config.optimizer.get_experimental_options()
    previous_list = os.environ.get(INFER_LIST_REMOVE)
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    os.environ[INFER_LIST_REMOVE] = ",".join(ONEDNN_INFER_LIST)
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": previous_options.get("auto_mixed_precision_onednn_bfloat16",
                                                                           False)})
        if previous_list is None:
            os.environ.pop(INFER_LIST_REMOVE, None)
        else:
            os.environ[INFER_LIST_REMOVE] = previous_list


@contextlib.contextmanager
def _bfloat16_dense_products(model: keras.Model) -> Iterator[None]:
    """`model`'s keras Dense layers multiply in bfloat16 (model.bfloat16_dense_call); a nested use leaves them so."""
    layers = [layer for layer in dense_layers(model) if "call" not in vars(layer)]
    for layer in layers:
        layer.call = types.MethodType(bfloat16_dense_call, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.call


def build_model(config: TrainingConfig, task: GlueTask, precision: Optional[str] = None,
                xla: bool = False) -> AdapterBertClassifier:
    """The model in `precision` (default config.precision), with config.warm_start's weights if given: a Keras
    policy fixes each layer's compute dtype when the layer is created, so it is set around the construction only.

    `xla`: for a train step XLA compiles. XLA ignores the seeds of TensorFlow's stateful random ops (dropout's
    masks would not follow the seed), so the layers are created drawing from tf.random.Generator, seeded by
    keras.utils.set_random_seed, which XLA runs deterministically. Without XLA the layers keep the stateful ops:
    the float32 runs' dropout masks, and so their results, stay what they were.
    """
    previous = keras.mixed_precision.global_policy()
    generator_before = keras.backend.experimental.is_tf_random_generator_enabled()
    policy = resolve_precision(precision or config.precision)
    keras.mixed_precision.set_global_policy("float32" if policy == "bfloat16_matmul" else policy)
    if xla:
        keras.backend.experimental.enable_tf_random_generator()
    try:
        bert = backbone_lib.load_backbone(config.model)
        backbone_lib.check_max_seq_length(config.max_seq_length, bert.config)
        model = AdapterBertClassifier(bert, task.num_labels, config.adapter_config(), full_finetune=config.full_finetune)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        if not generator_before:
            keras.backend.experimental.disable_tf_random_generator()
    if config.warm_start:
        load_adapter_weights(model, warm_start_directory(config))  # refuses other backbone weights (fingerprint)
    return model


def float32_copy(model: AdapterBertClassifier, config: TrainingConfig, task: GlueTask) -> AdapterBertClassifier:
    """`model` itself if it computes in float32, else the same weights in a float32 model (what is exported:
    exact predictions, and fast on CPUs without bfloat16 arithmetic)."""
    if model.compute_dtype == "float32":
        return model
    copy = build_model(config, task, precision="float32")
    copy.set_weights(model.get_weights())
    return copy


def compile_model(model: keras.Model, config: TrainingConfig, task: GlueTask, total_steps: int,
                  jit_compile: bool = False) -> None:
    schedule = WarmupLinearDecay(config.learning_rate, total_steps, int(config.warmup_ratio * total_steps))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "bias"])
    if task.is_regression:
        loss = keras.losses.MeanSquaredError()
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    # The optimizer's slots now, not in the first train step: a step that creates variables is traced twice.
    optimizer.build(model.trainable_variables)


def train(
    config: TrainingConfig,
    train_files: List[str],
    eval_files: List[str],
    feature_spec: Dict,
    log_dir: str,
    strategy: Optional[tf.distribute.Strategy] = None,
    *,
    train_rows: Optional[RowFilter] = None,
    eval_rows: Optional[RowFilter] = None,
    eval_name: str = "eval",
    patience: int = 0,
) -> Tuple[AdapterBertClassifier, List[Dict[str, Any]]]:
    """Builds and trains the model under `strategy` (default: the one config.distribution names); returns it
    and the per-epoch records. `batch_size` is the global batch, split among the workers of the strategy.

    The Tuner's trials: `train_rows` / `eval_rows` keep part of the files (train without its holdout; the
    holdout), named `eval_name` in the records; `patience` > 0 stops early (see ProgressLogger).
    """
    strategy = strategy or distribution_strategy(config.distribution)
    task = config.task_description()
    keras.utils.set_random_seed(config.seed)
    num_examples = _count(read_transformed(train_files, feature_spec, train_rows))
    if num_examples == 0:
        raise ValueError(f"No training examples in {train_files}.")
    precision = resolve_precision(config.precision)
    xla = resolve_xla(config, precision, strategy, steps=-(-num_examples // config.batch_size) * config.epochs)
    train_data = make_dataset(train_files, feature_spec, config.batch_size, config.max_seq_length,
                              shuffle_seed=config.seed, bucketing=config.bucketing, rows=train_rows, bucket_shapes=xla)
    eval_data = make_dataset(eval_files, feature_spec, config.batch_size, config.max_seq_length,
                             shuffle_seed=None, bucketing=config.bucketing, rows=eval_rows)
    steps_per_epoch = _count(train_data)  # fixed per epoch: shuffling moves no example to another bucket
    # Known length: Keras then stops each epoch on its last batch instead of stepping once more into the end.
    train_data = train_data.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    with strategy.scope():  # variables are created mirrored (and initialised alike) on every worker
        model = build_model(config, task, precision, xla)
        compile_model(model, config, task, total_steps=steps_per_epoch * config.epochs, jit_compile=xla)
    if config.adapter_drop and config.prefix_cache:
        train_data = _with_prefix_cache(model, config, train_files, feature_spec, strategy, train_data, train_rows)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    total = trainable + sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)
    logging.info("training %s on %d examples (%d steps/epoch, %d epochs): %d of %d parameters trainable (%.2f%%); "
                 "%s%s", task.name, num_examples, steps_per_epoch, config.epochs, trainable, total,
                 100 * trainable / total, precision, ", XLA" if xla else "")
    chief = is_chief(strategy)
    progress_dir = log_dir if chief else tempfile.mkdtemp(prefix="glue-worker-")  # one set of event files
    progress = ProgressLogger(task, eval_data, num_examples, config.epochs, progress_dir, config.batch_size,
                              steps_per_epoch, eval_name=eval_name, patience=patience)
    try:  # Keras' TensorBoard callback redirects the other workers' logs itself
        with bfloat16_matmuls(precision == "bfloat16_matmul", model):
            model.fit(train_data, epochs=config.epochs, verbose=0,
                      callbacks=[progress, keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")])
    finally:
        if not chief:
            shutil.rmtree(progress_dir, ignore_errors=True)
    return model, progress.history


def _with_prefix_cache(model: AdapterBertClassifier, config: TrainingConfig, train_files: List[str], feature_spec: Dict,
                       strategy: tf.distribute.Strategy, train_data: tf.data.Dataset,
                       rows: Optional[RowFilter] = None) -> tf.data.Dataset:
    """The training batches on the cached frozen prefix (modules/prefix_cache.py), or `train_data` if no cache."""
    if strategy.num_replicas_in_sync > 1:
        logging.warning("training without the prefix cache: it is built for one replica, this strategy has %d",
                        strategy.num_replicas_in_sync)
        return train_data
    boundaries = bucket_bounds(config.max_seq_length)[:-1]
    cache = build_prefix_cache(model, read_transformed(train_files, feature_spec, rows), config.batch_size, boundaries)
    if cache is None:
        return train_data
    cached = make_dataset(train_files, feature_spec, config.batch_size, config.max_seq_length,
                          shuffle_seed=config.seed, bucketing=config.bucketing, prefix_cache=cache, rows=rows)
    steps_per_epoch = _count(cached)  # iterated once like train_data, so both reshuffle alike in every epoch
    return cached.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))


def trained_config(fn_args: FnArgs) -> TrainingConfig:
    """The Trainer's TrainingConfig with the settings a Tuner chose (fn_args.hyperparameters) in place of the
    flags' values; the flags' config unchanged without a Tuner."""
    config = TrainingConfig.from_dict(fn_args.custom_config or {})
    chosen = tuned_settings(fn_args.hyperparameters)
    if chosen:
        logging.info("training with the Tuner's choice: %s", ", ".join(f"{k} {v}" for k, v in chosen.items()))
    return dataclasses.replace(config, **chosen)


def training_record(config: TrainingConfig, hyperparameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """What adapter_config.json says of how the adapters were trained: the settings, and the Tuner's search that
    chose them (its summary, which components.tuner adds to the best hyperparameters), if one did."""
    record: Dict[str, Any] = {"training": {name: getattr(config, name) for name in RECORDED_TRAINING_FIELDS}}
    if hyperparameters:
        record["tuning"] = {"chosen": tuned_settings(hyperparameters), **hyperparameters.get("search", {})}
    return record


def run_fn(fn_args: FnArgs) -> None:
    """Entry point of the TFX Trainer component."""
    config = trained_config(fn_args)
    strategy = distribution_strategy(config.distribution)  # first: before any other TensorFlow op
    task = config.task_description()
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    feature_spec = tf_transform_output.transformed_feature_spec()
    model, _ = train(config, fn_args.train_files, fn_args.eval_files, feature_spec, fn_args.model_run_dir, strategy)
    model = float32_copy(model, config, task)
    xla_export = config.serving_export.endswith("xla")
    export = {"xla_length_bounds": xla_length_bounds(config.max_seq_length) if xla_export else (),
              "bfloat16": config.serving_export.startswith("bfloat16")}
    if is_chief(strategy):
        export_serving_model(model, tf_transform_output, task, fn_args.serving_model_dir, **export)
        if not config.full_finetune:
            save_adapter_weights(model, adapters_dir(fn_args.serving_model_dir),
                                 extra={"task": task.name, "task_spec": task.to_spec(), "model": config.model,
                                        "max_seq_length": config.max_seq_length,
                                        **training_record(config, fn_args.hyperparameters)})
    else:
        # Every worker takes part in saving (reading distributed variables can be a collective op); only the
        # chief's copy is kept.
        with tempfile.TemporaryDirectory(prefix="serving-worker-") as scratch:
            export_serving_model(model, tf_transform_output, task, scratch, **export)
    if strategy.num_replicas_in_sync > 1:  # no worker leaves (and drops out of the cluster) before all are done
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
