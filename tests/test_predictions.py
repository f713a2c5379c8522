"""Prediction files (modules/predictions.py) and the GLUE submission zip (pipeline/submission.py).

The model side (BulkInferrer's answers equal the pushed model's) is checked on the shared tiny MRPC run in
test_pipeline_e2e, a user's CSV and JSON Lines tasks in test_custom_task_e2e, Kubeflow in test_kubeflow_execution.
Here: the formats byte for byte, STS-B's clipping, the server's file names, the zip's rules, and the real GLUE test
files read and written back with their row counts.
"""
import csv
import io
import json
import os
import zipfile

import pytest

from conftest import glue_dir_or_skip
from modules.glue import TASKS, GlueTask, get_task, submission_file
from modules.predictions import PredictionRow, file_name, format_predictions
from pipeline import submission

INTENTS = GlueTask.from_spec({
    "name": "intents", "format": "jsonl", "files": {"train": "t.jsonl", "eval": "d.jsonl", "test": "x.jsonl"},
    "text_a": "text", "label": "intent", "labels": ["billing", "bug", "praise"], "metrics": ["accuracy"]})


def with_format(task: GlueTask, file_format: str) -> GlueTask:
    return GlueTask.from_spec({**task.to_spec(), "format": file_format})


def test_glue_server_file_names_for_every_test_split():
    names = {(task.name, split): submission_file(task, split) for task in TASKS.values() for split in task.test_splits}
    assert names == {
        ("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv", ("mrpc", "test"): "MRPC.tsv",
        ("stsb", "test"): "STS-B.tsv", ("qqp", "test"): "QQP.tsv", ("mnli", "test"): "MNLI-m.tsv",
        ("mnli", "test_mismatched"): "MNLI-mm.tsv", ("mnli", "test_ax"): "AX.tsv", ("qnli", "test"): "QNLI.tsv",
        ("rte", "test"): "RTE.tsv", ("wnli", "test"): "WNLI.tsv",
    }
    assert submission_file(INTENTS, "test") is None and file_name(INTENTS, "test") == "test.jsonl"


def test_glue_file_has_the_servers_header_labels_and_the_test_files_index_order():
    rows = [PredictionRow(2, label_id=1, probabilities=(0.2, 0.8)), PredictionRow(0, label_id=0, probabilities=(0.9, 0.1)),
            PredictionRow(1, label_id=1, probabilities=(0.4, 0.6))]
    assert format_predictions(get_task("rte"), "test", rows) == (
        "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n")
    assert format_predictions(get_task("mrpc"), "test", rows) == "index\tprediction\n0\t0\n1\t1\n2\t1\n"
    mnli = [PredictionRow(0, label_id=2, probabilities=(0.1, 0.2, 0.7))]
    assert format_predictions(get_task("mnli"), "test_ax", mnli) == "index\tprediction\n0\tneutral\n"


def test_stsb_scores_are_clipped_to_zero_to_five():
    rows = [PredictionRow(0, score=-0.4), PredictionRow(1, score=2.71828), PredictionRow(2, score=5.6)]
    assert format_predictions(get_task("stsb"), "test", rows) == "index\tprediction\n0\t0.000\n1\t2.718\n2\t5.000\n"


def test_a_prediction_that_does_not_answer_the_task_is_an_error():
    with pytest.raises(ValueError, match="the prediction for id 7 does not answer task rte"):
        format_predictions(get_task("rte"), "test", [PredictionRow(7, label_id=2, probabilities=(0.5, 0.5))])
    with pytest.raises(ValueError, match="the prediction for id 3 does not answer task stsb"):
        format_predictions(get_task("stsb"), "test", [PredictionRow(3, score=float("nan"))])


ROWS = [PredictionRow(101, label_id=1, probabilities=(0.25, 0.5, 0.25)),
        PredictionRow(100, label_id=2, probabilities=(0.0, 0.125, 0.875))]


def test_a_users_jsonl_task_gets_json_lines_with_id_label_and_probabilities():
    lines = format_predictions(INTENTS, "test", ROWS).splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 100, "label_name": "praise", "label": 2, "probability_billing": 0.0, "probability_bug": 0.125,
         "probability_praise": 0.875},
        {"id": 101, "label_name": "bug", "label": 1, "probability_billing": 0.25, "probability_bug": 0.5,
         "probability_praise": 0.25},
    ]


@pytest.mark.parametrize("file_format,delimiter", [("csv", ","), ("tsv", "\t")])
def test_a_users_csv_or_tsv_task_gets_its_own_format(file_format, delimiter):
    task = with_format(INTENTS, file_format)
    text = format_predictions(task, "test", ROWS)
    assert text.splitlines()[0] == delimiter.join(
        ["id", "label_name", "label", "probability_billing", "probability_bug", "probability_praise"])
    records = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    assert [(r["id"], r["label_name"], r["probability_praise"]) for r in records] == [
        ("100", "praise", "0.875"), ("101", "bug", "0.25")]
    assert file_name(task, "test") == f"test.{file_format}"


