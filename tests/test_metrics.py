"""GLUE metrics agree with scikit-learn/SciPy, both as plain numpy and through TFMA's real evaluation."""
import dataclasses
from typing import Callable, Dict, List

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from scipy import stats
from sklearn import metrics as sk_metrics

from modules import glue, metrics

REFERENCE: Dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": sk_metrics.accuracy_score,
    "f1": sk_metrics.f1_score,
    "mcc": sk_metrics.matthews_corrcoef,
    "pearson": lambda labels, predictions: stats.pearsonr(labels, predictions)[0],
    "spearman": lambda labels, predictions: stats.spearmanr(labels, predictions)[0],
}


def _random_labels_and_predictions(task: glue.GlueTask, rng: np.random.Generator, size: int):
    """Class ids, or STS-B-like scores on a 0.2 grid (many ties) with rounded noisy predictions (ties too)."""
    if task.is_regression:
        labels = rng.integers(0, 26, size) / 5.0
        return labels, np.round(labels + rng.normal(0.0, 1.5, size), 1)
    return rng.integers(0, task.num_labels, size), rng.integers(0, task.num_labels, size)


def _assert_matches_reference(values: Dict[str, float], labels: np.ndarray, predictions: np.ndarray) -> None:
    for name, value in values.items():
        assert value == pytest.approx(REFERENCE[name](labels, predictions), abs=1e-4), name


@pytest.mark.parametrize("task_name", sorted(glue.TASKS))
@pytest.mark.parametrize("seed", range(3))
def test_glue_metrics_match_sklearn_and_scipy(task_name: str, seed: int):
    task = glue.get_task(task_name)
    labels, predictions = _random_labels_and_predictions(task, np.random.default_rng(seed), 200)
    values = metrics.glue_metrics(task, labels, predictions)
    assert list(values) == list(task.metrics)
    _assert_matches_reference(values, labels, predictions)


def test_edge_cases_match_sklearn_and_scipy():
    """Constant predictions (MCC 0), no positive class (F1 0), all-tied ranks and multi-class MCC."""
    cola, mrpc, stsb = glue.get_task("cola"), glue.get_task("mrpc"), glue.get_task("stsb")
    labels = np.array([0, 1, 1, 0, 1])
    _assert_matches_reference(metrics.glue_metrics(cola, labels, np.ones(5)), labels, np.ones(5))
    _assert_matches_reference(metrics.glue_metrics(mrpc, np.zeros(5), np.zeros(5)), np.zeros(5), np.zeros(5))
    scores, tied = np.array([1.0, 2.0, 2.0, 2.0, 5.0]), np.array([3.0, 3.0, 1.0, 3.0, 1.0])
    _assert_matches_reference(metrics.glue_metrics(stsb, scores, tied), scores, tied)
    three_class_mcc = dataclasses.replace(glue.get_task("mnli"), metrics=("mcc",))
    labels, predictions = _random_labels_and_predictions(three_class_mcc, np.random.default_rng(7), 300)
    _assert_matches_reference(metrics.glue_metrics(three_class_mcc, labels, predictions), labels, predictions)


def test_glue_metrics_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="labels but"):
        metrics.glue_metrics(glue.get_task("sst2"), [0, 1], [1])
    with pytest.raises(ValueError, match="No labeled examples"):
        metrics.glue_metrics(glue.get_task("sst2"), [], [])


def test_evaluator_configs_bless_on_the_first_eval_split_only():
    """TFX validates (and blesses) only when the EvalConfig has thresholds: only MNLI matched has them."""
    def has_thresholds(config: tfma.EvalConfig) -> bool:
        return bool(tfma.metrics.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config))

    mnli = metrics.evaluator_configs(glue.get_task("mnli"))
    assert list(mnli) == ["eval", "eval_mismatched"]
    assert has_thresholds(mnli["eval"]) and not has_thresholds(mnli["eval_mismatched"])
    assert list(metrics.evaluator_configs(glue.get_task("rte"))) == ["eval"]


class _ToyModel(tf.Module):
    """Serves the GLUE model contract as a deterministic function of a float feature "x".

    With read_label, it predicts the label feature itself: a perfect baseline model.
    """

    def __init__(self, task: glue.GlueTask, read_label: bool = False):
        super().__init__()
        self._task = task
        self._read_label = read_label

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        features = tf.io.parse_example(examples, {
            "x": tf.io.FixedLenFeature([], tf.float32),
            glue.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.float32 if self._task.is_regression else tf.int64),
        })
        if self._task.is_regression:
            return {metrics.OUTPUT_SCORE: features["x"]}
        if self._read_label:
            probabilities = tf.one_hot(features[glue.FEATURE_LABEL], self._task.num_labels)
        else:
            classes = tf.range(self._task.num_labels, dtype=tf.float32)
            probabilities = tf.nn.softmax(-tf.square(features["x"][:, None] - classes), axis=1)
        return {metrics.OUTPUT_PROBABILITIES: probabilities, metrics.OUTPUT_LABEL: tf.argmax(probabilities, axis=1)}


def _save_model(path: str, task: glue.GlueTask, read_label: bool = False) -> str:
    model = _ToyModel(task, read_label)
    tf.saved_model.save(model, path, signatures={metrics.SIGNATURE_NAME: model.serve})
    return path


