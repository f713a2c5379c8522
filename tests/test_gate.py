"""The release gate (components/evaluator.py): the served model is the baseline, a constant predictor sets the floor.

The GatedEvaluator executor runs for real (TFX's Evaluator, TFMA) on eval examples from real GLUE dev files
where present, with small SavedModels that honour the serving contract: one answers the positive class for
everything, one reads the label (perfect), others read it but get every k-th example wrong.
"""
import os
from typing import Dict, List, Optional

import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import json_utils, proto_utils

from conftest import glue_dir_or_skip
from components.evaluator import BASELINE_PROPERTY, GATE_PROPERTY, Executor, served_baseline
from modules import glue, metrics

# (task, metric) -> the constant predictor's score on the real dev file, computed by hand from its label counts:
# MRPC 279 of 408 positive (F1 2*279/(2*279+129)); RTE 146 of 277 not_entailment; SST-2 444 of 872 positive.
REAL_FLOORS = {("mrpc", "f1"): 558 / 687, ("mrpc", "accuracy"): 279 / 408, ("rte", "accuracy"): 146 / 277,
               ("sst2", "accuracy"): 444 / 872, ("cola", "mcc"): 0.0, ("stsb", "spearman"): 0.0}


class ToyModel(tf.Module):
    """The serving contract of a 2-class task: constant answer 1, or the label with every k-th example wrong."""

    def __init__(self, wrong_every: Optional[int]):
        super().__init__()
        self._wrong_every = wrong_every

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        features = tf.io.parse_example(examples, {glue.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
                                                  glue.FEATURE_INDEX: tf.io.FixedLenFeature([], tf.int64)})
        if self._wrong_every is None:
            answers = tf.ones_like(features[glue.FEATURE_LABEL])
        else:
            wrong = tf.equal(features[glue.FEATURE_INDEX] % self._wrong_every, 0)
            answers = tf.where(wrong, 1 - features[glue.FEATURE_LABEL], features[glue.FEATURE_LABEL])
        probabilities = tf.one_hot(answers, 2)
        return {metrics.OUTPUT_PROBABILITIES: probabilities, metrics.OUTPUT_LABEL: answers}


def save_model(path: str, wrong_every: Optional[int]) -> str:
    model = ToyModel(wrong_every)
    tf.saved_model.save(model, path, signatures={metrics.SIGNATURE_NAME: model.serve})
    return path


def mrpc_eval_examples(directory: str) -> standard_artifacts.Examples:
    """An Examples artifact whose 'eval' split is the real MRPC dev file, as GlueExampleGen writes it."""
    from components.glue_example_gen.executor import read_examples

    path = os.path.join(glue_dir_or_skip("MRPC"), "MRPC", "dev.tsv")
    os.makedirs(os.path.join(directory, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(directory, "Split-eval", "data.gz"), options="GZIP") as writer:
        for example in read_examples(path, glue.get_task("mrpc"), labeled=True):
            writer.write(example.SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri = directory
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    return examples


def evaluate(root: str, name: str, examples: standard_artifacts.Examples, candidate_wrong_every: Optional[int],
             served_models_dir: Optional[str], min_eval_value: float = 0.0) -> standard_artifacts.ModelBlessing:
    """One GatedEvaluator execution on MRPC; returns its blessing artifact."""
    model = standard_artifacts.Model()
    model.uri = os.path.join(root, name, "model")
    save_model(os.path.join(model.uri, "Format-Serving"), candidate_wrong_every)
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = os.path.join(root, name, "evaluation"), os.path.join(root, name, "blessing")
    os.makedirs(blessing.uri)
    config = metrics.eval_config(glue.get_task("mrpc"), min_eval_value, 0.01)
    Executor().Do(
        {"examples": [examples], "model": [model]}, {"evaluation": [evaluation], "blessing": [blessing]},
        {"eval_config": proto_utils.proto_to_json(config), "example_splits": json_utils.dumps(["eval"]),
         "served_models_dir": served_models_dir, "constant_margin": 0.01},
    )
    return blessing


def snapshot(directory: str) -> Dict[str, bytes]:
    files = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(parent, name), "rb") as f:
                files[os.path.relpath(os.path.join(parent, name), directory)] = f.read()
    return files


@pytest.fixture(scope="module")
def mrpc(tmp_path_factory) -> Dict[str, object]:
    root = str(tmp_path_factory.mktemp("gate"))
    return {"root": root, "examples": mrpc_eval_examples(os.path.join(root, "examples"))}


# --- the constant predictor --------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name, labels, expected", [
    ("mrpc", [1, 1, 1, 0], {"f1": 6 / 7, "accuracy": 0.75}),  # always 1: F1 2*3/(2*3+1)
    ("mrpc", [0, 0, 0, 1], {"f1": 2 / 5, "accuracy": 0.75}),  # F1 from always 1, accuracy from always 0
    ("cola", [1, 0, 1, 1], {"mcc": 0.0, "accuracy": 0.75}),
    ("mnli", [0, 1, 2, 2, 2], {"accuracy": 0.6}),
    ("stsb", [0.5, 4.0, 2.5], {"spearman": 0.0, "pearson": 0.0}),
])
def test_constant_predictor_score_is_the_best_single_answer(task_name: str, labels: List[float],
                                                             expected: Dict[str, float]) -> None:
    task = glue.get_task(task_name)
    for metric, value in expected.items():
        assert metrics.constant_predictor_score(task, metric, labels) == pytest.approx(value)


