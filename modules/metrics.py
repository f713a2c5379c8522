"""GLUE metrics for the TFX Evaluator (TFMA), computed exactly as scikit-learn/SciPy compute them.

`glue_metrics` is the single implementation (pure numpy). `GlueMetric` wraps it as a TFMA metric that
collects the (label, prediction) pairs of a slice and scores them at the end: GLUE metrics such as F1,
MCC and Spearman are not averages over examples, and eval sets are small (at most ~10k rows).

The model contract: the SavedModel's `serving_default` signature takes serialized tf.Examples and
returns OUTPUT_PROBABILITIES, OUTPUT_LABEL and OUTPUT_LABEL_NAME for classification tasks, OUTPUT_SCORE
for regression.
Labels come from the example feature glue.FEATURE_LABEL (TFMA reads labels from features via
label_key and predictions from model outputs via prediction_key, so the output "label" and the
feature "label" do not clash).

Metric keys in TFMA results are the metric names of the task ("accuracy", "f1", "macro_f1", "mcc",
"pearson", "spearman"; modules/glue.py) plus "example_count"; `overall_metrics` reads them back.

MNLI: the TFX 1.16 Evaluator reads all of its `example_splits` into one PCollection (beam.Flatten
in tfx/components/evaluator/executor.py), so it reports the union of the splits, not each split.
`evaluator_configs` therefore returns one EvalConfig per eval split, for one Evaluator each; only
the first split ("eval", matched for MNLI) carries thresholds and so decides blessing.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from modules import glue

# Output names of the serving_default signature (the trainer exports these).
OUTPUT_PROBABILITIES = "probabilities"  # float32 [batch, num_labels]
OUTPUT_LABEL = "label"  # int64 [batch], argmax of the probabilities
OUTPUT_LABEL_NAME = "label_name"  # string [batch], the task's label value of OUTPUT_LABEL ("entailment")
OUTPUT_SCORE = "score"  # float32 [batch], regression tasks only

SIGNATURE_NAME = "serving_default"

DEFAULT_MIN_VALUE = 0.0
DEFAULT_TOLERANCE = 0.01
# How the summary names a metric.
DISPLAY_NAMES = {"f1": "F1", "macro_f1": "macro-F1", "mcc": "MCC", "accuracy": "accuracy", "pearson": "Pearson",
                 "spearman": "Spearman"}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group_of_sorted = np.cumsum(starts_group) - 1
    bounds = np.concatenate([np.flatnonzero(starts_group), [len(values)]])
    group_rank = (bounds[:-1] + bounds[1:] + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = group_rank[group_of_sorted]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant, as scipy.stats.pearsonr."""
    dx = x - x.mean()
    dy = y - y.mean()
    denominator = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(np.dot(dx, dy) / denominator, -1.0, 1.0))