def _write_examples(path: str, task: glue.GlueTask, seed: int = 0, size: int = 120) -> List[bytes]:
    """A TFRecord of examples with a label and a noisy copy "x" of it; returns the serialized examples."""
    rng = np.random.default_rng(seed)
    labels, _ = _random_labels_and_predictions(task, rng, size)
    noisy = np.round(labels + rng.normal(0.0, 0.8, size), 1)
    serialized = []
    for label, x in zip(labels, noisy):
        label_feature = (
            tf.train.Feature(float_list=tf.train.FloatList(value=[label])) if task.is_regression
            else tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
        )
        example = tf.train.Example(features=tf.train.Features(feature={
            glue.FEATURE_LABEL: label_feature,
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x])),
        }))
        serialized.append(example.SerializeToString())
    with tf.io.TFRecordWriter(path) as writer:
        for record in serialized:
            writer.write(record)
    return serialized


def _reference_metrics(task: glue.GlueTask, model_path: str, serialized: List[bytes]) -> Dict[str, float]:
    """sklearn/SciPy on the SavedModel's own outputs for the same examples."""
    outputs = tf.saved_model.load(model_path).signatures[metrics.SIGNATURE_NAME](examples=tf.constant(serialized))
    labels = np.array([
        tf.train.Example.FromString(record).features.feature[glue.FEATURE_LABEL].float_list.value[0] if task.is_regression
        else tf.train.Example.FromString(record).features.feature[glue.FEATURE_LABEL].int64_list.value[0]
        for record in serialized
    ])
    if task.is_regression:
        predictions = outputs[metrics.OUTPUT_SCORE].numpy()
    else:
        predictions = outputs[metrics.OUTPUT_LABEL].numpy()
        np.testing.assert_array_equal(predictions, outputs[metrics.OUTPUT_PROBABILITIES].numpy().argmax(axis=1))
    return {name: REFERENCE[name](labels, predictions) for name in task.metrics}


def _run_tfma(config: tfma.EvalConfig, models: Dict[str, str], data: str, output: str) -> None:
    """Runs TFMA as the TFX Evaluator does: baseline spec added when there are two models, rubber stamp otherwise."""
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=len(models) > 1, rubber_stamp=True)
    shared_models = [
        tfma.default_eval_shared_model(path, model_name=name, eval_config=config, rubber_stamp=len(models) == 1)
        for name, path in models.items()
    ]
    tfma.run_model_analysis(
        eval_shared_model=shared_models[0] if len(shared_models) == 1 else shared_models,
        eval_config=config, data_location=data, output_path=output,
    )


@pytest.mark.parametrize("task_name", ["mrpc", "cola", "stsb"])
def test_tfma_reports_sklearn_values_and_blesses(tmp_path, task_name: str):
    task = glue.get_task(task_name)
    model = _save_model(str(tmp_path / "model"), task)
    data = str(tmp_path / "eval.tfrecord")
    serialized = _write_examples(data, task)
    output = str(tmp_path / "evaluation")

    _run_tfma(metrics.eval_config(task, min_value=-1.0), {"": model}, data, output)

    reported = metrics.overall_metrics(output)
    assert reported.pop("example_count") == len(serialized)
    assert reported == pytest.approx(_reference_metrics(task, model, serialized), abs=1e-4)
    eval_result = tfma.load_eval_result(output)
    assert eval_result.get_metrics_for_slice()[task.main_metric]["doubleValue"] == pytest.approx(reported[task.main_metric])
    assert tfma.load_validation_result(output).validation_ok


def test_not_blessed_below_min_value(tmp_path):
    task = glue.get_task("mrpc")
    data = str(tmp_path / "eval.tfrecord")
    _write_examples(data, task)
    output = str(tmp_path / "evaluation")

    _run_tfma(metrics.eval_config(task, min_value=1.01), {"": _save_model(str(tmp_path / "model"), task)}, data, output)

    result = tfma.load_validation_result(output)
    assert not result.validation_ok
    failures = [failure.metric_key for failure in result.metric_validations_per_slice[0].failures]
    assert [(key.name, key.is_diff) for key in failures] == [(task.main_metric, False)]


def test_not_blessed_when_worse_than_baseline(tmp_path):
    task = glue.get_task("cola")
    data = str(tmp_path / "eval.tfrecord")
    _write_examples(data, task)
    output = str(tmp_path / "evaluation")
    models = {
        tfma.CANDIDATE_KEY: _save_model(str(tmp_path / "candidate"), task),
        tfma.BASELINE_KEY: _save_model(str(tmp_path / "baseline"), task, read_label=True),
    }

    _run_tfma(metrics.eval_config(task, min_value=-1.0, tolerance=0.01), models, data, output)

    assert metrics.overall_metrics(output, tfma.BASELINE_KEY)[task.main_metric] == pytest.approx(1.0)
    assert metrics.overall_metrics(output, tfma.CANDIDATE_KEY)[task.main_metric] < 0.99
    result = tfma.load_validation_result(output)
    assert not result.validation_ok
    failures = [failure.metric_key for failure in result.metric_validations_per_slice[0].failures]
    assert [(key.name, key.model_name, key.is_diff) for key in failures] == [(task.main_metric, tfma.CANDIDATE_KEY, True)]
