"""End to end: the whole pipeline, run by `python -m pipeline.run` exactly as a user runs it, on a small MRPC
sample with a tiny random BERT; then the same command again, which must reuse the upstream outputs.

The first run is the session's shared one (tests/tiny_mrpc.py, the `tiny_mrpc_run` fixture: its own process, so
that its whole console, TensorFlow's C++ lines too, is seen); the module-scoped fixture adds the rerun (~30 s)
and every test reads both:
  - ML Metadata: every node of create_pipeline(...) has a COMPLETE execution in the run;
  - the Evaluator's metrics are the task's GLUE metrics, the model is blessed, the Pusher pushed it to
    <serving_dir>/mrpc/<version>/ and the summary table says all of it;
  - the pushed SavedModel answers raw sentence pairs ("predict_text") and serialized tf.Examples
    ("serving_default") with exactly what the Keras model rebuilt from the adapter-only weights gives;
  - the rerun: every component upstream of the Evaluator is CACHED (same artifacts); the Evaluator reruns,
    now against the served model (the first run's push) as baseline, and nothing new is pushed.
  - the console: none of the known-benign messages of pipeline/console.py, and a real warning still shows.
  - the test split: BulkInferrer and the PredictionWriter publish MRPC.tsv beside the pushed version, one row per
    test row in the test file's index order, each label what the pushed model's predict_text answers; the
    `pipeline.predict --input` CLI writes the same file from the same model.
"""
import contextlib
import io
import os
import re
import types
from typing import List

import numpy as np
import pytest
import tensorflow as tf

from tiny_mrpc import EVAL_ROWS, MAX_SEQ_LENGTH, TASK, TEST_ROWS, TYPO_BEAM_FLAG

# What the main command printed before pipeline/console.py (issue 16), on every run: not one should show.
BENIGN_LINES = [
    "Unable to register cuFFT factory", "Unable to register cuDNN factory", "Unable to register cuBLAS factory",
    "ArtifactQuery.property_predicate is not supported", "arguments contain non-serializable objects",
    "SavedModel saved prior to TF 2.5 detected", "TensorFlow and JAX classes are deprecated",
    "All model checkpoint layers were used", "All the layers of TFBertModel were initialized",
    "does not have payload_format custom property", "Couldn't find python-snappy",
    "You are using a non-supported Python version", "tf_record_iterator (from tensorflow.python.lib.io.tf_record)",
    "oneDNN supports DT_INT64 only on platforms with AVX-512",
    "load (from tensorflow.python.saved_model.loader_impl) is deprecated",
]
# Upstream of the resolver, Evaluator and Pusher: their inputs do not change between two identical runs.
CACHEABLE = ("GlueExampleGen", "StatisticsGen", "GlueSchemaGen", "ExampleValidator", "DataGate", "TrainabilityGate",
             "Transform", "Trainer")

# Sentence pairs for the serving checks: a paraphrase, unrelated sentences, one long enough to be truncated
# at MAX_SEQ_LENGTH, words outside the vocabulary, upper case, quotes.
QUERIES = [
    ("The company said sales rose five percent today.", "Sales rose five percent, the company said."),
    ("The dog ran home.", "Investors think the market fell in the second quarter."),
    (" ".join(["the river was cold and the city needs water"] * 4) + ".", "The river was cold."),
    ("Zyxwv qqq \"Blorf\" 1234!", "THE KING LEFT EARLY."),
]


def run_main(argv: List[str]) -> str:
    """pipeline.run.main(argv); returns what it printed (the summary table)."""
    from pipeline import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run.main(argv)
    return out.getvalue()


@pytest.fixture(scope="module")
def e2e(tiny_mrpc_run: types.SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    from pipeline import run
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import create_pipeline, pipeline_name_for
    from pipeline.runs import pipeline_runs

    shared = tiny_mrpc_run
    second_summary = run_main(shared.argv)

    args, _ = run.parse_args(shared.argv)
    pipeline_name = pipeline_name_for(TASK, PIPELINE_NAME)
    pipeline = create_pipeline(pipeline_name=pipeline_name, pipeline_root=str(tmp_path_factory.mktemp("unused")),
                               data_dir=shared.data_dir, serving_dir=shared.serving_dir,
                               config=run.training_config(args))
    runs = pipeline_runs(shared.metadata_path, pipeline_name)
    assert len(runs) == 2, runs
    return types.SimpleNamespace(
        model_dir=shared.model_dir, serving_dir=shared.serving_dir, data_dir=shared.data_dir,
        node_ids=[c.id for c in pipeline.components],
        first=runs[0], second=runs[1],
        first_summary=shared.summary, second_summary=second_summary, first_console=shared.console,
    )


@pytest.fixture(scope="module")
def pushed(e2e: types.SimpleNamespace) -> str:
    return e2e.first.output("PushedModel").custom_properties["pushed_destination"].string_value


@pytest.fixture(scope="module")
def serving_model(pushed: str):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the Transform graph)

    return tf.saved_model.load(pushed)