def _binary_f1(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> float:
    """F1 of the class `positive`; 0.0 when there is no positive label or prediction, as sklearn."""
    true_positives = np.sum((labels == positive) & (predictions == positive))
    false_positives = np.sum((labels != positive) & (predictions == positive))
    false_negatives = np.sum((labels == positive) & (predictions != positive))
    denominator = 2 * true_positives + false_positives + false_negatives
    return float(2 * true_positives / denominator) if denominator else 0.0


def _macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions, as
    sklearn.metrics.f1_score(average="macro")."""
    return float(np.mean([_binary_f1(labels, predictions, c) for c in np.unique(np.concatenate([labels, predictions]))]))


def _matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Multi-class Matthews correlation from the confusion matrix, as sklearn.metrics.matthews_corrcoef."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    label_ids, prediction_ids = encoded[: len(labels)], encoded[len(labels):]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (label_ids, prediction_ids), 1.0)
    true_per_class = confusion.sum(axis=1)
    predicted_per_class = confusion.sum(axis=0)
    correct = np.trace(confusion)
    total = confusion.sum()
    cov_true_predicted = correct * total - np.dot(true_per_class, predicted_per_class)
    cov_predicted = total**2 - np.dot(predicted_per_class, predicted_per_class)
    cov_true = total**2 - np.dot(true_per_class, true_per_class)
    if cov_predicted * cov_true == 0:
        return 0.0
    return float(cov_true_predicted / np.sqrt(cov_true * cov_predicted))


def glue_metrics(task: glue.GlueTask, labels: Iterable[float], predictions: Iterable[float]) -> Dict[str, float]:
    """The task's GLUE metrics ({name: value}) for labels and predictions (class ids, or scores for regression)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions.")
    if not len(labels):
        raise ValueError(f"No labeled examples to score {task.name} on.")
    compute = {
        "accuracy": lambda: float(np.mean(labels == predictions)),
        "f1": lambda: _binary_f1(labels, predictions, task.positive_class),
        "macro_f1": lambda: _macro_f1(labels, predictions),
        "mcc": lambda: _matthews(labels, predictions),
        "pearson": lambda: _pearson(labels, predictions),
        "spearman": lambda: _pearson(_average_ranks(labels), _average_ranks(predictions)),
    }
    return {name: compute[name]() for name in task.metrics}


def constant_predictor_score(task: glue.GlueTask, metric: str, labels: Iterable[float]) -> float:
    """The best `metric` a model scores by answering the same thing for every example of `labels`.

    Classification: the best single class (majority-class accuracy, the F1 of always answering the positive
    class, MCC 0). Regression: correlations of a constant are undefined; a constant predictor scores 0.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    answers = [labels.mean()] if task.is_regression else range(task.num_labels)
    scores = [glue_metrics(task, labels, np.full_like(labels, answer))[metric] for answer in answers]
    return max(0.0 if np.isnan(score) else score for score in scores)


class GlueMetric(metric_types.Metric):
    """One metric of one task (e.g. mrpc "f1"), as a TFMA metric keyed by the metric's name.

    Loaded by TFMA from MetricConfig(class_name="GlueMetric", module="modules.metrics",
    config='{"task": <the task spec>, "metric": ...}'); see `metric_config`. The task travels whole (its spec
    mapping, GlueTask.to_spec), so the Evaluator needs neither the spec file nor the GLUE table.
    """

    def __init__(self, task: Dict[str, Any], metric: str, name: Optional[str] = None):
        task_metrics = glue.GlueTask.from_spec(task, source="GlueMetric config").metrics
        if metric not in task_metrics:
            raise ValueError(f"{metric!r} is not a metric of task {task['name']}: expected one of {task_metrics}.")
        super().__init__(
            metric_util.merge_per_key_computations(_glue_metric_computations),
            task=task, metric=metric, name=name or metric,
        )


def _glue_metric_computations(
    name: str,
    task: Dict[str, Any],
    metric: str,
    eval_config: Optional[tfma.EvalConfig] = None,
    model_name: str = "",
    output_name: str = "",
) -> metric_types.MetricComputations:
    """One computation per model (candidate and baseline), which TFMA diffs for change thresholds."""
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=None,
        combiner=_GlueMetricCombiner(key, glue.GlueTask.from_spec(task), metric, eval_config),
    )]


_Pairs = Tuple[List[float], List[float]]  # (labels, predictions) of the examples seen so far


class _GlueMetricCombiner(beam.CombineFn):
    """Collects (label, predicted class id or score) pairs, then scores them with glue_metrics."""

    def __init__(self, key: metric_types.MetricKey, task: glue.GlueTask, metric: str,
                 eval_config: Optional[tfma.EvalConfig]):
        self._key = key
        self._task = task
        self._metric = metric
        self._eval_config = eval_config

    def create_accumulator(self) -> _Pairs:
        return [], []

    def add_input(self, accumulator: _Pairs, element: metric_types.StandardMetricInputs) -> _Pairs:
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
            element, eval_config=self._eval_config, model_name=self._key.model_name,
            output_name=self._key.output_name, flatten=False,
        ):
            accumulator[0].append(float(np.asarray(label).reshape(-1)[0]))
            if self._task.is_regression:
                accumulator[1].append(float(np.asarray(prediction).reshape(-1)[0]))
            else:
                accumulator[1].append(float(np.argmax(prediction)))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Pairs]) -> _Pairs:
        labels: List[float] = []
        predictions: List[float] = []
        for accumulator_labels, accumulator_predictions in accumulators:
            labels.extend(accumulator_labels)
            predictions.extend(accumulator_predictions)
        return labels, predictions

    def extract_output(self, accumulator: _Pairs) -> Dict[metric_types.MetricKey, float]:
        labels, predictions = accumulator
        return {self._key: glue_metrics(self._task, labels, predictions)[self._metric]}


def metric_config(task: glue.GlueTask, metric: str, threshold: Optional[tfma.MetricThreshold] = None) -> tfma.MetricConfig:
    """The MetricConfig that makes TFMA load GlueMetric for one metric of a task."""
    config = tfma.MetricConfig(
        class_name=GlueMetric.__name__, module=GlueMetric.__module__,
        config=json.dumps({"task": task.to_spec(), "metric": metric}, sort_keys=True),
    )
    if threshold is not None:
        config.threshold.CopyFrom(threshold)
    return config


def blessing_metric(config: tfma.EvalConfig) -> Tuple[tfma.MetricConfig, glue.GlueTask, str]:
    """The MetricConfig that carries the blessing thresholds in `config`, with its task and metric name."""
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name == GlueMetric.__name__ and metric.HasField("threshold"):
                values = json.loads(metric.config)
                return metric, glue.GlueTask.from_spec(values["task"]), values["metric"]
    raise ValueError("The eval config has no thresholded GLUE metric: nothing decides blessing.")


def _blessing_threshold(min_value: Optional[float], tolerance: Optional[float]) -> Optional[tfma.MetricThreshold]:
    """Main-metric threshold: at least min_value, and at most `tolerance` worse than the baseline."""
    if min_value is None and tolerance is None:
        return None
    threshold = tfma.MetricThreshold()
    if min_value is not None:
        threshold.value_threshold.CopyFrom(tfma.GenericValueThreshold(lower_bound={"value": min_value}))
    if tolerance is not None:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -tolerance},
        ))
    return threshold


def eval_config(
    task: glue.GlueTask,
    min_value: Optional[float] = DEFAULT_MIN_VALUE,
    tolerance: Optional[float] = DEFAULT_TOLERANCE,
) -> tfma.EvalConfig:
    """TFMA config reporting the task's GLUE metrics and example_count over the whole eval set.

    Blessing depends on the main metric only: it must be >= min_value and, once a blessed baseline
    exists, no more than `tolerance` below the baseline's (the Evaluator ignores the change threshold
    while there is no baseline). None drops that threshold; with neither, the Evaluator only reports.
    """
    blessing = _blessing_threshold(min_value, tolerance)
    metrics = [
        metric_config(task, metric, blessing if metric == task.main_metric else None)
        for metric in task.metrics
    ]
    metrics.append(tfma.MetricConfig(class_name="ExampleCount"))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=SIGNATURE_NAME,
            label_key=glue.FEATURE_LABEL,
            prediction_key=OUTPUT_SCORE if task.is_regression else OUTPUT_PROBABILITIES,
        )],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        slicing_specs=[tfma.SlicingSpec()],
    )


def evaluator_configs(
    task: glue.GlueTask,
    min_value: Optional[float] = DEFAULT_MIN_VALUE,
    tolerance: Optional[float] = DEFAULT_TOLERANCE,
) -> Dict[str, tfma.EvalConfig]:
    """Eval split -> EvalConfig, for one Evaluator per split (an Evaluator unions its example_splits).

    The first split ("eval") carries the thresholds and decides blessing; the others (MNLI's
    "eval_mismatched") are reported only.
    """
    blessing_split, *report_splits = task.eval_splits
    configs = {blessing_split: eval_config(task, min_value, tolerance)}
    configs.update({split: eval_config(task, None, None) for split in report_splits})
    return configs


def overall_metrics(output_path: str, model_name: str = "") -> Dict[str, float]:
    """Metric name -> value on the overall slice of an Evaluator output (model_name: "candidate" with a baseline)."""
    for slice_metrics in tfma.load_metrics(output_path):
        if slice_metrics.slice_key.single_slice_keys:
            continue
        return {
            entry.key.name: entry.value.double_value.value
            for entry in slice_metrics.metric_keys_and_values
            if entry.key.model_name == model_name and not entry.key.is_diff
        }
    raise ValueError(f"No overall slice in the evaluation at {output_path}.")