def test_a_users_regression_task_writes_id_and_score():
    task = GlueTask.from_spec({"name": "ratings", "format": "csv", "files": {"train": "a", "eval": "b", "test": "c"},
                               "text_a": "t", "label": "y", "labels": "regression", "metrics": ["pearson"],
                               "score_range": [1, 3]})
    assert format_predictions(task, "test", [PredictionRow(1, score=3.5), PredictionRow(0, score=2.0)]) == (
        "id,score\n0,2.0\n1,3.0\n")


# --- the submission zip -------------------------------------------------------------------------------------


def publish(root: str, task_name: str, version: int, files: dict) -> None:
    """A served version and its predictions, as the Pusher and the PredictionWriter leave them."""
    os.makedirs(os.path.join(root, "serving", task_name, str(version)), exist_ok=True)
    directory = os.path.join(root, "predictions", task_name, str(version))
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)


def run_submission(root: str, *flags: str) -> None:
    submission.main(["--predictions_dir", os.path.join(root, "predictions"), "--serving_dir",
                     os.path.join(root, "serving"), *flags])


def test_the_zip_takes_the_served_versions_predictions_under_the_servers_names(tmp_path):
    root = str(tmp_path)
    publish(root, "mrpc", 100, {"MRPC.tsv": "index\tprediction\n0\t0\n"})
    publish(root, "mrpc", 200, {"MRPC.tsv": "index\tprediction\n0\t1\n"})
    publish(root, "mnli", 100, {"MNLI-m.tsv": "m", "MNLI-mm.tsv": "mm"})  # no diagnostic set: AX.tsv is optional
    out = str(tmp_path / "glue.zip")
    run_submission(root, "--out", out, "--tasks", "MRPC", "mnli")
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["MNLI-m.tsv", "MNLI-mm.tsv", "MRPC.tsv"]
        assert archive.read("MRPC.tsv") == b"index\tprediction\n0\t1\n"  # version 200, the served one
    os.rmdir(os.path.join(root, "serving", "mrpc", "200"))  # a rollback: 100 is served again
    run_submission(root, "--out", out, "--tasks", "mrpc")
    with zipfile.ZipFile(out) as archive:
        assert archive.read("MRPC.tsv") == b"index\tprediction\n0\t0\n"


def test_missing_tasks_are_listed_and_a_partial_zip_needs_allow_partial(tmp_path, capsys):
    root = str(tmp_path)
    publish(root, "rte", 5, {"RTE.tsv": "index\tprediction\n"})
    os.makedirs(os.path.join(root, "serving", "cola", "7"))  # served, but its run published no predictions
    out = str(tmp_path / "glue.zip")
    with pytest.raises(SystemExit, match="2 of 3 tasks have no predictions"):
        run_submission(root, "--out", out, "--tasks", "rte", "cola", "wnli")
    assert not os.path.exists(out)
    errors = capsys.readouterr().err
    assert "missing cola: the served version 7 has no predictions" in errors
    assert "missing wnli: no model served under" in errors
    run_submission(root, "--out", out, "--tasks", "rte", "cola", "wnli", "--allow_partial")
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["RTE.tsv"]


REAL_TEST_ROWS = {"cola": 1063, "sst2": 1821, "mrpc": 1725, "stsb": 1379, "qnli": 5463, "rte": 3000, "wnli": 146}


def test_real_glue_test_files_become_a_zip_with_the_servers_names_and_row_counts(tmp_path):
    """Every real test file here read as the pipeline reads it (ExampleGen's reader), written as the
    PredictionWriter writes it (answers made up: this checks files, names and counts, not a model)."""
    from components.glue_example_gen.executor import read_examples
    from modules.glue import FEATURE_INDEX

    glue_dir = glue_dir_or_skip("MRPC")
    root = str(tmp_path)
    for name in REAL_TEST_ROWS:
        task = get_task(name)
        examples = read_examples(task.split_path("test", glue_dir), task, labeled=False)
        indices = [e.features.feature[FEATURE_INDEX].int64_list.value[0] for e in examples]
        rows = [PredictionRow(i, score=i % 6) if task.is_regression else
                PredictionRow(i, label_id=i % 2, probabilities=(0.5, 0.5)) for i in indices]
        publish(root, name, 1, {submission_file(task, "test"): format_predictions(task, "test", rows)})
    out = str(tmp_path / "glue.zip")
    run_submission(root, "--out", out, "--tasks", *REAL_TEST_ROWS, "--allow_partial")
    with zipfile.ZipFile(out) as archive:
        counts = {name: archive.read(name).decode().count("\n") - 1 for name in archive.namelist()}
        assert archive.read("STS-B.tsv").decode().splitlines()[1:4] == ["0\t0.000", "1\t1.000", "2\t2.000"]
    assert counts == {"CoLA.tsv": 1063, "SST-2.tsv": 1821, "MRPC.tsv": 1725, "STS-B.tsv": 1379, "QNLI.tsv": 5463,
                      "RTE.tsv": 3000, "WNLI.tsv": 146}