@pytest.fixture(scope="module")
def keras_probabilities(e2e: types.SimpleNamespace) -> np.ndarray:
    """The trained model rebuilt from its adapter-only weights on the tiny backbone, on QUERIES."""
    from modules.backbone import load_backbone, tokenizer_settings
    from modules.model import INPUT_NAMES, build_from_adapter_config, load_adapter_weights, read_adapter_config
    from modules.preprocessing import BertPairTokenizer

    adapters = os.path.join(e2e.first.output("Model").uri, "adapters")
    config = read_adapter_config(adapters)
    assert (config["task"], config["model"], config["max_seq_length"]) == (TASK, e2e.model_dir, MAX_SEQ_LENGTH)
    model = build_from_adapter_config(load_backbone(e2e.model_dir), config)
    load_adapter_weights(model, adapters)
    tokenizer = BertPairTokenizer(tokenizer_settings(e2e.model_dir), MAX_SEQ_LENGTH)
    features = tokenizer(tf.constant([a for a, _ in QUERIES]), tf.constant([b for _, b in QUERIES]))
    assert features["length"].numpy()[2] == MAX_SEQ_LENGTH  # the long pair was truncated
    logits = model({name: features[name] for name in INPUT_NAMES}, training=False)
    return tf.nn.softmax(logits, axis=-1).numpy()


def serialized_examples(with_bookkeeping: bool) -> tf.Tensor:
    """QUERIES as tf.Examples: just the two sentences, or also the label and index the Evaluator's examples carry."""
    examples = []
    for i, (first, second) in enumerate(QUERIES):
        feature = {"sentence1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[first.encode()])),
                   "sentence2": tf.train.Feature(bytes_list=tf.train.BytesList(value=[second.encode()]))}
        if with_bookkeeping:
            feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))
            feature["idx"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return tf.constant(examples)


# --- the run -----------------------------------------------------------------------------------------------


def test_every_component_ran_and_completed(e2e: types.SimpleNamespace) -> None:
    assert "Pusher" in e2e.node_ids and "Transform" in e2e.node_ids
    assert e2e.first.states == {node: "COMPLETE" for node in e2e.node_ids}


def test_evaluator_reports_the_task_metrics_on_the_whole_eval_split(e2e: types.SimpleNamespace) -> None:
    from modules.glue import get_task
    from modules.metrics import overall_metrics

    evaluation = e2e.first.output("ModelEvaluation")
    metrics = overall_metrics(evaluation.uri)  # no baseline in a first run: metrics under the model name ""
    assert set(metrics) == {*get_task(TASK).metrics, "example_count"}
    assert metrics["example_count"] == EVAL_ROWS
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0


def test_model_is_blessed_and_pushed_to_a_new_version_directory(e2e: types.SimpleNamespace, pushed: str) -> None:
    blessing = e2e.first.output("ModelBlessing")
    assert blessing.custom_properties["blessed"].int_value == 1
    assert os.path.isfile(os.path.join(blessing.uri, "BLESSED"))
    assert e2e.first.output("PushedModel").custom_properties["pushed"].int_value == 1
    parent, version = os.path.split(pushed.rstrip("/"))
    assert parent == os.path.join(e2e.serving_dir, TASK) and version.isdigit()
    assert os.path.isfile(os.path.join(pushed, "saved_model.pb"))
    assert os.path.isdir(os.path.join(pushed, "variables"))


def test_summary_table_reports_task_metrics_blessing_destination_and_time_per_component(
        e2e: types.SimpleNamespace, pushed: str) -> None:
    from modules.metrics import overall_metrics

    summary = e2e.first_summary
    assert re.search(rf"^task:\s+{TASK}$", summary, re.M)
    metrics = overall_metrics(e2e.first.output("ModelEvaluation").uri)
    eval_line = re.search(r"^eval:\s+(.*)$", summary, re.M).group(1)
    for name in ("f1", "accuracy"):
        assert f"{name} {metrics[name]:.4f}" in eval_line
    assert re.search(r"^blessed:\s+yes \(F1 \d\.\d{4} beats the constant predictor's 0\.6667 \+ 0\.01; nothing served yet\)$",
                     summary, re.M)
    assert re.search(rf"^pushed to:\s+{re.escape(pushed)}$", summary, re.M)
    for node in e2e.node_ids:
        assert re.search(rf"^{re.escape(node)}\s+COMPLETE\s+\d+\.\d s$", summary, re.M), f"no time line for {node}"
    assert re.search(r"^wall time:\s+\d+\.\d s$", summary, re.M)


def test_console_shows_real_warnings_and_no_known_benign_message(e2e: types.SimpleNamespace) -> None:
    shown = [line for line in BENIGN_LINES if line in e2e.first_console]
    assert not shown, f"known-benign lines on the console: {shown}\n{e2e.first_console}"
    # The project's progress shows: the Trainer's per-epoch line (10 epochs in tests/tiny_mrpc.py's TRAINING).
    assert re.search(r"^INFO:absl:epoch 10/10: loss \d\.\d{4}, eval f1 ", e2e.first_console, re.M), e2e.first_console
    # A real warning gets through: Beam's, about the mistyped flag (from each component that runs Beam).
    assert f"WARNING:apache_beam.options.pipeline_options:Discarding unparseable args: ['{TYPO_BEAM_FLAG}']" \
        in e2e.first_console.splitlines()


def test_rerun_of_the_same_command_reuses_every_upstream_output(e2e: types.SimpleNamespace) -> None:
    assert set(e2e.second.states) == set(e2e.node_ids)
    assert {node: e2e.second.states[node] for node in CACHEABLE} == {node: "CACHED" for node in CACHEABLE}
    # Same artifacts as the first run, not copies.
    assert e2e.second.output("Model").id == e2e.first.output("Model").id
    for node in CACHEABLE:
        assert re.search(rf"^{node}\s+CACHED\s", e2e.second_summary, re.M)
    # The Evaluator is never cached: it reran, now against the served model (the first run's push of this same
    # model); the Pusher recognised the served files and published no second version.
    assert e2e.second.states["Evaluator_eval"] == "COMPLETE"
    assert re.search(r"^eval:\s+f1 \d\.\d{4}, accuracy \d\.\d{4}", e2e.second_summary, re.M)
    first_push = e2e.first.output("PushedModel").custom_properties["pushed_destination"].string_value
    assert re.search(rf"^blessed:\s+yes \(.*; the served model scores \d\.\d{{4}} \({re.escape(first_push)}\)\)$",
                     e2e.second_summary, re.M)
    assert e2e.second.output("PushedModel").custom_properties["pushed_destination"].string_value == first_push
    assert os.listdir(os.path.dirname(first_push)) == [os.path.basename(first_push)]


# --- the pushed model --------------------------------------------------------------------------------------


def test_predict_text_answers_sentence_pairs_with_probabilities_and_their_argmax(serving_model) -> None:
    outputs = serving_model.signatures["predict_text"](
        sentence1=tf.constant([a for a, _ in QUERIES]), sentence2=tf.constant([b for _, b in QUERIES]))
    probabilities, labels = outputs["probabilities"].numpy(), outputs["label"].numpy()
    assert probabilities.shape == (len(QUERIES), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (probabilities >= 0).all()
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))