@pytest.mark.parametrize("task_name, metric", sorted(REAL_FLOORS))
def test_constant_predictor_floor_on_the_real_dev_files(task_name: str, metric: str) -> None:
    from components.glue_example_gen.executor import read_examples

    task = glue.get_task(task_name)
    path = os.path.join(glue_dir_or_skip(task.directory), task.directory, task.splits["eval"])
    labels = [(lambda f: (f.int64_list.value or f.float_list.value)[0])(e.features.feature[glue.FEATURE_LABEL])
              for e in read_examples(path, task, labeled=True)]
    assert metrics.constant_predictor_score(task, metric, labels) == pytest.approx(REAL_FLOORS[task_name, metric])


# --- the gate on real MRPC dev -----------------------------------------------------------------------------


def test_a_model_answering_one_class_is_not_blessed_even_with_nothing_served(mrpc, tmp_path) -> None:
    blessing = evaluate(str(tmp_path), "constant", mrpc["examples"], None, str(tmp_path / "serving" / "mrpc"))
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_string_custom_property(GATE_PROPERTY) == (
        "F1 0.8122 does not beat the constant predictor's 0.8122 + 0.01")
    assert not os.path.exists(tmp_path / "serving")


def test_min_eval_value_can_only_raise_the_floor(mrpc, tmp_path) -> None:
    below = evaluate(str(tmp_path), "below", mrpc["examples"], None, None, min_eval_value=0.5)
    assert below.get_int_custom_property("blessed") == 0  # 0.8122 >= 0.5, but not above the constant predictor
    raised = evaluate(str(tmp_path), "raised", mrpc["examples"], 20, None, min_eval_value=0.99)
    assert raised.get_int_custom_property("blessed") == 0
    assert raised.get_string_custom_property(GATE_PROPERTY).endswith("is below --min_eval_value 0.99")


def test_with_nothing_served_a_good_model_is_blessed_on_the_floor_alone(mrpc, tmp_path) -> None:
    blessing = evaluate(str(tmp_path), "good", mrpc["examples"], 20, str(tmp_path / "serving" / "mrpc"))
    assert blessing.get_int_custom_property("blessed") == 1
    gate = blessing.get_string_custom_property(GATE_PROPERTY)
    assert gate.startswith("F1 0.9") and gate.endswith("beats the constant predictor's 0.8122 + 0.01; nothing served yet")
    assert blessing.get_string_custom_property(BASELINE_PROPERTY) == ""


def test_after_a_rollback_the_version_now_served_is_the_baseline(mrpc, tmp_path) -> None:
    served = tmp_path / "serving" / "mrpc"
    save_model(str(served / "100"), 5)  # 80% right
    save_model(str(served / "200"), 1000)  # almost perfect
    worse = evaluate(str(tmp_path), "against_200", mrpc["examples"], 10, str(served))
    assert worse.get_int_custom_property("blessed") == 0
    assert worse.get_string_custom_property(BASELINE_PROPERTY) == str(served / "200")
    assert "below the served model's" in worse.get_string_custom_property(GATE_PROPERTY)

    tf.io.gfile.rmtree(str(served / "200"))  # rolled back by hand: TF Serving now serves 100
    better = evaluate(str(tmp_path), "against_100", mrpc["examples"], 10, str(served))
    assert better.get_int_custom_property("blessed") == 1
    assert better.get_string_custom_property(BASELINE_PROPERTY) == str(served / "100")
    assert "the served model scores 0.8" in better.get_string_custom_property(GATE_PROPERTY)


@pytest.mark.parametrize("damage", ["garbage_saved_model", "no_variables", "no_saved_model"])
def test_a_served_version_that_does_not_load_fails_the_run_naming_it_and_nothing_is_touched(
        mrpc, tmp_path, damage: str) -> None:
    served = tmp_path / "serving" / "mrpc"
    save_model(str(served / "100"), 5)
    broken = save_model(str(served / "200"), 5)
    if damage == "garbage_saved_model":
        (served / "200" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    elif damage == "no_variables":
        tf.io.gfile.rmtree(os.path.join(broken, "variables"))
    else:
        os.remove(os.path.join(broken, "saved_model.pb"))
    before = snapshot(str(served))
    with pytest.raises(RuntimeError, match=f"The served model {served / '200'} is not a loadable SavedModel"):
        evaluate(str(tmp_path), "candidate", mrpc["examples"], 10, str(served))
    assert snapshot(str(served)) == before
    with pytest.raises(RuntimeError, match="Repair or remove that directory"):
        served_baseline(str(served))