def test_predict_text_equals_the_keras_model_rebuilt_from_the_adapter_weights(
        serving_model, keras_probabilities: np.ndarray) -> None:
    outputs = serving_model.signatures["predict_text"](
        sentence1=tf.constant([a for a, _ in QUERIES]), sentence2=tf.constant([b for _, b in QUERIES]))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), keras_probabilities, rtol=0, atol=1e-5)
    # Not vacuous: the answers differ between the inputs far more than the tolerance.
    assert np.ptp(keras_probabilities[:, 1]) > 1e-3


@pytest.mark.parametrize("with_bookkeeping", [False, True], ids=["sentences_only", "with_label_and_idx"])
def test_serving_default_on_tf_examples_equals_the_keras_model(
        serving_model, keras_probabilities: np.ndarray, with_bookkeeping: bool) -> None:
    outputs = serving_model.signatures["serving_default"](examples=serialized_examples(with_bookkeeping))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), keras_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["label"].numpy(), keras_probabilities.argmax(axis=1))


# --- predictions for the test split --------------------------------------------------------------------------


def test_predictions_are_published_beside_the_pushed_version_one_per_test_row_in_index_order(
        e2e: types.SimpleNamespace, pushed: str, serving_model) -> None:
    published = e2e.first.output("InferenceResult").custom_properties["published_to"].string_value
    assert published == os.path.join(os.path.dirname(e2e.serving_dir), "predictions", TASK, os.path.basename(pushed))
    assert os.listdir(published) == ["MRPC.tsv"]
    with open(os.path.join(published, "MRPC.tsv")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(e2e.data_dir, "MRPC", "test.tsv")) as f:
        test_rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    assert lines[0] == "index\tprediction" and len(lines) == TEST_ROWS + 1
    assert [line.split("\t")[0] for line in lines[1:]] == [row[0] for row in test_rows]
    answers = serving_model.signatures["predict_text"](
        sentence1=tf.constant([row[3] for row in test_rows]), sentence2=tf.constant([row[4] for row in test_rows]))
    expected = [name.decode() for name in answers["label_name"].numpy()]
    assert [line.split("\t")[1] for line in lines[1:]] == expected
    assert len(set(expected)) == 2  # not vacuous: the model answers both classes on this test set
    assert f"predictions: {published} (MRPC.tsv {TEST_ROWS} rows)" in e2e.first_summary


def test_predict_cli_writes_the_same_file_for_the_test_file_from_the_pushed_model(
        e2e: types.SimpleNamespace, pushed: str, tmp_path) -> None:
    from pipeline import predict

    out = str(tmp_path / "MRPC.tsv")
    predict.main(["--task", TASK, "--input", os.path.join(e2e.data_dir, "MRPC", "test.tsv"), "--output", out,
                  "--saved_model", pushed, "--batch_size", "5"])
    published = e2e.first.output("InferenceResult").custom_properties["published_to"].string_value
    with open(out) as mine, open(os.path.join(published, "MRPC.tsv")) as pipelines:
        assert mine.read() == pipelines.read()
